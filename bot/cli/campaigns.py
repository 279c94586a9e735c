"""``scrm broadcast …`` and ``scrm coupons …``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bot.cli.context import CliContext, pass_cli, render_table
from bot.cli.times import local_time, schedule_text, zoned
from bot.core import jsonsafe
from bot.tagging.rules import TagRules
from segments.money import fen_to_yuan, number_to_fen

if TYPE_CHECKING:
    from bot.campaigns.broadcasts import Preview
    from bot.campaigns.coupons import CouponBook
    from bot.models import Customer


@click.group("broadcast", help="Tiered broadcasts: create (with a preview), list, cancel, report.")
def broadcast_group() -> None:
    pass


def _audience(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        text = _read_text_file(text[1:], "--audience")
    try:
        value = jsonsafe.loads(text)
    except ValueError as exc:  # not JSON, or nested deeper than any audience
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--audience") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"value_tiers\": [\"high\"]}'", param_hint="--audience")
    return value


def _templates(inline: tuple[str, ...], files: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item, from_file in [(i, False) for i in inline] + [(f, True) for f in files]:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: use TIER=TEXT (TIER = default, a value tier or an RFM segment)",
                                     param_hint="--template")
        out[key.strip()] = _read_text_file(value, "--template-file") if from_file else value
    return out


def _read_text_file(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint=option) from None
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not UTF-8 text", param_hint=option) from None


def _local_time(text: str, cli: CliContext) -> datetime:
    from bot.campaigns.broadcasts import BroadcastError, parse_send_time

    try:
        return parse_send_time(text, cli.settings().tz)
    except BroadcastError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from None


def _show_preview(p: Preview, cli: CliContext) -> None:
    from bot.outbox.messages import TIER_NAMES

    tz = cli.settings().tz
    when = local_time(p.send_after, tz) if p.send_after else "?"
    click.echo(f"audience {p.audience}; to send {p.to_send}; held out {sum(p.held_out.values())}; "
               f"skipped {sum(p.skipped.values())}; sends from {when}"
               + (" (deferred past quiet hours)" if p.deferred else ""))
    if p.personal_tasks:
        click.echo(f"personal content ({{{{ customer… }}}} or {{{{ coupon… }}}}): one WeCom mass-message task per "
                   f"customer, about {p.personal_tasks} for members to confirm one by one")
    rows = [[tier, TIER_NAMES.get(tier, ""), n, p.held_out.get(tier, 0)] for tier, n in sorted(p.per_tier.items())]
    click.echo(render_table(["tier", "name", "audience", "held out"], rows))
    for reason, n in p.skipped.most_common():
        click.echo(f"  skipped {n}: {reason}")
    for tier, samples in sorted(p.samples.items()):
        for sample in samples:
            click.echo(f"  [{tier} · {sample['template']}] {sample['customer']}: {sample['text']}")


@broadcast_group.command("create")
@click.argument("name")
@click.option("--audience", "audience_text",
              help="Filter as JSON or @file.json, e.g. '{\"value_tiers\": [\"high\"], \"channels\": [\"live_0618\"]}'. "
                   "Keys: value_tiers, rfm_segments, stages, engagement, activity, churn_risk, tags_any, tags_all, "
                   "tags_none, owners, channels (\"~none\": no channel), added_after, added_before (YYYY-MM-DD), "
                   "has_ordered, min_orders, min_amount, p_alive_below, predicted_value_above (元), "
                   "expected_purchases_above, next_order_before (YYYY-MM-DD).")
@click.option("--template", "inline", multiple=True, help="TIER=TEXT; give default=… and any tier or segment.")
@click.option("--template-file", "files", multiple=True, help="TIER=PATH of a Jinja2 template.")
@click.option("--at", "at_text", help="Send once at this local time (YYYY-MM-DD HH:MM); a past time is refused.")
@click.option("--cron", help="Repeat on this cron expression (local time), e.g. '0 10 1 * *'.")
@click.option("--holdout", type=click.IntRange(0, 50),
              help="Percent held out per tier (default broadcasts.holdout_percent).")
@click.option("--coupon", help="Issue this coupon definition to every recipient ({{ coupon.code }} in the text).")
@click.option("--yes", is_flag=True, help="Schedule without asking after the preview.")
@pass_cli
def broadcast_create(cli: CliContext, name: str, audience_text: str | None, inline: tuple[str, ...],
                     files: tuple[str, ...], at_text: str | None, cron: str | None, holdout: int | None,
                     coupon: str | None, yes: bool) -> None:
    """Preview a broadcast, then schedule it."""
    from bot.campaigns.broadcasts import BroadcastError, BroadcastSpec, check_schedule, create_broadcast, preview

    settings = cli.settings()
    spec = BroadcastSpec(name, _audience(audience_text), _templates(inline, files),
                         _local_time(at_text, cli) if at_text else None, cron, holdout, coupon)
    try:
        check_schedule(spec, settings, cli.now())  # before the preview: nothing is previewed that cannot be made
        with cli.db().begin() as session:
            _show_preview(preview(session, settings, spec, spec.send_at or cli.now()), cli)
            if not yes:
                click.confirm("schedule it?", abort=True)
            created = create_broadcast(session, settings, spec, cli.now())
            assert created.next_run_at is not None
            click.echo(f"scheduled broadcast {created.id} {name!r}; first run "
                       f"{local_time(created.next_run_at, settings.tz)}")
    except BroadcastError as exc:
        raise click.ClickException(str(exc)) from None


@broadcast_group.command("preview")
@click.argument("name")
@click.option("--at", "at_text", help="Preview as if sent at this local time (default: its next run).")
@pass_cli
def broadcast_preview(cli: CliContext, name: str, at_text: str | None) -> None:
    """Who a scheduled broadcast would reach, skip and hold out, with samples per tier."""
    from bot.campaigns.broadcasts import BroadcastError, find_broadcast, preview, spec_of

    with cli.db().begin() as session:
        try:
            broadcast = find_broadcast(session, name)
            at = _local_time(at_text, cli) if at_text else broadcast.next_run_at
            _show_preview(preview(session, cli.settings(), spec_of(broadcast), at), cli)
        except BroadcastError as exc:
            raise click.ClickException(str(exc)) from None


@broadcast_group.command("list")
@pass_cli
def broadcast_list(cli: CliContext) -> None:
    """One line per broadcast: schedule, next run, audience and what its runs sent, held out, skipped."""
    from bot.campaigns.broadcasts import broadcast_rows

    tz = cli.settings().tz
    with cli.db().begin() as session:
        rows = broadcast_rows(session)
    click.echo(render_table(
        ["id", "name", "status", zoned("schedule", tz), zoned("next run", tz), "audience", "coupon", "runs", "to send",
         "held out", "skipped"],
        [[r["id"], r["name"], r["status"], schedule_text(r, tz), local_time(r["next_run_at"], tz, zone=False),
          r["audience"], r["coupon"] or "-", r.get("runs", 0), r.get("to_send", 0), r.get("held_out", 0),
          r.get("skipped", 0)] for r in rows]))


@broadcast_group.command("cancel")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def broadcast_cancel(cli: CliContext, name: str, yes: bool) -> None:
    """Stop a scheduled broadcast (or one whose messages are not all handed to WeCom yet); its messages not yet
    handed to WeCom are skipped. A finished broadcast keeps its status and history."""
    from bot.campaigns.broadcasts import BroadcastError, cancel_broadcast, find_broadcast, unsent_messages

    with cli.db().begin() as session:
        try:
            broadcast = find_broadcast(session, name)
        except BroadcastError as exc:
            raise click.ClickException(str(exc)) from None
        unsent = unsent_messages(session, broadcast)
        if broadcast.status != "scheduled" and not unsent:
            raise click.ClickException(f"{broadcast.name!r} is {broadcast.status} and has nothing left unsent: "
                                       "nothing to cancel (its history stays)")
        if not yes:
            click.confirm(f"cancel {broadcast.name!r}? {unsent} message(s) not yet handed to WeCom will not go out",
                          abort=True)
        count = cancel_broadcast(session, broadcast, cli.now())
    click.echo(f"cancelled {name!r}; {count} unsent message(s) skipped")


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


@broadcast_group.command("report")
@click.argument("name")
@click.option("--days", type=click.IntRange(1, 365),
              help="Orders within N days of each run (default broadcasts.report_days).")
@pass_cli
def broadcast_report(cli: CliContext, name: str, days: int | None) -> None:
    """效果评估: recipients against the hold-out group, with the lift and a 95% interval."""
    from bot.campaigns.broadcasts import BroadcastError, effect_report, find_broadcast, no_revenue_yet

    settings = cli.settings()
    with cli.db().begin() as session:
        try:
            report = effect_report(session, find_broadcast(session, name), days or settings.broadcasts.report_days)
        except BroadcastError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"{report.broadcast}: {report.runs} run(s), orders within {report.days} days; "
               f"{report.delivered} message(s) confirmed delivered")
    rows = []
    for label, g in (("sent", report.sent), ("held out", report.held_out)):
        rows.append([label, g.customers, g.converters, _pct(g.conversion), f"{g.orders_per_customer:.3f}",
                     fen_to_yuan(round(g.revenue_per_customer_fen))])
    click.echo(render_table(["group", "customers", "ordered", "share", "orders/customer", "revenue/customer 元"], rows))
    lift = report.conversion_lift
    if lift is None:
        click.echo("lift: needs customers in both groups (hold-out 0%, or no run yet)")
    else:
        relative = f", {lift.relative * 100:+.1f}% relative" if lift.relative is not None else ""
        click.echo(f"lift in share who ordered: {lift.difference * 100:+.2f} pts (95% CI "
                   f"{lift.low * 100:+.2f} … {lift.high * 100:+.2f}){relative}")
    revenue = report.revenue_lift_fen
    if no_revenue_yet(report.sent, report.held_out):
        click.echo("lift in revenue per customer: no revenue in either group yet")
    elif revenue is not None:
        click.echo(f"lift in revenue per customer: {revenue.difference / 100:+.2f} 元 (95% CI "
                   f"{revenue.low / 100:+.2f} … {revenue.high / 100:+.2f})")


# ---------------------------------------------------------------- coupons


@click.group("coupons", help="优惠券: definitions, issue, redeem, list.")
def coupons_group() -> None:
    pass


def _book(cli: CliContext) -> CouponBook:
    from bot.campaigns.coupons import CouponBook

    return CouponBook.from_settings(cli.settings())


@coupons_group.command("definitions")
@pass_cli
def coupons_definitions(cli: CliContext) -> None:
    """The coupon definitions in the config (coupons.definitions) and their terms."""
    book = _book(cli)
    click.echo(render_table(["code", "title", "terms", "valid days", "tiers"],
                            [[d.code, d.title, d.terms(), d.valid_days, ",".join(d.tiers) or "all"]
                             for d in book.definitions.values()]))


def _customer(session: Any, ref: str) -> Customer:
    from sqlalchemy import select

    from bot.core.db import row_id
    from bot.models import Customer

    customer = session.scalar(select(Customer).where(Customer.external_userid == ref))
    if customer is None and (number := row_id(ref)) is not None:
        customer = session.get(Customer, number)
    if customer is None:
        raise click.ClickException(f"no customer {ref!r}")
    return customer


@coupons_group.command("issue")
@click.argument("definition")
@click.argument("customer_ref")
@click.option("--reason", default="manual", show_default=True,
              help="Why (one coupon per definition, customer, reason).")
@click.option("--any-tier", is_flag=True,
              help="Issue even when the customer's tier is not one the definition names (as the sidebar never does).")
@pass_cli
def coupons_issue(cli: CliContext, definition: str, customer_ref: str, reason: str, any_tier: bool) -> None:
    """Issue coupon DEFINITION to CUSTOMER_REF (external_userid or id) and print its code. A definition
    limited to some tiers is refused for a customer outside them unless --any-tier."""
    from bot.campaigns.coupons import CouponError, display_code, issue

    book = _book(cli)
    try:
        d = book.get(definition)
    except CouponError as exc:
        raise click.ClickException(str(exc)) from None
    with cli.db().begin() as session:
        customer = _customer(session, customer_ref)
        if not any_tier and not d.allows(customer):
            raise click.ClickException(
                f"{d.code} is for {', '.join(d.tiers)}; customer {customer.external_userid} is "
                f"{customer.value_tier or 'not tiered'}{'/' + customer.rfm_segment if customer.rfm_segment else ''}"
                " (--any-tier issues it anyway)")
        coupon = issue(session, book, d, [customer.id], f"manual:{reason}")[customer.id]
        click.echo(f"{display_code(coupon.code)}  {coupon.title} ({d.terms()}) for {customer.external_userid}, "
                   f"expires {local_time(coupon.expires_at, cli.settings().tz)}")


@coupons_group.command("redeem")
@click.argument("code")
@click.option("--order", "order_id", help="The order it is used on (links revenue; its amount checks the minimum).")
@click.option("--amount", help="The spend in 元, when the order is not imported yet.")
@pass_cli
def coupons_redeem(cli: CliContext, code: str, order_id: str | None, amount: str | None) -> None:
    """Redeem a code once; a second redemption is refused."""
    from bot.campaigns.coupons import display_code, redeem

    settings = cli.settings()
    try:
        amount_fen = number_to_fen(amount) if amount is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--amount") from None
    rules = TagRules.from_settings(cli.rule_settings())
    with cli.db().begin() as session:
        result = redeem(session, code, order_id=order_id, amount_fen=amount_fen, now=cli.now(),
                        tag_rules=rules, push_tags=settings.tags.push_to_wecom, tz=settings.tz)
    if not result.ok:
        raise click.ClickException(f"not redeemed: {result.reason}")
    assert result.coupon is not None
    click.echo(f"redeemed {display_code(result.coupon.code)} ({result.coupon.title})"
               + (f" on order {order_id}" if order_id else ""))


@coupons_group.command("list")
@click.option("--customer", "customer_ref", help="Only this customer's coupons.")
@click.option("--status", type=click.Choice(["issued", "redeemed", "expired", "withdrawn"]),
              help="Only coupons in this status (withdrawn: the message carrying it did not go out).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000),
              help="Show at most this many coupons.")
@pass_cli
def coupons_list(cli: CliContext, customer_ref: str | None, status: str | None, limit: int) -> None:
    """Issued coupons, newest first: code, customer, status, expiry and the order it was used on."""
    from sqlalchemy import select

    from bot.campaigns.coupons import display_code
    from bot.models import Coupon, Customer

    tz = cli.settings().tz
    with cli.db().begin() as session:
        query = select(Coupon, Customer.external_userid).join(Customer, Customer.id == Coupon.customer_id)
        if customer_ref:
            query = query.where(Coupon.customer_id == _customer(session, customer_ref).id)
        if status:
            query = query.where(Coupon.status == status)
        rows = session.execute(query.order_by(Coupon.id.desc()).limit(limit)).all()
        click.echo(render_table(["code", "definition", "customer", "status", "issued for", zoned("expires", tz),
                                 "order"],
                                [[display_code(c.code), c.definition, ext, c.status, c.issue_ref,
                                  local_time(c.expires_at, tz, zone=False), c.order_id or "-"]
                                 for c, ext in rows]))
