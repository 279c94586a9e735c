"""Personal data out of log lines: names and ids masked where they are logged, and a last sweep over
every line for what can be recognised (phone numbers, WeCom external contact ids, the text of XML
elements: a decrypted callback in an error message)."""

from __future__ import annotations

import hashlib
import re

# Mainland mobile numbers, with or without +86 and with spaces or dashes as people write them.
_PHONE = re.compile(r"(?<![0-9])(?:\+?86[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])")
# External contact ids: wm… (customers), wo… (WeChat users), wb… (kf customers), about 32 characters.
_EXTERNAL_USERID = re.compile(r"(?<![0-9A-Za-z_-])(w[mob])[0-9A-Za-z_-]{16,}")
_XML_TEXT = re.compile(r"<([A-Za-z_][\w.-]*)>(<!\[CDATA\[.*?\]\]>|[^<]*)</\1>", re.DOTALL)
# What a callback is (not who sent it, nor what it says) stays readable.
_STRUCTURAL_XML = frozenset({"MsgType", "Event", "ChangeType", "InfoType", "CreateTime", "TimeStamp", "AgentID",
                             "MsgId", "FailReason"})
_SHOWN_TAIL = 4
_MIN_LENGTH_WITH_TAIL = 16


def masked(value: object) -> str:
    """A name or id as a log line may show it. A long opaque id (an external_userid) keeps its last four
    characters, enough to match the line to a record; anything shorter (a staff userid, a nickname)
    would give itself away, and is hidden whole."""
    text = "" if value is None else str(value)
    if not text:
        return "-"
    return f"…{text[-_SHOWN_TAIL:]}" if len(text) >= _MIN_LENGTH_WITH_TAIL else "***"


# Without the app's routes at hand: a segment shaped like a route's word is kept. With them, only the
# routes' own words are (a lowercase userid or an all-digit shop id is shaped like one).
_ROUTE_WORD = re.compile(r"[a-z][a-z._-]*|v[0-9]+")


def masked_path(path: str, route_words: frozenset[str] | None = None) -> str:
    """A request path as an access log may show it: no query string (a search, a signature), and every
    segment that is not a word of the app's routes masked (``/api/v1/customers/wm_demo_1`` →
    ``/api/v1/customers/***``)."""
    path = path.split("?", 1)[0].split("#", 1)[0]

    def kept(part: str) -> bool:
        return not part or (part in route_words if route_words is not None else bool(_ROUTE_WORD.fullmatch(part)))

    return "/".join(part if kept(part) else masked(part) for part in path.split("/"))


def mask_personal_data(text: str) -> str:
    """Mask what is recognisably personal in a finished log line (a backstop: call sites mask first)."""
    text = _XML_TEXT.sub(_masked_element, text)
    text = _EXTERNAL_USERID.sub(lambda m: masked(m.group(0)), text)
    return _PHONE.sub("[phone]", text)


def _masked_element(match: re.Match[str]) -> str:
    tag = match.group(1)
    return match.group(0) if tag in _STRUCTURAL_XML else f"<{tag}>…</{tag}>"


FORGOTTEN_PREFIX = "forgotten:"


def forgotten_key(external_userid: str) -> str:
    """What a forgotten customer's external_userid becomes (`scrm customer forget`): a one-way digest, so
    the brand's own pulls (contact sync, imports, moment polls) can tell the contact was forgotten and
    leave it so, while the record no longer names anyone. Unsalted on purpose: the same id must give the
    same key in every process and after a secret's rotation; an external_userid is a random 32-character
    id of one corp, so nobody without the id itself can find which key belongs to it."""
    if external_userid.startswith(FORGOTTEN_PREFIX):
        return external_userid
    return FORGOTTEN_PREFIX + hashlib.sha256(external_userid.encode("utf-8")).hexdigest()[:40]


def is_forgotten_key(external_userid: str) -> bool:
    return external_userid.startswith(FORGOTTEN_PREFIX)
