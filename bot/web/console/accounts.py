"""Operator accounts, sign-in throttling and the audit log — plain functions over a session.

Passwords are hashed with werkzeug.security (scrypt, salted); the throttle counts failed sign-ins per
name and address over a window, so guessing one account from one place stops after a few tries
while the operator can still sign in from elsewhere."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from bot.models import OPERATOR_ROLES, AuditEntry, LoginFailure, Operator

MAX_FAILURES = 5
# Across all addresses: one account guessed from many addresses (an IPv6 /64 is billions) stops too; an
# admin can lift it at once with `scrm user unlock NAME`.
MAX_NAME_FAILURES = 20
FAILURE_WINDOW = timedelta(minutes=15)
SESSION_HOURS = 12  # a console session ends this long after its sign-in, however active
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
NAME_LENGTH = (1, 64)
# Checked when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not-a-password-" + "x" * 16)


class AccountError(ValueError):
    """An account cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class SignIn:
    operator: Operator | None
    throttled: bool = False


def check_new_password(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password needs {MIN_PASSWORD_LENGTH}–{MAX_PASSWORD_LENGTH} characters")


NAME_RULE = f"{NAME_LENGTH[0]}–{NAME_LENGTH[1]} characters without spaces, control or invisible characters"


def check_operator_name(name: str) -> None:
    """The rule for a new operator's name, the same for `scrm user add` and the console's 账号 page: 1–64
    characters (the column); Chinese and other letters, digits, punctuation and symbols; no whitespace
    anywhere (张 三 and 张三 look alike at sign-in, and a shell splits it into two arguments of `scrm user
    set`) and no control, format or unassigned character (a name that reads like another, or breaks a log
    line or the audit view); nor '.', '..' or a leading '/', which the account's address on the 账号 page
    (/console/users/NAME/change) would lose. Taken as given: a space at either end is refused, not trimmed
    into a name other than the one typed. Only names being created are checked: existing ones still sign in
    and are managed."""
    if not name:
        raise AccountError(f"the name is empty; it needs {NAME_RULE}")
    if not NAME_LENGTH[0] <= len(name) <= NAME_LENGTH[1]:
        raise AccountError(f"the name has {len(name)} characters; it needs {NAME_RULE}")
    for char in name:
        if char.isspace():
            raise AccountError(f"the name {name!r} contains whitespace; it needs {NAME_RULE}")
        if not char.isprintable():
            raise AccountError(f"the name {name!r} contains the invisible character U+{ord(char):04X}; "
                               f"it needs {NAME_RULE}")
    if name in (".", "..") or name.startswith("/"):  # the account's console address would lose it
        raise AccountError("the name cannot be '.' or '..' or begin with '/'")


def add_operator(session: Session, name: str, role: str, password: str, actor: str, ip: str | None = None
                 ) -> Operator:
    check_operator_name(name)
    if role not in OPERATOR_ROLES:
        raise AccountError(f"role must be one of {list(OPERATOR_ROLES)}")
    check_new_password(password)
    if session.scalar(select(Operator.id).where(Operator.name == name)) is not None:
        raise AccountError(f"an operator named {name!r} exists already")
    operator = Operator(name=name, role=role, password_hash=generate_password_hash(password), active=True)
    session.add(operator)
    session.flush()
    record(session, actor, "user.add", f"operator:{name}", None, {"name": name, "role": role}, ip)
    return operator


def change_operator(session: Session, name: str, actor: str, *, actor_id: int | None = None, role: str | None = None,
                    active: bool | None = None, password: str | None = None, ip: str | None = None,
                    at: datetime | None = None) -> Operator:
    """Change an operator's role, state or password (the console's 账号 page as operator ``actor_id``,
    `scrm user set`). Nobody changes their own role or state (ask another admin), and the last active
    admin stays one, so the console always has someone who can manage it. Disabling or a new password
    ends that operator's sessions, and enabling them again does not bring those back."""
    operator = session.scalar(select(Operator).where(Operator.name == name.strip()))
    if operator is None:
        raise AccountError(f"no operator named {name.strip()!r}")
    if role is not None and role not in OPERATOR_ROLES:
        raise AccountError(f"role must be one of {list(OPERATOR_ROLES)}")
    new_role = operator.role if role is None else role
    new_active = operator.active if active is None else active
    leaves_admins = operator.role == "admin" and operator.active and (new_role != "admin" or not new_active)
    if (new_role, new_active) != (operator.role, operator.active):
        if actor_id is not None and operator.id == actor_id:
            raise AccountError("you cannot change your own role or state; ask another admin")
        if leaves_admins and _active_admins(session, lock=True) <= 1:
            raise AccountError(_LAST_ADMIN.format(operator.name))
    before = {"role": operator.role, "active": operator.active}
    if operator.active and not new_active:
        operator.session_epoch += 1
    operator.role, operator.active = new_role, new_active
    after: dict[str, Any] = {"role": operator.role, "active": operator.active}
    if password is not None:
        check_new_password(password)
        operator.password_hash = generate_password_hash(password)
        after["password"] = "changed"  # never the password or its hash
    if leaves_admins:
        session.flush()  # on SQLite this takes the write lock: a concurrent change waits, then fails
        if _active_admins(session) == 0:
            raise AccountError(_LAST_ADMIN.format(operator.name))
    if after != before:
        record(session, actor, "user.change", f"operator:{operator.name}", before, after, ip, at=at)
    return operator


_LAST_ADMIN = "{!r} is the last active admin; make another admin first"


def _active_admins(session: Session, lock: bool = False) -> int:
    """Active admins; with ``lock`` their rows are locked (PostgreSQL) so that two admins demoting each
    other at once are serialised: the second then counts one admin and is refused."""
    query = select(Operator.id).where(Operator.role == "admin", Operator.active.is_(True))
    return len(session.scalars(query.with_for_update() if lock else query).all())


def begin_attempt(session: Session, name: str, ip: str, now: datetime) -> int:
    """Record a sign-in attempt as a failure before its password is checked, committed on its own (the
    caller's transaction), so that attempts made at once count each other: checking first and recording
    after let 100 parallel tries check 18 passwords past a limit of 5. The row's id, for :func:`sign_in`."""
    attempt = LoginFailure(name=_sign_in_name(name), ip=ip[:64], at=now)
    session.add(attempt)
    session.flush()
    return attempt.id


def sign_in(session: Session, name: str, password: str, ip: str, now: datetime, attempt: int) -> SignIn:
    """The operator if name and password match and neither the pair (name, ip) nor the name from every
    address is throttled, counting the ``attempt`` row from :func:`begin_attempt`. A failure keeps that row;
    a success clears the pair's failures; a throttled attempt is not counted (the window does not grow)."""
    name, ip = _sign_in_name(name), ip[:64]
    recent = LoginFailure.name == name, LoginFailure.at > now - FAILURE_WINDOW
    from_here = session.scalar(select(func.count()).select_from(LoginFailure).where(*recent, LoginFailure.ip == ip))
    everywhere = session.scalar(select(func.count()).select_from(LoginFailure).where(*recent))
    if (from_here or 0) > MAX_FAILURES or (everywhere or 0) > MAX_NAME_FAILURES:
        session.execute(delete(LoginFailure).where(LoginFailure.id == attempt))
        return SignIn(None, throttled=True)
    operator = session.scalar(select(Operator).where(Operator.name == name))
    stored = operator.password_hash if operator is not None else _DUMMY_HASH
    matches = check_password_hash(stored, password[:MAX_PASSWORD_LENGTH])
    if operator is None or not operator.active or not matches:
        return SignIn(None)
    session.execute(delete(LoginFailure).where(LoginFailure.name == name, LoginFailure.ip == ip))
    operator.last_login_at = now
    return SignIn(operator)


def unlock(session: Session, name: str, actor: str) -> int:
    """Forget a name's failed sign-ins from every address (`scrm user unlock`); how many there were."""
    name = _sign_in_name(name)
    cleared = session.execute(delete(LoginFailure).where(LoginFailure.name == name)).rowcount or 0
    record(session, actor, "user.unlock", f"operator:{name}", None, {"failures_cleared": cleared})
    return cleared


def sign_out(session: Session, operator_id: int) -> None:
    """Ends every console session of the operator (their session epoch): the session is a signed cookie,
    and clearing the browser's copy left a copied cookie working after 退出."""
    operator = session.get(Operator, operator_id)
    if operator is not None:
        operator.session_epoch = (operator.session_epoch or 0) + 1


def _sign_in_name(name: str) -> str:
    return name.strip()[: NAME_LENGTH[1]]


def password_mark(operator: Operator) -> str:
    """Kept in the session cookie; changes when the password does or the operator is disabled (their
    session epoch), and tells its reader nothing about the hash."""
    epoch = operator.session_epoch or 0
    text = operator.password_hash if not epoch else f"{operator.password_hash}#{epoch}"  # sessions before 0020 stay
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def same_token(given: str | None, expected: str | None) -> bool:
    return bool(given and expected) and hmac.compare_digest(str(given), str(expected))


def record(session: Session, actor: str, action: str, target: str, before: dict[str, Any] | None,
           after: dict[str, Any] | None, ip: str | None = None, at: datetime | None = None) -> AuditEntry:
    entry = AuditEntry(actor=actor[:64], action=action[:64], target=target[:128], before=before, after=after,
                       ip=(ip or "")[:64] or None)
    if at is not None:
        entry.at = at
    session.add(entry)
    return entry
