"""Every word sent to a customer or staff member comes from ``templates/messages`` (or an
operator's own directory, searched first), chosen by kind + name + tier with fallback:

    reply/price.important_value.j2 → reply/price.high.j2 → reply/price.j2
    → reply/default.important_value.j2 → reply/default.high.j2 → reply/default.j2

Templates render in Jinja2's sandbox with ``StrictUndefined``: an unknown variable is an error
when the template is used, never an empty gap in a message a customer reads. The sandbox is bounded
(``bot.outbox.bounds``): a template that would build a huge string or loop for ever is refused in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError

from bot.core.config import Settings
from bot.outbox.bounds import BoundedSandbox
from segments.rfm import SEGMENT_NAMES
from templates import MESSAGES_DIR

TIER_NAMES = {"high": "高价值", "mid": "中价值", "low": "低价值"}
STAGE_NAMES = {"new": "新进", "first_purchase": "首购", "repeat": "复购", "super": "超级", "stranger": "陌生",
               "potential": "潜在", "intent": "意向"}


class TemplateMissing(LookupError):
    """No template in the fallback chain exists."""


class TemplateRefused(ValueError):
    """A template that cannot be used (bad syntax, or refused by the sandbox); the message says why in one line."""


def refusal(exc: BaseException) -> str:
    """Why a template failed, in one line: the sandbox's or Jinja2's message, never a traceback."""
    line = f" on line {exc.lineno}" if isinstance(exc, TemplateSyntaxError) and exc.lineno else ""
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}{line}: {text[0] if text else ''}"[:300]


@dataclass(frozen=True)
class Rendered:
    template: str
    text: str


class MessageTemplates:
    def __init__(self, extra_dir: str = "") -> None:
        loaders = [FileSystemLoader(extra_dir)] if extra_dir else []
        loaders.append(FileSystemLoader(str(MESSAGES_DIR)))
        self.env = BoundedSandbox(loader=ChoiceLoader(loaders), undefined=StrictUndefined, autoescape=False,
                                        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> MessageTemplates:
        return cls(settings.app.templates_dir)

    @staticmethod
    def candidates(kind: str, name: str, tiers: Sequence[str | None]) -> list[str]:
        keys = [t for t in tiers if t]
        paths: list[str] = []
        for n in [name] if name == "default" else [name, "default"]:
            paths += [f"{kind}/{n}.{k}.j2" for k in keys]
            paths.append(f"{kind}/{n}.j2")
        return paths

    def has(self, kind: str, name: str) -> bool:
        """Whether ``kind/name`` has a template of its own (``name.j2`` or a tier's ``name.<tier>.j2``)."""
        prefix = f"{kind}/{name}."
        return any(self.env.list_templates(filter_func=lambda path: path.startswith(prefix) and path.endswith(".j2")))

    def choose(self, kind: str, name: str, tiers: Sequence[str | None] = ()) -> str:
        for path in self.candidates(kind, name, tiers):
            try:
                self.env.get_template(path)
            except TemplateNotFound:
                continue
            except TemplateSyntaxError as exc:
                raise TemplateRefused(f"template {path}: {refusal(exc)}") from None
            return path
        raise TemplateMissing(f"no template for {kind}/{name} (tried {', '.join(self.candidates(kind, name, tiers))})")

    def render(self, kind: str, name: str, tiers: Sequence[str | None] = (), **context: Any) -> Rendered:
        path = self.choose(kind, name, tiers)
        try:
            text = self.env.get_template(path).render(**context).strip()
        except Exception as exc:  # noqa: BLE001 - what a template does with one recipient's data: refused, named
            raise TemplateRefused(f"template {path}: {refusal(exc)}") from None
        return Rendered(path, text)


def customer_vars(customer: Any) -> dict[str, Any]:
    """What a template may say about a customer (only these names exist)."""
    name = (customer.name or "").strip() if customer is not None else ""
    tier = getattr(customer, "value_tier", None)
    segment = getattr(customer, "rfm_segment", None)
    stage = getattr(customer, "stage", None)
    external_userid = getattr(customer, "external_userid", "") or ""
    return {
        "name": name or "您",
        "label": name or f"客户…{external_userid[-6:]}",  # how staff see a customer with no known name
        "value_tier": tier or "",
        "tier_name": TIER_NAMES.get(tier or "", ""),
        "rfm_segment": segment or "",
        "segment_name": SEGMENT_NAMES.get(segment or "", ""),
        "stage": stage or "",
        "stage_name": STAGE_NAMES.get(stage or "", ""),
    }


def tier_keys(customer: Any) -> list[str]:
    """Most specific first: the RFM segment, then the value tier."""
    if customer is None:
        return []
    return [k for k in (customer.rfm_segment, customer.value_tier) if k]
