"""``scrm predict fit``: fit BG/NBD + Gamma-Gamma, store every customer's predictions, print the
parameters and the holdout check."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import click

from bot.cli.context import CliContext, pass_cli, render_table
from bot.cli.tiers import _as_of
from segments.money import fen_to_yuan

if TYPE_CHECKING:
    from segments.predict_runs import RunOutcome

# segments.predict's default, spelled out so that `scrm --help` loads no NumPy or SciPy (a test keeps them equal)
DEFAULT_HOLDOUT_DAYS = 90


@click.group("predict", help="Predicted customer value and churn risk (BG/NBD + Gamma-Gamma).")
def predict_group() -> None:
    pass


@predict_group.command("fit")
@click.option("--as-of", "as_of_text", help="Local date to fit as of (default: today in app.timezone).")
@click.option("--horizon-days", type=click.IntRange(1, 3650),
              help="Days ahead the expected purchases and predicted value cover (default: predictions.horizon_days, "
                   "365).")
@click.option("--discount-rate", type=click.FloatRange(0, 1, max_open=True),
              help="Yearly discount rate of the predicted value, compounded per 30 days (default: "
                   "predictions.discount_rate, 0: undiscounted; 0.10 counts money a year ahead at 1/1.1).")
@click.option("--holdout-days", type=click.IntRange(0, 3650), default=DEFAULT_HOLDOUT_DAYS, show_default=True,
              help="Days held out for the validation (0: no validation).")
@pass_cli
def predict_fit(cli: CliContext, as_of_text: str | None, horizon_days: int | None, discount_rate: float | None,
                holdout_days: int) -> None:
    """Fit on every customer's paid orders up to --as-of, store each customer's P(alive), expected purchases
    and value; then fit again on the orders before the last --holdout-days days and compare its predictions
    with the purchases made in them. Exits 1, saying why, when the data is below the minimums (the
    predictions.min_* settings). A fit as of another day than today records no churn-risk changes, so no
    回访 task comes of it."""
    from sqlalchemy import func, select

    from bot.models import CustomerPrediction
    from segments.predict import minimum_from_settings
    from segments.predict_runs import refit

    as_of = _as_of(as_of_text, cli)
    settings = cli.settings().predictions
    with cli.db().begin() as session:
        outcome = refit(session, as_of, horizon_days or settings.horizon_days, minimum_from_settings(settings),
                        holdout_days=holdout_days, record_changes=as_of == cli.today(),
                        discount_rate=settings.discount_rate if discount_rate is None else discount_rate)
        bands = Counter(dict(session.execute(select(CustomerPrediction.churn_risk, func.count())
                                             .group_by(CustomerPrediction.churn_risk)).all()))
    if outcome.refused:
        raise click.ClickException(f"prediction run {outcome.run.id}: {outcome.refused}")
    _print_fit(outcome, bands)
    _print_holdout(outcome)


def _print_fit(outcome: RunOutcome, bands: Counter[str]) -> None:
    from segments.predict import CHURN_BAND_NAMES
    from segments.predict_runs import discounted

    run, model = outcome.run, outcome.model
    assert model is not None
    bg, gg = model.bgnbd, model.gamma_gamma
    click.echo(f"prediction run {run.id} as of {run.as_of.isoformat()}: {run.customers} customers with paid orders "
               f"({run.repeat_customers} with repeat purchases), orders {run.data_from} … {run.data_to}, "
               f"{run.seconds:.2f}s")
    click.echo(f"BG/NBD      r={bg.r:.4f} alpha={bg.alpha:.4f} a={bg.a:.4f} b={bg.b:.4f} "
               f"log-likelihood {model.bgnbd_log_likelihood:.2f}")
    click.echo(f"Gamma-Gamma p={gg.p:.4f} q={gg.q:.4f} gamma={gg.gamma:.2f} (fen) "
               f"log-likelihood {model.gamma_gamma_log_likelihood:.2f}; mean spend per purchase "
               f"{fen_to_yuan(round(gg.p * gg.gamma / (gg.q - 1)))} 元")
    click.echo(f"stored {outcome.written} customers' predictions over {run.horizon_days} days (predicted value"
               f"{discounted(run)}); churn risk: "
               + ", ".join(f"{CHURN_BAND_NAMES[b]} {b} {bands.get(b, 0)}" for b in ("high", "medium", "low")))


def _print_holdout(outcome: RunOutcome) -> None:
    if outcome.holdout_skipped:
        click.echo(f"holdout check skipped: {outcome.holdout_skipped}")
    holdout = outcome.holdout
    if holdout is None:
        return
    click.echo(f"holdout check: fitted on orders up to {holdout.calibration_end.isoformat()}, purchases "
               f"after it up to {holdout.end.isoformat()} "
               "by repeat purchases in the calibration period")
    rows = [[r.group, r.customers, f"{r.predicted:.1f}", r.actual, _error(r.predicted, r.actual)]
            for r in [*holdout.rows, holdout.total]]
    click.echo(render_table(["repeat purchases", "customers", "predicted", "actual", "error"], rows))


def _error(predicted: float, actual: int) -> str:
    return f"{(predicted - actual) / actual:+.1%}" if actual else "-"
