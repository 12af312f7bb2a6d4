"""Exercise checkers of chapters 02–05: each accepts the right answer computed independently of the checker (by
hand, or replayed here with a loop rather than the library's replay) and its solution (``notebooks/solutions``)
on synthetic tables, traces and evaluations, and rejects the ``...`` placeholder and the plausible wrong answers
(off by one, a percentage for a fraction, the train split for the test split, another criterion), naming them."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

import adainfer_lib as ai
from adainfer_lib import exercises
from adainfer_lib.data.calibration import fit_calibration
from adainfer_lib.evaluation.evaluate import Evaluation
from conftest import make_trace, synthetic_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))

from solutions import ch02, ch03, ch04, ch05  # noqa: E402

LABEL = ("label_gap", "label_top_prob", "layer_frac")
PAPER = ("gap", "top_prob")


def settling_trace(n: int = 60, L: int = 12, *, seed: int = 0, split: str = "test", lean: float = 2.0):
    """A ``TaskTrace`` (2 labels, batch calibration) whose examples settle at a random layer: before it the
    decision is random with a small margin, after it the final label with a margin that grows with depth. The
    raw logits lean towards label 0 by ``lean`` (the batch calibration removes it); the full-vocabulary
    ``gap``/``top_prob`` jump (noisily) when the example settles."""
    rng = np.random.default_rng(seed)
    layers = np.arange(L + 1)
    settle = rng.integers(1, L + 1, size=n)
    final = rng.integers(0, 2, size=n)
    after = layers[None, :] >= settle[:, None]
    decision = np.where(after, final[:, None], rng.integers(0, 2, size=(n, L + 1)))
    margin = np.where(after, 1.0 + 2.0 * layers / L, 0.2) * rng.uniform(0.5, 1.5, size=(n, L + 1))
    diff = np.where(decision == 1, margin, -margin)  # logit of label 1 minus label 0, before the lean
    logits = np.stack([lean - diff / 2, diff / 2], axis=-1)
    gap = np.clip(np.where(after, 0.5, 0.15) + 0.15 * rng.standard_normal((n, L + 1)), 0, 1)
    cos_prev = 0.9 + 0.03 * after + 0.05 * rng.standard_normal((n, L + 1))
    cos_prev[:, 0] = np.nan
    trace = dataclasses.replace(make_trace(logits), gap=gap, top_prob=np.clip(gap + 0.2, 0, 1), cos_prev=cos_prev)
    gold = np.where(rng.random(n) < 0.8, final, 1 - final)
    calibrations = {m: fit_calibration(m, unlabelled=logits) for m in ("raw", "batch")}
    return ai.TaskTrace(trace, gold=gold, calibrations=calibrations, task_name="synthetic", label_names=["a", "b"],
                        split=split, method="batch")


def rejected(feedback, *words: str) -> bool:
    """``feedback`` is a ❌ whose message contains every one of ``words``."""
    return not feedback and str(feedback).startswith("❌") and all(w in feedback.message for w in words)


def replay_by_hand(policy, table, threshold: float) -> dict:
    """``policy`` at ``threshold`` on ``table``, replayed with a loop (not the library's replay): each example
    exits at the first layer >= min_layer whose stop probability reaches the threshold (else L); its decision
    there is compared with gold and with the final layer's."""
    L = int(table["layer"].max())
    stop = policy.stop_matrix(table)  # (n, L+1), examples in ascending order
    preds = table.pivot(index="example", columns="layer", values="pred").to_numpy()
    gold = table.groupby("example")["gold"].first().to_numpy()
    exits = np.array([next((layer for layer in range(policy.min_layer, L + 1) if row[layer] >= threshold), L)
                      for row in stop])
    at_exit = preds[np.arange(len(preds)), exits]
    return {"exits": exits, "layers_saved": 1 - exits.mean() / L,
            "accuracy_change_pts": 100 * (np.mean(at_exit == gold) - np.mean(preds[:, -1] == gold)),
            "consistency": np.mean(at_exit == preds[:, -1])}


# ---------------------------------------------------------------------------------------------------
# Chapter 02


@pytest.fixture(scope="module")
def trace02():
    return settling_trace(seed=0)


@pytest.fixture(scope="module")
def table02(trace02):
    return ai.feature_table(trace02)


def test_chapter_02_correct_auc(table02):
    answer = ch02.exercise_1(table02)
    assert exercises.check_02_correct_auc(table02, answer)
    assert exercises.check_02_correct_auc(table02, round(answer, 3))
    assert rejected(exercises.check_02_correct_auc(table02, ...), "replace the `...`")
    assert rejected(exercises.check_02_correct_auc(table02, "0.7"), "one number")
    settled = ai.feature_auc(table02, ["label_gap"], label="settled").auc[0]
    assert rejected(exercises.check_02_correct_auc(table02, settled), "`settled`", 'label="correct"')
    assert rejected(exercises.check_02_correct_auc(table02, 1 - answer), "1 − the AUC")
    assert rejected(exercises.check_02_correct_auc(table02, 100 * answer), "percentage")
    assert rejected(exercises.check_02_correct_auc(table02, answer + 0.05), "too high")
    per_layer = ai.per_layer_auc(table02, "label_gap", label="correct")
    mean = per_layer[(per_layer.layer >= 1) & (per_layer.layer < 12)].auc.mean()
    assert rejected(exercises.check_02_correct_auc(table02, mean), "mean of the per-layer AUCs")


def test_chapter_02_raw_calibration_auc(trace02, table02):
    answer = ch02.exercise_2(trace02)
    assert exercises.check_02_raw_calibration_auc(trace02, answer)
    assert rejected(exercises.check_02_raw_calibration_auc(trace02, ...), "replace the `...`")
    batch = ai.feature_auc(table02, ["label_gap"], label="settled").auc[0]
    assert abs(batch - answer) > 0.01
    assert rejected(exercises.check_02_raw_calibration_auc(trace02, batch), "batch", "with_calibration")
    assert rejected(exercises.check_02_raw_calibration_auc(trace02, answer - 0.05), "too low")


def test_chapter_02_raw_calibration_auc_undefined():
    """A trace whose raw decisions never change: every row is settled, the AUC is NaN and NaN is the answer."""
    tt = settling_trace(seed=3, lean=50.0)
    assert np.isnan(ch02.exercise_2(tt))
    assert exercises.check_02_raw_calibration_auc(tt, ch02.exercise_2(tt))
    assert rejected(exercises.check_02_raw_calibration_auc(tt, 0.5), "float('nan')")


def test_chapter_02_label_gap_change(table02):
    answer = ch02.exercise_3(table02)
    assert exercises.check_02_label_gap_change(table02, **answer)
    # by hand: the (examples × layers) grid of label_gap, differenced along the layers; both pooled AUCs with
    # scikit-learn over the decision rows 1 <= layer < L
    n, L = table02.example.nunique(), int(table02.layer.max())
    grid = table02["label_gap"].to_numpy().reshape(n, L + 1)
    by_hand = np.concatenate([np.full((n, 1), np.nan), np.diff(grid, axis=1)], axis=1).reshape(-1)
    rows = ((table02.layer >= 1) & (table02.layer < L)).to_numpy()
    settled = table02["settled"].to_numpy()[rows]
    distance = {name: abs(roc_auc_score(settled, values[rows]) - 0.5)
                for name, values in (("change", by_hand), ("cos_prev", table02["cos_prev"].to_numpy()))}
    assert exercises.check_02_label_gap_change(table02, by_hand, bool(distance["change"] > distance["cos_prev"]))
    assert rejected(exercises.check_02_label_gap_change(table02, by_hand, distance["change"] <= distance["cos_prev"]),
                    "not the comparison")
    column, beats = answer["label_gap_change"], answer["beats_cos_prev"]
    assert exercises.check_02_label_gap_change(table02, column.fillna(0).to_numpy(), beats)  # 0 at layer 0 is fine
    check = exercises.check_02_label_gap_change
    assert rejected(check(table02, ..., beats), "replace the `...`")
    assert rejected(check(table02, column, ...), "True or False")
    assert rejected(check(table02, column, not beats), "not the comparison")
    assert rejected(check(table02, column[:-1], beats), "rows")
    assert rejected(check(table02, -column, beats), "wrong sign")
    assert rejected(check(table02, table02["label_gap"].diff(), beats), "group by example")
    assert rejected(check(table02, table02["label_gap"], beats), "label_gap itself")
    assert rejected(check(table02, table02.groupby("example")["label_gap"].diff(-1), beats), "next")
    assert rejected(check(table02, column.fillna(0) + 0.01, beats), "differs", "example")


# ---------------------------------------------------------------------------------------------------
# Chapter 03


@pytest.fixture(scope="module")
def tables03():
    train, test = synthetic_table(80, 12, seed=0, noise=0.1), synthetic_table(60, 12, seed=10, noise=0.1)
    train.attrs["split"], test.attrs["split"] = "train", "test"
    return train, test


@pytest.fixture(scope="module")
def policies03(tables03):
    train, _ = tables03
    specs = {"threshold · label_gap": ai.ExitPolicy("threshold", features=("label_gap",)),
             "SVM · paper features": ai.ExitPolicy("svm", features=PAPER),
             "CRF · label features": ai.ExitPolicy("crf", features=LABEL)}
    return {name: policy.fit(train) for name, policy in specs.items()}


def test_chapter_03_operating_point(tables03, policies03):
    train, test = tables03
    check = exercises.check_03_operating_point
    assert check(train, test, policies03, **ch03.exercise_1(train, test, policies03))
    svm = policies03["SVM · paper features"]
    threshold, _ = ai.choose_threshold(svm, train, max_loss=0.03)  # the tuning step; the replay on test by hand
    mine = replay_by_hand(svm, test, threshold)
    saved, change = mine["layers_saved"], mine["accuracy_change_pts"]
    assert check(train, test, policies03, layers_saved=saved, accuracy_change_pts=change)
    on_train = replay_by_hand(svm, train, threshold)["layers_saved"]  # the threshold replayed on train, not test
    assert abs(on_train - saved) > 2e-3
    assert not check(train, test, policies03, layers_saved=on_train, accuracy_change_pts=change)
    if abs(change) > 0.1:
        assert rejected(check(train, test, policies03, layers_saved=saved, accuracy_change_pts=change / 100),
                        "a fraction: answer points")
    assert rejected(check(train, test, policies03, layers_saved=1 - saved, accuracy_change_pts=change), "layers saved")
    assert rejected(check(train, test, policies03, layers_saved=..., accuracy_change_pts=...), "replace the `...`")
    one_point = ai.simulate(policies03["SVM · paper features"], test,
                            ai.choose_threshold(policies03["SVM · paper features"], train, max_loss=0.01)[0])
    assert abs(one_point["layers_saved"] - saved) > 0.01
    assert rejected(check(train, test, policies03, layers_saved=one_point["layers_saved"], accuracy_change_pts=change),
                    "1-point threshold")
    assert rejected(check(train, test, policies03, layers_saved=100 * saved, accuracy_change_pts=change), "percentage")
    assert rejected(check(train, test, policies03, layers_saved=saved, accuracy_change_pts=change + 1), "too high")


def test_chapter_03_min_layer(tables03, policies03):
    train, test = tables03
    answer = ch03.exercise_2(train, test, policies03, min_layers=(4, 8))
    check = exercises.check_03_min_layer
    assert check(train, test, policies03, answer)
    by_hand = {}
    for m in (4, 8):
        refit = clone(policies03["CRF · label features"]).set_params(min_layer=m).fit(train)
        threshold, _ = ai.choose_threshold(refit, train, metric="consistency", max_loss=0.01)
        by_hand[m] = replay_by_hand(refit, test, threshold)["layers_saved"]
        assert by_hand[m] <= 1 - m / 12 + 1e-12  # no exit before min_layer: at most 1 - m/L saved
    assert check(train, test, policies03, by_hand)
    assert rejected(check(train, test, policies03, ...), "dict")
    assert rejected(check(train, test, policies03, {4: answer[4], 8: ...}), "min_layer=8")
    assert rejected(check(train, test, policies03, {4: answer[4], 30: 0.1}), "keys")
    original = ai.simulate(policies03["CRF · label features"], test,
                           ai.choose_threshold(policies03["CRF · label features"], train, metric="consistency")[0])
    assert abs(original["layers_saved"] - answer[8]) > 0.01
    assert rejected(check(train, test, policies03, {4: answer[4], 8: original["layers_saved"]}), "original min_layer")
    assert rejected(check(train, test, policies03, {4: answer[4], 8: answer[8] + 0.05}), "min_layer=8", "too high")


def test_chapter_03_beats_baseline(tables03, policies03):
    train, test = tables03
    check = exercises.check_03_beats_baseline
    answer = ch03.exercise_3(train)
    assert check(train, test, policies03, answer)
    assert check(train, test, policies03, clone(answer))  # unfitted: the checker fits it on train
    assert rejected(check(train, test, policies03, ...), "ai.ExitPolicy")
    assert rejected(check(train, test, policies03, policies03["SVM · paper features"]), "baseline", "itself")
    on_test = clone(answer).fit(test)
    assert rejected(check(train, test, policies03, on_test), "not on `train`")
    never = ai.ExitPolicy("threshold", features=("layer_frac",), min_layer=11).fit(train)  # stops only at L-1
    assert rejected(check(train, test, policies03, never, baseline="CRF · label features"), "not more")


# ---------------------------------------------------------------------------------------------------
# Chapter 04


def synthetic_evaluation(tt, policies: dict, *, check_cost: float = 0.4) -> Evaluation:
    """An ``Evaluation`` shaped like ``run_evaluation``'s, replayed on ``tt``: each policy's exits, the full
    model and the oracle; every policy's checks cost ``check_cost`` layers."""
    table, L, n = ai.feature_table(tt), tt.n_layers, tt.n_examples
    preds, gold = tt.predictions(), np.asarray(tt.gold)
    exits = {"full": np.full(n, L), **{name: p.exit_layers(table) for name, p in policies.items()},
             "oracle": tt.earliest_consistent_layer()}
    predictions = {name: preds[np.arange(n), e] for name, e in exits.items()}
    rows = []
    for name, e in exits.items():
        depth = e.mean()
        policy = policies.get(name)
        checks = np.mean(e - policy.min_layer + 1) if policy is not None else np.nan
        accuracy, full = np.mean(predictions[name] == gold), np.mean(predictions["full"] == gold)
        rows.append({"task": tt.task_name, "method": name, "kind": "real early exit" if policy else "trace replay",
                     "n": n, "accuracy_full": full, "accuracy": accuracy,
                     "accuracy_change_pts": 100 * (accuracy - full),
                     "consistency": np.mean(predictions[name] == predictions["full"]), "mean_exit_layer": depth,
                     "depth": depth / L, "layers_saved": 1 - depth / L, "ideal_speedup": L / depth,
                     "measured_speedup": L / (depth + (checks * check_cost if policy else 0)),
                     "ideal_speedup_timed": L / depth, "n_timed": n,
                     "check_cost": check_cost if policy else np.nan, "checks_per_example": checks})
    frame = pd.DataFrame(rows).assign(speedup_ratio=lambda t: t.measured_speedup / t.ideal_speedup_timed)
    return Evaluation(table=frame, exits=exits, predictions=predictions, timings=pd.DataFrame(), gold=gold, n_layers=L)


@pytest.fixture(scope="module")
def world04():
    """ch04's objects for one task: ``policies``, ``train_traces``, ``test_traces``, ``evaluations``; the
    thresholds are chosen for at most 5 points of accuracy lost (and the SVM learns `settled`), so that the SVM
    saves layers, some of its exits change predictions, and the CRF's choice differs from the consistency one."""
    train_tt, test_tt = settling_trace(80, seed=100, split="train"), settling_trace(60, seed=0)
    specs = {"SVM · paper features": {"classifier": "svm", "features": PAPER, "label_scheme": "settled"},
             "CRF · paper features": {"classifier": "crf", "features": PAPER},
             "CRF · label features": {"classifier": "crf", "features": LABEL}}
    policies = ai.fit_policies(train_tt, specs, max_loss=0.05)
    return {"policies": {"sentiment": policies}, "train_traces": {"sentiment": train_tt},
            "test_traces": {"sentiment": test_tt},
            "evaluations": {"sentiment": synthetic_evaluation(test_tt, policies)}}


def test_chapter_04_affordable_checks(world04):
    evaluations = world04["evaluations"]
    answer = ch04.exercise_1(evaluations)
    check = exercises.check_04_affordable_checks
    assert answer > 0 and check(evaluations, answer)
    ev = evaluations["sentiment"]  # by hand: layers saved per example / the 0.4 layers one check costs
    by_hand = (ev.n_layers - np.mean(ev.exits["CRF · paper features"])) / 0.4
    assert check(evaluations, by_hand) and by_hand == pytest.approx(answer)
    assert rejected(check(evaluations, by_hand * 0.4), "divide by the cost of one check")
    assert check(evaluations, round(answer, 1) if answer > 10 else answer)
    assert rejected(check(evaluations, ...), "replace the `...`")
    row = evaluations["sentiment"].table.set_index("method").loc["CRF · paper features"]
    assert rejected(check(evaluations, row.layers_saved / row.check_cost), "fraction", "L = 12")
    assert rejected(check(evaluations, row.check_cost * row.checks_per_example), "checks cost now")
    assert rejected(check(evaluations, -1.0), "between 0")
    assert rejected(check(evaluations, 2 * answer), "too high")


def test_chapter_04_consistency_threshold(world04):
    w = world04
    args = (w["policies"], w["train_traces"], w["test_traces"])
    answer = ch04.exercise_2(*args)
    check = exercises.check_04_consistency_threshold
    assert check(*args, answer)
    crf = w["policies"]["sentiment"]["CRF · label features"]
    train, test = (ai.feature_table(w[k]["sentiment"]) for k in ("train_traces", "test_traces"))
    threshold, _ = ai.choose_threshold(crf, train, metric="consistency", max_loss=0.01)
    by_hand = replay_by_hand(crf, test, threshold)
    assert check(*args, by_hand["layers_saved"]) and by_hand["layers_saved"] == pytest.approx(answer)
    on_train = replay_by_hand(crf, train, threshold)["layers_saved"]  # the threshold replayed on train, not test
    assert abs(on_train - answer) > 2e-3 and not check(*args, on_train)
    assert rejected(check(*args, ...), "replace the `...`")
    policy = w["policies"]["sentiment"]["CRF · label features"]
    own = ai.simulate(policy, ai.feature_table(w["test_traces"]["sentiment"]))["layers_saved"]
    assert abs(own - answer) > 0.01
    assert rejected(check(*args, own), "metric=\"consistency\"")
    assert rejected(check(*args, answer + 0.1), "too high")
    loose = ch04.exercise_2(*args, max_loss=0.05)   # quick mode's criterion
    assert check(*args, loose, max_loss=0.05)


def test_chapter_04_exit_before_settling(world04):
    evaluations = world04["evaluations"]
    ev = evaluations["sentiment"]
    check = exercises.check_04_exit_before_settling
    example = ch04.exercise_3(evaluations)
    assert check(evaluations, example)
    assert rejected(check(evaluations, ...), "replace the `...`")
    assert rejected(check(evaluations, len(ev.gold)), "between 0")
    margin = np.asarray(ev.exits["CRF · label features"]) - np.asarray(ev.exits["oracle"])
    later = np.flatnonzero(margin > margin.min())
    if len(later):
        assert rejected(check(evaluations, int(later[0])), "smaller difference")


# ---------------------------------------------------------------------------------------------------
# Chapter 05 (the checkers read only the explorer's tables and controls: a stand-in with hand-made numbers)


def explorer_standin(exit_layers, sweep=None, *, n_layers: int = 6, threshold: float = 0.4, tuned: float = 0.6):
    """What ``check_05_*`` read of an ``ExitExplorer``: ``dataset_exits()``, ``dataset_sweep()``, the model's L,
    the sliders and the policy's tuned threshold."""
    from types import SimpleNamespace

    names = np.array(["negative", "positive"])
    n = len(exit_layers)
    exits = pd.DataFrame({"text": [f"review {i}" for i in range(n)], "exit_layer": exit_layers,
                          "gold": names[np.arange(n) % 2], "at_exit": names[np.zeros(n, int)],
                          "full_model": names[np.arange(n) % 2]})
    return SimpleNamespace(dataset_exits=lambda: exits, dataset_sweep=lambda: sweep,
                           model=SimpleNamespace(n_layers=n_layers), threshold=SimpleNamespace(value=threshold),
                           min_layer=SimpleNamespace(value=1), policy=SimpleNamespace(threshold=tuned),
                           dataset_trace=SimpleNamespace(n_examples=n))


def test_chapter_05_earliest_exit():
    explorer = explorer_standin([4, 2, 6, 2, 5])  # by eye: examples 1 and 3 exit earliest, at layer 2
    check = exercises.check_05_earliest_exit
    assert check(explorer, 1) and check(explorer, np.int64(3)) and ch05.exercise_1(explorer) == 1
    assert "exits at layer 2 of 6" in str(check(explorer, 1)) and "2 example(s) share" in str(check(explorer, 1))
    assert rejected(check(explorer, 0), "example 0 exits at layer 4, but 2 example(s) exit at layer 2")
    assert rejected(check(explorer, 2), "exits at layer 6")  # the latest, not the earliest
    assert rejected(check(explorer, 5), "between 0 and 4") and rejected(check(explorer, True), "between 0 and 4")
    assert rejected(check(explorer, ...), "replace the `...`")
    assert rejected(check(explorer_standin([6, 6, 6]), 0), "no test example exits before the last layer")


def test_chapter_05_threshold_within_one_point():
    sweep = pd.DataFrame({"threshold": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "full_accuracy": 0.8,
                          "accuracy": [0.5, 0.7, 0.79, 0.8, 0.82, 0.8]})
    explorer = explorer_standin([3, 2, 6], sweep)
    check = exercises.check_05_threshold_within_one_point
    # by hand: 0.4 loses exactly one point (0.79 vs 0.80: within), 0.2 loses ten
    assert check(explorer, 0.4) and ch05.exercise_2(explorer) == 0.4
    assert rejected(check(explorer, 0.2), "too low")  # one step too eager
    assert rejected(check(explorer, 0.6), "tuned threshold (chosen on train)")  # the policy's own threshold
    assert rejected(check(explorer, 0.0), "the smallest threshold of the sweep, whatever it loses")
    assert rejected(check(explorer, 0.8), "too high") and rejected(check(explorer, ...), "replace the `...`")


def test_whole_number_answers_are_read_as_numbers_not_types():
    """Issue 23 §5: a float 20.0 where 20 is expected was rejected as "answer a layer number ... got 20.0" (as if
    it were not a layer number); a fraction, a boolean and an out-of-range value each get their own message."""
    from adainfer_lib.course.exercises import _whole_number

    assert _whole_number(20.0, "a layer number", 0, 30) == (20, None)
    assert _whole_number(np.int64(7), "a layer number", 0, 30) == (7, None)
    for answer, says in [(20.5, "20.5 is not a whole number"), (True, "got True"), (31, "between 0 and 30, got 31"),
                         ("20", "got '20'"), (..., "replace the `...`"), (float("nan"), "got nan")]:
        value, problem = _whole_number(answer, "a layer number", 0, 30)
        assert value is None and not problem and says in str(problem), (answer, str(problem))


def test_chapter_01_checkers_take_a_whole_float_and_name_a_percentage():
    from adainfer_lib.course.exercises import check_01_first_layer_reaching, check_01_raw_oracle, first_layer_reaching
    from conftest import task_trace_from_predictions

    preds = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 1, 1]])
    tt = task_trace_from_predictions(preds, gold=[1, 1, 0, 1])
    right = first_layer_reaching(tt)
    assert check_01_first_layer_reaching(tt, float(right)) and check_01_first_layer_reaching(tt, right)
    raw = tt.with_calibration("raw")
    accuracy = float((raw.final_predictions() == raw.gold).mean())
    saved = 1 - raw.earliest_consistent_layer().mean() / raw.n_layers
    assert check_01_raw_oracle(tt, oracle_layers_saved=saved, accuracy_full=accuracy)
    feedback = check_01_raw_oracle(tt, oracle_layers_saved=saved, accuracy_full=100 * accuracy)
    assert not feedback and "looks like a percentage" in str(feedback)
    feedback = check_01_raw_oracle(tt, oracle_layers_saved=100 * saved, accuracy_full=accuracy)
    assert not feedback and "oracle saving" in str(feedback) and "percentage" in str(feedback)
