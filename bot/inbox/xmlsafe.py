"""Parsing of untrusted XML in one pass: DTDs and entities are refused before the parser sees the
document, an entity declaration the parser meets anyway (a UTF-16 body hides it from that check)
is refused by the parser, and nesting deeper than any WeCom callback needs is
refused while parsing, before anything that recurses on the result (json.dumps of it, for the
inbox's dedupe key) meets it. xmltodict's parser is a stack, not a recursion, so a deep document
costs memory bounded by the body limit and no stack."""

from __future__ import annotations

import re
from typing import Any
from xml.parsers import expat
from xml.parsers.expat import ExpatError

import xmltodict

_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
# WeCom's deepest callbacks (e.g. SendPicsInfo/PicList/item/PicMd5Sum) nest 5 elements below <xml>.
MAX_DEPTH = 16


class UnsafeXML(ValueError):
    """The XML declares a DTD or entities, nests too deeply, or is not well-formed."""


def parse_flat_xml(data: bytes | str) -> dict[str, Any]:
    """Parse ``<xml>…</xml>`` into a dict of its children (nested elements become dicts), exactly as
    xmltodict does; a document of text-only children (every envelope, most callbacks) takes a faster
    path with the same result."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if _DECLARATION.search(raw):
        raise UnsafeXML("XML with a DOCTYPE or ENTITY declaration is refused")
    try:
        flat = _FlatDocument.parse(raw)
    except ExpatError as exc:
        raise UnsafeXML(f"malformed XML: {exc}") from None
    except ValueError:
        raise UnsafeXML("XML with a DOCTYPE or ENTITY declaration is refused") from None
    return flat if flat is not None else parse_with_xmltodict(raw)


def parse_with_xmltodict(raw: bytes) -> dict[str, Any]:
    """The general parse, for any shape (attributes, nesting, repeated elements)."""
    try:
        parsed = xmltodict.parse(raw, encoding="utf-8", disable_entities=True, postprocessor=_within_depth)
    except UnsafeXML:
        raise
    except ExpatError as exc:
        raise UnsafeXML(f"malformed XML: {exc}") from None
    except ValueError:  # xmltodict's own refusal of an entity declaration the check above did not see
        raise UnsafeXML("XML with a DOCTYPE or ENTITY declaration is refused") from None
    root = parsed.get("xml") if isinstance(parsed, dict) else None
    if not isinstance(root, dict):
        raise UnsafeXML("the root element must be <xml> with child elements")
    return root


def _within_depth(path: list[Any], key: str, value: Any) -> tuple[str, Any]:
    """xmltodict calls this as each element closes; the innermost closes first, so a document nested
    too deep is refused at its first end tag."""
    if len(path) > MAX_DEPTH:
        raise UnsafeXML(f"XML nested more than {MAX_DEPTH} elements deep")
    return key, value


class _NotFlat(Exception):
    """The document is not ``<xml>`` with text-only children: the general parse takes it."""


class _FlatDocument:
    """``<xml>`` whose children are distinct elements holding only text, parsed with expat set up as
    xmltodict sets it up (entity declarations refused, text buffered); each child's text is joined and
    stripped, and empty text is None — xmltodict's result for such a document, at a third of its cost
    (its handler does per-element work a flat document never needs). Anything else (an attribute, a
    grandchild, a repeated name, text directly in the root, another root) gives None."""

    __slots__ = ("depth", "fields", "text")

    def __init__(self) -> None:
        self.depth = 0
        self.fields: dict[str, Any] = {}
        self.text: list[str] = []

    @classmethod
    def parse(cls, raw: bytes) -> dict[str, Any] | None:
        document = cls()
        parser = expat.ParserCreate("utf-8", None)
        parser.ordered_attributes = True
        parser.buffer_text = True
        parser.StartElementHandler = document.start
        parser.EndElementHandler = document.end
        parser.CharacterDataHandler = document.characters
        parser.EntityDeclHandler = _forbid_entities
        try:
            parser.Parse(raw, True)
        except _NotFlat:
            return None
        return document.fields or None

    def start(self, name: str, attributes: list[str]) -> None:
        self.depth += 1
        if attributes or self.depth > 2 or (self.depth == 1 and name != "xml") or name in self.fields:
            raise _NotFlat
        self.text = []

    def end(self, name: str) -> None:
        if self.depth == 2:
            self.fields[name] = "".join(self.text).strip() or None
        self.depth -= 1
        self.text = []

    def characters(self, data: str) -> None:
        if self.depth == 2:
            self.text.append(data)
        elif data.strip():  # text beside the children: xmltodict keeps it as '#text'
            raise _NotFlat


def _forbid_entities(*_args: Any) -> None:
    raise ValueError("entities are disabled")
