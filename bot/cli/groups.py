"""``scrm groups …``: customer groups (客户群) — sync, list, show with the tier mix, a group's tier and
tags, 入群欢迎语, 群活码, and broadcasts to groups."""

from __future__ import annotations

from typing import Any

import click

from bot.cli.campaigns import _audience, _local_time, _templates
from bot.cli.context import CliContext, pass_cli, render_table
from bot.cli.times import local_time, schedule_text, zoned


@click.group("groups")
def groups_group() -> None:
    """客户群: sync from WeCom, list, show (tier mix), tier, tags, welcome, join code, broadcasts."""


def _api(cli: CliContext) -> Any:
    from bot.cli.sync import _clients
    from bot.wecom.groups import group_chat

    return group_chat(_clients(cli).contact)


def _group(session: Any, ref: str) -> Any:
    from bot.contacts.groups import find_group

    group = find_group(session, ref)
    if group is None:
        raise click.ClickException(f"no group {ref!r} (give its chat_id, exact name or id; see `scrm groups list`)")
    return group


def _wecom(call: Any) -> Any:
    """Run a WeCom call, turning its refusal into a plain message."""
    from wechatpy.exceptions import WeChatClientException

    try:
        return call()
    except WeChatClientException as exc:
        raise click.ClickException(f"WeCom refused: {exc.errcode} {exc.errmsg}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _mix_text(mix: Any) -> str:
    from bot.campaigns.group_welcome import tier_label

    parts = [f"{tier_label(k) or k} {n}" for k, n in sorted(mix.value_tiers.items(), key=lambda p: -p[1])
             if k != "none"]
    return "、".join(parts) or "-"


@groups_group.command("sync")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@pass_cli
def groups_sync(cli: CliContext, no_progress: bool) -> None:
    """Read every group (groupchat/list, then groupchat/get each): heals missed callbacks."""
    from tqdm import tqdm

    from bot.contacts.groups import sync_groups
    from bot.tagging.rules import TagRules

    settings, api = cli.settings(), _api(cli)
    with tqdm(unit="group", desc="syncing groups", disable=no_progress) as bar:
        result = _wecom(lambda: sync_groups(cli.db().begin, api, TagRules.from_settings(settings),
                                            settings.tags.push_to_wecom, cli.now, progress=bar.update))
    click.echo(f"groups {result.groups}, changed {result.changed}, joined {result.joined}, left {result.left}, "
               f"dismissed {result.dismissed}, errors {len(result.errors)}")
    for error in result.errors[:20]:
        click.echo(f"  {error}")


@groups_group.command("list")
@click.option("--owner", help="Only this owner's groups.")
@click.option("--all", "show_all", is_flag=True, help="Include dismissed groups.")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 100000),
              help="Show at most this many groups.")
@pass_cli
def groups_list(cli: CliContext, owner: str | None, show_all: bool, limit: int) -> None:
    """Groups with their members, known customers and value-tier mix."""
    from sqlalchemy import select

    from bot.campaigns.group_welcome import tier_label
    from bot.contacts.groups import group_tier_key, tier_mix
    from bot.models import CustomerGroup

    with cli.db().sessions() as session:
        query = select(CustomerGroup).order_by(CustomerGroup.id).limit(limit)
        if owner:
            query = query.where(CustomerGroup.owner_userid == owner)
        if not show_all:
            query = query.where(CustomerGroup.dismissed_at.is_(None))
        groups = session.scalars(query).all()
        mixes = tier_mix(session, [g.id for g in groups])
        rows = [[g.id, g.name or "-", g.owner_userid, mixes[g.id].members, mixes[g.id].customers,
                 tier_label(group_tier_key(g, mixes[g.id])) or "-", _mix_text(mixes[g.id]),
                 "已解散" if g.dismissed_at else ("有" if g.join_qr_code else "-")] for g in groups]
    if not rows:
        click.echo("no groups yet (run `scrm groups sync`)")
        return
    click.echo(render_table(["id", "群名", "群主", "成员", "客户", "群层级", "价值分层", "活码"], rows))


@groups_group.command("show")
@click.argument("group_ref")
@click.option("--members", "member_limit", default=20, show_default=True, type=click.IntRange(0, 10000),
              help="How many present members to list.")
@pass_cli
def groups_show(cli: CliContext, group_ref: str, member_limit: int) -> None:
    """One group: owner, notice, tier, tags, welcome, join code, its tier mix and members."""
    from bot.campaigns.group_welcome import tier_label
    from bot.contacts.groups import active_members, group_tier_key, tier_mix
    from bot.models import GROUP_STATUSES
    from segments.rfm import SEGMENT_NAMES

    tz = cli.settings().tz
    with cli.db().sessions() as session:
        g = _group(session, group_ref)
        mix = tier_mix(session, [g.id])[g.id]
        click.echo(f"{g.name or '(no name)'}  [{g.chat_id}]")
        click.echo(f"群主 {g.owner_userid}; 状态 {GROUP_STATUSES.get(g.status, g.status)}"
                   + (f"; 已解散 {local_time(g.dismissed_at, tz)}" if g.dismissed_at else ""))
        click.echo(f"创建 {local_time(g.wecom_created_at, tz)}; 同步 {local_time(g.synced_at, tz)}; "
                   f"成员版本 {g.member_version or '-'}")
        if g.notice:
            click.echo(f"群公告 {g.notice[:200]}")
        tier = group_tier_key(g, mix)
        click.echo(f"群层级 {tier_label(tier) or '-'}" + (" (设定)" if g.tier else " (成员多数)" if tier else ""))
        click.echo(f"群标签 {', '.join(g.tags or []) or '-'}")
        click.echo(f"入群欢迎语 {g.welcome_template_id or '-'}" + (f": {g.welcome_text}" if g.welcome_text else ""))
        click.echo(f"群活码 {g.join_qr_code or '-'}" + (f" (state {g.join_state})" if g.join_state else ""))
        click.echo(f"members {mix.members} (staff not counted); known customers {mix.customers}")
        click.echo(f"  价值分层: {_counts(mix.value_tiers, tier_label)}")
        click.echo(f"  RFM: {_counts(mix.rfm_segments, lambda k: SEGMENT_NAMES.get(k, k))}")
        churn = {"low": "低", "medium": "中", "high": "高"}
        risks = _counts(mix.churn_risks, lambda k: churn.get(k, k)) if mix.churn_risks else "无预测"
        click.echo(f"  流失风险: {risks}")
        present = sorted(active_members(g), key=lambda m: (m.member_type, m.join_time or g.created_at))
        rows = [[m.member_id, "员工" if m.member_type == 1 else ("客户" if m.customer_id else "外部"),
                 m.name or m.group_nickname or "-", local_time(m.join_time, tz, zone=False),
                 {1: "邀请", 2: "邀请链接", 3: "扫码"}.get(m.join_scene or 0, "-"), "是" if m.is_admin else ""]
                for m in present[:member_limit]]
    if rows:
        click.echo(render_table(["member", "type", "name", zoned("joined", tz), "scene", "admin"], rows))


def _counts(counts: dict[str, int], label: Any) -> str:
    return "、".join(f"{label(k) if k != 'none' else '未分层'} {n}" for k, n in
                    sorted(counts.items(), key=lambda p: -p[1])) or "-"


@groups_group.command("tier")
@click.argument("group_ref")
@click.argument("tier", required=False)
@click.option("--clear", is_flag=True, help="Make it an ordinary group again.")
@pass_cli
def groups_tier(cli: CliContext, group_ref: str, tier: str | None, clear: bool) -> None:
    """Make a group a tier's group (a value tier or RFM segment, e.g. high or important_value)."""
    from bot.campaigns.broadcasts import tier_key_names

    if clear == bool(tier):
        raise click.UsageError("give a TIER or --clear")
    if tier and tier not in tier_key_names(cli.settings()):
        raise click.BadParameter(f"{tier!r}: use one of {sorted(tier_key_names(cli.settings()))}", param_hint="TIER")
    with cli.db().begin() as session:
        group = _group(session, group_ref)
        group.tier = None if clear else tier
        click.echo(f"{group.name or group.chat_id}: " + (f"the {tier} group" if tier else "an ordinary group"))


@groups_group.command("tag")
@click.argument("group_ref")
@click.option("--add", "added", multiple=True, help="A label for the group (for broadcast audiences).")
@click.option("--remove", "removed", multiple=True, help="Remove this label.")
@pass_cli
def groups_tag(cli: CliContext, group_ref: str, added: tuple[str, ...], removed: tuple[str, ...]) -> None:
    """The group's own labels, such as 种草群 or 打卡群."""
    from bot.contacts.groups import label_problem

    labels = [t.strip() for t in added if t.strip()]
    problem = label_problem(labels)
    if problem:
        raise click.BadParameter(problem, param_hint="--add")
    with cli.db().begin() as session:
        group = _group(session, group_ref)
        tags = [t for t in (group.tags or []) if t not in removed]
        group.tags = tags + [t for t in dict.fromkeys(labels) if t not in tags]
        click.echo(f"{group.name or group.chat_id}: {', '.join(group.tags) or '(no labels)'}")


@groups_group.command("welcome")
@click.argument("group_ref")
@click.option("--preview", is_flag=True, help="Only show the text it would store.")
@click.option("--remove", is_flag=True, help="Delete the group's welcome template in WeCom.")
@click.option("--no-notify", is_flag=True, help="Do not prompt the owner in the client to apply it.")
@pass_cli
def groups_welcome(cli: CliContext, group_ref: str, preview: bool, remove: bool, no_notify: bool) -> None:
    """入群欢迎语 from templates/messages/group_welcome for the group's tier, stored in WeCom."""
    from bot.campaigns.group_welcome import GroupWelcomeError, push_welcome, remove_welcome, render_welcome
    from bot.outbox.messages import TemplateMissing, TemplateRefused

    settings = cli.settings()
    with cli.db().begin() as session:
        group = _group(session, group_ref)
        try:
            if preview:
                rendered = render_welcome(session, settings, group)
                click.echo(f"[{rendered.template}]\n{rendered.text}")
                return
            api = _api(cli)
            if remove:
                done = _wecom(lambda: remove_welcome(session, api, group))
                click.echo("removed" if done else "the group has no welcome template")
                return
            result = _wecom(lambda: push_welcome(session, settings, api, group, notify=not no_notify))
        except (GroupWelcomeError, TemplateMissing, TemplateRefused) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"{'added' if result.created else 'edited'} template {result.template_id} from {result.template}:")
    click.echo(result.text)
    if result.created and not no_notify:
        click.echo("the owner is prompted in WeCom to apply it to the group (WeCom has no API that binds it)")


@groups_group.command("join-way")
@click.argument("group_ref")
@click.argument("state")
@click.option("--remark", default="", help="Memo (≤ 30 characters).")
@pass_cli
def groups_join_way(cli: CliContext, group_ref: str, state: str, remark: str) -> None:
    """群活码: a QR code to join the group, tagged with STATE (≤ 30 characters)."""
    from bot.campaigns.group_welcome import GroupWelcomeError, make_join_way

    with cli.db().begin() as session:
        group = _group(session, group_ref)
        api = _api(cli)
        try:
            _wecom(lambda: make_join_way(session, api, group, state, remark))
        except GroupWelcomeError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"join way {group.join_config_id} (state {group.join_state}): {group.join_qr_code or '-'}")


# ---------------------------------------------------------------- broadcasts to groups


@groups_group.group("broadcast")
def group_broadcast() -> None:
    """Broadcasts to groups, sent through their owners (add_msg_template chat_type=group)."""


def _show_preview(p: Any, cli: CliContext, rows: int = 10) -> None:
    tz = cli.settings().tz
    click.echo(f"groups {p.groups}; to send {p.to_send}; skipped {sum(p.skipped.values())}; sends from "
               f"{local_time(p.send_after, tz)}" + (" (deferred past quiet hours)" if p.deferred else ""))
    for owner, n in sorted(p.owners.items()):
        click.echo(f"  owner {owner}: {n} group(s) to confirm")
    for reason, n in p.skipped.most_common():
        click.echo(f"  skipped {n}: {reason}")
    for row in p.rows[:rows]:
        click.echo(f"  [{row['name'] or row['chat_id']} · {row['template']}] "
                   f"{row['skipped'] and '(skipped) '}{row['text'][:80]}")


@group_broadcast.command("create")
@click.argument("name")
@click.option("--audience", "audience_text",
              help='Groups as JSON or @file.json: names, owners, tags, tiers, mix {"tier","min_share"}, min_members.')
@click.option("--template", "inline", multiple=True, help="TIER=TEXT; give default=… and any tier or segment.")
@click.option("--template-file", "files", multiple=True, help="TIER=PATH of a Jinja2 template.")
@click.option("--at", "at_text", help="Send once at this local time (YYYY-MM-DD HH:MM); a past time is refused.")
@click.option("--cron", help="Repeat on this cron expression (local time).")
@click.option("--yes", is_flag=True, help="Schedule without asking after the preview.")
@pass_cli
def group_broadcast_create(cli: CliContext, name: str, audience_text: str | None, inline: tuple[str, ...],
                           files: tuple[str, ...], at_text: str | None, cron: str | None, yes: bool) -> None:
    """Preview, then schedule, a broadcast to groups."""
    from bot.campaigns import group_broadcasts as gb
    from bot.campaigns.broadcasts import BroadcastError

    settings = cli.settings()
    send_at = _local_time(at_text, cli) if at_text else None
    spec = gb.GroupBroadcastSpec(name, _audience(audience_text), _templates(inline, files), send_at, cron)
    with cli.db().begin() as session:
        try:
            if send_at is None and cron is None:
                raise BroadcastError("give --at (once) or --cron (repeating)")
            shown = gb.preview(session, settings, spec, send_at or cli.now())
            _show_preview(shown, cli)
            if not yes and not click.confirm("schedule it?", default=False):
                raise click.ClickException("not scheduled")
            broadcast = gb.create(session, settings, spec, cli.now())
        except BroadcastError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"scheduled group broadcast {broadcast.id} {broadcast.name!r}: next run "
                   f"{local_time(broadcast.next_run_at, settings.tz)}")


@group_broadcast.command("preview")
@click.argument("name")
@click.option("--at", "at_text", help="As if sent at this local time (default: its next run).")
@click.option("--rows", default=10, show_default=True, type=click.IntRange(0, 10000), help="Groups to show.")
@pass_cli
def group_broadcast_preview(cli: CliContext, name: str, at_text: str | None, rows: int) -> None:
    """What a run would send, per group, and what it skips."""
    from bot.campaigns import group_broadcasts as gb
    from bot.campaigns.broadcasts import BroadcastError

    with cli.db().sessions() as session:
        try:
            broadcast = gb.find(session, name)
            at = _local_time(at_text, cli) if at_text else (broadcast.next_run_at or cli.now())
            _show_preview(gb.preview(session, cli.settings(), gb.spec_of(broadcast), at), cli, rows)
        except BroadcastError as exc:
            raise click.ClickException(str(exc)) from None


@group_broadcast.command("list")
@pass_cli
def group_broadcast_list(cli: CliContext) -> None:
    """Group broadcasts with their schedule and run totals."""
    from bot.campaigns.group_broadcasts import broadcast_rows

    tz = cli.settings().tz
    with cli.db().sessions() as session:
        rows = [[r["id"], r["name"], r["status"], schedule_text(r, tz), local_time(r["next_run_at"], tz, zone=False),
                 r["audience"], r.get("runs", 0), r.get("to_send", 0), r.get("skipped", 0)]
                for r in broadcast_rows(session)]
    if not rows:
        click.echo("no group broadcasts")
        return
    click.echo(render_table(["id", "name", "status", zoned("schedule", tz), zoned("next run", tz), "audience", "runs",
                             "to send", "skipped"], rows))


@group_broadcast.command("cancel")
@click.argument("name")
@pass_cli
def group_broadcast_cancel(cli: CliContext, name: str) -> None:
    """Stop future runs; group messages not yet handed to WeCom are skipped."""
    from bot.campaigns import group_broadcasts as gb
    from bot.campaigns.broadcasts import BroadcastError

    with cli.db().begin() as session:
        try:
            skipped = gb.cancel(session, gb.find(session, name), cli.now())
        except BroadcastError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"cancelled; {skipped} unsent group message(s) skipped")


@group_broadcast.command("send")
@pass_cli
def group_broadcast_send(cli: CliContext) -> None:
    """Plan the group broadcasts that are due and submit what is due to the owners now (the
    scheduler does this every few minutes)."""
    from bot.campaigns import group_broadcasts as gb
    from bot.outbox.group_mass import resolve_interrupted, submit_group_messages
    from bot.outbox.policy import ContactPolicy
    from bot.wecom.client import build_clients

    settings, now = cli.settings(), cli.now()
    with cli.db().begin() as session:
        runs = gb.dispatch_due(session, settings, now)
        planned = [(r.broadcast_id, r.to_send) for r in runs]
    for broadcast_id, to_send in planned:
        click.echo(f"planned group broadcast {broadcast_id}: {to_send} group(s)")
    _api(cli)  # stops with a message when WeCom is not configured
    contact = build_clients(settings).contact
    resolved = resolve_interrupted(cli.db(), contact, settings.worker.lease_seconds, now)
    outcome = submit_group_messages(cli.db(), contact, ContactPolicy.from_settings(settings), now)
    click.echo(", ".join(f"{k} {v}" for k, v in (resolved + outcome).items()) or "nothing due")


@group_broadcast.command("results")
@click.argument("name")
@click.option("--poll/--no-poll", default=True, show_default=True, help="Ask WeCom for new results first.")
@pass_cli
def group_broadcast_results(cli: CliContext, name: str, poll: bool) -> None:
    """Per run: groups confirmed by their owners, waiting, failed (with WeCom's reason), skipped."""
    from bot.campaigns import group_broadcasts as gb
    from bot.campaigns.broadcasts import BroadcastError
    from bot.outbox.group_mass import poll_group_results
    from bot.wecom.client import build_clients

    if poll:
        _api(cli)
        polled = poll_group_results(cli.db(), build_clients(cli.settings()).contact)
        click.echo("polled: " + (", ".join(f"{k} {v}" for k, v in polled.items()) or "nothing new"))
    tz = cli.settings().tz
    with cli.db().sessions() as session:
        try:
            runs = gb.results(session, gb.find(session, name))
        except BroadcastError as exc:
            raise click.ClickException(str(exc)) from None
    if not runs:
        click.echo("no runs yet")
    for run in runs:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(run["statuses"].items()))
        click.echo(f"run {run['run']} at {local_time(run['send_after'], tz)}: groups {run['groups']}; {statuses}")
        for reason, n in run["reasons"].items():
            click.echo(f"  {n}: {reason}")


# ---------------------------------------------------------------- group SOP


@groups_group.group("sop")
def group_sop() -> None:
    """群 SOP: timed steps (days after a group's creation) sent to matching groups by their owners."""


@group_sop.command("create")
@click.argument("name")
@click.option("--audience", "audience_text", help="Groups as JSON or @file.json (as for group broadcasts).")
@click.option("--step", "steps", multiple=True, required=True,
              help="DAY=KIND/NAME, e.g. 1=group_sop/rules (a template under templates/messages/).")
@pass_cli
def group_sop_create(cli: CliContext, name: str, audience_text: str | None, steps: tuple[str, ...]) -> None:
    """Create a group SOP."""
    from bot.campaigns.broadcasts import BroadcastError
    from bot.campaigns.group_sop import create_sop

    parsed = []
    for item in steps:
        day, sep, ref = item.partition("=")
        if not sep or not day.strip().isdigit():
            raise click.BadParameter(f"{item!r}: use DAY=KIND/NAME", param_hint="--step")
        parsed.append({"day": int(day), "template": ref.strip()})
    with cli.db().begin() as session:
        try:
            sop = create_sop(session, cli.settings(), name, _audience(audience_text), parsed, cli.now())
        except BroadcastError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"group SOP {sop.id} {sop.name!r}: " + ", ".join(f"day {s['day']} {s['template']}"
                                                                     for s in sop.steps))


@group_sop.command("list")
@pass_cli
def group_sop_list(cli: CliContext) -> None:
    """Group SOPs with their steps and how many group messages each step planned."""
    from sqlalchemy import select

    from bot.campaigns.group_sop import planned_per_step
    from bot.models import GroupSop

    with cli.db().sessions() as session:
        planned = planned_per_step(session)
        rows = [[s.id, s.name, s.status, "; ".join(f"day {st['day']} {st['template']} ×"
                                                   f"{planned.get(f'group_sop:{s.id}:{i}', 0)}"
                                                   for i, st in enumerate(s.steps))]
                for s in session.scalars(select(GroupSop).order_by(GroupSop.id))]
    click.echo(render_table(["id", "name", "status", "steps (planned)"], rows) if rows else "no group SOPs")


@group_sop.command("cancel")
@click.argument("name")
@pass_cli
def group_sop_cancel(cli: CliContext, name: str) -> None:
    """Stop an SOP; its steps not yet handed to WeCom are skipped."""
    from sqlalchemy import select

    from bot.campaigns.group_sop import cancel_sop
    from bot.models import GroupSop

    with cli.db().begin() as session:
        sop = session.scalar(select(GroupSop).where(GroupSop.name == name))
        if sop is None:
            raise click.ClickException(f"no group SOP {name!r}")
        skipped = cancel_sop(session, sop, cli.now())
    click.echo(f"cancelled; {skipped} unsent step(s) skipped")


@group_sop.command("run")
@pass_cli
def group_sop_run(cli: CliContext) -> None:
    """Plan the steps due now (the scheduler does this with the group broadcasts); `scrm groups
    broadcast send` then submits them."""
    from bot.campaigns.group_sop import run_sops

    with cli.db().begin() as session:
        result = run_sops(session, cli.settings(), cli.now())
    click.echo(f"planned {result.planned}; skipped {sum(result.skipped.values())}; "
               f"waiting {sum(result.deferred.values())}")
    for reason, n in result.skipped.items():
        click.echo(f"  skipped {n}: {reason}")
    for reason, n in result.deferred.items():
        click.echo(f"  waiting {n}: {reason} (sent in a later period)")
