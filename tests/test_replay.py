"""The replay kernel's one rule for "the most layers saved within a budget" (``common.replay.most_saved_within``)
and the places that choose by it: ``choose_threshold``, ``best_within``, ``guarantee_check``'s empirical rule,
``GapThresholdPolicy.fit``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from adainfer_lib import risk_control as rc
from adainfer_lib.common.replay import BUDGET_TOLERANCE, Decisions, most_saved_within
from adainfer_lib.evaluation.pareto import best_within
from adainfer_lib.rules.plain import GapThresholdPolicy
from adainfer_lib.rules.policy import ExitPolicy
from adainfer_lib.rules.tuning import choose_threshold
from conftest import task_trace_from_predictions


def test_most_saved_within_budget_and_its_tie_rule():
    saved = [0.1, 0.5, 0.5, 0.5, 0.9]
    loss = [0.0, 0.02, 0.01, 0.01, 0.2]
    assert most_saved_within(saved, loss, 0.05) == 2  # 0.9 is over budget; of the 0.5s, the lower loss, then first
    assert most_saved_within(saved, loss, 0.05, threshold=[0.9, 0.6, 0.4, 0.5, 0.1]) == 3  # the higher threshold
    assert most_saved_within(saved, loss, 0.0) == 0
    assert most_saved_within(saved, [0.3] * 5, 0.05) is None
    assert most_saved_within([0.2, 0.4], [0.0, np.nan], 1.0) == 0  # a NaN loss never meets a budget
    # one tolerance, on fractions: floating error at the boundary counts as within, a real excess does not
    assert 0.1 + 0.2 > 0.3 and most_saved_within([0.7], [0.1 + 0.2], 0.3) == 0
    assert most_saved_within([0.7], [0.1 + 10 * BUDGET_TOLERANCE], 0.1) is None
    with pytest.raises(ValueError, match="one value per candidate"):
        most_saved_within([0.1, 0.2], [0.0], 0.1)


def test_choose_threshold_takes_the_higher_of_thresholds_with_equal_exits():
    from conftest import synthetic_table

    train = synthetic_table(60, 8, seed=3)
    policy = ExitPolicy("threshold", features=("label_gap",)).fit(train)
    gaps = train.loc[train.layer >= policy.min_layer, "label_gap"]
    low = float(gaps[gaps > 0].min())  # thresholds in (0, low] exit the same examples at the same layers
    grid = [low / 3, low / 2, 0.5, 1.01]
    threshold, sweep = choose_threshold(policy, train, max_loss=1.0, thresholds=grid, cv=None)
    assert sweep["layers_saved"].iloc[0] == sweep["layers_saved"].iloc[1] == sweep["layers_saved"].max()
    assert threshold == low / 2 and sweep["chosen"].sum() == 1
    assert sweep.loc[sweep["chosen"], "threshold"].item() == threshold
    loss = sweep["full_accuracy"] - sweep["accuracy"]
    assert threshold == grid[most_saved_within(sweep["layers_saved"], loss, 1.0, threshold=sweep["threshold"])]
    with pytest.raises(ValueError, match="no threshold meets max_loss"):
        choose_threshold(policy, train, max_loss=0.0, thresholds=[0.0], cv=None)


def test_best_within_counts_the_boundary_and_breaks_ties_to_the_higher_knob():
    full = 0.88
    curves = pd.DataFrame({
        "task": ["t"] * 5,
        "method": ["gap"] * 3 + ["fixed"] * 2,
        "param": [0.2, 0.3, 0.9, 4, 6],
        "layers_saved": [0.6, 0.6, 0.1, 0.5, 0.25],
        "accuracy": [0.87, 0.87, 0.88, 0.86, 0.88],
    })
    curves["accuracy_change_pts"] = 100 * (curves["accuracy"] - full)  # 100 * (0.87 - 0.88) = -1.0000000000000009
    best = best_within(curves, max_drop_pts=1.0).set_index("method")
    assert best.loc["gap", "param"] == 0.3  # exactly 1 point lost is within 1 point; of the tie, the higher knob
    assert best.loc["fixed", "param"] == 6  # 2 points lost is not
    per_task = best_within(curves, max_drop_pts=1.0, by=["task"])
    assert len(per_task) == 1 and per_task.iloc[0]["method"] == "gap"


def test_guarantee_checks_empirical_rule_is_the_kernel():
    n, L = 200, 6
    rng = np.random.default_rng(0)
    stop = rng.random((n, L + 1))
    preds = (rng.random((n, L + 1)) < 0.3).astype(int)
    preds[:, -1] = 0
    replay = rc.replay_decisions(stop, Decisions(preds, preds[:, -1], preds[:, -1], np.arange(n)), min_layer=1)
    draws = rc.guarantee_check(replay, n_cal=n, empirical={"plug-in": 0.05})
    row = draws[draws.rule == "plug-in"].iloc[0]
    j = most_saved_within(replay.layers_saved(), replay.risk("disagreement"), 0.05, threshold=replay.thresholds)
    assert row.threshold == replay.thresholds[j] and row.cal_risk <= 0.05 + BUDGET_TOLERANCE


def test_gap_rule_fit_never_exits_when_no_exit_keeps_the_accuracy():
    """Every early decision is wrong: no (threshold, min_layer) of the grid keeps the accuracy, so the fit is
    the never-exit rule (before, it fell back to the grid's top threshold at layer 1, which exits and loses)."""
    n, L = 30, 4
    gold = np.zeros(n, int)
    preds = np.ones((n, L + 1), int)
    preds[:, -1] = 0
    tt = task_trace_from_predictions(preds, gold)
    rule = GapThresholdPolicy.fit(tt, max_drop=0.0)
    assert rule.threshold > 1.0 and (rule.exit_layers(tt) == L).all()
    # where early exits are free (every layer right, label gap 0.46 everywhere), the fit saves the most layers
    # (exit at the first check, layer 1); of the thresholds that do it alike, the higher one
    preds[:] = 0
    rule = GapThresholdPolicy.fit(task_trace_from_predictions(preds, gold), max_drop=0.0, thresholds=[0.1, 0.2, 0.5],
                                  min_layers=[1, 2])
    assert (rule.threshold, rule.min_layer) == (0.2, 1)


def test_an_exit_replay_holds_the_kernels_decisions_and_agrees_with_metrics_at():
    from adainfer_lib.common.replay import metrics_at
    from conftest import synthetic_table

    table = synthetic_table(50, 8, seed=4)
    policy = ExitPolicy("threshold", features=("label_gap",)).fit(table)
    replay = rc.replay_exits(policy, table, thresholds=[0.9, 0.6, 0.3])
    decisions = Decisions.from_table(table)
    np.testing.assert_array_equal(replay.decisions.predictions, decisions.predictions)
    for j, t in enumerate(replay.thresholds):
        m = metrics_at(replay.decisions, replay.exits[j])
        assert 1 - replay.risk("disagreement")[j] == pytest.approx(m["consistency"])
        assert replay.layers_saved()[j] == pytest.approx(m["layers_saved"])
        assert m == metrics_at(decisions, policy.exit_layers(table, t))
    part = replay.take(slice(0, 20))
    np.testing.assert_array_equal(part.decisions.gold, decisions.gold[:20])
    # a real run's own decisions at its exits replace the replayed ones
    exits = np.full(decisions.n, 3)
    flipped = 1 - decisions.at(exits)
    real = metrics_at(decisions, exits, predictions=flipped)
    assert real["consistency"] == pytest.approx(1 - metrics_at(decisions, exits)["consistency"])
    assert real["ideal_speedup"] == pytest.approx(8 / 3) and real["mean_exit_layer"] == 3


def test_the_best_layer_is_one_rule_everywhere():
    """Layers 2 and L=4 tie as the most accurate: the best layer is the later one, for the seeds table and
    chapter 03's sentence alike (it said layer 2 and the table layer 4 before; both read ``TaskTrace.best_layer``)."""
    from adainfer_lib.common.replay import best_layer
    from adainfer_lib.evaluation.seeds import layer_statistics

    assert best_layer([0.5, 0.9, 0.7, 0.9]) == 3 and best_layer([0.5, 0.9, 0.7, 0.8]) == 1
    assert best_layer([np.nan, 0.2, np.nan]) == 1
    gold = np.array([1, 1, 0, 0])
    by_layer = [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0]]  # accuracy .5 .5 .75 .5 .75
    preds = np.array(by_layer).T
    tt = task_trace_from_predictions(preds, gold)
    np.testing.assert_allclose(tt.accuracy_by_layer(), [0.5, 0.5, 0.75, 0.5, 0.75])
    assert tt.best_layer() == 4 == layer_statistics(tt)["best_layer"]
