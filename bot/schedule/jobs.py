"""Scheduled jobs: plain module-level functions (APScheduler stores them by reference). Each
takes its settings, database and WeCom clients from the runtime the scheduler installed."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from bot.core.config import Settings
from bot.core.db import Database

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    clients: Any = None
    sender: Any = None
    reloader: Any = None  # bot.startup.RuleReloader: the rule lists operators edited in the console

    def rule_settings(self) -> Settings:
        return self.reloader.refresh() if self.reloader is not None else self.settings


_runtime: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("scheduled job ran before the scheduler installed its runtime")
    return _runtime


def nightly_retier() -> dict[str, Any]:
    """Re-tier as of today (local), then apply the order and tier auto-tags to the customers it changed."""
    from bot.tagging.rules import TagRules
    from bot.tagging.system import after_retier
    from segments.policy import TierPolicy
    from segments.retier import retier, tidy_after_commit

    rt = runtime()
    as_of = datetime.now(rt.settings.tz).date()
    rule_settings = rt.rule_settings()  # with the console's edits (auto-tag rules, channel stages)
    rules, push = TagRules.from_settings(rule_settings), rt.settings.tags.push_to_wecom
    with rt.db.begin() as session:
        result = retier(session, TierPolicy.of(rule_settings), as_of, rt.settings.tz,
                        after=after_retier(rules, push))
    tags = result.after
    tidy_after_commit(rt.db.engine, result)
    logger.info("nightly re-tier as of %s: %d customers, changes %s, auto-tags %s", as_of, result.customers,
                result.changes, tags)
    return {"customers": result.customers, "changes": result.changes, "tags": tags,
            "predictions": nightly_predictions(rt, as_of)}


def nightly_predictions(rt: Runtime, as_of: date) -> dict[str, Any]:
    """Refit predicted value and churn risk after the re-tier, in a transaction of its own: a refusal
    (too little data) is stored with its reason and leaves the tiers and the last predictions as they are."""
    from segments.predict import minimum_from_settings
    from segments.predict_runs import refit

    predictions = rt.settings.predictions
    with rt.db.begin() as session:
        outcome = refit(session, as_of, predictions.horizon_days, minimum_from_settings(predictions),
                        holdout_days=None, discount_rate=predictions.discount_rate)
    if outcome.refused:
        return {"run": outcome.run.id, "refused": outcome.refused}
    return {"run": outcome.run.id, "customers": outcome.written}


def contacts_resync() -> dict[str, Any]:
    """Full contact and customer-group reconcile with WeCom (heals callbacks that never arrived)."""
    from dataclasses import asdict

    from bot.contacts.groups import sync_groups
    from bot.contacts.sync import sync_contacts
    from bot.models import utcnow
    from bot.tagging.rules import TagRules
    from bot.wecom.groups import group_chat

    rt = runtime()
    if rt.clients is None:
        return {"skipped": "WeCom is not configured"}
    rules = TagRules.from_settings(rt.rule_settings())
    with rt.db.begin() as session:
        result = sync_contacts(session, rt.clients.contact, rules)
    logger.info("contact re-sync: %s", result)
    # Groups after contacts, so members who became customers are linked in the same pass.
    groups = sync_groups(rt.db.begin, group_chat(rt.clients.contact), rules, rt.settings.tags.push_to_wecom, utcnow)
    logger.info("group re-sync: %d groups, %d joined, %d left, %d dismissed, %d errors", groups.groups,
                groups.joined, groups.left, groups.dismissed, len(groups.errors))
    return {**asdict(result), "groups": {k: v for k, v in asdict(groups).items() if k != "errors"}}


def moments_poll() -> dict[str, Any]:
    from dataclasses import asdict

    from bot.contacts.moments import poll_moments
    from bot.tagging.rules import TagRules

    rt = runtime()
    if rt.clients is None:
        return {"skipped": "WeCom is not configured"}
    settings = rt.rule_settings()
    with rt.db.begin() as session:
        result = poll_moments(session, rt.clients.contact, settings, TagRules.from_settings(settings))
    return asdict(result)


def tags_push() -> dict[str, Any]:
    from bot.tagging.sync import push_pending

    rt = runtime()
    if rt.clients is None or not rt.settings.tags.push_to_wecom:
        return {"skipped": "WeCom is not configured or tags.push_to_wecom is off"}
    with rt.db.begin() as session:
        result = push_pending(session, rt.clients.contact, limit=1000)
    return {"customers": result.customers, "added": result.added, "removed": result.removed, "failed": result.failed}


def outbox_sweep() -> dict[str, int]:
    rt = runtime()
    if rt.sender is None:
        return {}
    return dict(rt.sender.send_due())


def holiday_greetings() -> dict[str, Any]:
    """Plan today's holiday and birthday greetings, then submit what is due."""
    from bot.campaigns.automation import birthday_greetings
    from bot.campaigns.greetings import plan_holiday_greetings
    from bot.models import utcnow
    from bot.outbox.messages import MessageTemplates

    rt = runtime()
    templates = MessageTemplates.from_settings(rt.settings)
    now = utcnow()
    with rt.db.begin() as session:
        plan = plan_holiday_greetings(session, rt.settings, templates, now)
        birthdays = birthday_greetings(session, rt.settings, templates, now)
    if plan.holidays:
        logger.info("holiday greetings %s: %d planned, skipped %s", plan.holidays, plan.planned, dict(plan.skipped))
    return {"holidays": plan.holidays, "planned": plan.planned, "skipped": dict(plan.skipped),
            "birthdays": birthdays.as_dict(), "submitted": dict(mass_send())}


def _automation(name: str) -> dict[str, Any]:
    from bot.campaigns import automation
    from bot.models import utcnow
    from bot.outbox.messages import MessageTemplates

    rt = runtime()
    with rt.db.begin() as session:
        result = getattr(automation, name)(session, rt.settings, MessageTemplates.from_settings(rt.settings), utcnow())
    if result.planned or result.notified or result.skipped:
        logger.info("%s: %s", name, result.as_dict())
    return result.as_dict()


def coupon_pushes() -> dict[str, Any]:
    """成交之后赠送抵用券 for new paid orders; issued coupons past their date expire (or are withdrawn when
    their message never went out)."""
    from bot.campaigns.coupons import expire_coupons

    result = _automation("post_purchase_coupons")
    rt = runtime()
    with rt.db.begin() as session:
        expiry = expire_coupons(session)
    result["expired"], result["withdrawn"] = expiry.expired, expiry.withdrawn
    return result


def sequences() -> dict[str, Any]:
    return _automation("run_sequences")


def tier_actions() -> dict[str, Any]:
    result = _automation("tier_change_actions")
    rt = runtime()
    if rt.sender is not None and result["notified"]:
        rt.sender.send_due()
    return result


def broadcast_dispatch() -> dict[str, Any]:
    """Keep the scheduled tier coupons as broadcasts, plan every broadcast that is due, submit."""
    from bot.campaigns import group_broadcasts
    from bot.campaigns.automation import reconcile_coupon_schedules
    from bot.campaigns.broadcasts import dispatch_due
    from bot.campaigns.group_sop import run_sops
    from bot.models import utcnow

    rt = runtime()
    now = utcnow()
    with rt.db.begin() as session:
        reconcile_coupon_schedules(session, rt.settings, now)
        runs = dispatch_due(session, rt.settings, now)
        planned = [{"broadcast": r.broadcast_id, "to_send": r.to_send, "held_out": r.held_out} for r in runs]
        planned += [{"group_broadcast": r.broadcast_id, "to_send": r.to_send}
                    for r in group_broadcasts.dispatch_due(session, rt.settings, now)]
        sop = run_sops(session, rt.settings, now)
        if sop.planned or sop.skipped:
            planned.append({"group_sop": sop.planned, "skipped": sum(sop.skipped.values())})
    for run in planned:
        logger.info("broadcast run planned: %s", run)
    return {"runs": planned, "submitted": dict(mass_send())}


def mass_reminders() -> dict[str, int]:
    from bot.outbox.mass import remind_unconfirmed

    rt = runtime()
    if rt.clients is None:
        return {}
    return dict(remind_unconfirmed(rt.db, rt.clients.contact, rt.settings.outbox.remind_after_hours))


def mass_send() -> dict[str, int]:
    """Look up mass messages a crash interrupted, then submit what is due."""
    from bot.outbox import group_mass
    from bot.outbox.mass import resolve_interrupted, submit_mass_messages
    from bot.outbox.policy import ContactPolicy

    rt = runtime()
    if rt.clients is None:
        return {}
    resolved = resolve_interrupted(rt.db, rt.clients.contact, rt.settings.worker.lease_seconds)
    submitted = submit_mass_messages(rt.db, rt.clients.contact, ContactPolicy.from_settings(rt.settings),
                                     lease_seconds=rt.settings.worker.lease_seconds)
    groups = group_mass.resolve_interrupted(rt.db, rt.clients.contact, rt.settings.worker.lease_seconds)
    groups = Counter({f"interrupted_{k}": v for k, v in groups.items()}) + group_mass.submit_group_messages(
        rt.db, rt.clients.contact, ContactPolicy.from_settings(rt.settings))
    return dict(submitted + Counter({f"interrupted_{k}": v for k, v in resolved.items()})
                + Counter({f"group_{k}": v for k, v in groups.items()}))


def mass_results() -> dict[str, int]:
    from bot.outbox.group_mass import poll_group_results
    from bot.outbox.mass import poll_mass_results

    rt = runtime()
    if rt.clients is None:
        return {}
    groups = poll_group_results(rt.db, rt.clients.contact)
    return dict(poll_mass_results(rt.db, rt.clients.contact) + Counter({f"group_{k}": v for k, v in groups.items()}))
