"""渠道活码: channels as first-class rows. Each is a WeCom 「联系我」 contact way (config_id, QR
code) plus what to do with the customers it brings (tags, starting stage, welcome template), and
what it cost. The config's ``[contacts] channels`` map still works: its entries seed rows, and a
state only the config knows is still applied on add."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Date, and_, cast, distinct, func, literal_column, select
from sqlalchemy.orm import Session
from wechatpy.exceptions import WeChatClientException

from bot.core.config import Settings
from bot.core.times import local_time
from bot.models import Channel, CustomerAggregate, CustomerTier, Follow
from bot.wecom.client import BUSY_ERRORS

STATE_MAX = 30
STATE_FORBIDDEN = frozenset("/\\?#%")  # the key goes into the console's URLs and WeCom's
MEMBER_MAX = 64
NAME_MAX = 64
MEMBERS_MAX = 100
SCENE_QR = 2
INVALID_CONFIG_ID = 41044
NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
REMOVED_BY = ("customer_deleted_staff", "staff_deleted_customer")  # a transfer is not a deletion


class ChannelError(ValueError):
    """Bad input for a channel, or WeCom refused the change (the message says which)."""


@dataclass
class ChannelSpec:
    state: str
    name: str = ""
    members: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    stage: str | None = None
    welcome: str = "default"
    skip_verify: bool = True
    expires_at: datetime | None = None
    cost_fen: int | None = None


# ---------------------------------------------------------------------------- lookup (the add handler)


def channel_rules(session: Session, settings: Settings, state: str | None) -> dict[str, Any]:
    """Tags, stage and welcome for an add through ``state``: the channel row, else the config entry."""
    if not state:
        return {}
    row = session.scalar(select(Channel).where(Channel.state == state))
    if row is not None:
        return row.rules()
    return dict(settings.contacts.channels.get(state, {}))


def seed_from_config(session: Session, settings: Settings) -> int:
    """A row for each ``[contacts] channels`` entry not yet in the table (no contact way yet:
    ``scrm channels create --state KEY`` gives it one). Existing rows are left as they are."""
    known = set(session.scalars(select(Channel.state)))
    added = 0
    for state, entry in settings.contacts.channels.items():
        if state in known or len(state) > STATE_MAX:
            continue
        session.add(Channel(state=state, name=state, members=[], tags=list(entry.get("tags", [])),
                            stage=entry.get("stage"), welcome=entry.get("welcome") or "default", source="config"))
        added += 1
    session.flush()
    return added


# ---------------------------------------------------------------------------- create / update / delete


def cost_fen(text: str) -> int:
    """What a channel cost, typed in 元 ("1500", "1,500.50"), as fen: ≥ 0 with at most two decimals."""
    try:
        if not text.isascii():  # Decimal reads other scripts' digits too: "١٢٣" would be 123 元 unseen
            raise InvalidOperation
        value = Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        raise ChannelError(f"{text[:40]!r} is not an amount in 元 (e.g. 1500 or 1500.50)") from None
    if not value.is_finite() or value < 0 or value > Decimal(10) ** 12 or value != value.quantize(Decimal("0.01")):
        raise ChannelError(f"{text[:40]!r}: an amount in 元 ≥ 0 with at most two decimals")
    return int(value * 100)


def check_spec(spec: ChannelSpec, stages: Iterable[str], now: datetime, need_members: bool = True) -> None:
    if not spec.state or len(spec.state) > STATE_MAX:
        raise ChannelError(f"the channel key (state) must be 1–{STATE_MAX} characters, got {len(spec.state)}")
    if any(ch.isspace() for ch in spec.state):
        raise ChannelError("the channel key (state) must not contain spaces")
    if not spec.state.isprintable() or any(ch in STATE_FORBIDDEN for ch in spec.state) or spec.state in {".", ".."}:
        raise ChannelError("the channel key (state) takes letters, digits and punctuation other than / \\ ? # %, "
                           "and no control characters")
    for what, values in (("name", [spec.name]), ("member", spec.members), ("tag", spec.tags)):
        if any(not v.isprintable() for v in values):
            raise ChannelError(f"a {what} must not contain control characters")
    if any(len(m) > MEMBER_MAX or any(ch.isspace() for ch in m) for m in spec.members):
        raise ChannelError(f"a member is a userid of at most {MEMBER_MAX} characters without spaces")
    if len(spec.name) > NAME_MAX:
        raise ChannelError(f"the channel name is at most {NAME_MAX} characters")
    if not (1 if need_members else 0) <= len(spec.members) <= MEMBERS_MAX:
        raise ChannelError(f"a channel needs 1 to {MEMBERS_MAX} members who receive the adds")
    if len(set(spec.members)) != len(spec.members):
        raise ChannelError("a member is listed twice")
    if spec.stage is not None and spec.stage not in set(stages):
        raise ChannelError(f"unknown stage {spec.stage!r}; one of {', '.join(stages)}")
    if not NAME_RE.match(spec.welcome or ""):
        raise ChannelError("the welcome template name takes letters, digits and _ only")
    if spec.expires_at is not None and spec.expires_at <= now:
        raise ChannelError(f"the expiry {local_time(spec.expires_at, spec.expires_at.tzinfo or UTC)} is already past")
    if spec.cost_fen is not None and spec.cost_fen < 0:
        raise ChannelError("the cost cannot be negative")
    for tag in spec.tags:
        if not tag.strip() or len(tag) > 100:
            raise ChannelError(f"bad tag name {tag!r}")


def create_channel(session: Session, api: Any, spec: ChannelSpec, stages: Iterable[str], now: datetime) -> Channel:
    """Insert the row, then add_contact_way; WeCom refusing rolls the caller's transaction back.
    A config-only channel with the same key is given its contact way."""
    check_spec(spec, stages, now)
    row = session.scalar(select(Channel).where(Channel.state == spec.state))
    if row is not None and (row.config_id or row.status == "active" and row.source != "config"):
        raise ChannelError(f"channel {spec.state!r} exists already (scrm channels update changes it)")
    if row is None:
        row = Channel(state=spec.state, source="cli")
        session.add(row)
    _apply_spec(row, spec)
    row.status = "active"
    session.flush()
    answer = _wecom(lambda: api.add_contact_way(type=1 if len(spec.members) == 1 else 2, scene=SCENE_QR,
                                                user=spec.members, state=spec.state, remark=_remark(spec),
                                                skip_verify=spec.skip_verify))
    row.config_id, row.qr_code = str(answer["config_id"]), answer.get("qr_code")
    session.flush()
    return row


def update_channel(session: Session, api: Any, state: str, changes: dict[str, Any], stages: Iterable[str],
                   now: datetime) -> Channel:
    """Change local rules freely; members, name (remark) and skip-verify are written to WeCom as
    the full set (update_contact_way overwrites user and remark)."""
    row = _get(session, state)
    unknown = set(changes) - set(ChannelSpec.__dataclass_fields__) - {"state"}
    if unknown or "state" in changes:
        raise ChannelError(f"cannot change {sorted(unknown | ({'state'} & set(changes)))} of a channel")
    spec = ChannelSpec(state=row.state, name=row.name, members=list(row.members or []), tags=list(row.tags or []),
                       stage=row.stage, welcome=row.welcome, skip_verify=row.skip_verify,
                       expires_at=None if "expires_at" not in changes else changes["expires_at"],
                       cost_fen=row.cost_fen)
    for key, value in changes.items():
        setattr(spec, key, value)
    check_spec(spec, stages, now, need_members=bool(row.config_id))  # a config-only channel has no code yet
    if row.config_id and "members" in changes and (len(row.members or []) == 1) != (len(spec.members) == 1):
        raise ChannelError("WeCom cannot turn a single-member code into a multi-member one or back: "
                           "delete the channel and create it again with the same key")
    wecom_fields = {"members", "name", "skip_verify"} & set(changes)
    _apply_spec(row, spec, keep_expiry="expires_at" not in changes)
    session.flush()
    if row.config_id and wecom_fields:
        current = _wecom(lambda: api.get_contact_way(row.config_id)).get("contact_way") or {}
        _wecom(lambda: api.update_contact_way(row.config_id, remark=_remark(spec), skip_verify=spec.skip_verify,
                                              state=row.state, user=spec.members,
                                              party=current.get("party") or None))
    return row


def delete_channel(session: Session, api: Any, state: str) -> Channel:
    """del_contact_way, then mark the row deleted: its customers keep their history and report."""
    row = _get(session, state)
    if row.config_id:
        try:
            _wecom(lambda: api.del_contact_way(row.config_id))
        except ChannelError:
            if not _already_gone(api, row.config_id):
                raise
    row.status, row.config_id, row.qr_code = "deleted", None, None
    session.flush()
    return row


def _already_gone(api: Any, config_id: str) -> bool:
    """Whether WeCom no longer has the code (its own 41044 for an unknown config_id)."""
    try:
        api.get_contact_way(config_id)
    except WeChatClientException as exc:
        return exc.errcode == INVALID_CONFIG_ID
    except OSError:
        return False
    return False


def _get(session: Session, state: str) -> Channel:
    row = session.scalar(select(Channel).where(Channel.state == state))
    if row is None or row.status == "deleted":
        raise ChannelError(f"no channel {state!r} (scrm channels list shows them)")
    return row


def _apply_spec(row: Channel, spec: ChannelSpec, keep_expiry: bool = False) -> None:
    row.name = spec.name or row.name or spec.state
    row.members, row.tags, row.stage, row.welcome = list(spec.members), list(spec.tags), spec.stage, spec.welcome
    row.skip_verify, row.cost_fen = spec.skip_verify, spec.cost_fen
    if not keep_expiry:
        row.expires_at = spec.expires_at


def _remark(spec: ChannelSpec) -> str:
    return (spec.name or spec.state)[:30]


def _wecom(call: Any) -> dict[str, Any]:
    try:
        return call()
    except OSError as exc:  # requests' timeouts and connection errors: WeCom may have done it
        raise ChannelError(f"no answer from WeCom ({type(exc).__name__}); it may have done it all the same: run "
                           "`scrm channels sync` before trying again") from None
    except WeChatClientException as exc:
        if exc.errcode in BUSY_ERRORS:  # not retried blindly: WeCom may have made the code before answering
            raise ChannelError(f"WeCom answered busy ({exc.errcode}); it may have made the code all the same: run "
                               "`scrm channels sync` (it brings in a code it made) before trying again") from None
        raise ChannelError(f"WeCom refused: {exc.errcode} {exc.errmsg}") from None


# ---------------------------------------------------------------------------- sync with WeCom


@dataclass
class ChannelSync:
    listed: int = 0
    updated: int = 0
    imported: int = 0
    missing: int = 0
    expired_deleted: int = 0
    without_state: int = 0


# list_contact_way lists codes made from 2021-07-10 on, and without a start_time only the last 90 days'
# (WECOM-GROUPS.md §1.2): a sync asks from that day so older codes made elsewhere come in too.
LISTABLE_SINCE = 1625846400  # 2021-07-10 00:00 +08:00


def sync_channels(session: Session, api: Any, now: datetime, start_time: int | None = None) -> ChannelSync:
    """Reconcile with list_contact_way + get_contact_way: WeCom is the truth for members, skip-verify
    and the QR code; codes made elsewhere with a state become channels; ours WeCom no longer has are
    marked missing; expired ones are deleted in WeCom."""
    result = ChannelSync()
    rows = {r.config_id: r for r in session.scalars(select(Channel).where(Channel.config_id.is_not(None)))}
    since = LISTABLE_SINCE if start_time is None else start_time
    ids = list(dict.fromkeys([*api.gen_contact_way_ids(start_time=since), *rows]))
    result.listed = len(ids)
    for config_id in ids:
        try:
            way = api.get_contact_way(config_id).get("contact_way") or {}
        except WeChatClientException as exc:
            if exc.errcode != INVALID_CONFIG_ID:
                raise
            row = rows.get(config_id)
            if row is not None and row.status == "active":
                row.status = "missing"
                result.missing += 1
            continue
        _merge_way(session, rows.get(config_id), way, result)
    for row in session.scalars(select(Channel).where(Channel.status == "active", Channel.expires_at.is_not(None),
                                                     Channel.expires_at <= now)):
        delete_channel(session, api, row.state)
        result.expired_deleted += 1
    session.flush()
    return result


def _merge_way(session: Session, row: Channel | None, way: dict[str, Any], result: ChannelSync) -> None:
    state = str(way.get("state") or "")
    if row is None:
        if not state or len(state) > STATE_MAX:
            result.without_state += 1
            return
        row = session.scalar(select(Channel).where(Channel.state == state))
        if row is None:
            row = Channel(state=state, name=str(way.get("remark") or state), tags=[], welcome="default",
                          source="wecom")
            session.add(row)
            result.imported += 1
        else:
            result.updated += 1
        row.config_id = str(way["config_id"])
    else:
        result.updated += 1
    row.members = list(way.get("user") or [])
    row.skip_verify = bool(way.get("skip_verify", True))
    row.qr_code = way.get("qr_code") or row.qr_code
    row.status = "active"
    session.flush()


# ---------------------------------------------------------------------------- report


@dataclass
class ChannelReport:
    state: str
    name: str
    status: str
    cost_fen: int | None
    adds: int = 0
    customers: int = 0
    deletions: int = 0
    adds_per_day: dict[str, int] = field(default_factory=dict)
    value_tiers: dict[str, int] = field(default_factory=dict)
    rfm_segments: dict[str, int] = field(default_factory=dict)
    orders: int = 0
    revenue_fen: int = 0
    top_tier: str = "high"  # the first value-tier rule's name

    @property
    def high_customers(self) -> int:
        return self.value_tiers.get(self.top_tier, 0)

    @property
    def cost_per_high_fen(self) -> int | None:
        if self.cost_fen is None or not self.high_customers:
            return None
        return round(self.cost_fen / self.high_customers)

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items()}, "high_customers": self.high_customers,
                "cost_per_high_fen": self.cost_per_high_fen}


def channel_report(session: Session, settings: Settings, now: datetime, since: date | None = None,
                   until: date | None = None, states: list[str] | None = None) -> list[ChannelReport]:
    """Per channel, over the customers it brought (follows added through its state in the window):
    adds per local day (a hand-over's follow keeps the state but is no add), deletions (not transfers),
    value-tier and RFM mix, orders and revenue (paid orders; a refunded order counts in neither), and
    cost per high-tier customer. All of it SQL aggregates."""
    tz = settings.tz
    conditions = [Follow.state.is_not(None), Follow.state != ""]
    if states:
        conditions.append(Follow.state.in_(states))
    if since is not None:
        conditions.append(Follow.added_at >= datetime.combine(since, datetime.min.time(), tz).astimezone(UTC))
    if until is not None:
        end = datetime.combine(date.fromordinal(until.toordinal() + 1), datetime.min.time(), tz).astimezone(UTC)
        conditions.append(Follow.added_at < end)
    where = and_(*conditions)
    top = _top_tier(settings)
    reports = _report_rows(session, states, top)
    day = _local_day(session, tz, now)
    for state, day_value, adds in session.execute(select(Follow.state, day, func.count())
                                                  .where(where, Follow.is_an_add())
                                                  .group_by(Follow.state, day).order_by(day)):
        report = reports.setdefault(state, ChannelReport(state, state, "unregistered", None, top_tier=top))
        report.adds += adds
        report.adds_per_day[str(day_value)[:10]] = adds
    for state, customers, deletions in session.execute(
            select(Follow.state, func.count(distinct(Follow.customer_id)),
                   func.count().filter(Follow.ended_reason.in_(REMOVED_BY))).where(where).group_by(Follow.state)):
        reports[state].customers, reports[state].deletions = customers, deletions
    brought = select(Follow.state.label("state"), Follow.customer_id.label("customer_id")).where(where) \
        .distinct().subquery()
    # One pass over the customers each channel brought: tiers and money together, grouped by the
    # few (state, value tier, segment) combinations, then folded here.
    mix = select(brought.c.state, CustomerTier.value_tier, CustomerTier.rfm_segment, func.count(),
                 func.coalesce(func.sum(CustomerAggregate.order_count), 0),
                 func.coalesce(func.sum(CustomerAggregate.paid_amount_fen), 0)) \
        .outerjoin(CustomerTier, CustomerTier.customer_id == brought.c.customer_id) \
        .outerjoin(CustomerAggregate, CustomerAggregate.customer_id == brought.c.customer_id) \
        .group_by(brought.c.state, CustomerTier.value_tier, CustomerTier.rfm_segment)
    for state, value_tier, segment, count, orders, revenue in session.execute(mix):
        report = reports[state]
        if value_tier is not None:
            report.value_tiers[value_tier] = report.value_tiers.get(value_tier, 0) + count
        if segment is not None:
            report.rfm_segments[segment] = report.rfm_segments.get(segment, 0) + count
        report.orders += int(orders)
        report.revenue_fen += int(revenue)
    return sorted(reports.values(), key=lambda r: (-r.adds, r.state))


def _top_tier(settings: Settings) -> str:
    rules = [r for r in settings.tiers.value_rules if isinstance(r, dict) and r.get("name")]
    return str(rules[0]["name"]) if rules else "high"


def _report_rows(session: Session, states: list[str] | None, top: str) -> dict[str, ChannelReport]:
    query = select(Channel)
    if states:
        query = query.where(Channel.state.in_(states))
    return {c.state: ChannelReport(c.state, c.name or c.state, c.status, c.cost_fen, top_tier=top)
            for c in session.scalars(query)}


def _local_day(session: Session, tz: ZoneInfo, at: datetime) -> Any:
    """The local calendar day of ``follows.added_at`` (stored as naive UTC), computed in SQL."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.timezone(tz.key, func.timezone("UTC", Follow.added_at)), Date)
    # SQLite has no zone database: the zone's offset at ``at`` is applied (China has no DST).
    offset = int((at.astimezone(tz).utcoffset() or timedelta()).total_seconds())
    return func.date(Follow.added_at, literal_column(f"'{offset:+d} seconds'"))
