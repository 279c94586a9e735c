"""Whether a contact was erased by `scrm customer forget` (bot/contacts/forget.py) and has no new record since:
the brand's own pulls (contact sync, CSV imports, moment polls) leave such a contact forgotten."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.privacy import forgotten_key
from bot.models import Customer


def is_forgotten(session: Session, external_userid: str) -> bool:
    found = session.scalars(select(Customer.external_userid).where(
        Customer.external_userid.in_({external_userid, forgotten_key(external_userid)}))).all()
    return bool(found) and external_userid not in found


def stored_member_ids(session: Session, external_userids: Iterable[str]) -> dict[str, str]:
    """Each id as a group member list may store it: a forgotten contact's as its key (and nothing else
    of theirs: the caller leaves name and nickname empty), every other id as it is. One query."""
    ids = set(external_userids)
    keys = {forgotten_key(i): i for i in ids}
    found = set(session.scalars(select(Customer.external_userid).where(Customer.external_userid.in_(ids | set(keys)))))
    return {i: forgotten_key(i) if forgotten_key(i) in found and i not in found else i for i in ids}
