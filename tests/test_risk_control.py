"""Learn-then-Test (``adainfer_lib.certification``): p-values against hand-computed binomial and
Hoeffding–Bentkus cases, fixed-sequence testing, "nothing certified → never exits early", the guarantee by
simulation, every exit rule, and the certified policy through the real early-exit runner on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import adainfer_lib as ai
from adainfer_lib import risk_control as rc
from adainfer_lib.common.replay import Decisions, first_exit
from adainfer_lib.rules.plain import GapThresholdPolicy
from adainfer_lib.rules.policy import CLASSIFIERS
from conftest import synthetic_table


def binom_cdf(k: int, n: int, p: float) -> float:
    """P[Bin(n, p) <= k], summed by hand."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def h(a: float, b: float) -> float:
    return (a * math.log(a / b) if a > 0 else 0.0) + (1 - a) * math.log((1 - a) / (1 - b))


# ---------------------------------------------------------------------------------------------------
# p-values


@pytest.mark.parametrize("n, losses, delta", [(10, 0, 0.2), (10, 1, 0.2), (10, 2, 0.2), (50, 3, 0.1), (200, 0, 0.02),
                                              (1000, 10, 0.02), (1000, 25, 0.02)])
def test_p_values_match_hand_computed(n, losses, delta):
    r = losses / n
    exact = binom_cdf(losses, n, delta)
    assert rc.binomial_p_value(r, n, delta) == pytest.approx(exact, rel=1e-9)
    hb = min(math.exp(-n * h(min(r, delta), delta)), math.e * binom_cdf(math.ceil(n * r - 1e-9), n, delta), 1.0)
    assert rc.hoeffding_bentkus_p_value(r, n, delta) == pytest.approx(hb, rel=1e-9)
    assert rc.binomial_p_value(r, n, delta) <= rc.hoeffding_bentkus_p_value(r, n, delta) + 1e-15


def test_p_values_by_hand_numbers():
    # n = 10, δ = 0.2: zero losses → 0.8^10 for both; one loss → binomial 0.8^10 + 10·0.2·0.8^9,
    # Hoeffding–Bentkus its Hoeffding term exp(−n·h(0.1, 0.2))
    assert rc.binomial_p_value(0.0, 10, 0.2) == pytest.approx(0.1073741824)
    assert rc.hoeffding_bentkus_p_value(0.0, 10, 0.2) == pytest.approx(0.1073741824)
    assert rc.binomial_p_value(0.1, 10, 0.2) == pytest.approx(0.3758096384)
    hoeffding = math.exp(-10 * (0.1 * math.log(0.5) + 0.9 * math.log(0.9 / 0.8)))
    assert rc.hoeffding_bentkus_p_value(0.1, 10, 0.2) == pytest.approx(hoeffding)
    # at or above δ there is no evidence: Hoeffding–Bentkus is 1, the binomial tail at least 1/2
    assert rc.hoeffding_bentkus_p_value(0.2, 10, 0.2) == 1.0
    assert rc.binomial_p_value(0.2, 10, 0.2) >= 0.5
    # vectorised: one p-value per candidate
    p = rc.p_values(np.array([0.0, 0.1, 0.3]), 10, 0.2)
    assert p.shape == (3,) and np.all(np.diff(p) > 0)


def test_sizing_matches_the_design_notes():
    """DESIGN §7: the largest empirical disagreement that still certifies (ε = 5%, Hoeffding–Bentkus)."""
    expected = {(200, 0.02): 0.0, (1000, 0.02): 0.010, (2000, 0.02): 0.013,
                (200, 0.05): 0.015, (1000, 0.05): 0.035, (2000, 0.05): 0.0395}
    for (n, delta), risk in expected.items():
        assert rc.max_certifiable_risk(n, delta, 0.05, "hoeffding_bentkus") == pytest.approx(risk)
        assert rc.max_certifiable_risk(n, delta, 0.05) >= risk  # the exact test certifies at least as much
    assert rc.min_calibration_size(0.02, 0.05) == 149
    assert rc.binomial_p_value(0, 149, 0.02) <= 0.05 < rc.binomial_p_value(0, 148, 0.02)
    assert math.isnan(rc.max_certifiable_risk(100, 0.02, 0.05))


@pytest.mark.parametrize("kwargs", [dict(risk_hat=0.1, n=10, delta=0.0), dict(risk_hat=0.1, n=10, delta=1.0),
                                    dict(risk_hat=0.1, n=0, delta=0.1), dict(risk_hat=1.5, n=10, delta=0.1),
                                    dict(risk_hat=np.nan, n=10, delta=0.1)])
def test_p_values_reject_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        rc.binomial_p_value(**kwargs)
    with pytest.raises(ValueError):
        rc.hoeffding_bentkus_p_value(**kwargs)


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="method"):
        rc.p_values(0.1, 10, 0.2, method="hoeffding")
    replay = _replay([[0, 0]], thresholds=[0.5])
    with pytest.raises(ValueError, match="risk"):
        rc.learn_then_test(replay, risk="accuracy")
    with pytest.raises(ValueError, match="procedure"):
        rc.learn_then_test(replay, procedure="holm")
    with pytest.raises(ValueError, match="epsilon"):
        rc.learn_then_test(replay, epsilon=0)


# ---------------------------------------------------------------------------------------------------
# Fixed-sequence testing


def test_fixed_sequence_stops_at_first_failure():
    np.testing.assert_array_equal(rc.fixed_sequence_test([0.01, 0.02, 0.2, 0.01], 0.05), [True, True, False, False])
    np.testing.assert_array_equal(rc.fixed_sequence_test([0.3, 0.01], 0.05), [False, False])
    np.testing.assert_array_equal(rc.fixed_sequence_test([0.05, 0.05], 0.05), [True, True])  # p <= ε rejects
    assert rc.fixed_sequence_test([], 0.05).size == 0
    np.testing.assert_array_equal(rc.bonferroni_test([0.01, 0.02, 0.2, 0.01], 0.05), [True, False, False, True])


def _replay(disagreement, thresholds=None, exits=None, accuracy_drop=None, L: int = 10) -> rc.ExitReplay:
    """An ``ExitReplay`` built from a (k, n) disagreement matrix (stop matrix and decisions are placeholders)."""
    d = np.asarray(disagreement, dtype=bool)
    k, n = d.shape
    thresholds = np.linspace(0.9, 0.1, k) if thresholds is None else np.asarray(thresholds, dtype=float)
    exits = np.full((k, n), L) if exits is None else np.asarray(exits)
    drop = d if accuracy_drop is None else np.asarray(accuracy_drop, dtype=bool)
    zeros = np.zeros((n, L + 1))
    decisions = Decisions(zeros.astype(int), np.zeros(n, int), np.zeros(n, int), np.arange(n))
    return rc.ExitReplay(thresholds, zeros, decisions, exits, d, drop, 1)


def test_learn_then_test_deploys_the_last_certified_before_the_first_failure():
    n = 300
    rng = np.random.default_rng(0)
    counts = [0, 0, 1, 30, 0, 0]  # candidate 3 fails (10% > δ); 4 and 5 look perfect but are never tested
    d = np.zeros((len(counts), n), bool)
    for j, c in enumerate(counts):
        d[j, rng.choice(n, c, replace=False)] = True
    exits = np.stack([np.full(n, 10 - j) for j in range(len(counts))])
    thresholds = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    cert = rc.learn_then_test(_replay(d, thresholds=thresholds, exits=exits), delta=0.05, epsilon=0.05)
    np.testing.assert_array_equal(cert.certified, [True, True, True, False, False, False])
    np.testing.assert_array_equal(cert.tested, [True, True, True, True, False, False])
    assert cert.threshold == 0.7 and cert.index == 2 and cert.failed_at == 0.6
    assert list(cert.status()) == ["certified"] * 3 + ["failed"] + ["not tested"] * 2
    assert cert.calibration_risk == pytest.approx(1 / n)
    assert cert.calibration_layers_saved == pytest.approx(0.2)
    assert cert.is_certified(0.8) and not cert.is_certified(0.5) and not cert.is_certified(0.75)
    frame = cert.to_frame()
    assert frame.deployed.sum() == 1 and frame.loc[frame.deployed, "threshold"].item() == 0.7
    assert "threshold 0.7 is certified" in str(cert)
    # Bonferroni tests everything at ε/k and may certify past a failure
    bonf = rc.learn_then_test(_replay(d, thresholds=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), delta=0.05, epsilon=0.05,
                              procedure="bonferroni")
    np.testing.assert_array_equal(bonf.certified, [True, True, True, False, True, True])
    assert bonf.threshold == 0.4


def test_a_calibration_subset_counts_the_prompts_it_selects():
    """20 of 400 prompts, however they are named — a boolean mask, positions, a slice, a replay's ``take`` —
    are n = 20 calibration prompts: with no loss at all, 20 are too few to certify δ = 2% at ε = 5% (149 are
    needed), while the whole pool certifies the most aggressive threshold."""
    n, L = 400, 6
    stop = np.ones((n, L + 1))  # every candidate exits at layer 1, where the decision already is the final one
    preds = np.zeros((n, L + 1), int)
    decisions = Decisions(preds, preds[:, -1], preds[:, -1], np.arange(n))
    replay = rc.replay_decisions(stop, decisions, min_layer=1, thresholds=[0.9, 0.5, 0.0])
    assert rc.learn_then_test(replay).threshold == 0.0  # n = 400: certified
    mask = np.zeros(n, bool)
    mask[::20] = True
    positions = np.flatnonzero(mask)
    for subset in (mask, positions, list(positions), slice(0, n, 20)):
        cert = rc.learn_then_test(replay, subset)
        assert cert.n == 20 and cert.threshold is None, type(subset)
    taken = replay.take(mask)
    assert taken.n == 20 and rc.learn_then_test(taken).threshold is None
    np.testing.assert_array_equal(taken.decisions.examples, positions)
    np.testing.assert_array_equal(taken.stop_proba, stop[positions])
    np.testing.assert_array_equal(taken.exits, replay.exits[:, positions])
    np.testing.assert_array_equal(replay.risk("disagreement", mask), replay.risk("disagreement", positions))
    for bad, match in [(mask[:-1], "mask of length 399"), (np.array([3, 400]), "outside 0..399"),
                       (np.array([-1, 2]), "outside 0..399"), (np.array([5, 5, 6]), "more than once"),
                       (np.zeros(n, bool), "selects none"), (np.array([0.5, 1.0]), "integer positions"),
                       (np.ones((2, 2), int), "1-D")]:
        with pytest.raises(ValueError, match=match):
            rc.learn_then_test(replay, bad)
        with pytest.raises(ValueError, match=match):
            replay.take(bad)


# ---------------------------------------------------------------------------------------------------
# Nothing certified → never exits early


def test_nothing_certified_never_exits_early():
    train, cal = synthetic_table(120, 12, seed=1), synthetic_table(40, 12, seed=2)
    policy = ai.ExitPolicy("logistic", features=("label_gap", "layer_frac")).fit(train)
    certified, cert = ai.certify_threshold(policy, cal, delta=0.02, epsilon=0.05)  # n = 40 < 149: impossible
    assert cert.threshold is None and cert.index is None and not cert.certified.any()
    assert cert.tested[0] and not cert.tested[1:].any()
    assert "no threshold is certified" in str(cert) and "never exits early" in str(cert)
    P = certified.stop_matrix(cal)
    assert certified.threshold > np.nanmax(P)
    L = cal.attrs["n_layers"]
    assert (certified.exit_layers(cal) == L).all()
    assert ai.simulate(certified, cal)["layers_saved"] == 0.0
    assert policy.threshold == 0.5 and not hasattr(policy, "certification_")  # the original is untouched
    assert certified.certification_ is cert


def test_never_exit_threshold_is_above_every_stop_value():
    # a stop probability: the top of the threshold range (1.01)
    assert rc.never_exit_threshold(ai.ExitPolicy("logistic")) > 1.0
    # a threshold on an unbounded feature: the largest float; the label gap lies in [0, 1]: 1.01
    entropy = ai.ExitPolicy("threshold", features=("entropy",))
    assert rc.never_exit_threshold(entropy) >= 1e300
    assert rc.never_exit_threshold(GapThresholdPolicy()) == 1.01
    P = np.array([[0.0, 5.0, 1e30, np.nan]])
    assert (first_exit(P, rc.never_exit_threshold(entropy), 1) == 3).all()


# ---------------------------------------------------------------------------------------------------
# The guarantee, by simulation


def _simulate(true_risk: np.ndarray, *, n: int, draws: int, delta: float, epsilon: float, method: str, seed: int):
    """Violation frequency of Learn-then-Test (and of the plug-in "R̂ <= δ, most aggressive" rule) when candidate
    j's losses are Bernoulli(true_risk[j]), nested across candidates through one uniform per prompt."""
    rng = np.random.default_rng(seed)
    k = len(true_risk)
    ltt = plug = 0
    for _ in range(draws):
        u = rng.random(n)
        d = u[None, :] < true_risk[:, None]
        cert = rc.learn_then_test(_replay(d), delta=delta, epsilon=epsilon, method=method)
        ltt += cert.index is not None and true_risk[cert.index] > delta
        ok = np.flatnonzero(d.mean(1) <= delta)
        plug += ok.size > 0 and true_risk[ok[-1]] > delta
    assert k == len(true_risk)
    return ltt / draws, plug / draws


@pytest.mark.parametrize("method", ["binomial", "hoeffding_bentkus"])
def test_guarantee_holds_by_simulation(method):
    delta, epsilon, draws = 0.05, 0.1, 2000
    true_risk = np.linspace(0.0, 0.12, 25)  # risk rises along the sequence, crossing δ in the middle
    ltt, plug = _simulate(true_risk, n=400, draws=draws, delta=delta, epsilon=epsilon, method=method, seed=1)
    se = math.sqrt(epsilon * (1 - epsilon) / draws)
    assert ltt <= epsilon + 3 * se
    assert plug > 0.3  # the plug-in choice has no guarantee: it breaks δ in a large share of draws


def test_guarantee_holds_with_a_risk_that_is_not_monotone():
    delta, epsilon, draws = 0.05, 0.1, 2000
    true_risk = np.array([0.0, 0.01, 0.03, 0.045, 0.049, 0.06, 0.02, 0.051, 0.0])
    ltt, _ = _simulate(true_risk, n=600, draws=draws, delta=delta, epsilon=epsilon, method="binomial", seed=2)
    assert ltt <= epsilon + 3 * math.sqrt(epsilon * (1 - epsilon) / draws)


def test_guarantee_check_on_a_replayed_pool():
    train, pool = synthetic_table(150, 12, seed=3), synthetic_table(1500, 12, seed=4)
    policy = ai.ExitPolicy("threshold", features=("label_gap",)).fit(train)
    replay = ai.replay_exits(policy, pool)
    draws = ai.guarantee_check(replay, n_cal=600, n_draws=300, delta=0.05, epsilon=0.05, seed=0,
                               fixed={"fixed 0.5": 0.5}, empirical={"plug-in": 0.05})
    assert set(draws.rule) == {"Learn-then-Test", "fixed 0.5", "plug-in"}
    assert (draws.groupby("rule").size() == 300).all()
    assert (draws.n_test == 900).all()
    summary = ai.violation_summary(draws).set_index("rule")
    ltt = summary.loc["Learn-then-Test"]
    assert ltt.se == pytest.approx(math.sqrt(0.05 * 0.95 / 300))
    assert ltt.violation_rate <= 0.05 + 3 * ltt.se
    assert ltt.share_certified == 1.0
    assert summary.loc["plug-in", "violation_rate"] > ltt.violation_rate
    # Learn-then-Test's rows: the threshold certified on the draw's calibration part, its calibration risk
    row = draws[draws.rule == "Learn-then-Test"].iloc[0]
    assert row.cal_risk <= rc.max_certifiable_risk(600, 0.05, 0.05) + 1e-12
    # the whole pool as calibration: one draw, no test part
    whole = ai.guarantee_check(replay, n_cal=1500, delta=0.05)
    assert len(whole) == 1 and whole.test_risk.isna().all()
    with pytest.raises(ValueError, match="n_cal"):
        ai.guarantee_check(replay, n_cal=0)


def test_price_of_guarantee_grows_with_calibration_size():
    train, pool = synthetic_table(150, 12, seed=5), synthetic_table(1200, 12, seed=6)
    replay = ai.replay_exits(ai.ExitPolicy("threshold", features=("label_gap",)).fit(train), pool)
    price = ai.price_of_guarantee(replay, n_cals=[100, 400, 1200], deltas=[0.02, 0.1], n_draws=50)
    assert len(price) == 6 and (price.rule == "Learn-then-Test").all()
    for _, part in price.groupby("delta"):
        saved = part.sort_values("n_cal").layers_saved.to_numpy()
        assert saved[-1] >= saved[0]
        assert (saved <= part.oracle_layers_saved.iloc[0] + 0.05).all()
    loose, tight = (price[(price.n_cal == 1200) & np.isclose(price.delta, d)].layers_saved.item() for d in (0.1, 0.02))
    assert loose >= tight


# ---------------------------------------------------------------------------------------------------
# Every exit rule


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_certifies_every_classifier(classifier):
    train, cal = synthetic_table(150, 12, seed=7), synthetic_table(600, 12, seed=8)
    features = None if classifier == "threshold" else ("label_gap", "label_top_prob", "layer_frac")
    policy = ai.ExitPolicy(classifier, features=features, min_layer=2).fit(train)
    certified, cert = ai.certify_threshold(policy, cal, delta=0.1, epsilon=0.05)
    assert cert.threshold is not None, str(cert)
    assert certified.threshold == cert.threshold and certified.min_layer == 2
    assert type(certified) is type(policy) and policy.threshold == 0.5
    replay = ai.replay_exits(policy, cal)
    np.testing.assert_array_equal(certified.exit_layers(cal), replay.exits[cert.index])
    sim = ai.simulate(certified, cal)
    assert 1 - sim["consistency"] == pytest.approx(cert.calibration_risk)
    assert sim["layers_saved"] == pytest.approx(cert.calibration_layers_saved)
    assert cert.calibration_risk <= rc.max_certifiable_risk(600, 0.1, 0.05) + 1e-12
    np.testing.assert_array_equal(cert.thresholds, rc.DEFAULT_CANDIDATES)  # conservative → aggressive
    # the accuracy drop is never above the disagreement: it certifies at least as far down the sequence
    _, drop = ai.certify_threshold(policy, cal, delta=0.1, epsilon=0.05, risk="accuracy_drop")
    assert (drop.empirical_risk <= cert.empirical_risk + 1e-12).all()
    assert drop.index >= cert.index


def test_certifies_duck_typed_threshold_rules_and_unbounded_features():
    train, cal = synthetic_table(100, 12, seed=9), synthetic_table(600, 12, seed=10)
    gap_rule = GapThresholdPolicy(threshold=0.4, min_layer=1)
    certified, cert = ai.certify_threshold(gap_rule, cal, delta=0.1)
    assert cert.threshold is not None and certified.threshold == cert.threshold and gap_rule.threshold == 0.4
    np.testing.assert_array_equal(certified.exit_layers(cal), ai.replay_exits(gap_rule, cal).exits[cert.index])
    # a threshold on an unbounded feature: candidates are quantiles of its values, conservative (high) first
    layer_rule = ai.ExitPolicy("threshold", features=("layer",)).fit(train)
    _, cert = ai.certify_threshold(layer_rule, cal, delta=0.1)
    assert cert.thresholds[0] >= cert.thresholds[-1] and cert.thresholds.max() > 1
    with pytest.raises(TypeError, match="not an exit rule"):
        ai.certify_threshold(object(), cal)


def test_warns_when_calibrating_on_the_fitting_table():
    train = synthetic_table(100, 12, seed=11)
    policy = ai.ExitPolicy("threshold", features=("label_gap",)).fit(train)
    with pytest.warns(UserWarning, match="calibration table looks like"):
        ai.certify_threshold(policy, train, delta=0.2)


# ---------------------------------------------------------------------------------------------------
# The certified policy through the real early-exit runner (tiny random model)


def _tiny_table(model, prompts, words, gold, calibration=None):
    from adainfer_lib.data.calibration import fit_calibration
    from adainfer_lib.model.lens import trace

    t = trace(model, prompts, label_words=words, full_vocab=False, cache=False, progress=False)
    cal = calibration or fit_calibration("batch", unlabelled=t.label_logits)
    tt = ai.TaskTrace(t, gold=np.asarray(gold), calibrations={"batch": cal}, task_name="tiny", label_names=["p", "n"],
                      split="test", method="batch")
    return ai.feature_table(tt), cal


def test_certified_policy_runs_through_run_early_exit(default_tokenizer):
    from conftest import make_tiny_model

    model = make_tiny_model("llama", default_tokenizer)
    words = [" positive", " negative"]
    adjectives = ["good", "bad", "dull", "bright", "long", "short", "odd", "fine", "grim", "warm"]
    prompts = [f"Review: a {a} film, scene {i}.\nSentiment:" for i in range(4) for a in adjectives]
    gold = np.arange(len(prompts)) % 2
    fit_table, calibration = _tiny_table(model, prompts[:16], words, gold[:16])
    cal_table, _ = _tiny_table(model, prompts[16:], words, gold[16:], calibration)
    policy = ai.ExitPolicy("threshold", features=("label_gap",), min_layer=1).fit(fit_table)
    certified, cert = ai.certify_threshold(policy, cal_table, delta=0.3, epsilon=0.1)
    assert cert.threshold is not None, str(cert)
    fresh = prompts[16:]
    res = ai.run_early_exit(model, fresh, certified, label_words=words, calibration=calibration)
    np.testing.assert_array_equal(res.exit_layers, certified.exit_layers(cal_table))
    assert res.threshold == cert.threshold
    # nothing certified: the copy runs, and every prompt goes through all L layers
    never, none = ai.certify_threshold(policy, cal_table, delta=0.01, epsilon=0.05)
    assert none.threshold is None
    res = ai.run_early_exit(model, fresh, never, label_words=words, calibration=calibration, batch_size=4)
    assert (res.exit_layers == model.n_layers).all()


def test_certification_figure_plots_every_candidate_where_the_certification_puts_it():
    """Each candidate's empirical risk (top) and p-value (bottom) at its threshold, in the colour of its status
    with the count in the legend; δ and ε as lines, the certified threshold as a vertical line on both panels,
    the layers saved on the second axis, n in the risk axis' label — all read from the ``Certification``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from adainfer_lib import plots_risk

    train, pool = synthetic_table(120, 12, seed=12), synthetic_table(800, 12, seed=13)
    policy = ai.ExitPolicy("threshold", features=("label_gap",)).fit(train)
    _, cert = ai.certify_threshold(policy, pool.loc[pool.example < 400], delta=0.1)
    frame = cert.to_frame()
    assert cert.threshold is not None and set(frame.status) == {"certified", "failed", "not tested"}
    fig = plots_risk.certification_figure(cert, title="t — m, sentiment, n=400")
    top, bottom, saved = fig.axes
    assert "n=400" in top.get_ylabel() and cert.risk in top.get_ylabel()
    for status, part in frame.groupby("status"):
        (points,) = [c for c in top.collections if c.get_label() == f"{status} ({len(part)})"]
        np.testing.assert_allclose(points.get_offsets(), part[["threshold", "empirical_risk"]].to_numpy())
        assert to_hex(points.get_facecolor()[0]) == plots_risk.STATUS_COLOURS[status]
        (p_points,) = [c for c in bottom.collections if len(c.get_offsets()) == len(part)
                       and np.allclose(c.get_offsets()[:, 0], part.threshold)]
        np.testing.assert_allclose(p_points.get_offsets()[:, 1], np.clip(part.p_value, 1e-12, 1))
    for ax, level in ((top, cert.delta), (bottom, cert.epsilon)):
        assert any(np.allclose(line.get_ydata(), level) for line in ax.lines)  # δ on the risks, ε on the p-values
        assert any(np.allclose(line.get_xdata(), cert.threshold) for line in ax.lines)  # the certified threshold
    (saving,) = saved.lines
    np.testing.assert_allclose(saving.get_xydata(), frame[["threshold", "layers_saved"]].to_numpy())
    low, high = top.get_xlim()
    assert low > high  # conservative thresholds (high) on the left
    plt.close("all")


def test_violations_and_price_figures_plot_the_summaries():
    """A bar per rule at its violation rate, in the summary's order, with its s.e. and saving written beside
    it, ε as a line; the price of the guarantee: one line per δ through the layers saved at each calibration
    size, the oracle's saving as the ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adainfer_lib import plots_risk

    summary = pd.DataFrame({"rule": ["Learn-then-Test", "plug-in", "fixed 0.5"], "violation_rate": [0.04, 0.31, 0.0],
                            "se": [0.01, 0.02, 0.0], "layers_saved": [0.2, 0.35, 0.1], "epsilon": 0.05,
                            "delta": 0.02})
    ax = plots_risk.violations_figure(summary, title="v").axes[0]
    bars = sorted(ax.patches, key=lambda bar: bar.get_y())  # the first rule on top (inverted y axis)
    np.testing.assert_allclose([bar.get_width() for bar in bars], summary.violation_rate)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(summary.rule)
    assert [t.get_text() for t in ax.texts] == ["4.0% (saves 20.0%)", "31.0% (saves 35.0%)", "0.0% (saves 10.0%)"]
    assert any(np.allclose(line.get_xdata(), 0.05) for line in ax.lines) and "δ = 2.0%" in ax.get_xlabel()

    price = pd.DataFrame({"n_cal": [100, 400, 1200] * 2, "delta": [0.02] * 3 + [0.1] * 3,
                          "layers_saved": [0.0, 0.12, 0.2, 0.1, 0.25, 0.3], "oracle_layers_saved": 0.42,
                          "epsilon": 0.05})
    ax = plots_risk.price_figure(price, title="p").axes[0]
    for delta, part in price.groupby("delta"):
        assert any(np.allclose(line.get_xydata(), part[["n_cal", "layers_saved"]].to_numpy()) for line in ax.lines
                   if len(line.get_xdata()) == 3), delta
    assert any(np.allclose(line.get_ydata(), 0.42) for line in ax.lines)
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["2%", "10%"]
    plt.close("all")


def test_a_readers_crowded_confidences_are_certified_on_the_refined_grid():
    """A learned reader's confidences crowd near 1 (a probe's chosen thresholds are 0.99x): on the default 0.01 grid
    the first candidate below 1.00 is 0.99, where every prompt stops at once, so nothing is certified and nothing is
    saved; ``certify_reader_rule`` tests the refined candidates in between and certifies a rule that saves layers
    within the guarantee."""
    from adainfer_lib.evaluation.reader_rules import CERTIFICATION_CANDIDATES, certify_reader_rule

    train, cal = synthetic_table(150, 12, seed=7), synthetic_table(600, 12, seed=8)
    crowd = lambda t: t.assign(label_top_prob=0.99 + 0.0099 * t["label_top_prob"])  # noqa: E731  in [0.99, 1)
    train, cal = crowd(train), crowd(cal)
    rule = ai.ExitPolicy("threshold", features=("label_top_prob",), min_layer=1).fit(train)
    coarse_rule, coarse = ai.certify_threshold(rule, cal, delta=0.1, epsilon=0.05)
    assert ai.simulate(coarse_rule, cal)["layers_saved"] == 0.0
    certified, cert = certify_reader_rule(rule, cal, delta=0.1, epsilon=0.05)
    assert 0.99 < cert.threshold < 1.0 and cert.threshold in CERTIFICATION_CANDIDATES
    sim = ai.simulate(certified, cal)
    assert sim["layers_saved"] > 0.05 and 1 - sim["consistency"] <= rc.max_certifiable_risk(600, 0.1, 0.05) + 1e-12
    np.testing.assert_array_equal(cert.thresholds, CERTIFICATION_CANDIDATES)
