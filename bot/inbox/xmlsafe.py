"""Parsing of untrusted XML: DTDs and entities are refused before any parser expands them."""

from __future__ import annotations

import re
from typing import Any

import defusedxml.ElementTree as SafeET
import xmltodict
from defusedxml import DefusedXmlException

_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class UnsafeXML(ValueError):
    """The XML declares a DTD or entities, or is not well-formed."""


def parse_flat_xml(data: bytes | str) -> dict[str, Any]:
    """Parse ``<xml>…</xml>`` into a dict of its children (nested elements become dicts)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if _DECLARATION.search(raw):
        raise UnsafeXML("XML with a DOCTYPE or ENTITY declaration is refused")
    try:
        SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, SafeET.ParseError) as exc:
        raise UnsafeXML(f"malformed XML: {exc}") from None
    parsed = xmltodict.parse(raw, disable_entities=True)
    root = parsed.get("xml")
    if not isinstance(root, dict):
        raise UnsafeXML("the root element must be <xml> with child elements")
    return root
