"""A prediction run: summarise, fit, predict every customer and store it all (segments/predict.py has
the models). A refusal is stored too, with its reason; the previous predictions then stay, each row
naming the run that made it."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from bot.models import CHURN_RISKS, CustomerPrediction, PredictionRun, TierChange, utcnow
from segments.predict import (
    DEFAULT_DISCOUNT_RATE,
    DEFAULT_HOLDOUT_DAYS,
    DEFAULT_HORIZON_DAYS,
    KLAVIYO_MINIMUM,
    CannotFit,
    Holdout,
    MinimumData,
    Model,
    Predictions,
    fetch_ints,
    fit,
    holdout_check,
    predict,
    summarise,
)

logger = logging.getLogger(__name__)
WRITE_CHUNK = 20_000


@dataclass
class RunOutcome:
    run: PredictionRun
    model: Model | None = None
    holdout: Holdout | None = None
    holdout_skipped: str | None = None
    written: int = 0
    band_changes: dict[str, int] = field(default_factory=dict)  # customers who entered each churn-risk band

    @property
    def refused(self) -> str | None:
        """Why the fit was refused (None: fitted)."""
        return self.run.reason if self.run.status == "refused" else None


def refit(session: Session, as_of: date, horizon_days: int = DEFAULT_HORIZON_DAYS,
          minimum: MinimumData = KLAVIYO_MINIMUM, holdout_days: int | None = DEFAULT_HOLDOUT_DAYS,
          record_changes: bool = True, discount_rate: float = DEFAULT_DISCOUNT_RATE) -> RunOutcome:
    """Fit on the paid orders up to ``as_of`` (a local day), store the run and every customer's predictions;
    with ``holdout_days`` also the holdout check. A refusal is stored as a run with its reason. Churn-risk
    TierChanges (which the tier actions act on) only with ``record_changes``: a fit as of a past day must
    not make anything go out to people."""
    started = time.perf_counter()
    summaries = summarise(session, as_of)
    run = PredictionRun(as_of=as_of, horizon_days=horizon_days, discount_rate=discount_rate,
                        customers=len(summaries), repeat_customers=0,
                        data_from=_day(summaries.first_day), data_to=_day(summaries.last_day), seconds=0.0,
                        fitted_at=utcnow())
    try:
        model = fit(summaries, as_of, minimum)
    except CannotFit as exc:
        run.status, run.reason, run.seconds = "refused", str(exc), time.perf_counter() - started
        session.add(run)
        session.flush()
        logger.warning("prediction run %s as of %s refused: %s", run.id, as_of, exc)
        return RunOutcome(run)
    holdout, skipped = None, None
    if holdout_days:
        try:
            holdout = holdout_check(session, as_of, holdout_days, minimum)
        except CannotFit as exc:
            skipped = str(exc)
    run.status, run.parameters = "fitted", model.parameters()
    run.bgnbd_log_likelihood, run.gamma_gamma_log_likelihood = model.bgnbd_log_likelihood, \
        model.gamma_gamma_log_likelihood
    run.repeat_customers = model.repeat_customers
    run.holdout = _holdout_record(holdout, skipped) if holdout_days else None
    session.add(run)
    session.flush()
    predictions = predict(model, summaries, as_of, horizon_days, discount_rate)
    changes = record_band_changes(session, as_of, predictions) if record_changes else {}
    written = store_predictions(session, run.id, predictions)
    run.seconds = time.perf_counter() - started
    logger.info("prediction run %s as of %s: %d customers in %.2fs", run.id, as_of, written, run.seconds)
    return RunOutcome(run, model, holdout, skipped, written, changes)


def record_band_changes(session: Session, as_of: date, predictions: Predictions) -> dict[str, int]:
    """A TierChange (dimension ``churn_risk``) for each customer whose churn-risk band differs from its
    stored prediction, so tier actions can react (e.g. the owner gets a 回访 task on entering high).
    A customer's first prediction is a baseline, not a change. Compared as arrays, written in one
    executemany; returns the count of changes by new band."""
    bands = {name: code for code, name in enumerate(CHURN_RISKS)}
    case = " ".join(f"WHEN '{name}' THEN {code}" for name, code in bands.items())
    old = fetch_ints(session, "SELECT customer_id, CASE churn_risk " + case + " END, "
                      "CAST(ROUND(p_alive * 1000000) AS BIGINT) FROM customer_predictions", 3)
    if not len(old):
        return {}
    new_codes = np.zeros(len(predictions.customer_id), dtype=np.int64)
    for name, code in bands.items():
        new_codes[predictions.churn_risk == name] = code
    order = np.argsort(predictions.customer_id)  # summaries are sorted already; cheap insurance
    ids, new_codes, new_alive = predictions.customer_id[order], new_codes[order], predictions.p_alive[order]
    where = np.clip(np.searchsorted(ids, old[:, 0]), 0, len(ids) - 1)
    kept = ids[where] == old[:, 0]
    changed = kept & (new_codes[where] != old[:, 1])
    if not changed.any():
        return {}
    at = where[changed]
    rows = [{"customer_id": int(c), "dimension": "churn_risk", "from_value": CHURN_RISKS[int(f)],
             "to_value": CHURN_RISKS[int(t)], "as_of": as_of, "created_at": utcnow(),
             "reason": f"P(alive) {p / 1e6:.2f} → {a:.2f}"}
            for c, f, t, p, a in zip(old[changed, 0], old[changed, 1], new_codes[at], old[changed, 2],
                                     new_alive[at], strict=True)]
    session.connection().execute(insert(TierChange.__table__), rows)
    counts = np.bincount(new_codes[at], minlength=len(CHURN_RISKS))
    return {name: int(counts[code]) for name, code in bands.items() if counts[code]}


PREDICTION_COLUMNS = ("customer_id", "run_id", "p_alive", "churn_risk", "expected_purchases", "expected_spend_fen",
                      "predicted_value_fen", "next_order_on")


def store_predictions(session: Session, run_id: int, predictions: Predictions) -> int:
    """Replace every stored prediction with these: one DELETE, then executemany INSERTs in chunks. Python
    values are made one chunk at a time, so memory holds the arrays and one chunk of rows. SQLite takes
    tuples straight through the driver's executemany (1M rows: 13 s of CPU through SQLAlchemy's Core
    executemany, see docs/performance.md); PostgreSQL gets Core's multi-row INSERTs (insertmanyvalues)."""
    session.execute(delete(CustomerPrediction))
    connection = session.connection()
    sqlite = connection.dialect.name == "sqlite"
    total = len(predictions.customer_id)
    for start in range(0, total, WRITE_CHUNK):
        columns = _chunk(predictions, run_id, slice(start, start + WRITE_CHUNK), dates_as_text=sqlite)
        if sqlite:
            marks = ", ".join("?" * len(PREDICTION_COLUMNS))
            connection.connection.dbapi_connection.executemany(  # type: ignore[union-attr]
                f"INSERT INTO customer_predictions ({', '.join(PREDICTION_COLUMNS)}) VALUES ({marks})",
                zip(*columns, strict=True))
        else:
            connection.execute(insert(CustomerPrediction.__table__),
                               [dict(zip(PREDICTION_COLUMNS, row, strict=True)) for row in zip(*columns, strict=True)])
    return total


def _chunk(predictions: Predictions, run_id: int, part: slice, dates_as_text: bool) -> list[list[Any]]:
    """One slice of the predictions as Python columns, in PREDICTION_COLUMNS order; amounts rounded to fen."""
    ids = predictions.customer_id[part].tolist()
    days = [None if np.isnan(d) else date.fromordinal(int(d)) for d in predictions.next_order_day[part].tolist()]
    return [ids, [run_id] * len(ids), np.round(predictions.p_alive[part], 6).tolist(),
            predictions.churn_risk[part].tolist(), np.round(predictions.expected_purchases[part], 6).tolist(),
            np.rint(predictions.expected_spend_fen[part]).astype(np.int64).tolist(),
            np.rint(predictions.predicted_value_fen[part]).astype(np.int64).tolist(),
            [d.isoformat() if d and dates_as_text else d for d in days]]


def latest_run(session: Session, fitted_only: bool = True) -> PredictionRun | None:
    query = select(PredictionRun).order_by(PredictionRun.id.desc()).limit(1)
    if fitted_only:
        query = query.where(PredictionRun.status == "fitted")
    return session.scalar(query)


def _holdout_record(holdout: Holdout | None, skipped: str | None) -> dict[str, Any]:
    if holdout is None:
        return {"skipped": skipped}
    return {"calibration_end": holdout.calibration_end.isoformat(), "end": holdout.end.isoformat(),
            "parameters": holdout.model.parameters(), "total": asdict(holdout.total),
            "groups": [asdict(row) for row in holdout.rows]}


def _day(ordinal: int | None) -> date | None:
    return date.fromordinal(ordinal) if ordinal is not None else None


def prediction_lines(session: Session, customer_id: int) -> list[str]:
    """What ``scrm customer show`` prints under the tiers: churn risk with P(alive), then value."""
    from segments.money import fen_to_yuan
    from segments.predict import CHURN_BAND_NAMES

    row = session.get(CustomerPrediction, customer_id)
    latest = latest_run(session, fitted_only=False)
    refused = [f"latest prediction run {latest.id} as of {latest.as_of.isoformat()} refused: {latest.reason}"] \
        if latest is not None and latest.status == "refused" else []
    if row is None:
        return [*refused, "predictions: none (no paid orders at the last prediction run, or no run yet: "
                          "`scrm predict fit`)"]
    run = session.get(PredictionRun, row.run_id)
    horizon = run.horizon_days if run else "?"
    source = f"prediction run {row.run_id} as of {run.as_of.isoformat()}" if run else f"prediction run {row.run_id}"
    next_order = (f"; next order expected around {row.next_order_on.isoformat()} if still a customer"
                  if row.next_order_on else "")
    return [*refused,
            f"流失风险 {CHURN_BAND_NAMES[row.churn_risk]}: P(alive) {row.p_alive:.2f} — churn risk {row.churn_risk} "
            f"(churn probability {1 - row.p_alive:.0%}; high ≥ 75%, medium ≥ 50%) [{source}]",
            f"predicted value: {fen_to_yuan(row.predicted_value_fen)} 元 in {horizon} days{discounted(run)} — "
            f"{row.expected_purchases:.2f} expected purchases × {fen_to_yuan(row.expected_spend_fen)} 元 per "
            f"purchase{next_order}"]


def discounted(run: PredictionRun | None) -> str:
    """How a run's predicted values are discounted, for the lines that show them."""
    rate = run.discount_rate if run is not None else None
    return f", discounted at {rate:.0%} a year" if rate else ", undiscounted"

