"""One customer's latest predictions as the sidebar and the console show them: only the stored rows
and the models' classes, no NumPy or SciPy (the web processes do not load them for a page)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from bot.models import CustomerPrediction, PredictionRun
from segments.money import fen_to_yuan

CHURN_BAND_NAMES = {"high": "高", "medium": "中", "low": "低"}


@dataclass(frozen=True)
class PredictionView:
    """One customer's latest predictions as the sidebar and the console show them (Chinese labels)."""

    churn: str  # 高: P(alive) 0.18 (shown after the label 流失风险)
    value: str  # ¥1,234.00（365 天，按年 10% 折现）
    detail: str  # expected purchases × spend per purchase, next order
    run: str  # which run made them


def prediction_view(session: Session, customer_id: int) -> PredictionView | None:
    """None: no prediction for this customer (no paid order at the last fit, or no fit yet)."""
    row = session.get(CustomerPrediction, customer_id)
    if row is None:
        return None
    run = session.get(PredictionRun, row.run_id)
    horizon = run.horizon_days if run else "?"
    rate = run.discount_rate if run else None
    discount = f"按年 {rate:.0%} 折现" if rate else "未折现"
    next_order = f"；若仍是客户，预计 {row.next_order_on.isoformat()} 前后再次下单" if row.next_order_on else ""
    return PredictionView(
        churn=f"{CHURN_BAND_NAMES[row.churn_risk]}: P(alive) {row.p_alive:.2f}",
        value=f"¥{fen_to_yuan(row.predicted_value_fen)}（{horizon} 天，{discount}）",
        detail=f"预计购买 {row.expected_purchases:.2f} 次 × 每次 ¥{fen_to_yuan(row.expected_spend_fen)}{next_order}",
        run=f"预测运行 #{row.run_id}" + (f"（截至 {run.as_of.isoformat()}）" if run else ""))
