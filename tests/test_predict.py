"""Predictions (segments/predict.py) against the models' own generative processes: customers simulated
with known parameters (a seeded numpy Generator) give the parameters back, and the closed-form
expectations agree with what the simulated customers then do (an independent Monte-Carlo estimate)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from bot.core.db import make_engine
from bot.models import Customer, CustomerPrediction, Order, PredictionRun
from segments.orders import rebuild_all_aggregates
from segments.predict import (
    BgNbd,
    CannotFit,
    GammaGamma,
    MinimumData,
    Summaries,
    churn_band,
    discounted_purchases,
    expected_purchases,
    expected_purchases_new,
    expected_spend,
    fit,
    fit_bgnbd,
    fit_gamma_gamma,
    p_alive,
    predict,
    summarise,
)
from segments.predict import (
    bgnbd_log_likelihood as fit_ll,
)
from segments.predict_runs import refit

TRUE_BGNBD = BgNbd(r=0.25, alpha=40.0, a=1.2, b=2.5)
TRUE_GG = GammaGamma(p=6.0, q=4.0, gamma=15000.0)
AS_OF = date(2026, 6, 30)


def simulate_bgnbd(rng: np.random.Generator, n: int, params: BgNbd, horizon: float,
                   t_low: int = 60, t_high: int = 720) -> dict[str, np.ndarray]:
    """Continuous-time BG/NBD customers: rate λ ~ Gamma(r, α), dropout p ~ Beta(a, b) after each repeat
    purchase. Given n Poisson events in (0, T], their times are sorted uniforms, so the last kept
    purchase's time is T times a Beta order statistic; the horizon's purchases follow the same rules."""
    lam = rng.gamma(params.r, 1 / params.alpha, n)
    drop = rng.beta(params.a, params.b, n)
    lifetime_repeats = rng.geometric(drop)  # the repeat purchase after which the customer leaves
    T = rng.integers(t_low, t_high, n).astype(np.float64)
    events = rng.poisson(lam * T)
    x = np.minimum(lifetime_repeats, events)
    t_x = np.where(x > 0, T * rng.beta(np.maximum(x, 1), events - x + 1), 0.0)
    alive = lifetime_repeats > events
    future = np.where(alive, np.minimum(rng.poisson(lam * horizon), lifetime_repeats - events), 0)
    return {"x": x, "t_x": t_x, "T": T, "alive": alive, "future": future}


def simulate_spend(rng: np.random.Generator, x: np.ndarray, params: GammaGamma) -> tuple[np.ndarray, np.ndarray]:
    """Gamma-Gamma: ν ~ Gamma(q, γ) per customer, each purchase ~ Gamma(p, ν); the mean of x purchases
    and one more purchase's spend."""
    nu = rng.gamma(params.q, 1 / params.gamma, len(x))
    mean = rng.gamma(params.p * x, 1 / nu) / x
    return mean, rng.gamma(params.p, 1 / nu)


def test_bgnbd_log_likelihood_matches_the_paper_written_with_beta_functions():
    from scipy.special import betaln, gammaln

    params = BgNbd(r=0.24, alpha=4.4, a=0.79, b=2.43)  # FHL 2005's CDNOW estimates (weeks)
    x, t_x, T = np.array([0.0, 2, 7, 1]), np.array([0.0, 30.43, 35.0, 1.0]), np.array([38.86, 38.86, 36.0, 2.0])
    r, alpha, a, b = vars(params).values()
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x), -np.inf)
    reference = a1 + a2 + np.log(np.exp(a3) + np.exp(a4))
    assert fit_ll(params, x, t_x, T) == pytest.approx(reference, rel=1e-12)
    levels, at = np.unique(x, return_inverse=True)
    assert fit_ll(params, x, t_x, T, (levels, at)) == pytest.approx(reference, rel=1e-12)


def test_bgnbd_fit_recovers_the_simulated_parameters():
    sim = simulate_bgnbd(np.random.default_rng(21), 40_000, TRUE_BGNBD, 90)
    fitted, log_likelihood = fit_bgnbd(sim["x"], sim["t_x"], sim["T"])
    for name, value in vars(TRUE_BGNBD).items():
        assert getattr(fitted, name) == pytest.approx(value, rel=0.15), name
    assert log_likelihood < 0


@pytest.mark.parametrize("params", [TRUE_BGNBD, BgNbd(r=0.4, alpha=25.0, a=0.7, b=1.8)], ids=["a>1", "a<1"])
def test_conditional_expectations_agree_with_monte_carlo(params):
    horizon = 120
    sim = simulate_bgnbd(np.random.default_rng(5), 200_000, params, horizon)
    x, t_x, T = sim["x"].astype(float), sim["t_x"], sim["T"]
    alive = p_alive(params, x, t_x, T)
    expected = expected_purchases(params, horizon, x, t_x, T)
    assert expected.sum() == pytest.approx(sim["future"].sum(), rel=0.03)
    assert alive.mean() == pytest.approx(sim["alive"].mean(), abs=0.005)
    for group in range(1, 5):  # customers with the same repeat count: P(alive) and purchases to come
        members = sim["x"] == group
        assert alive[members].mean() == pytest.approx(sim["alive"][members].mean(), abs=0.02), group
        assert expected[members].sum() == pytest.approx(sim["future"][members].sum(), rel=0.1), group


def test_new_customer_expectation_agrees_with_monte_carlo():
    days = 200.0
    sim = simulate_bgnbd(np.random.default_rng(8), 200_000, TRUE_BGNBD, 0, t_low=200, t_high=201)
    assert float(expected_purchases_new(TRUE_BGNBD, days)) == pytest.approx(sim["x"].mean(), rel=0.03)


def test_gamma_gamma_recovers_parameters_and_expected_spend_agrees_with_monte_carlo():
    rng = np.random.default_rng(11)
    x = rng.integers(1, 10, 30_000)
    mean, next_spend = simulate_spend(rng, x, TRUE_GG)
    fitted, _ = fit_gamma_gamma(x, mean)
    for name, value in vars(TRUE_GG).items():
        assert getattr(fitted, name) == pytest.approx(value, rel=0.15), name
    expected = expected_spend(TRUE_GG, x.astype(float), mean)
    assert expected.mean() == pytest.approx(next_spend.mean(), rel=0.02)
    for group in (1, 5, 9):
        members = x == group
        assert expected[members].mean() == pytest.approx(next_spend[members].mean(), rel=0.06), group


def test_churn_bands_are_brazes():
    assert churn_band(np.array([0.9, 0.51, 0.5, 0.26, 0.25, 0.0])).tolist() == \
        ["low", "low", "medium", "medium", "high", "high"]


# ---------------------------------------------------------------- from stored orders


@pytest.fixture
def session(database_url):
    engine = make_engine(database_url)
    with Session(engine) as s:
        yield s
    engine.dispose()


def add_orders(session: Session, orders: list[tuple[str, int, int, str]]) -> dict[str, int]:
    """(external_userid, days before AS_OF, fen, status) → order rows; the customers' ids by external_userid."""
    names = sorted({o[0] for o in orders})
    session.add_all([Customer(external_userid=name) for name in names])
    session.flush()
    ids = dict(session.execute(select(Customer.external_userid, Customer.id)).all())
    rows = []
    for n, (name, days_before, fen, status) in enumerate(orders):
        day = AS_OF - timedelta(days=days_before)
        paid_at = datetime.combine(day, time(4, n % 60), tzinfo=UTC)  # noon in Asia/Shanghai
        rows.append({"order_id": f"o{n}", "customer_id": ids[name], "amount_fen": fen, "paid_at": paid_at,
                     "paid_day": day.toordinal(), "status": status})
    if rows:
        session.execute(insert(Order), rows)
        rebuild_all_aggregates(session)  # as every order writer keeps them (tests/test_purchase_days.py)
    return ids


def test_summaries_count_paid_days_and_leave_out_refunds_and_later_orders(session):
    ids = add_orders(session, [
        ("one", 10, 5000, "paid"),  # a single order: no repeat purchase
        ("today", 40, 1000, "paid"), ("today", 0, 2000, "paid"),  # last order today: t_x = T
        ("sameday", 30, 1000, "paid"), ("sameday", 30, 500, "paid"),  # one day, one purchase
        ("sameday", 20, 700, "paid"), ("sameday", 20, 300, "paid"),
        ("refund", 50, 1000, "paid"), ("refund", 5, 9000, "refunded"),
        ("later", 3, 1000, "paid"), ("later", -2, 1000, "paid"),  # after the as-of day
        ("refunded_only", 9, 4000, "refunded"),
    ])
    s = summarise(session, AS_OF)
    if session.get_bind().dialect.name == "sqlite":
        assert session.connection().exec_driver_sql("PRAGMA cache_size").scalar() == -131072  # restored
    got = {int(c): (int(x), int(t), int(T), int(m)) for c, x, t, T, m in
           zip(s.customer_id, s.x, s.t_x, s.T, s.repeat_fen, strict=True)}
    assert got == {ids["one"]: (0, 0, 10, 0), ids["today"]: (1, 40, 40, 2000), ids["sameday"]: (1, 10, 30, 1000),
                   ids["refund"]: (0, 0, 50, 0), ids["later"]: (0, 0, 3, 0)}
    assert (s.first_day, s.last_day) == ((AS_OF - timedelta(days=50)).toordinal(), AS_OF.toordinal())
    held = summarise(session, AS_OF - timedelta(days=1), AS_OF + timedelta(days=5))
    after = dict(zip(held.customer_id.tolist(), held.holdout.tolist(), strict=True))
    assert (after[ids["later"]], after[ids["today"]], after[ids["sameday"]]) == (1, 1, 0)


def test_too_little_data_is_refused_with_every_reason(session):
    add_orders(session, [("a", 10, 100, "paid"), ("a", 5, 100, "paid"), ("b", 3, 100, "paid")])
    message = refit(session, AS_OF).refused
    assert message.startswith("cannot fit because the data has 2 customers with paid orders (needs ≥ 500)")
    assert "10 days of order history (needs ≥ 180)" in message
    assert "0 customers with ≥ 3 purchase days" in message
    run = session.scalar(select(PredictionRun))
    assert (run.status, run.customers, run.reason) == ("refused", 2, message)
    assert session.scalar(select(CustomerPrediction)) is None


def simulated_orders(rng: np.random.Generator, customers: int, history_days: int) -> list[tuple[str, int, int, str]]:
    """Whole-day orders from the generative processes: each customer's first purchase on a day in the
    history, repeat purchases at Exp(λ) gaps until dropout, spends from Gamma-Gamma."""
    first = rng.integers(0, history_days, customers)  # days before AS_OF
    lam = rng.gamma(TRUE_BGNBD.r, 1 / TRUE_BGNBD.alpha, customers)
    repeats = rng.geometric(rng.beta(TRUE_BGNBD.a, TRUE_BGNBD.b, customers))
    times = np.cumsum(rng.exponential(1 / lam[:, None], (customers, 40)), axis=1)
    keep = (times <= first[:, None]) & (np.arange(1, 41)[None, :] <= repeats[:, None])
    nu = rng.gamma(TRUE_GG.q, 1 / TRUE_GG.gamma, customers)
    orders = []
    for c in range(customers):  # building the test's input rows, not the code under test
        days = [int(first[c])] + [int(first[c] - np.floor(t)) for t in times[c][keep[c]]]
        for k, day in enumerate(days):
            orders.append((f"wm{c:05d}", day, int(rng.gamma(TRUE_GG.p, 1 / nu[c])), "paid"))
            if k == 0 and c % 7 == 0:
                orders.append((f"wm{c:05d}", day, 500, "refunded"))
    return orders


@pytest.fixture
def simulated_shop(session):
    ids = add_orders(session, simulated_orders(np.random.default_rng(42), 3000, 540))
    session.commit()
    return ids


def test_fit_on_stored_orders_recovers_parameters_and_stores_predictions(session, simulated_shop):
    outcome = refit(session, AS_OF, horizon_days=365, holdout_days=120)
    session.commit()
    run = session.scalar(select(PredictionRun))
    assert run.status == "fitted" and run.customers == 3000 and outcome.written == 3000
    params = run.parameters
    assert params["r"] == pytest.approx(TRUE_BGNBD.r, rel=0.3)
    assert params["alpha"] == pytest.approx(TRUE_BGNBD.alpha, rel=0.3)
    assert params["p"] * params["gamma"] / (params["q"] - 1) == pytest.approx(
        TRUE_GG.p * TRUE_GG.gamma / (TRUE_GG.q - 1), rel=0.15)  # the mean spend per purchase
    assert run.data_to == AS_OF or (AS_OF - run.data_to).days < 30
    total = run.holdout["total"]
    assert total["predicted"] == pytest.approx(total["actual"], rel=0.2)
    rows = session.scalars(select(CustomerPrediction)).all()
    assert {r.run_id for r in rows} == {run.id}
    assert all(0 <= r.p_alive <= 1 and r.churn_risk in ("low", "medium", "high") for r in rows)
    one = next(r for r in rows if r.expected_purchases > 0)
    undiscounted = one.expected_purchases * one.expected_spend_fen
    # Undiscounted by default (DESIGN §4.7): expected purchases × spend.
    assert run.discount_rate == 0.0
    assert one.predicted_value_fen == pytest.approx(undiscounted, rel=0.01, abs=1)
    refit(session, AS_OF, horizon_days=365, holdout_days=None, discount_rate=0.10)
    discounted = session.get(CustomerPrediction, one.customer_id)
    # Discounted at 10 % a year: between a whole year's discount and none.
    assert undiscounted / 1.1 - 1 <= discounted.predicted_value_fen < undiscounted
    refit(session, AS_OF, horizon_days=365, holdout_days=None, discount_rate=0.0)
    again = session.get(CustomerPrediction, one.customer_id)
    assert again.predicted_value_fen == pytest.approx(again.expected_purchases * again.expected_spend_fen, rel=0.01,
                                                      abs=1)


def test_discounted_purchases_discount_each_30_day_period_at_its_end():
    params = BgNbd(r=0.6, alpha=20.0, a=0.8, b=2.5)
    x, t_x, T = np.array([0.0, 2.0, 6.0, 2.0]), np.array([0.0, 30.0, 200.0, 30.0]), np.array([40.0, 90.0, 300.0, 120.0])
    ends = [30, 60, 90, 100]  # a 100-day horizon: three whole periods and a last of 10 days
    expected, before = np.zeros(4), np.zeros(4)
    for end in ends:
        after = expected_purchases(params, float(end), x, t_x, T)
        expected += (after - before) / 1.25 ** (end / 365)
        before = after
    assert discounted_purchases(params, 100, 0.25, x, t_x, T) == pytest.approx(expected, rel=1e-9)
    assert discounted_purchases(params, 100, 0.0, x, t_x, T) == pytest.approx(
        expected_purchases(params, 100.0, x, t_x, T), rel=1e-12)
    assert (discounted_purchases(params, 100, 0.25, x, t_x, T) < expected_purchases(params, 100.0, x, t_x, T)).all()


def test_one_order_customers_and_last_order_today(session, simulated_shop):
    summaries = summarise(session, AS_OF)
    model = fit(summaries, AS_OF)
    edge = Summaries(customer_id=np.array([1, 2, 3]), x=np.array([0, 3, 3]), t_x=np.array([0, 100, 100]),
                     T=np.array([100, 100, 300]), repeat_fen=np.array([0, 30000, 30000]))
    out = predict(model, edge, AS_OF, 365)
    assert out.p_alive[0] == 1.0  # BG/NBD: nobody leaves before a repeat purchase
    assert out.p_alive[1] == pytest.approx(1 / (1 + model.bgnbd.a / (model.bgnbd.b + 2)))  # bought today
    assert out.p_alive[2] < out.p_alive[1]  # 200 silent days since
    gg = model.gamma_gamma
    assert out.expected_spend_fen[0] == pytest.approx(gg.p * gg.gamma / (gg.q - 1))  # population mean
    assert out.next_order_day[1] > AS_OF.toordinal()
    # The median wait if still a customer, checked by simulation: λ ~ Gamma(r + x, α + T), wait ~ Exp(λ).
    rng = np.random.default_rng(3)
    shape, rate = model.bgnbd.r + 3, model.bgnbd.alpha + 300
    waits = rng.exponential(1 / rng.gamma(shape, 1 / rate, 400_000))
    assert out.next_order_day[2] - AS_OF.toordinal() == pytest.approx(np.median(waits), abs=2)


def test_minimums_apply_to_the_population(session, simulated_shop):
    with pytest.raises(CannotFit, match=r"3000 customers with paid orders \(needs ≥ 5000\)"):
        fit(summarise(session, AS_OF), AS_OF, MinimumData(customers=5000))


# ---------------------------------------------------------------- as operators and jobs use it


@pytest.fixture
def scrm(database_url, simulated_shop):
    from click.testing import CliRunner

    from bot.cli import main

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner(env={"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url}).invoke(
            main, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_predict_fit_prints_parameters_and_the_holdout_check(scrm):
    out = scrm("predict", "fit", "--as-of", AS_OF.isoformat(), "--holdout-days", "120")
    assert f"prediction run 1 as of {AS_OF.isoformat()}: 3000 customers with paid orders" in out
    assert "BG/NBD      r=0." in out and "Gamma-Gamma p=" in out and "log-likelihood -" in out
    assert "holdout check: fitted on orders up to 2026-03-02, purchases after it up to 2026-06-30" in out
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()
             if line.split() and line.split()[0] in ("0", "1", "7+", "all")}
    assert set(table) == {"0", "1", "7+", "all"}
    customers, predicted, actual = int(table["all"][0]), float(table["all"][1]), int(table["all"][2])
    assert customers < 3000 and predicted == pytest.approx(actual, rel=0.2)
    assert "(predicted value, undiscounted)" in out  # DESIGN §4.7: undiscounted unless configured


def test_a_holdout_period_too_long_for_the_minimums_is_skipped_with_the_reason(scrm):
    out = scrm("predict", "fit", "--as-of", AS_OF.isoformat(), "--holdout-days", "400")
    assert "stored 3000 customers' predictions over 365 days" in out
    assert "holdout check skipped: cannot fit because the data has 139 days of order history (needs ≥ 180)" in out


def test_predict_fit_refuses_below_the_minimums(database_url):
    from click.testing import CliRunner

    from bot.cli import main

    result = CliRunner(env={"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url}).invoke(
        main, ["predict", "fit", "--as-of", AS_OF.isoformat()])
    assert result.exit_code == 1
    assert "prediction run 1: cannot fit because the data has 0 customers with paid orders (needs ≥ 500)" \
        in result.output


def test_customer_show_export_and_audiences_use_the_predictions(scrm, session, simulated_shop):
    from bot.campaigns.audience import Audience, AudienceError

    scrm("predict", "fit", "--as-of", AS_OF.isoformat(), "--holdout-days", "0")
    rows = {r.customer_id: r for r in session.scalars(select(CustomerPrediction))}
    by_id = {v: k for k, v in simulated_shop.items()}
    lapsed = min(rows.values(), key=lambda r: r.p_alive)
    out = scrm("customer", "show", by_id[lapsed.customer_id], "--as-of", AS_OF.isoformat())
    assert f"流失风险 高: P(alive) {lapsed.p_alive:.2f} — churn risk high" in out
    assert "expected purchases ×" in out and "prediction run 1 as of 2026-06-30" in out

    import csv
    import io

    exported = list(csv.DictReader(io.StringIO(scrm("export", "customers"))))
    row = next(r for r in exported if r["external_userid"] == by_id[lapsed.customer_id])
    assert (float(row["p_alive"]), row["churn_risk"]) == (pytest.approx(lapsed.p_alive, abs=1e-4), "high")

    def members(raw: dict) -> set[int]:
        from zoneinfo import ZoneInfo

        audience = Audience.parse(raw)
        return set(session.scalars(select(Customer.id).where(*audience.conditions(session, ZoneInfo("Asia/Shanghai")))))

    assert members({"p_alive_below": 0.3}) == {c for c, r in rows.items() if r.p_alive < 0.3} != set()
    assert members({"predicted_value_above": 500}) == {c for c, r in rows.items() if r.predicted_value_fen > 50000}
    assert members({"churn_risk": ["high"], "predicted_value_above": 10}) == {
        c for c, r in rows.items() if r.churn_risk == "high" and r.predicted_value_fen > 1000}
    # DESIGN §4.7: expected purchases and the next order's date are usable in segments too.
    assert members({"expected_purchases_above": 2}) == {c for c, r in rows.items() if r.expected_purchases > 2} != set()
    soon = sorted(r.next_order_on for r in rows.values() if r.next_order_on)[len(rows) // 4]
    assert members({"next_order_before": soon.isoformat()}) == {
        c for c, r in rows.items() if r.next_order_on and r.next_order_on < soon} != set()
    assert float(row["average_days_between_orders"] or 0) >= 0
    assert Audience.parse({"predicted_value_above": 12.5}).to_dict() == {"predicted_value_above": 12.5}
    for bad in ({"p_alive_below": 0}, {"p_alive_below": True}, {"p_alive_below": "0.5"},
                {"predicted_value_above": "lots"}, {"churn_risk": ["doomed"]}, {"expected_purchases_above": "many"},
                {"next_order_before": "soon"}):
        with pytest.raises(AudienceError, match=next(iter(bad))):
            Audience.parse(bad)


def test_nightly_job_refits_after_the_re_tier(app, db, simulated_shop):
    from bot.schedule import jobs

    jobs.install(jobs.Runtime(app.extensions["scrm.settings"], db))
    # Today is months after the simulated shop's last order (AS_OF): the nightly refit says so and is stored.
    refused = jobs.nightly_retier()["predictions"]
    assert refused == {"run": 1, "refused": refused["refused"]}
    assert "no paid order in the last 30 days" in refused["refused"]
    assert jobs.nightly_predictions(jobs.runtime(), AS_OF) == {"run": 2, "customers": 3000}
    with db.sessions() as s:
        assert list(s.scalars(select(PredictionRun.status).order_by(PredictionRun.id))) == ["refused", "fitted"]
        assert s.scalar(select(func.count()).select_from(CustomerPrediction)) == 3000


def test_the_nightly_refit_follows_the_prediction_settings(app, db, simulated_shop):
    from dataclasses import replace

    from bot.schedule import jobs

    settings = app.extensions["scrm.settings"]
    strict = replace(settings, predictions=replace(settings.predictions, min_customers=5000, min_recent_days=10000,
                                                   horizon_days=90, discount_rate=0.0))
    jobs.install(jobs.Runtime(strict, db))
    refused = jobs.nightly_predictions(jobs.runtime(), AS_OF)["refused"]
    assert "3000 customers with paid orders (needs ≥ 5000)" in refused and "last 30 days" not in refused
    jobs.install(jobs.Runtime(replace(strict, predictions=replace(strict.predictions, min_customers=100)), db))
    assert jobs.nightly_predictions(jobs.runtime(), AS_OF)["customers"] == 3000
    with db.sessions() as s:
        run = s.scalar(select(PredictionRun).where(PredictionRun.status == "fitted"))
        assert (run.horizon_days, run.discount_rate) == (90, 0.0)
        row = s.scalar(select(CustomerPrediction).where(CustomerPrediction.expected_purchases > 0.5))
        assert row.predicted_value_fen == pytest.approx(row.expected_purchases * row.expected_spend_fen, rel=0.01,
                                                        abs=1)


def test_predict_fit_takes_its_minimums_and_discount_from_the_settings(database_url, simulated_shop, tmp_path):
    from click.testing import CliRunner

    from bot.cli import main

    config = tmp_path / "scrm.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n[predictions]\nmin_repeat_customers = 100000\n',
                      encoding="utf-8")
    clock = lambda: datetime.combine(AS_OF, time(12), tzinfo=UTC)  # noqa: E731
    result = CliRunner().invoke(main, ["--config", str(config), "predict", "fit", "--holdout-days", "0"], obj=clock)
    assert result.exit_code == 1 and "a paid repeat purchase (needs ≥ 100000)" in result.output
    config.write_text(f'[database]\nurl = "{database_url}"\n[predictions]\ndiscount_rate = 0.25\n',
                      encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "predict", "fit", "--holdout-days", "0"], obj=clock)
    assert result.exit_code == 0 and "discounted at 25% a year" in result.output
    bad = CliRunner().invoke(main, ["--config", str(config), "predict", "fit", "--discount-rate", "1.5"], obj=clock)
    assert bad.exit_code == 2


def test_entering_high_churn_risk_gives_the_owner_a_return_visit_task(app, db, session, simulated_shop):
    from sqlalchemy import update

    from bot.campaigns.automation import tier_change_actions
    from bot.models import OutboxMessage, TierChange, utcnow
    from bot.outbox.messages import MessageTemplates

    session.execute(update(Customer).values(owner_userid="zhangsan"))
    assert refit(session, AS_OF - timedelta(days=90), holdout_days=None).band_changes == {}  # a baseline
    before = {r.customer_id: r.churn_risk for r in session.scalars(select(CustomerPrediction))}
    outcome = refit(session, AS_OF, holdout_days=None)
    session.commit()
    after = {r.customer_id: r.churn_risk for r in session.scalars(select(CustomerPrediction))}
    moved = {c: band for c, band in after.items() if c in before and before[c] != band}
    changes = session.scalars(select(TierChange).where(TierChange.dimension == "churn_risk")).all()
    assert {c.customer_id: c.to_value for c in changes} == moved and moved
    assert outcome.band_changes == dict(sorted(Counter(moved.values()).items()))
    assert all(c.from_value == before[c.customer_id] and c.reason.startswith("P(alive) ") for c in changes)

    settings = app.extensions["scrm.settings"]
    with db.begin() as s:
        result = tier_change_actions(s, settings, MessageTemplates.from_settings(settings), utcnow())
    entered_high = sum(1 for band in moved.values() if band == "high")
    assert result.notified == entered_high > 0
    with db.sessions() as s:
        texts = [m.content["text"] for m in s.scalars(select(OutboxMessage).where(
            OutboxMessage.channel == "app_message"))]
    assert len(texts) == entered_high and all("流失风险高" in t and "回访" in t for t in texts)


def test_a_fit_as_of_a_past_day_records_no_churn_risk_changes(scrm, session):
    """The same two fits that move customers' bands when the job runs them (the test above) leave no
    TierChange when an operator runs them as of past days, so no 回访 task comes of them."""
    from bot.models import TierChange

    scrm("predict", "fit", "--as-of", (AS_OF - timedelta(days=90)).isoformat(), "--holdout-days", "0")
    scrm("predict", "fit", "--as-of", AS_OF.isoformat(), "--holdout-days", "0")
    assert session.scalar(select(func.count()).select_from(TierChange).where(
        TierChange.dimension == "churn_risk")) == 0


def test_the_sidebar_shows_churn_risk_and_predicted_value_beside_the_tiers(session, simulated_shop):
    from bot.web.sidebar.card import prediction_rows

    customer_id = next(iter(simulated_shop.values()))
    assert [(r.label, r.value) for r in prediction_rows(session, customer_id)] == [("流失风险", "—")]
    refit(session, AS_OF, holdout_days=None)
    row = session.get(CustomerPrediction, customer_id)
    churn, value = prediction_rows(session, customer_id)
    assert (churn.label, value.label) == ("流失风险", "预测价值")
    assert churn.value == f"{ {'high': '高', 'medium': '中', 'low': '低'}[row.churn_risk]}: P(alive) {row.p_alive:.2f}"
    assert value.value.endswith("（365 天，未折现）") and "预计购买" in value.why
