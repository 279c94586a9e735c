"""Parsing of untrusted XML: DTDs and entities are refused before any parser expands them, and so is
nesting deeper than any WeCom callback needs, before a parser that recurses on it (or json.dumps of
the result, for the inbox's dedupe key) meets it."""

from __future__ import annotations

import io
import re
from typing import Any

import defusedxml.ElementTree as SafeET
import xmltodict
from defusedxml import DefusedXmlException

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
    check_well_formed(raw)
    parsed = xmltodict.parse(raw, disable_entities=True)
    root = parsed.get("xml")
    if not isinstance(root, dict):
        raise UnsafeXML("the root element must be <xml> with child elements")
    return root


def check_well_formed(raw: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Raise UnsafeXML unless ``raw`` is well-formed XML without DTD or entities, nested at most
    ``max_depth`` elements deep. Streams, and stops at the first element too deep."""
    depth = 0
    try:
        for event, element in SafeET.iterparse(io.BytesIO(raw), events=("start", "end"), forbid_dtd=True,
                                                forbid_entities=True, forbid_external=True):
            if event == "start":
                depth += 1
                if depth > max_depth:
                    raise UnsafeXML(f"XML nested more than {max_depth} elements deep")
            else:
                depth -= 1
                element.clear()
    except (DefusedXmlException, SafeET.ParseError) as exc:
        raise UnsafeXML(f"malformed XML: {exc}") from None
