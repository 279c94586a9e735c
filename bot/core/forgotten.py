"""Whether a contact was erased by `scrm customer forget` (bot/contacts/forget.py) and has no new record since:
the brand's own pulls (contact sync, CSV imports, moment polls) leave such a contact forgotten."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.privacy import forgotten_key
from bot.models import Customer


def is_forgotten(session: Session, external_userid: str) -> bool:
    found = session.scalars(select(Customer.external_userid).where(
        Customer.external_userid.in_({external_userid, forgotten_key(external_userid)}))).all()
    return bool(found) and external_userid not in found
