"""Parsing of untrusted XML in one pass: DTDs and entities are refused before the parser sees the
document, an entity declaration the parser meets anyway (a UTF-16 body hides it from that check)
is refused by the parser, and nesting deeper than any WeCom callback needs is
refused while parsing, before anything that recurses on the result (json.dumps of it, for the
inbox's dedupe key) meets it. xmltodict's parser is a stack, not a recursion, so a deep document
costs memory bounded by the body limit and no stack."""

from __future__ import annotations

import re
from typing import Any
from xml.parsers.expat import ExpatError

import xmltodict

_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
# WeCom's deepest callbacks (e.g. SendPicsInfo/PicList/item/PicMd5Sum) nest 5 elements below <xml>.
MAX_DEPTH = 16


class UnsafeXML(ValueError):
    """The XML declares a DTD or entities, nests too deeply, or is not well-formed."""


def parse_flat_xml(data: bytes | str) -> dict[str, Any]:
    """Parse ``<xml>…</xml>`` into a dict of its children (nested elements become dicts)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if _DECLARATION.search(raw):
        raise UnsafeXML("XML with a DOCTYPE or ENTITY declaration is refused")
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
