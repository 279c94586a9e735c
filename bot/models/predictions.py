"""Predicted value and churn risk (segments/predict.py): one row per fit, and each customer's latest
predictions beside its tiers."""

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Date, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bot.models.base import Base, utcnow

CHURN_RISKS = ("low", "medium", "high")  # bands of 1 − P(alive): < 50 %, < 75 %, ≥ 75 % (Braze's)


class PredictionRun(Base):
    """One fit (or a refusal and why): parameters, fit quality, the data window and the holdout check."""

    __tablename__ = "prediction_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    as_of: Mapped[date] = mapped_column(Date)
    horizon_days: Mapped[int]
    discount_rate: Mapped[float | None]  # a year, of the predicted value (migration 0014; None: before it, 0)
    status: Mapped[str] = mapped_column(String(16))  # fitted | refused
    reason: Mapped[str | None] = mapped_column(Text)  # why a fit was refused
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # r, alpha, a, b, p, q, gamma (γ in fen)
    bgnbd_log_likelihood: Mapped[float | None]
    gamma_gamma_log_likelihood: Mapped[float | None]
    data_from: Mapped[date | None] = mapped_column(Date)  # first and last paid day the fit saw
    data_to: Mapped[date | None] = mapped_column(Date)
    customers: Mapped[int] = mapped_column(BigInteger)
    repeat_customers: Mapped[int] = mapped_column(BigInteger)
    holdout: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # predicted vs actual, total and by group
    seconds: Mapped[float]
    fitted_at: Mapped[datetime] = mapped_column(default=utcnow)


class CustomerPrediction(Base):
    """A customer's predictions from the latest fit; customers without paid orders have no row. A narrow
    table of its own like customer_tiers: a refit rewrites these rows, never the customer rows."""

    __tablename__ = "customer_predictions"
    __table_args__ = ({"postgresql_with": {"fillfactor": 70}},)

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(BigInteger)
    p_alive: Mapped[float]
    churn_risk: Mapped[str] = mapped_column(String(8))  # low | medium | high (1 − P(alive): <50, <75, ≥75 %)
    expected_purchases: Mapped[float]  # over the run's horizon
    expected_spend_fen: Mapped[int] = mapped_column(BigInteger)  # per purchase
    predicted_value_fen: Mapped[int] = mapped_column(BigInteger)  # over the run's horizon, at its discount rate
    next_order_on: Mapped[date | None] = mapped_column(Date)  # expected, if still a customer
