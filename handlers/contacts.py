"""change_external_contact: keep customers, staff and follows in step with WeCom; tag new
customers by channel, welcome them within WeCom's 20-second window, flow staff tag edits back
here, and alert the owner when a customer leaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from wechatpy.exceptions import WeChatClientException

from bot.campaigns.group_welcome import tier_group
from bot.contacts.channels import channel_rules
from bot.contacts.customers import apply_wecom_tag_set, from_epoch, joined_no_later_than, upsert_customer, upsert_follow
from bot.contacts.forget import scrub_callback
from bot.contacts.interactions import add_interaction
from bot.contacts.transfer import awaits_takeover
from bot.core.forgotten import is_forgotten
from bot.core.privacy import is_forgotten_key, masked
from bot.inbox.dispatcher import HandlerContext, on
from bot.models import Customer, Staff, Tag, utcnow
from bot.outbox import enqueue
from bot.outbox.messages import customer_vars, tier_keys
from bot.tagging.rules import TagRef
from bot.tagging.sync import push_pending, tag_from_wecom
from bot.tagging.system import apply_rules, canonical_ref, ensure_tag, resolve, tag_customer
from segments.policy import STAGE_PATHS

EVENT = "change_external_contact"
NOT_EXTERNAL_CONTACT = 84061
WELCOME_WINDOW = timedelta(seconds=20)
CORP_TAG = 1  # follow_user.tags[].type: 1 corp, 2 personal, 3 strategy


@on("event", EVENT, "add_external_contact")
@on("event", EVENT, "add_half_external_contact")
def customer_added(event: Any, ctx: HandlerContext) -> None:
    """A customer added a member: fetch the contact, upsert customer + follow, tag by channel,
    record the add, and send the welcome while the WelcomeCode is valid."""
    external_userid, userid = _ids(ctx)
    if _left_forgotten(ctx, external_userid, new_relationship=True):
        return
    try:
        contact = _fetch_contact(ctx, external_userid)
    except (WeChatClientException, OSError):
        _welcome_before_the_retry(ctx, external_userid, userid)
        raise
    # A new add is a new relationship (a forgotten contact who came back); one in flight when the contact was
    # forgotten is not kept: the forget marked its event dead, and the processor's commit checks that.
    customer = upsert_customer(ctx.session, external_userid, contact.get("external_contact", {}),
                               new_relationship=True)
    staff = upsert_staff(ctx.session, userid, ctx)
    info = _follow_info(contact, userid)
    follow = upsert_follow(ctx.session, customer, staff)
    follow.state = ctx.fields.get("State") or info.get("state") or follow.state
    follow.remark = info.get("remark", follow.remark) or ""
    follow.description = info.get("description", follow.description) or ""
    follow.add_way = info.get("add_way", follow.add_way)
    added_at = _event_time(ctx) if not info.get("createtime") else _from_epoch(info["createtime"])
    # Events may be handled out of order (an add goes before older events for its welcome code's sake): a
    # removal that happened after this add stays.
    if follow.ended_at is None or _aware(follow.ended_at) <= added_at:
        follow.ended_at, follow.ended_reason = None, None
    follow.added_at = added_at if follow.added_at is None or _aware(follow.added_at) <= added_at else follow.added_at
    joined_no_later_than(customer, follow.added_at)
    customer.owner_userid = customer.owner_userid or userid
    channel = channel_rules(ctx.session, ctx.settings, follow.state)
    if customer.stage is None:
        customer.stage = channel.get("stage") or STAGE_PATHS[ctx.settings.tiers.stage_path][0]
    reconcile_wecom_tags(ctx.session, ctx.tag_rules, customer, contact, actor=userid)
    for text in channel.get("tags", []):
        tag_customer(ctx.session, customer.id, resolve(ctx.session, ctx.tag_rules, text), source="rule",
                     rule=f"channel:{follow.state}", push=ctx.settings.tags.push_to_wecom)
    if follow.state:
        apply_rules(ctx.session, ctx.tag_rules, customer.id, "channel", state=follow.state,
                    push=ctx.settings.tags.push_to_wecom)
    # A hand-over's takeover is not the customer reaching out: no activity, no new-customer welcome.
    # Neither add touches last_interaction_at: a customer who has only added a member has not yet
    # exchanged a word (seed 003's 陌生用户, not 潜在); the join time keeps a new customer active.
    takeover = awaits_takeover(ctx.session, external_userid, userid)
    record_interaction(ctx, customer, "taken_over" if takeover else "added",
                       f"add:{userid}:{external_userid}:{ctx.fields.get('CreateTime')}",
                       userid, {"state": follow.state, "change_type": ctx.fields.get("ChangeType")}, touch=False)
    if not takeover:
        _welcome(ctx, customer, staff, follow.state or "", channel.get("welcome") or "default")
    push_customer_tags(ctx, customer)


@on("event", EVENT, "edit_external_contact")
def customer_edited(event: Any, ctx: HandlerContext) -> None:
    """A member edited the customer's remark, description or tags: re-fetch and reconcile."""
    external_userid, userid = _ids(ctx)
    if _left_forgotten(ctx, external_userid):
        return
    contact = _fetch_contact(ctx, external_userid)
    customer = upsert_customer(ctx.session, external_userid, contact.get("external_contact", {}))
    follow = upsert_follow(ctx.session, customer, upsert_staff(ctx.session, userid, ctx))
    info = _follow_info(contact, userid)
    follow.remark = info.get("remark", follow.remark) or ""
    follow.description = info.get("description", follow.description) or ""
    if contact:
        reconcile_wecom_tags(ctx.session, ctx.tag_rules, customer, contact, actor=userid)


@on("event", EVENT, "del_external_contact")
@on("event", EVENT, "del_follow_user")
def follow_ended(event: Any, ctx: HandlerContext) -> None:
    """Either side removed the other: end the follow, keep the history, and when the customer
    did it, record the churn signal and tell the owner (流失提醒)."""
    external_userid, userid = _ids(ctx)
    if _left_forgotten(ctx, external_userid):
        return
    customer = upsert_customer(ctx.session, external_userid, {})
    follow = upsert_follow(ctx.session, customer, upsert_staff(ctx.session, userid, ctx))
    change_type = ctx.fields.get("ChangeType")
    by_customer = change_type == "del_follow_user"
    reason = "customer_deleted_staff" if by_customer else "staff_deleted_customer"
    if ctx.fields.get("Source") == "DELETE_BY_TRANSFER":
        reason = "transferred"
    ended_at = _event_time(ctx)
    if follow.added_at is not None and _aware(follow.added_at) > ended_at:
        # Handled after a later add of the same pair (adds go first for their welcome codes): the
        # removal is history, the follow stays live, and the owner is not told of a loss that was undone.
        record_interaction(ctx, customer, "churn_signal" if by_customer else "follow_ended_before_readd",
                           f"{'churn' if by_customer else 'ended'}:{userid}:{external_userid}:"
                           f"{ctx.fields.get('CreateTime')}", userid, {"reason": reason, "re_added": True}, touch=False)
        return
    follow.ended_at, follow.ended_reason = ended_at, reason
    if by_customer:
        ref = f"churn:{userid}:{external_userid}:{ctx.fields.get('CreateTime')}"
        record_interaction(ctx, customer, "churn_signal", ref, userid, {"reason": reason}, touch=False)
        if ctx.settings.contacts.churn_alert:
            _churn_alert(ctx, customer, userid, ref)


@on("event", EVENT, "transfer_fail")
def transfer_failed(event: Any, ctx: HandlerContext) -> None:
    """在职继承 failed (customer refused, or the new member is full): keep it on the customer's record."""
    external_userid, userid = _ids(ctx)
    if _left_forgotten(ctx, external_userid):
        return
    customer = upsert_customer(ctx.session, external_userid, {})
    reason = str(ctx.fields.get("FailReason") or "unknown")
    record_interaction(ctx, customer, "transfer_fail", f"transfer_fail:{userid}:{external_userid}:"
                       f"{ctx.fields.get('CreateTime')}", userid, {"fail_reason": reason}, touch=False)
    ctx.log.warning("transfer of customer %s to %s failed: %s", customer.id, masked(userid), reason)


def _left_forgotten(ctx: HandlerContext, external_userid: str, new_relationship: bool = False) -> bool:
    """A contact erased on request stays erased when a member edits or deletes them (no new record from
    the brand's side); only the customer adding a member again starts a new one (customer_added, a
    ``new_relationship``: there only a callback that the forget rewrote is left alone)."""
    # A stored callback that `scrm customer forget` rewrote names the anonymous key (WeCom's repeat of a
    # handled edit runs the stored text again, which keeps the erasure; an operator retries an add the
    # forget marked dead): forgotten too. WeCom sends no such id, so it is never a new relationship.
    if not is_forgotten_key(external_userid) and (new_relationship or not is_forgotten(ctx.session, external_userid)):
        return False
    ctx.log.info("event about a forgotten customer ignored (scrm customer forget)")
    scrub_callback(ctx.session, ctx.inbox_event_id, external_userid)
    return True


@on("event", EVENT, "msg_audit_approved")
def archive_approved(event: Any, ctx: HandlerContext) -> None:
    """The customer agreed to 会话存档: where archiving is on, this event (not the add) carries the
    WelcomeCode, valid for 20 s like the add's."""
    external_userid, userid = _ids(ctx)
    if _left_forgotten(ctx, external_userid):
        return
    customer = upsert_customer(ctx.session, external_userid, {})
    staff = upsert_staff(ctx.session, userid, ctx)
    follow = upsert_follow(ctx.session, customer, staff)
    channel = channel_rules(ctx.session, ctx.settings, follow.state)
    _welcome(ctx, customer, staff, follow.state or "", channel.get("welcome") or "default")


# ------------------------------------------------------------------ welcome and alerts


def _welcome_before_the_retry(ctx: HandlerContext, external_userid: str, userid: str) -> None:
    """externalcontact/get failed, so the event fails and is retried in full later; the welcome code
    lasts 20 s, so the welcome goes out now, from the event alone (the retry finds it: same key). Its
    checkpoint keeps nothing when a forget marked the event dead meanwhile (ClaimLost: a forget during a
    timed-out call would otherwise get a new record under the contact's id, and the welcome)."""
    if not ctx.fields.get("WelcomeCode") or awaits_takeover(ctx.session, external_userid, userid):
        return
    customer = upsert_customer(ctx.session, external_userid, {}, new_relationship=True)
    staff = upsert_staff(ctx.session, userid, ctx)
    state = str(ctx.fields.get("State") or "")
    channel = channel_rules(ctx.session, ctx.settings, state or None)
    _welcome(ctx, customer, staff, state, channel.get("welcome") or "default")
    ctx.log.warning("contact %s not readable from WeCom; welcome sent from the event, the rest retried",
                    masked(external_userid))
    ctx.checkpoint()


def _welcome(ctx: HandlerContext, customer: Customer, staff: Staff, state: str, name: str) -> None:
    code = str(ctx.fields.get("WelcomeCode") or "")
    key = f"welcome:{customer.external_userid}:{staff.userid}:{ctx.fields.get('CreateTime')}"
    if ctx.fields.get("ChangeType") == "msg_audit_approved":  # may share its second with the add
        key += ":archive"
    base = {"channel": "welcome", "dedupe_key": key, "recipient": customer.external_userid,
            "trigger_kind": "welcome", "trigger_ref": state or "default", "customer_id": customer.id,
            "sender_userid": staff.userid}
    if not ctx.settings.contacts.send_welcome:
        enqueue(ctx.session, **base, content={}, status="skipped", reason="contacts.send_welcome is off")
        return
    if not code:
        enqueue(ctx.session, **base, content={}, status="skipped",
                reason="no WelcomeCode in the event: a welcome is set in the admin console, the half-add event "
                       "already used it, or the customer is already chatting")
        return
    rendered = ctx.templates.render("welcome", name, tier_keys(customer), customer=customer_vars(customer),
                                    staff={"name": staff.name or staff.userid, "userid": staff.userid},
                                    brand=ctx.settings.app.brand_name, channel=state,
                                    tier_group=tier_group(ctx.session, tier_keys(customer)))
    started = ctx.received_at or utcnow()
    row = enqueue(ctx.session, **base, content={"text": rendered.text, "welcome_code": code,
                                                "template": rendered.template},
                  expires_at=started + WELCOME_WINDOW)
    ctx.send_after_commit(row.id if row else None)


def _churn_alert(ctx: HandlerContext, customer: Customer, userid: str, ref: str) -> None:
    owner = customer.owner_userid or userid
    rendered = ctx.templates.render("staff", "churn_alert", tier_keys(customer), customer=customer_vars(customer),
                                    staff={"name": owner, "userid": owner},
                                    how=f"删除了成员 {userid}")
    row = enqueue(ctx.session, channel="app_message", dedupe_key=ref, recipient=owner, trigger_kind="churn_alert",
                  trigger_ref=customer.external_userid, customer_id=customer.id,
                  content={"text": rendered.text, "template": rendered.template})
    ctx.send_after_commit(row.id if row else None)


def push_customer_tags(ctx: HandlerContext, customer: Customer) -> None:
    """Mirror this customer's pending tag changes to WeCom once the event is committed; a failure is
    kept on the tag row (``scrm sync tags`` retries) and never fails the event."""
    if ctx.clients is None or not ctx.settings.tags.push_to_wecom:
        return
    customer_id, contact_client, log = customer.id, ctx.clients.contact, ctx.log

    def push(session: Session) -> None:
        result = push_pending(session, contact_client, customer_ids=[customer_id])
        if result.errors:
            log.warning("tags of customer %s not yet in WeCom: %s", customer_id, result.errors[0])

    if ctx.db is None:  # a context without a database of its own: push inside the event
        ctx.session.flush()
        push(ctx.session)
        return

    def push_committed() -> None:
        with ctx.db.begin() as session:
            push(session)

    # After the commit and the event's sends: three WeCom calls (tag list, add, mark) no longer stand
    # between a new customer and the welcome, and a failure of theirs no longer fails the event.
    ctx.after_commit(push_committed)


# ------------------------------------------------------------------ tags from WeCom


def reconcile_wecom_tags(session: Session, rules: Any, customer: Customer, contact: dict[str, Any],
                         actor: str | None) -> tuple[int, int]:
    """Make the customer's WeCom-synced tags equal the corp tags on their live follows in WeCom
    (externalcontact/get): tags a member added there are added here, tags a member removed there
    are removed here. Tags waiting to be pushed are left alone. Synonyms fold to their canonical tag."""
    wanted: dict[int, str | None] = {}
    for info in contact.get("follow_user", []) or []:
        for item in info.get("tags", []) or []:
            if int(item.get("type") or CORP_TAG) != CORP_TAG or not item.get("tag_id"):
                continue
            tag = _folded(session, rules, tag_from_wecom(session, item["tag_id"], item.get("group_name") or "未分组",
                                                         item.get("tag_name") or item["tag_id"]))
            wanted.setdefault(tag.id, info.get("userid"))
    return apply_wecom_tag_set(session, customer, wanted, actor)


def _folded(session: Session, rules: Any, tag: Tag) -> Tag:
    ref = TagRef(tag.group.name, tag.name)
    target = canonical_ref(session, rules, ref)
    return tag if target == ref else ensure_tag(session, target)


# ------------------------------------------------------------------ helpers shared by handlers


def upsert_staff(session: Session, userid: str, ctx: HandlerContext | None = None) -> Staff:
    staff = session.scalar(select(Staff).where(Staff.userid == userid))
    if staff is None:
        staff = Staff(userid=userid, name=_member_name(ctx, userid) if ctx else userid)
        session.add(staff)
        session.flush()
    return staff


def _member_name(ctx: HandlerContext, userid: str) -> str:
    """The member's display name from the address book (user/get), or the userid if unreadable."""
    if ctx.clients is None:
        return userid
    try:
        return str(ctx.clients.app.user.get(userid).get("name") or userid)
    except (WeChatClientException, OSError, ValueError) as exc:
        ctx.log.info("name of member %s not readable (%s); using the userid", masked(userid), exc)
        return userid


def record_interaction(ctx: HandlerContext, customer: Customer, kind: str, source_ref: str,
                       staff_userid: str | None, detail: dict[str, Any], occurred: datetime | None = None,
                       touch: bool = True) -> bool:
    return add_interaction(ctx.session, customer, kind, source_ref, occurred or _event_time(ctx), staff_userid,
                           detail, touch)


def _ids(ctx: HandlerContext) -> tuple[str, str]:
    external_userid = str(ctx.fields.get("ExternalUserID") or "")
    userid = str(ctx.fields.get("UserID") or "")
    if not external_userid or not userid:
        raise ValueError("change_external_contact event without ExternalUserID or UserID")
    return external_userid, userid


def _fetch_contact(ctx: HandlerContext, external_userid: str) -> dict[str, Any]:
    """The contact as WeCom has it now, or {} if the relation is already gone (84061): events are
    processed after the fact, and a later delete may have overtaken this one."""
    if ctx.clients is None:
        return {}
    try:
        return ctx.clients.contact.external_contact.get(external_userid)
    except WeChatClientException as exc:
        if exc.errcode == NOT_EXTERNAL_CONTACT:
            ctx.log.info("contact %s no longer exists in WeCom; using the event alone", masked(external_userid))
            return {}
        raise


def _follow_info(contact: dict[str, Any], userid: str) -> dict[str, Any]:
    for item in contact.get("follow_user", []) or []:
        if item.get("userid") == userid:
            return item
    return {}


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _event_time(ctx: HandlerContext) -> datetime:
    created = ctx.fields.get("CreateTime")
    return from_epoch(created) if created else utcnow()

_from_epoch = from_epoch
