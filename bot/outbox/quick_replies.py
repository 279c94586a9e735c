"""话术库: the quick replies staff send from the sidebar, kept with every other word in
``templates/messages/quick_reply/``. ``index.toml`` lists them (name, title, tiers); each text is the
template ``quick_reply/<name>.j2`` with the usual tier variants (``<name>.high.j2`` …).

The index is read through the same loaders as the templates, so an operator's ``app.templates_dir``
copy of ``quick_reply/index.toml`` replaces the shipped one. :func:`load_quick_replies` is the one
entry point a later console editor needs: it validates the whole library and says what is wrong."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateNotFound

from bot.outbox.messages import MessageTemplates, TemplateMissing, TemplateRefused, customer_vars, tier_keys

INDEX = "quick_reply/index.toml"
_NAME = re.compile(r"[a-z0-9_]{1,40}")
MAX_REPLIES = 200


class QuickReplyError(ValueError):
    """The library's index or one of its templates cannot be used; the message says where and why."""


@dataclass(frozen=True)
class QuickReply:
    name: str
    title: str
    tiers: tuple[str, ...]  # value tiers or RFM segments it is meant for; empty = everyone

    def suits(self, customer: Any) -> bool:
        return not self.tiers or getattr(customer, "value_tier", None) in self.tiers \
            or getattr(customer, "rfm_segment", None) in self.tiers


@dataclass(frozen=True)
class RenderedReply:
    name: str
    title: str
    template: str
    text: str


def load_quick_replies(templates: MessageTemplates) -> tuple[QuickReply, ...]:
    """Every quick reply in the index, in its order, each checked to have a template that parses."""
    try:
        source = templates.env.loader.get_source(templates.env, INDEX)[0]  # type: ignore[union-attr]
    except TemplateNotFound:
        return ()
    try:
        raw = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise QuickReplyError(f"{INDEX}: {exc}") from None
    entries = raw.get("reply", [])
    if not isinstance(entries, list) or len(entries) > MAX_REPLIES:
        raise QuickReplyError(f"{INDEX}: expected [[reply]] tables (at most {MAX_REPLIES})")
    replies = [_parse(entry, f"{INDEX} reply #{i + 1}", templates) for i, entry in enumerate(entries)]
    names = [r.name for r in replies]
    if len(set(names)) != len(names):
        raise QuickReplyError(f"{INDEX}: two replies share a name")
    return tuple(replies)


def _parse(entry: Any, where: str, templates: MessageTemplates) -> QuickReply:
    if not isinstance(entry, dict):
        raise QuickReplyError(f"{where} must be a table")
    unknown = sorted(set(entry) - {"name", "title", "tiers"})
    if unknown:
        raise QuickReplyError(f"{where}: unknown key(s) {unknown}; known: name, title, tiers")
    name, title, tiers = entry.get("name"), entry.get("title"), entry.get("tiers", [])
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise QuickReplyError(f"{where}: name must be 1–40 of a-z, 0-9, _ (the template quick_reply/<name>.j2)")
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= 30:
        raise QuickReplyError(f"{where} ({name}): title must be 1–30 characters")
    if not isinstance(tiers, list) or not all(isinstance(t, str) and t for t in tiers):
        raise QuickReplyError(f"{where} ({name}): tiers must be a list of value tiers or RFM segments")
    try:
        path = templates.choose("quick_reply", name)
    except (TemplateMissing, TemplateRefused) as exc:
        raise QuickReplyError(f"{where} ({name}): {exc}") from None
    if path != f"quick_reply/{name}.j2":
        raise QuickReplyError(f"{where} ({name}): no template quick_reply/{name}.j2")
    return QuickReply(name, title.strip(), tuple(tiers))


def quick_replies_for(customer: Any, templates: MessageTemplates, brand: str) -> list[RenderedReply]:
    """The replies meant for this customer's tier (and those for everyone), rendered for them."""
    keys, variables = tier_keys(customer), customer_vars(customer)
    rendered = []
    for reply in load_quick_replies(templates):
        if reply.suits(customer):
            text = templates.render("quick_reply", reply.name, keys, customer=variables, brand=brand)
            rendered.append(RenderedReply(reply.name, reply.title, text.template, text.text))
    return rendered
