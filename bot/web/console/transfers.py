"""The console's hand-over run (在职继承 and 离职继承): the plan the 交接 page showed, run in WeCom
(transfer_customer or resigned/transfer_customer, ≤ 100 customers a call, and a departed member's groups
with groupchat/transfer) as `scrm transfer run` does, audited. The form carries the digest of the plan the
page showed; a plan that has changed since (customers added, gone, sent elsewhere, or already under way
after a first run) is shown again, not run. The route joins the console blueprint (sign-in, CSRF, no
changes by viewers)."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, flash, redirect, request, url_for

from bot.contacts.transfer import TransferError, run_plan
from bot.web.console.handover import FIELD_MAX, plan_from_args, transfer_args
from bot.web.console.views import _audit, _now, bp

logger = logging.getLogger(__name__)
MESSAGE_MAX = 200


@bp.post("/transfers/run")
def transfers_run() -> Any:
    args = transfer_args(request.form)
    message = (request.form.get("message") or "").strip()
    if any(len(v) > FIELD_MAX for v in args.values()):
        flash(f"未交接：交出成员、接替成员、离职成员与规则各最多 {FIELD_MAX} 个字符")
        return redirect(url_for("console.transfers_page"))
    again = redirect(url_for("console.transfers_page", **{k: v for k, v in args.items() if v}))
    if len(message) > MESSAGE_MAX or not message.isprintable():
        flash(f"未交接：给客户的消息最多 {MESSAGE_MAX} 个字，且不含控制字符")
        return again
    if message and args["kind"] == "departed":
        flash("未交接：离职继承时 WeCom 不向客户发送消息，请留空")
        return again
    clients = current_app.extensions["scrm.processor"].clients
    if clients is None:
        flash("未交接：WeCom 未配置（wecom.corp_id 与 secret）")
        return again
    try:
        with current_app.extensions["scrm.db"].sessions() as s:
            plan = plan_from_args(s, args)
            if plan.digest() != request.form.get("expected", ""):
                groups = f"、{len(plan.groups)} 个客户群" if args["kind"] == "departed" else ""
                flash(f"未交接：试算后交接名单有变化（现在 {len(plan.rows)} 位客户{groups}），请核对后再执行")
                return again
            if not plan.rows and not plan.groups:
                flash("没有需要交接的客户")
                return again
            result = run_plan(s, clients.contact.transfer, plan, _now(), message or None,
                              tz=current_app.extensions["scrm.settings"].tz)
            target = f"staff:{args['from']}" if args["kind"] == "onjob" else f"departed:{args['members'] or '*'}"
            _audit(s, "transfers.run", target, None,
                   {"batch": result.batch, "kind": args["kind"], "to": args["to"], "rules": args["rule"],
                    "customers": len(plan.rows), "groups": len(plan.groups), "started": result.started,
                    "failed": result.failed, "unknown": result.unknown,
                    "under_way": result.under_way, "groups_moved": result.groups_moved,
                    "groups_failed": result.groups_failed, "groups_unknown": result.groups_unknown,
                    "groups_already": result.groups_already})
            s.commit()
    except TransferError as exc:
        flash(f"未交接：{exc}")
        return again
    logger.info("console: hand-over batch %s run: %d started, %d refused, %d unanswered, %d groups moved",
                result.batch, result.started, result.failed, result.unknown, result.groups_moved)
    unanswered = f"，未得到答复 {result.groups_unknown} 个（再次试算会列出未转交的群）" if result.groups_unknown else ""
    already = f"，此前已转交或正在转交 {result.groups_already} 个" if result.groups_already else ""
    groups = (f"；客户群转交 {result.groups_moved} 个{already}，失败 {result.groups_failed} 个{unanswered}"
              if plan.groups else "")
    under_way = f"，已在 WeCom 交接中 {result.under_way} 位" if result.under_way else ""
    refuse = "（客户 24 小时内可拒绝）" if args["kind"] == "onjob" else "（24 小时后自动接替）"
    flash(f"批次 {result.batch}：{result.started} 位客户开始交接{refuse}，"
          f"WeCom 拒绝 {result.failed} 位，未得到答复 {result.unknown} 位{under_way}{groups}")
    return redirect(url_for("console.transfers_page"))
