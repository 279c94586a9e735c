"""Where each customer is going: BG/NBD (Fader, Hardie & Lee 2005) for whether a customer is still
buying and how often, Gamma-Gamma (Fader & Hardie 2005) for how much per purchase.

Time is in whole local days and several paid orders on one day are one purchase of the day's sum, as
in the papers and the reference implementations. Per customer, as of a day:

- ``x``   repeat purchases (distinct paid days after the first),
- ``t_x`` days from the first purchase to the last,
- ``T``   days from the first purchase to the as-of day,
- ``repeat_fen`` the money of the repeat purchases (Gamma-Gamma uses their mean, as the paper does).

The summaries come from one SQL query; the likelihoods, the fit (SciPy's optimiser on the log of each
parameter, over the distinct (x, t_x, T) triples weighted by how many customers share them) and the
per-customer predictions are NumPy arrays — nothing loops over customers in Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date
from itertools import chain
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import digamma, expit, gammaln, hyp2f1
from sqlalchemy.orm import Session

from segments.predict_view import CHURN_BAND_NAMES  # noqa: F401 - re-exported for the CLI

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

DEFAULT_HORIZON_DAYS = 365
DEFAULT_HOLDOUT_DAYS = 90
DEFAULT_DISCOUNT_RATE = 0.0  # a year; 0: undiscounted (bot.core.config.PredictionsSettings.discount_rate)
# Braze's churn-risk bands over the churn probability 1 − P(alive): 0–50 low, 50–75 medium, 75–100 high.
CHURN_BANDS = ((0.75, "high"), (0.5, "medium"), (0.0, "low"))  # names as in bot.models.CHURN_RISKS
FETCH_ROWS = 50_000
SUMMARY_CACHE_KIB = -16384  # PRAGMA cache_size: negative = KiB
LOG_BOUNDS = (-12.0, 14.0)  # e^-12 … e^14: far beyond any sensible rate, dropout or spend parameter


class CannotFit(ValueError):
    """The data is below a minimum, or the model does not describe it; the message says which and why."""


@dataclass(frozen=True)
class MinimumData:
    """The least data a fit needs (Klaviyo's published minimums: 500 customers with valid orders, 180
    days of history, orders in the last 30 days, some customers with three orders or more)."""

    customers: int = 500
    history_days: int = 180
    recent_days: int = 30
    customers_with_three: int = 20
    repeat_customers: int = 50  # Gamma-Gamma fits spend on the repeat purchases only


KLAVIYO_MINIMUM = MinimumData()


def minimum_from_settings(predictions: Any) -> MinimumData:
    """The ``[predictions]`` settings' min_* keys (bot.core.config.PredictionsSettings)."""
    return MinimumData(customers=predictions.min_customers, history_days=predictions.min_history_days,
                       recent_days=predictions.min_recent_days,
                       customers_with_three=predictions.min_customers_with_three,
                       repeat_customers=predictions.min_repeat_customers)


# ---------------------------------------------------------------- the data, from SQL


@dataclass
class Summaries:
    """Per customer with a paid order on or before the calibration day; arrays aligned by position."""

    customer_id: IntArray
    x: IntArray
    t_x: IntArray
    T: IntArray
    repeat_fen: IntArray
    first_day: int | None = None  # the data window: first and last paid day in the calibration period
    last_day: int | None = None
    holdout: IntArray | None = None  # purchases (paid days) after the calibration day, up to the end

    def __len__(self) -> int:
        return len(self.customer_id)

    def mean_repeat_fen(self) -> FloatArray:
        """Mean spend of the repeat purchases (0 without any)."""
        return np.divide(self.repeat_fen, self.x, out=np.zeros(len(self), dtype=np.float64), where=self.x > 0)


# The first day's money, for the repeat purchases' sum, without a window or a join: the smallest of
# paid_day · 2^42 + fen is the first day's, and its remainder is that day's fen. A day ordinal stays
# below 2^20 (the year 2870), so the key stays below 2^63; a day's fen at or above 2^42 (44 billion 元)
# is capped in the key. Two GROUP BYs and no window: 100k customers' summaries 2.8 → 1.8 s of CPU.
FIRST_DAY_KEY = 1 << 42
SUMMARY_SQL = """
WITH days AS (
    SELECT customer_id, paid_day, SUM(amount_fen) AS fen
    FROM orders{hint}
    WHERE status = 'paid' AND paid_day <= {calibration_day}
    GROUP BY customer_id, paid_day
)
SELECT customer_id, COUNT(*) - 1 AS x, MAX(paid_day) - MIN(paid_day) AS t_x,
       {calibration_day} - MIN(paid_day) AS big_t,
       SUM(fen) - MIN(paid_day * {key} + CASE WHEN fen < {key} THEN fen ELSE {key} - 1 END) % {key} AS repeat_fen
FROM days GROUP BY customer_id
"""

HOLDOUT_SQL = """
SELECT customer_id, COUNT(DISTINCT paid_day) AS purchases FROM orders
WHERE status = 'paid' AND paid_day > {calibration_day} AND paid_day <= {end_day}
GROUP BY customer_id
"""


# From the maintained aggregates (customer_aggregates.paid_days and first_day_fen, kept by every order
# writer): a scan of one narrow row per customer instead of grouping every paid order by customer and
# day. x, t_x and T travel packed in one integer (TRIPLE_BITS each; the driver's per-value cost is most
# of the read: 1M customers' five columns 1.8–2.1 s, three 1.1–1.6 s). A row whose purchase days are
# not known (NULL) reads as -1: then the orders are read instead.
TRIPLE_BITS = 21  # x and T below 2^21 days (5,700 years): the triple stays below 2^63
AGGREGATE_SUMMARY_SQL = """
SELECT customer_id,
       CASE WHEN paid_days IS NULL OR first_day_fen IS NULL THEN -1
            ELSE ((paid_days - 1) * {shift} + last_order_day - first_order_day) * {shift}
                 + {calibration_day} - first_order_day END AS triple,
       paid_amount_fen - coalesce(first_day_fen, 0) AS repeat_fen
FROM customer_aggregates WHERE order_count > 0 ORDER BY customer_id
"""


def summarise(session: Session, calibration_day: date, end_day: date | None = None) -> Summaries:
    """Summaries as of ``calibration_day`` (a local day, inclusive) from paid orders (refunded ones have
    status ``refunded`` and do not count); with ``end_day`` also each customer's purchases after it.
    When no paid order lies after the calibration day, from the per-customer aggregates."""
    cal = calibration_day.toordinal()
    table = _from_aggregates(session, cal) if end_day is None else None
    if table is None:
        table = _from_orders(session, cal)
    summaries = Summaries(customer_id=table[:, 0], x=table[:, 1], t_x=table[:, 2], T=table[:, 3],
                          repeat_fen=table[:, 4])
    if len(summaries):
        summaries.first_day = int(cal - summaries.T.max())
        summaries.last_day = int(cal - (summaries.T - summaries.t_x).min())
    if end_day is not None:
        later = fetch_ints(session, HOLDOUT_SQL.format(calibration_day=cal, end_day=end_day.toordinal()), 2)
        summaries.holdout = _aligned(summaries.customer_id, later[:, 0], later[:, 1])
    return summaries


def _from_aggregates(session: Session, calibration_day: int) -> IntArray | None:
    """The summaries from customer_aggregates, or None when they cannot serve: a paid order after the
    calibration day (the aggregates count it), or a customer whose purchase days are not known."""
    latest = session.connection().exec_driver_sql(
        "SELECT max(last_order_day) FROM customer_aggregates WHERE order_count > 0").scalar()
    if latest is not None and int(latest) > calibration_day:
        return None
    packed = fetch_ints(session, AGGREGATE_SUMMARY_SQL.format(calibration_day=calibration_day,
                                                              shift=1 << TRIPLE_BITS), 3)
    triple = packed[:, 1]
    if len(packed) and (triple < 0).any():
        return None
    mask = (1 << TRIPLE_BITS) - 1
    return np.stack([packed[:, 0], triple >> (2 * TRIPLE_BITS), (triple >> TRIPLE_BITS) & mask, triple & mask,
                     packed[:, 2]], axis=1)


def _from_orders(session: Session, cal: int) -> IntArray:
    # SQLite would walk the (customer_id, paid_at) index to group by customer and fetch every order row
    # from it in index order; one pass over the table and a sort is faster (1M orders: 14 s → 5 s).
    # PostgreSQL chooses a sequential scan and a hash aggregate by itself.
    sqlite = session.get_bind().dialect.name == "sqlite"
    sql = SUMMARY_SQL.format(hint=" NOT INDEXED" if sqlite else "", calibration_day=cal, key=FIRST_DAY_KEY)
    with _small_sqlite_cache(session, sqlite):
        return fetch_ints(session, sql, 5)


@contextmanager
def _small_sqlite_cache(session: Session, sqlite: bool) -> Iterator[None]:
    """SQLite sizes its sorter's memory by the page cache (128 MB for imports, bot/core/db.py): the
    summaries' sort of every paid order then peaked at 560 MB for 10M orders; with 16 MB it peaks at
    227 MB and takes less CPU (24.7 → 20.2 s), the sorted runs going to temporary files."""
    if not sqlite:
        yield
        return
    connection = session.connection()
    before = connection.exec_driver_sql("PRAGMA cache_size").scalar()
    connection.exec_driver_sql(f"PRAGMA cache_size={SUMMARY_CACHE_KIB}")
    try:
        yield
    finally:
        connection.exec_driver_sql(f"PRAGMA cache_size={int(before)}")


def fetch_ints(session: Session, sql: str, width: int) -> IntArray:
    """The query's rows as an int64 array sorted by the first column, read from the driver's cursor in
    slices: SQLAlchemy's Row objects cost more than the query for a million rows, and all of them at
    once more memory than the arrays. The SQL holds only integers the code computed (day ordinals)."""
    cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        parts = []
        while rows := cursor.fetchmany(FETCH_ROWS):  # fromiter: a third of np.array's time on tuples
            parts.append(np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=len(rows) * width)
                         .reshape(-1, width))
    finally:
        cursor.close()
    table = np.concatenate(parts) if parts else np.empty((0, width), dtype=np.int64)
    if len(table) > 1 and not (np.diff(table[:, 0]) > 0).all():  # PostgreSQL's hash aggregate: any order
        table = table[np.argsort(table[:, 0], kind="stable")]
    return table


def _aligned(ids: IntArray, other_ids: IntArray, values: IntArray) -> IntArray:
    """``values`` (keyed by sorted ``other_ids``) placed at the positions of sorted ``ids``; 0 where absent."""
    out = np.zeros(len(ids), dtype=np.int64)
    if len(other_ids) == 0 or len(ids) == 0:
        return out
    where = np.clip(np.searchsorted(other_ids, ids), 0, len(other_ids) - 1)
    found = other_ids[where] == ids
    out[found] = values[where[found]]
    return out


def check_minimums(summaries: Summaries, calibration_day: date, minimum: MinimumData) -> None:
    """Raise :class:`CannotFit` naming every minimum the data misses."""
    cal = calibration_day.toordinal()
    misses: list[str] = []
    if len(summaries) < minimum.customers:
        misses.append(f"{len(summaries)} customers with paid orders (needs ≥ {minimum.customers})")
    history = cal - summaries.first_day if summaries.first_day is not None else 0
    if history < minimum.history_days:
        misses.append(f"{history} days of order history (needs ≥ {minimum.history_days})")
    if summaries.last_day is None or cal - summaries.last_day >= minimum.recent_days:
        misses.append(f"no paid order in the last {minimum.recent_days} days")
    three = int((summaries.x >= 2).sum())
    if three < minimum.customers_with_three:
        misses.append(f"{three} customers with ≥ 3 purchase days (needs ≥ {minimum.customers_with_three})")
    repeat = int(((summaries.x > 0) & (summaries.repeat_fen > 0)).sum())
    if repeat < minimum.repeat_customers:
        misses.append(f"{repeat} customers with a paid repeat purchase (needs ≥ {minimum.repeat_customers})")
    if misses:
        raise CannotFit("cannot fit because the data has " + "; ".join(misses))


# ---------------------------------------------------------------- BG/NBD


@dataclass(frozen=True)
class BgNbd:
    """Purchase rate λ ~ Gamma(r, α) per day; dropout after each purchase with p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


def bgnbd_log_likelihood(params: BgNbd, x: FloatArray, t_x: FloatArray, T: FloatArray,
                         x_levels: tuple[FloatArray, IntArray] | None = None) -> FloatArray:
    """Each customer's log-likelihood (FHL 2005, eq. 6). ``x_levels`` (the distinct x and each row's
    position among them) lets the terms in x alone be computed once per distinct x."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    levels, at = x_levels if x_levels is not None else (x, slice(None))
    # B(a, b+x) / B(a, b) through gammaln: betaln is several times slower, and Γ(a) cancels.
    in_x = gammaln(r + levels) + gammaln(b + levels) - gammaln(a + b + levels)
    head = in_x[at] - gammaln(r) + r * np.log(alpha) + gammaln(a + b) - gammaln(b)
    stayed = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    # Dropped right after the last purchase: only for customers who purchased again (B(a+1, b+x-1)).
    left = np.where(repeat, np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0)) - (r + x) * np.log(alpha + t_x),
                    -np.inf)
    return head + np.logaddexp(stayed, left)


def _distinct(x: IntArray, t_x: IntArray, T: IntArray) -> tuple[list[FloatArray], FloatArray, IntArray]:
    """The distinct (x, t_x, T) triples, how many customers share each, and each customer's triple: the
    fit's and the predictions' work is per triple (whole days repeat a lot)."""
    if all(np.issubdtype(c.dtype, np.integer) for c in (x, t_x, T)) and len(x) and \
            max(int(x.max()), int(T.max())) < 1 << 21 and min(int(x.min()), int(t_x.min())) >= 0:
        # One int64 key per customer: far faster than np.unique over rows.
        keys, inverse, counts = np.unique((x << 42) | (t_x << 21) | T, return_inverse=True, return_counts=True)
        columns = [keys >> 42, (keys >> 21) & ((1 << 21) - 1), keys & ((1 << 21) - 1)]
    else:  # fractional times (simulations in continuous time)
        unique, inverse, counts = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_inverse=True,
                                            return_counts=True)
        columns = [unique[:, i] for i in range(3)]
    return [c.astype(np.float64) for c in columns], counts.astype(np.float64), inverse.reshape(-1)


@dataclass(frozen=True)
class FitResult:
    log_likelihood: float
    converged: bool
    message: str


def _fit(objective: Any, start: FloatArray) -> tuple[FloatArray, FitResult]:
    """``objective``: the negative mean log-likelihood and its gradient at the log-parameters. With the
    exact gradient L-BFGS-B needs 15–25 evaluations where finite differences took 56–85 (five per step)."""
    result = minimize(objective, start, method="L-BFGS-B", jac=True, bounds=[LOG_BOUNDS] * len(start))
    if not result.success:  # from where it stopped, the derivative-free method
        result = minimize(lambda v: objective(v)[0], result.x, method="Nelder-Mead",
                          options={"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-10})
    return np.asarray(result.x), FitResult(float(-result.fun), bool(result.success), str(result.message))


def _negative_mean(ll: FloatArray, gradient: list[FloatArray], weight: FloatArray | None, total: float,
                   params: FloatArray) -> tuple[float, FloatArray]:
    """The negative (weighted) mean log-likelihood and its gradient by the log of each parameter."""
    def mean(values: FloatArray) -> float:  # not np.dot: BLAS threads cost more than they give here
        return float((values if weight is None else weight * values).sum()) / total

    value = -mean(ll)
    if not np.isfinite(value):
        return 1e300, np.zeros(len(params))
    return value, -np.array([mean(g) for g in gradient]) * params


def bgnbd_gradient(params: BgNbd, x: FloatArray, t_x: FloatArray, T: FloatArray,
                   x_levels: tuple[FloatArray, IntArray]) -> tuple[FloatArray, list[FloatArray]]:
    """Each customer's log-likelihood (as :func:`bgnbd_log_likelihood`) and its derivatives by r, α, a, b.
    With w the weight of "dropped after the last purchase" in the sum of the two cases:
    ∂r = ψ(r+x) − ψ(r) + ln α − (1−w) ln(α+T) − w ln(α+t_x);  ∂α = r/α − (r+x)((1−w)/(α+T) + w/(α+t_x));
    ∂a = ψ(a+b) − ψ(a+b+x) + w/a;  ∂b = ψ(b+x) − ψ(b) + ψ(a+b) − ψ(a+b+x) − w/(b+x−1)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    levels, at = x_levels
    in_x = gammaln(r + levels) + gammaln(b + levels) - gammaln(a + b + levels)
    head = in_x[at] - gammaln(r) + r * np.log(alpha) + gammaln(a + b) - gammaln(b)
    log_after_t = np.log(alpha + T)
    log_after_tx = np.log(alpha + t_x)
    stayed = -(r + x) * log_after_t
    repeat = x > 0
    b_x = np.where(repeat, b + x - 1, 1.0)
    left = np.where(repeat, np.log(a) - np.log(b_x) - (r + x) * log_after_tx, -np.inf)
    ll = head + np.logaddexp(stayed, left)
    w = expit(left - stayed)  # 0 where x = 0
    psi_r, psi_b, psi_ab = (digamma(v + levels)[at] for v in (r, b, a + b))
    d_r = psi_r - digamma(r) + np.log(alpha) - (1 - w) * log_after_t - w * log_after_tx
    d_alpha = r / alpha - (r + x) * ((1 - w) / (alpha + T) + w / (alpha + t_x))
    d_a = digamma(a + b) - psi_ab + w / a
    d_b = psi_b - digamma(b) + digamma(a + b) - psi_ab - w / b_x
    return ll, [d_r, d_alpha, d_a, d_b]


def fit_bgnbd(x: IntArray, t_x: IntArray, T: IntArray) -> tuple[BgNbd, float]:
    """Maximum-likelihood BG/NBD parameters and the total log-likelihood, over the distinct (x, t_x, T)
    triples weighted by how many customers share each (the same likelihood, summed once per triple)."""
    (ux, ut, uT), weight, _ = _distinct(x, t_x, T)
    total = float(weight.sum())
    levels, at = np.unique(ux, return_inverse=True)
    x_levels = (levels, at.reshape(-1))

    def objective(log_params: FloatArray) -> tuple[float, FloatArray]:
        params = np.exp(log_params)
        ll, gradient = bgnbd_gradient(BgNbd(*params), ux, ut, uT, x_levels)
        return _negative_mean(ll, gradient, weight, total, params)

    start = np.log([1.0, max(1.0, float(np.mean(T))), 1.0, 1.0])
    log_params, fit = _fit(objective, start)
    if not fit.converged:
        raise CannotFit(f"cannot fit because the BG/NBD optimiser did not converge ({fit.message})")
    return BgNbd(*(float(v) for v in np.exp(log_params))), fit.log_likelihood * total


def p_alive(params: BgNbd, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
    """P(still a customer | x, t_x, T) (FHL 2005, eq. 11)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    repeat = x > 0
    log_odds = (np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0))
                + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x)))
    return np.where(repeat, expit(-log_odds), 1.0)


def expected_purchases(params: BgNbd, days: float, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
    """Expected purchases in the next ``days`` days given the history (FHL 2005, eq. 10)."""
    a = _off_one(params.a)
    return (a + params.b + x - 1) / (a - 1) * (1 - _tail(params, days, x, T)) * p_alive(params, x, t_x, T)


def _tail(params: BgNbd, days: float, x: FloatArray, T: FloatArray) -> FloatArray:
    """The bracket of FHL 2005 eq. 10 that depends on the days ahead: 1 − it, times the factor before
    and P(alive), is the expected purchases in the next ``days`` days."""
    r, alpha, b = params.r, params.alpha, params.b
    a = _off_one(params.a)
    z = days / (alpha + T + days)
    return np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + days))) * hyp2f1(r + x, b + x, a + b + x - 1, z)


DISCOUNT_PERIOD_DAYS = 30


def discounted_purchases(params: BgNbd, days: int, yearly_rate: float, x: FloatArray, t_x: FloatArray,
                         T: FloatArray) -> FloatArray:
    """The expected purchases of the next ``days`` days, each 30-day period's discounted to today at
    ``yearly_rate`` (compounded: a purchase k days ahead counts (1 + rate)^(−k/365), k the end of its
    period), as lifetimes' customer_lifetime_value discounts per period. 0: :func:`expected_purchases`.
    The days-ahead part depends on (x, T) alone, so it is computed once per distinct pair."""
    if yearly_rate <= 0:
        return expected_purchases(params, float(days), x, t_x, T)
    pairs, at = np.unique(np.stack([x, T], axis=1), axis=0, return_inverse=True)
    px, pT = pairs[:, 0], pairs[:, 1]
    ends = [min(k * DISCOUNT_PERIOD_DAYS, days) for k in range(1, -(-days // DISCOUNT_PERIOD_DAYS) + 1)]
    bought = np.zeros(len(pairs))
    before = np.ones(len(pairs))  # the bracket at 0 days ahead
    for end in ends:
        after = _tail(params, float(end), px, pT)
        bought += (before - after) * (1 + yearly_rate) ** (-end / 365)
        before = after
    a = _off_one(params.a)
    return (a + params.b + x - 1) / (a - 1) * bought[at.reshape(-1)] * p_alive(params, x, t_x, T)


def _off_one(a: float) -> float:
    """The closed forms hold for any a > 0 but a = 1 exactly, where (a − 1) and the bracket both vanish;
    the limit is continuous, so a hair away from 1 gives it."""
    return a if abs(a - 1) > 1e-7 else 1 + 1e-7


def expected_purchases_new(params: BgNbd, days: FloatArray | float) -> FloatArray:
    """Expected purchases of a new customer in its first ``days`` days (FHL 2005, eq. 9)."""
    r, alpha, b = params.r, params.alpha, params.b
    a = _off_one(params.a)
    days = np.asarray(days, dtype=np.float64)
    tail = (alpha / (alpha + days)) ** r * hyp2f1(r, b, a + b - 1, days / (alpha + days))
    return (a + b - 1) / (a - 1) * (1 - tail)


# ---------------------------------------------------------------- Gamma-Gamma


@dataclass(frozen=True)
class GammaGamma:
    """Spend per purchase ~ Gamma(p, ν), with ν ~ Gamma(q, γ) across customers (γ in fen)."""

    p: float
    q: float
    gamma: float


def gamma_gamma_log_likelihood(params: GammaGamma, x: FloatArray, mean_spend: FloatArray,
                               x_levels: tuple[FloatArray, IntArray] | None = None) -> FloatArray:
    """Each customer's log-likelihood of the mean spend of its ``x`` purchases (Fader & Hardie 2005);
    ``x_levels`` as in :func:`bgnbd_log_likelihood`."""
    p, q, g = params.p, params.q, params.gamma
    levels, at = x_levels if x_levels is not None else (x, slice(None))
    in_x = gammaln(p * levels + q) - gammaln(p * levels) + p * levels * np.log(levels)
    return (in_x[at] - gammaln(q) + q * np.log(g) + (p * x - 1) * np.log(mean_spend)
            - (p * x + q) * np.log(x * mean_spend + g))


def fit_gamma_gamma(x: IntArray, mean_spend: FloatArray) -> tuple[GammaGamma, float]:
    """Maximum-likelihood Gamma-Gamma parameters over customers with repeat purchases of positive spend.
    Per customer ln L = c(x) − ln Γ(q) + q ln γ + (px−1) ln m − (px+q) ln(xm+γ) with
    c(x) = ln Γ(px+q) − ln Γ(px) + px ln x (once per distinct x); ∂p = x(ψ(px+q) − ψ(px) + ln x + ln m
    − ln(xm+γ)), ∂q = ψ(px+q) − ψ(q) + ln γ − ln(xm+γ), ∂γ = q/γ − (px+q)/(xm+γ)."""
    used = (x > 0) & (mean_spend > 0)
    xs, ms = x[used].astype(np.float64), mean_spend[used]
    count = len(xs)
    levels, at = np.unique(xs, return_inverse=True)
    at = at.reshape(-1)
    log_m, spent, log_levels = np.log(ms), xs * ms, np.log(levels)

    def objective(log_params: FloatArray) -> tuple[float, FloatArray]:
        params = np.exp(log_params)
        p, q, g = params
        px = p * xs
        log_spent = np.log(spent + g)
        in_x = gammaln(p * levels + q) - gammaln(p * levels) + p * levels * log_levels
        psi_pq = digamma(p * levels + q)
        ll = in_x[at] - gammaln(q) + q * np.log(g) + (px - 1) * log_m - (px + q) * log_spent
        d_p = (levels * (psi_pq - digamma(p * levels) + log_levels))[at] + xs * (log_m - log_spent)
        d_q = psi_pq[at] - digamma(q) + np.log(g) - log_spent
        d_g = q / g - (px + q) / (spent + g)
        return _negative_mean(ll, [d_p, d_q, d_g], None, count, params)

    log_params, fit = _fit(objective, np.log([1.0, 2.0, float(np.mean(ms))]))
    if not fit.converged:
        raise CannotFit(f"cannot fit because the Gamma-Gamma optimiser did not converge ({fit.message})")
    params = GammaGamma(*(float(v) for v in np.exp(log_params)))
    if params.q <= 1:
        raise CannotFit(f"cannot fit because spend per purchase is too spread out for Gamma-Gamma (q = {params.q:.3f} "
                        "≤ 1 has no finite mean)")
    return params, fit.log_likelihood * count


def expected_spend(params: GammaGamma, x: FloatArray, mean_spend: FloatArray) -> FloatArray:
    """Expected spend per purchase in fen; the population mean p·γ/(q−1) for customers without repeats."""
    p, q, g = params.p, params.q, params.gamma
    return (p * (g + x * mean_spend)) / (p * x + q - 1)


# ---------------------------------------------------------------- predictions


@dataclass
class Model:
    bgnbd: BgNbd
    gamma_gamma: GammaGamma
    bgnbd_log_likelihood: float
    gamma_gamma_log_likelihood: float
    customers: int
    repeat_customers: int

    def parameters(self) -> dict[str, float]:
        return {**asdict(self.bgnbd), **asdict(self.gamma_gamma)}


@dataclass
class Predictions:
    """Per customer (aligned with the summaries)."""

    customer_id: IntArray
    p_alive: FloatArray
    expected_purchases: FloatArray  # over the horizon
    expected_spend_fen: FloatArray  # per purchase
    predicted_value_fen: FloatArray  # over the horizon, discounted at the run's rate
    next_order_day: FloatArray  # date.toordinal() of the median wait if still a customer
    churn_risk: NDArray[np.str_] = field(default_factory=lambda: np.array([], dtype="<U6"))


def fit(summaries: Summaries, as_of: date, minimum: MinimumData = KLAVIYO_MINIMUM) -> Model:
    """Both models fitted on the whole population, or :class:`CannotFit` saying why not."""
    check_minimums(summaries, as_of, minimum)
    bgnbd, bg_ll = fit_bgnbd(summaries.x, summaries.t_x, summaries.T)
    gg, gg_ll = fit_gamma_gamma(summaries.x, summaries.mean_repeat_fen())
    repeat = int(((summaries.x > 0) & (summaries.repeat_fen > 0)).sum())
    return Model(bgnbd, gg, bg_ll, gg_ll, len(summaries), repeat)


def churn_band(p_alive_values: FloatArray) -> NDArray[np.str_]:
    churn = 1 - p_alive_values
    return np.select([churn >= floor for floor, _ in CHURN_BANDS], [name for _, name in CHURN_BANDS], "low")


def predict(model: Model, summaries: Summaries, as_of: date, horizon_days: int = DEFAULT_HORIZON_DAYS,
            discount_rate: float = DEFAULT_DISCOUNT_RATE) -> Predictions:
    """Every customer's predictions, computed once per distinct (x, t_x, T) and spread back. The
    predicted value is the expected spend per purchase times the purchases discounted at
    ``discount_rate`` a year (:func:`discounted_purchases`); ``expected_purchases`` is undiscounted."""
    (ux, ut, uT), _, inverse = _distinct(summaries.x, summaries.t_x, summaries.T)
    alive = p_alive(model.bgnbd, ux, ut, uT)[inverse]
    purchases = expected_purchases(model.bgnbd, float(horizon_days), ux, ut, uT)[inverse]
    valued = purchases if discount_rate <= 0 else \
        discounted_purchases(model.bgnbd, horizon_days, discount_rate, ux, ut, uT)[inverse]
    spend = expected_spend(model.gamma_gamma, summaries.x.astype(np.float64), summaries.mean_repeat_fen())
    r, alpha = model.bgnbd.r, model.bgnbd.alpha
    # If still a customer, its rate given its history is Gamma(r + x, α + T) and the wait for the next
    # purchase is memoryless, so the wait is Lomax: P(wait > w) = ((α + T) / (α + T + w))^(r + x). Its
    # median (α + T)(2^(1/(r+x)) − 1) is defined for everyone; the mean is not for r + x ≤ 1 and is
    # dominated by the tail for few purchases.
    wait = (alpha + summaries.T) * np.expm1(np.log(2) / (r + summaries.x))
    next_day = np.round(as_of.toordinal() + wait)
    return Predictions(customer_id=summaries.customer_id, p_alive=alive, expected_purchases=purchases,
                       expected_spend_fen=spend, predicted_value_fen=valued * spend, next_order_day=next_day,
                       churn_risk=churn_band(alive))


# ---------------------------------------------------------------- the holdout check


@dataclass
class HoldoutRow:
    group: str
    customers: int
    predicted: float
    actual: int


@dataclass
class Holdout:
    calibration_end: date
    end: date
    model: Model
    rows: list[HoldoutRow]
    total: HoldoutRow


def holdout_check(session: Session, as_of: date, holdout_days: int = DEFAULT_HOLDOUT_DAYS,
                  minimum: MinimumData = KLAVIYO_MINIMUM, top_group: int = 7) -> Holdout:
    """The standard BTYD check: fit on the orders up to ``as_of − holdout_days``, predict each calibration
    customer's purchases in the holdout days, and compare with what they bought, in total and by the
    number of repeat purchases in the calibration period (0, 1, …, ``top_group``+)."""
    from datetime import timedelta

    calibration_end = as_of - timedelta(days=holdout_days)
    summaries = summarise(session, calibration_end, as_of)
    model = fit(summaries, calibration_end, minimum)
    x, t_x, T = (v.astype(np.float64) for v in (summaries.x, summaries.t_x, summaries.T))
    predicted = expected_purchases(model.bgnbd, float(holdout_days), x, t_x, T)
    actual = summaries.holdout if summaries.holdout is not None else np.zeros(len(summaries), dtype=np.int64)
    group = np.minimum(summaries.x, top_group)
    counts = np.bincount(group, minlength=top_group + 1)
    sums_predicted = np.bincount(group, weights=predicted, minlength=top_group + 1)
    sums_actual = np.bincount(group, weights=actual, minlength=top_group + 1)
    rows = [HoldoutRow(f"{g}+" if g == top_group else str(g), int(counts[g]), float(sums_predicted[g]),
                       int(sums_actual[g])) for g in range(top_group + 1) if counts[g]]
    total = HoldoutRow("all", len(summaries), float(predicted.sum()), int(actual.sum()))
    return Holdout(calibration_end, as_of, model, rows, total)
