"""``scrm import-orders | import-customers | retier | customer show | export customers``."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bot.cli.context import CliContext, check_output, open_output, pass_cli, render_table

if TYPE_CHECKING:
    from segments.imports import ImportSummary

# segments.imports.ENCODINGS, spelled out so that `scrm --help` needs no SQLAlchemy (a test keeps them equal)
ENCODINGS = ("auto", "utf-8", "gb18030")

SHOWN_ERRORS = 20


class _ImportProgress:
    """One bar per stage of an import: reading (bytes of the file), merging (MERGE_STEPS), auto-tagging
    (the tag rules), so that no bar stands still while later stages run."""

    def __init__(self, what: str, enabled: bool) -> None:
        self.what = what
        self.enabled = enabled
        self.bar: Any = None  # a tqdm bar
        self.unit = ""

    def stage(self, label: str, total: int, unit: str, unit_scale: bool = False) -> None:
        from tqdm import tqdm

        self.close()
        self.unit = unit
        self.bar = tqdm(total=total, unit=unit, unit_scale=unit_scale, desc=f"{self.what}: {label}",
                        disable=not self.enabled)

    def read(self, position: int) -> None:
        if self.bar is not None:
            self.bar.update(max(0, position - self.bar.n))

    def merge_step(self, name: str) -> None:
        from segments.bulk_orders import MERGE_STEPS

        if self.bar is None or self.unit != "step":
            self.stage(name, len(MERGE_STEPS), "step")
        else:
            self.bar.update(1)
        assert self.bar is not None
        self.bar.set_description(f"{self.what}: {name}")

    def advance(self, _name: str = "") -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            if self.bar.total:
                self.bar.update(self.bar.total - self.bar.n)  # a stage that is over is complete
            self.bar.close()
            self.bar = None


def _import(cli: CliContext, path: Path, importer, what: str, encoding: str,  # type: ignore[no-untyped-def]
            progress: _ImportProgress) -> ImportSummary:
    from segments.imports import ImportFailed

    settings = cli.settings()
    size = path.stat().st_size if path.is_file() else 0
    progress.stage("reading", size, "B", unit_scale=True)
    try:
        with cli.db().begin() as session:
            return importer(session, path, settings.tz, progress.read, progress.merge_step, encoding=encoding)
    except ImportFailed as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        progress.close()


def _report(cli: CliContext, summary: ImportSummary, errors_out: Path | None, source: Path) -> None:
    click.echo(f"read {summary.read}, inserted {summary.inserted}, updated {summary.updated}, "
               f"unchanged {summary.unchanged}, skipped {summary.skipped}"
               + (f", new customer stubs {summary.customers_created}" if summary.customers_created else ""))
    click.echo(f"file read as {summary.encoding.upper()}"
               + (" (it is not valid UTF-8)" if summary.encoding != "utf-8" else ""))
    for line, reason in summary.errors[:SHOWN_ERRORS]:
        click.echo(f"  line {line}: {reason}")
    if summary.skipped > SHOWN_ERRORS:
        click.echo(f"  … {summary.skipped - SHOWN_ERRORS} more skipped rows"
                   + ("" if errors_out else " (--errors-out FILE lists them)"))
    if errors_out:
        from segments.export import SafeCsvWriter

        with open_output(cli, errors_out, source) as fh:
            # Reasons quote the rejected input: quoted, and neutralised like every CSV cell we write.
            writer = SafeCsvWriter(fh)
            writer.writerow(["line", "reason"])
            writer.writerows(summary.errors)
    if summary.read and summary.skipped >= summary.read:
        raise click.ClickException(f"all {summary.read} rows were skipped: nothing imported")


def _import_command(name: str):  # type: ignore[no-untyped-def]
    """The options every CSV import shares."""
    def decorate(func):  # type: ignore[no-untyped-def]
        func = pass_cli(func)
        func = click.option("--no-progress", is_flag=True, help="Hide the progress bars.")(func)
        func = click.option("--encoding", type=click.Choice(ENCODINGS, case_sensitive=False), default="auto",
                            show_default=True,
                            help="The file's text encoding: auto reads valid UTF-8 (with or without BOM) as "
                                 "UTF-8 and anything else as GB18030 (GBK, Excel on a Chinese Windows).")(func)
        func = click.option("--errors-out", type=click.Path(dir_okay=False, path_type=Path),
                            help="Write skipped rows' reasons here.")(func)
        func = click.argument("file", type=click.Path(dir_okay=False, path_type=Path))(func)
        return click.command(name)(func)

    return decorate


@_import_command("import-orders")
def import_orders_cmd(cli: CliContext, file: Path, errors_out: Path | None, encoding: str, no_progress: bool) -> None:
    """Import orders: order_id,external_userid,amount,paid_at[,status] (amount in 元, paid_at ISO 8601,
    without an offset a local time in app.timezone; status paid|refunded, empty or left out = paid).
    Idempotent on order_id; bad rows are skipped and reported. Exits 1 when every row is skipped."""
    from segments.imports import import_orders

    if errors_out:
        check_output(cli, errors_out, file)
    progress = _ImportProgress("orders", not no_progress)
    _report(cli, _import(cli, file, import_orders, "orders", encoding.lower(), progress), errors_out, file)
    _report_tags(_apply_tag_rules(cli, progress))


def _apply_tag_rules(cli: CliContext, progress: _ImportProgress | None = None) -> dict[str, int]:
    """Order-threshold and tier-entered auto-tags, set-based; WeCom learns them at `scrm sync tags`."""
    from bot.tagging.rules import TagRules
    from bot.tagging.system import apply_aggregate_rules

    settings = cli.settings()
    rules = TagRules.from_settings(cli.rule_settings())
    if progress:
        progress.stage("auto-tagging", len(rules.rules), "rule")
    try:
        with cli.db().begin() as session:
            return apply_aggregate_rules(session, rules, settings.tags.push_to_wecom,
                                         progress=progress.advance if progress else None)
    finally:
        if progress:
            progress.close()


def _report_tags(added: dict[str, int]) -> None:
    if any(added.values()):
        click.echo("auto-tags: " + ", ".join(f"{rule} +{n}" for rule, n in added.items() if n))


@_import_command("import-customers")
def import_customers_cmd(cli: CliContext, file: Path, errors_out: Path | None, encoding: str,
                         no_progress: bool) -> None:
    """Import customers: external_userid,name,follow_userid,added_at[,birthday] (added_at ISO 8601,
    without an offset a local time in app.timezone). Exits 1 when every row is skipped."""
    from segments.imports import import_customers

    if errors_out:
        check_output(cli, errors_out, file)
    _report(cli, _import(cli, file, import_customers, "customers", encoding.lower(),
                         _ImportProgress("customers", not no_progress)), errors_out, file)


def _as_of(value: str | None, cli: CliContext) -> date:
    if value is None:
        return cli.today()
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD", param_hint="--as-of") from None
    if not 1970 <= day.year <= 2999:  # the windows before it (up to years) must stay inside the calendar
        raise click.BadParameter(f"{value} is out of range (years 1970–2999)", param_hint="--as-of")
    return day


@click.command("retier")
@click.option("--as-of", "as_of_text", help="Local date to tier as of (default: today in app.timezone). Any other "
              "day is a dry run: it shows what the tiers would be and writes nothing.")
@click.option("--full", is_flag=True, help="Look at every customer, not only those whose tiers may have moved.")
@click.option("--counts", is_flag=True, help="Also print the customers per tier value before and after (one "
              "scan of the tier table: slower at a million customers).")
@pass_cli
def retier_cmd(cli: CliContext, as_of_text: str | None, full: bool, counts: bool) -> None:
    """Recompute customers' tiers in SQL and print how many moved between which values.

    As of today it writes the changed tier rows, a TierChange for each changed dimension (the
    tier_actions job acts on those: VIP welcome, win-back, owner alerts) and the tier-entered
    auto-tags of the customers who entered a tier (the order-threshold ones are put on by the order
    import and API, and here to everyone only after the rules changed). As of any other day (--as-of)
    it is a dry run: everything is rolled back, so nothing goes out to anyone because of it. After a
    first run, only customers whose tiers may have moved are looked at (same result as --full)."""
    from bot.tagging.rules import TagRules
    from bot.tagging.system import after_retier
    from segments.policy import TierPolicy
    from segments.retier import retier, tidy_after_commit, tier_counts

    settings = cli.settings()
    as_of = _as_of(as_of_text, cli)
    dry_run = as_of != cli.today()
    rule_settings = cli.rule_settings()  # with the console's edits (auto-tag rules, channel stages)
    rules, push = TagRules.from_settings(rule_settings), settings.tags.push_to_wecom
    db = cli.db()
    with db.sessions() as session, session.begin():
        before = tier_counts(session) if counts else None
        result = retier(session, TierPolicy.of(rule_settings), as_of, settings.tz, full=full,
                        after=after_retier(rules, push))
        after = _counts_after(session, before, result) if before is not None else None
        if dry_run:
            session.rollback()
    if not dry_run:
        tidy_after_commit(db.engine, result)
    _report_retier(result, dry_run, before, after)


Counts = dict[str, dict[str | None, int]]  # customers per value of each dimension (None: no value)


def _counts_after(session: Any, before: Counts, result: Any) -> Counts:
    """The counts after the run: before, moved by the run's own moves (a first tiering: counted)."""
    from segments.retier import tier_counts

    if result.first:
        return tier_counts(session)
    after = {dimension: dict(values) for dimension, values in before.items()}
    for dimension, old, new, n in result.moves:
        values = after[dimension]
        values[old] = values.get(old, 0) - n
        values[new] = values.get(new, 0) + n
    return {dimension: {v: n for v, n in values.items() if n} for dimension, values in after.items()}


def _report_retier(result: Any, dry_run: bool, before: Counts | None, after: Counts | None) -> None:
    from segments.retier import DIMENSIONS
    from segments.rfm import SEGMENT_NAMES

    def shown(dimension: str, value: str | None) -> str:
        label = SEGMENT_NAMES.get(value or "", "") if dimension == "rfm_segment" else ""
        return f"{value or '-'} {label}".strip()

    if result.relocalized:
        click.echo(f"app.timezone changed: {result.relocalized} orders moved to their local day in the zone now set")
    looked = (f" (incremental: looked at {result.recomputed} whose tiers may have moved)" if result.incremental
              else "")
    click.echo(("dry run, nothing written: " if dry_run else "")
               + f"re-tiered {result.customers} customers{looked} as of {result.as_of.isoformat()} in "
               f"{result.seconds:.2f}s: {result.updated} rows written, changes: "
               + ", ".join(f"{d} {n}" for d, n in result.changes.items()))
    if result.first:
        click.echo("a first tiering: every customer's tiers are a baseline, no TierChange is recorded"
                   + ("" if after else " (--counts shows the customers per tier)"))
    elif result.moves:
        order = {d: i for i, d in enumerate(DIMENSIONS)}
        moves = sorted(result.moves, key=lambda m: (order[m[0]], -m[3], m[1] or "", m[2] or ""))
        click.echo(render_table(["dimension", "from", "to", "customers"],
                                [[d, shown(d, old), shown(d, new), n] for d, old, new, n in moves]))
    if before is not None and after is not None:
        rows = []
        for dimension in DIMENSIONS:
            for value in sorted(set(before[dimension]) | set(after[dimension]), key=lambda v: (v is None, v or "")):
                rows.append([dimension, shown(dimension, value), before[dimension].get(value, 0),
                             after[dimension].get(value, 0)])
        click.echo(render_table(["dimension", "value", "before", "after"], rows))
    if dry_run:
        click.echo(f"(as of {result.as_of.isoformat()}, not today: tiers, TierChanges and auto-tags were rolled back)")
    _report_tags(result.after)


@click.group("customer", help="Look at one customer, or erase their personal data.")
def customer_group() -> None:
    pass


@customer_group.command("show")
@click.argument("customer_ref")
@click.option("--as-of", "as_of_text", help="Local date to explain as of (default: today).")
@pass_cli
def customer_show(cli: CliContext, customer_ref: str, as_of_text: str | None) -> None:
    """Print a customer's metrics, each tier dimension and why, then its churn risk and predicted value
    from the last `scrm predict fit` (CUSTOMER_REF: external_userid or id)."""
    from sqlalchemy import select

    from bot.core.db import row_id
    from bot.models import Customer
    from segments.explain import explain
    from segments.policy import TierPolicy
    from segments.predict_runs import prediction_lines

    settings = cli.settings()
    with cli.db().sessions() as session:
        query = select(Customer).where(Customer.external_userid == customer_ref)
        customer = session.scalar(query)
        if customer is None and (number := row_id(customer_ref)) is not None:
            customer = session.get(Customer, number)
        if customer is None:
            raise click.ClickException(f"no customer {customer_ref}")
        for line in explain(session, customer, TierPolicy.of(cli.rule_settings()), _as_of(as_of_text, cli),
                            settings.tz):
            click.echo(line)
        for line in prediction_lines(session, customer.id):
            click.echo(line)
        if customer.opted_out:
            click.echo(_opted_out_line(session, customer, settings.tz))


def _opted_out_line(session: Any, customer: Any, tz: Any) -> str:
    """Whether broadcasts reach the customer, which a reader of `customer show` needs before planning one."""
    from bot.contacts.customers import opted_out_by_customer
    from bot.core.times import local_time

    by = "by the customer in 微信客服" if opted_out_by_customer(session, customer) else "by a member or an operator"
    since = f" since {local_time(customer.opted_out_at, tz)}" if customer.opted_out_at else ""
    return f"opted out of broadcasts and pushes (退订){since}, {by}"


def _opt_command(out: bool) -> Any:
    @click.argument("customer_ref")
    @click.option("--by", default="", help="Who asked for it (a member's userid or your name), for the record.")
    @click.option("--customer-asked", is_flag=True, hidden=out,
                  help="The customer sent 退订 themselves and has now asked, another way, to receive them again.")
    @pass_cli
    def command(cli: CliContext, customer_ref: str, by: str, customer_asked: bool) -> None:
        from sqlalchemy import select

        from bot.contacts.customers import opted_out_by_customer, set_opted_out
        from bot.core.db import row_id
        from bot.models import Customer, utcnow

        with cli.db().begin() as session:
            customer = session.scalar(select(Customer).where(Customer.external_userid == customer_ref))
            if customer is None and (number := row_id(customer_ref)) is not None:
                customer = session.get(Customer, number)
            if customer is None:
                raise click.ClickException(f"no customer {customer_ref}")
            if not out and not customer_asked and opted_out_by_customer(session, customer):
                words = "/".join(cli.settings().kf.opt_in_words)
                raise click.ClickException(
                    f"customer {customer_ref} sent 退订 themselves in 微信客服: they switch it back by sending "
                    f"{words}; if they asked you another way, run again with --customer-asked --by NAME")
            moved = set_opted_out(session, customer, out, utcnow(), via="cli", by=by or None)
        state = "opted out of broadcasts and pushes" if out else "receiving broadcasts and pushes again"
        click.echo(f"customer {customer_ref}: {state}" + ("" if moved else " (already so; nothing changed)"))

    return command


customer_group.command("opt-out", help="Switch a customer off broadcasts and pushes (退订), as when they asked "
                       "for it in a member's chat; conversations (replies, welcomes) still reach them. "
                       "CUSTOMER_REF: external_userid or id.")(_opt_command(True))
customer_group.command("opt-in", help="Undo opt-out (恢复订阅): broadcasts and pushes reach the customer again. "
                       "CUSTOMER_REF: external_userid or id.")(_opt_command(False))


@click.group("export", help="Export data as CSV.")
def export_group() -> None:
    pass


@export_group.command("customers")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default: stdout).")
@pass_cli
def export_customers_cmd(cli: CliContext, out: Path | None) -> None:
    """Customers with tiers, scores, order totals, tags and predictions (P(alive), churn risk, expected
    purchases and predicted value over the last fit's horizon, expected next order date). last_order_at is
    a local time in app.timezone, ISO 8601 with its offset (2026-12-07T20:41:00+08:00)."""
    from segments.export import export_customers

    tz = cli.settings().tz
    with cli.db().sessions() as session:
        if out is None:
            export_customers(session, sys.stdout, tz=tz)
            return
        with open_output(cli, out) as fh:
            count = export_customers(session, fh, tz=tz)
    click.echo(f"wrote {count} customers to {out}")


def _mount_forget() -> None:
    from bot.cli.data import forget_cmd

    customer_group.add_command(forget_cmd)


_mount_forget()
