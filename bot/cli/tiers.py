"""``scrm import-orders | import-customers | retier | customer show | export customers``."""

from __future__ import annotations

import sys
from datetime import date, datetime
from pathlib import Path

import click
from sqlalchemy import select
from tqdm import tqdm

from bot.cli.context import CliContext, pass_cli, render_table
from bot.models import Customer
from bot.tagging.rules import TagRules
from bot.tagging.system import apply_aggregate_rules
from segments.bulk_orders import MERGE_STEPS
from segments.export import SafeCsvWriter, export_customers
from segments.imports import ENCODINGS, ImportFailed, ImportSummary, import_customers, import_orders
from segments.policy import TierPolicy
from segments.predict_runs import prediction_lines
from segments.retier import DIMENSIONS, retier, tidy_after_commit, tier_counts
from segments.rfm import SEGMENT_NAMES

SHOWN_ERRORS = 20


class _ImportProgress:
    """One bar per stage of an import: reading (bytes of the file), merging (MERGE_STEPS), auto-tagging
    (the tag rules), so that no bar stands still while later stages run."""

    def __init__(self, what: str, enabled: bool) -> None:
        self.what = what
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.unit = ""

    def stage(self, label: str, total: int, unit: str, unit_scale: bool = False) -> None:
        self.close()
        self.unit = unit
        self.bar = tqdm(total=total, unit=unit, unit_scale=unit_scale, desc=f"{self.what}: {label}",
                        disable=not self.enabled)

    def read(self, position: int) -> None:
        if self.bar is not None:
            self.bar.update(max(0, position - self.bar.n))

    def merge_step(self, name: str) -> None:
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


def _report(summary: ImportSummary, errors_out: Path | None) -> None:
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
        with errors_out.open("w", encoding="utf-8", newline="") as fh:
            # Reasons quote the rejected input: quoted, and neutralised like every CSV cell we write.
            SafeCsvWriter(fh).writerows(summary.errors)
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
    progress = _ImportProgress("orders", not no_progress)
    _report(_import(cli, file, import_orders, "orders", encoding.lower(), progress), errors_out)
    _report_tags(_apply_tag_rules(cli, progress))


def _apply_tag_rules(cli: CliContext, progress: _ImportProgress | None = None) -> dict[str, int]:
    """Order-threshold and tier-entered auto-tags, set-based; WeCom learns them at `scrm sync tags`."""
    settings = cli.settings()
    rules = TagRules.from_settings(settings)
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
    _report(_import(cli, file, import_customers, "customers", encoding.lower(),
                    _ImportProgress("customers", not no_progress)), errors_out)


def _as_of(value: str | None, cli: CliContext) -> date:
    if value is None:
        return datetime.now(cli.settings().tz).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD", param_hint="--as-of") from None


@click.command("retier")
@click.option("--as-of", "as_of_text", help="Local date to tier as of (default: today in app.timezone).")
@click.option("--full", is_flag=True, help="Look at every customer, not only those whose tiers may have moved.")
@pass_cli
def retier_cmd(cli: CliContext, as_of_text: str | None, full: bool) -> None:
    """Recompute customers' tiers in SQL and print counts before and after. After a first run, only
    customers whose tiers may have moved are looked at (same result as --full)."""
    settings = cli.settings()
    as_of = _as_of(as_of_text, cli)
    policy = TierPolicy.from_settings(settings.tiers)
    with cli.db().begin() as session:
        before = tier_counts(session)
        result = retier(session, policy, as_of, settings.tz, full=full)
        after = tier_counts(session)
    tidy_after_commit(cli.db().engine, result)
    looked = (f" (incremental: looked at {result.recomputed} whose tiers may have moved)" if result.incremental
              else "")
    click.echo(f"re-tiered {result.customers} customers{looked} as of {as_of.isoformat()} in {result.seconds:.2f}s: "
               f"{result.updated} rows written, changes: "
               + ", ".join(f"{d} {n}" for d, n in result.changes.items()))
    rows = []
    for dimension in DIMENSIONS:
        for value in sorted(set(before[dimension]) | set(after[dimension]), key=lambda v: (v is None, v or "")):
            label = SEGMENT_NAMES.get(value or "", "") if dimension == "rfm_segment" else ""
            rows.append([dimension, f"{value or '-'} {label}".strip(), before[dimension].get(value, 0),
                         after[dimension].get(value, 0)])
    click.echo(render_table(["dimension", "value", "before", "after"], rows))
    _report_tags(_apply_tag_rules(cli))


@click.group("customer", help="Look at one customer.")
def customer_group() -> None:
    pass


@customer_group.command("show")
@click.argument("customer_ref")
@click.option("--as-of", "as_of_text", help="Local date to explain as of (default: today).")
@pass_cli
def customer_show(cli: CliContext, customer_ref: str, as_of_text: str | None) -> None:
    """Print a customer's metrics, each tier dimension and why, then its churn risk and predicted value
    from the last `scrm predict fit` (CUSTOMER_REF: external_userid or id)."""
    from segments.explain import explain

    settings = cli.settings()
    with cli.db().sessions() as session:
        query = select(Customer).where(Customer.external_userid == customer_ref)
        customer = session.scalar(query)
        if customer is None and customer_ref.isdigit():
            customer = session.get(Customer, int(customer_ref))
        if customer is None:
            raise click.ClickException(f"no customer {customer_ref}")
        for line in explain(session, customer, TierPolicy.from_settings(settings.tiers), _as_of(as_of_text, cli),
                            settings.tz):
            click.echo(line)
        for line in prediction_lines(session, customer.id):
            click.echo(line)


@click.group("export", help="Export data as CSV.")
def export_group() -> None:
    pass


@export_group.command("customers")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default: stdout).")
@pass_cli
def export_customers_cmd(cli: CliContext, out: Path | None) -> None:
    """Customers with tiers, scores, order totals, tags and predictions (P(alive), churn risk, expected
    purchases and predicted value over the last fit's horizon, expected next order date)."""
    with cli.db().sessions() as session:
        if out is None:
            export_customers(session, sys.stdout)
            return
        with out.open("w", encoding="utf-8", newline="") as fh:
            count = export_customers(session, fh)
    click.echo(f"wrote {count} customers to {out}")
