"""JSON from outside, refused when nested deeper than any body we accept needs, before the parser
recurses into it. The standard parser recurses once per level; a body nested 100,000 deep ends in a
RecursionError, and while the parser sits at the recursion limit the garbage collector's finalizers
(a pooled connection's, say) fail too. The check walks only the bytes that matter (brackets, quotes,
backslashes), and only when the body has more brackets than the limit."""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
_SPECIAL = re.compile(rb'[\[\]{}"\\]')
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")
# A "\ud800" escape (or a surrogate the bytes decoded to) that no pair completes is text no database or
# encoder takes: UTF-8 cannot hold it. Only text that has one of these is walked after parsing.
_SURROGATE_HINT = re.compile(r"\\u[dD][89abcdefABCDEF]|[\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonTooDeep(ValueError):
    """A ValueError, so callers that answer a malformed body with a 400 answer this one too."""


def check_depth(data: bytes | str, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`JsonTooDeep` when ``data`` (text, or UTF-8 bytes) nests deeper than ``limit``."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    depth, in_string, escaped_at = 0, False, -1
    for match in _SPECIAL.finditer(raw):
        at = match.start()
        if at == escaped_at:
            continue
        byte = raw[at]
        if in_string:
            if byte == _BACKSLASH:
                escaped_at = at + 1
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > limit:
                raise JsonTooDeep(f"nested more than {limit} levels deep")
        elif byte in _CLOSE:
            depth -= 1


def loads(data: bytes | str, **kwargs: Any) -> Any:
    """``json.loads`` after :func:`check_depth`. Bytes are decoded first as ``json.loads`` decodes them
    (UTF-8, -16 or -32 by their first bytes): a UTF-16 character may hold the byte of a quote or a bracket,
    so only the text is checked. Undecodable bytes are a ValueError (UnicodeDecodeError)."""
    if isinstance(data, bytes | bytearray):
        data = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
    check_depth(data)
    value = json.loads(data, **kwargs)
    if _SURROGATE_HINT.search(data) and _has_lone_surrogate(value):
        raise ValueError("text holds a lone UTF-16 surrogate (\\ud800–\\udfff): not Unicode text")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False
