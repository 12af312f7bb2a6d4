"""The firm facts the chapters' prose states, checked on the published full-mode tables in ``results/``.

A chapter prints each sentence about a number from the number it computed (in quick and class mode beside the
full-mode value, ``adainfer_lib.course.prose``). What the prose states as a fact about the method — "batch
calibration is needed on this model", "Learn-then-Test stays within ε" — is a property of the published run, so
it is tested here, on the tables ``make reproduce`` wrote (``results/``: the default model, SmolLM2-135M). A
re-run that breaks one of them fails this file, and the prose must change with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

RESULTS = Path(__file__).resolve().parent.parent / "results"
#: The label-word policies the chapter 03 prose talks about.
LABEL_POLICIES = ["threshold · label_gap", "CRF · label features", "logistic · label features"]


def table(name: str) -> pd.DataFrame:
    path = RESULTS / f"{name}.csv"
    if not path.exists():
        pytest.fail(f"results/{name}.csv is missing: run `make reproduce`")
    return pd.read_csv(path)


# ---- chapter 01 ---------------------------------------------------------------------------------------


def test_01_batch_calibration_is_needed_on_this_model():
    """"Calibrated label decisions are necessary on small models": batch calibration raises the accuracy at
    layer L by at least 2 points on some task, and raw decisions lean to one label (most frequent share > 0.8)."""
    rows = table("01_calibration").set_index(["task", "calibration"])
    gains = {t: rows.loc[(t, "batch"), "accuracy_full"] - rows.loc[(t, "raw"), "accuracy_full"]
             for t in rows.index.get_level_values("task").unique()}
    assert max(gains.values()) >= 0.02, gains
    assert rows.xs("raw", level="calibration").most_frequent_label_share.max() > 0.8


def test_01_mmlu_is_at_chance():
    """"MMLU sits at chance for a 135M model": mean accuracy over the three seeds within 5 points of 0.25."""
    seeds = table("01_over_seeds")
    mmlu = seeds[(seeds.task == "mmlu") & (seeds.demos == "fixed")]
    assert mmlu.seed.nunique() == 3 and abs(mmlu.accuracy_full.mean() - 0.25) <= 0.05


# ---- chapter 03 ---------------------------------------------------------------------------------------


def test_03_one_seed_cannot_rank_the_label_policies_by_accuracy():
    """The accuracy criterion's bootstrap intervals of the label-word policies overlap and are points wide."""
    acc = table("03_policies_max_accuracy_loss")
    label = acc[acc.policy.isin(LABEL_POLICIES)]
    assert len(label) == len(LABEL_POLICIES)
    assert label.change_ci_low.max() <= label.change_ci_high.min()
    assert ((label.change_ci_high - label.change_ci_low) >= 1.0).all()


def test_03_consistency_criterion_label_features_beat_the_paper_features_and_the_oracle_beats_all():
    """With the consistency criterion the label-word policies save more than every full-vocabulary one, keep
    >= 98% consistency on test, and the oracle saves more than any policy."""
    con = table("03_policies_min_consistency").set_index("policy")
    paper = [p for p in con.index if "paper" in p or "full vocab" in p]
    assert paper and con.loc[LABEL_POLICIES, "layers_saved"].min() > con.loc[paper, "layers_saved"].max()
    assert con.loc[LABEL_POLICIES, "consistency"].min() >= 0.98
    assert con.loc["oracle", "layers_saved"] > con.drop("oracle").layers_saved.max()


def test_03_transfer_topic_settles_late_and_sentiment_policies_are_too_eager_there():
    """Topic's oracle saves less than sentiment's; label-word policies fitted on sentiment keep less consistency
    on topic than topic's own; fitted on topic they stay >= 99% consistent on sentiment and save no more there
    than sentiment's own."""
    oracle = table("01_oracle_by_task").set_index("task")["oracle layers saved"]
    assert oracle["topic"] < oracle["sentiment"]
    t = table("03_transfer").set_index(["fitted on", "applied to", "policy"])
    pols = [p for p in LABEL_POLICIES if ("sentiment", "topic", p) in t.index]
    assert pols

    def rows(source, target, column):
        return t.loc[[(source, target, p) for p in pols], column].to_numpy()

    assert np.all(rows("sentiment", "topic", "consistency") < rows("topic", "topic", "consistency"))
    assert np.all(rows("topic", "sentiment", "consistency") >= 0.99)
    assert np.all(rows("topic", "sentiment", "layers_saved") <= rows("sentiment", "sentiment", "layers_saved"))


# ---- chapter 06 ---------------------------------------------------------------------------------------


def test_06_learn_then_test_keeps_its_guarantee_and_the_plug_in_rule_does_not():
    """Learn-then-Test broke δ in at most ε (+ one s.e.) of the draws; the plug-in rule (≥ 1 − δ consistency on
    calibration) far more often; Learn-then-Test paid for it with fewer layers saved."""
    summary = table("06_guarantee_check")
    ltt = summary.set_index("rule").loc["Learn-then-Test"]
    delta, epsilon = float(ltt.delta), float(ltt.epsilon)
    plug = summary[summary.rule == f"≥ {1 - delta:.0%} consistency on calibration"].iloc[0]
    assert bool(ltt.within_guarantee) and ltt.violation_rate <= epsilon + ltt.se
    assert plug.violation_rate > epsilon + plug.se
    assert ltt.test_layers_saved < plug.test_layers_saved


def test_06_the_paper_feature_svm_saves_least_under_the_guarantee():
    rules = table("06_rules_certified").set_index("rule")
    label = rules[[("label" in r) for r in rules.index]].layers_saved
    assert len(label) >= 2 and rules.loc["SVM · paper features", "layers_saved"] < label.min()


def test_06_the_guarantee_costs_less_with_a_looser_delta_and_more_calibration_prompts():
    """At every n_cal a looser δ saves at least as many layers; at every δ the largest calibration set saves at
    least as many as the smallest."""
    price = table("06_price_of_guarantee").pivot(index="n_cal", columns="delta", values="layers_saved")
    price = price.sort_index().sort_index(axis=1).to_numpy()
    assert np.all(np.diff(price, axis=1) >= -1e-9)
    assert np.all(price[-1] >= price[0] - 1e-9)


# ---- chapter 08 ---------------------------------------------------------------------------------------


def test_08_the_probe_sees_the_decision_earlier_than_the_lens():
    """"Where the lens is blind": over the first two thirds of the layers the probe agrees with the full model on
    at least 10 points more test prompts than the logit lens, on average, and never on fewer at any layer."""
    agree = table("08_agreement_by_layer")
    early = agree[(agree.layer >= 1) & (agree.layer <= 2 * agree.layer.max() // 3)]
    assert (early["probe"] - early["logit lens"]).mean() >= 0.10
    assert (early["probe"] >= early["logit lens"] - 0.02).all()


def test_08_the_probe_rule_saves_more_than_the_lens_rule_at_the_same_consistency_budget():
    """Section 3: every rule keeps ≥ 0.97 consistency (1.5 points allowed on train, out of fold), the probe's
    threshold and logistic rules each save more than the lens's best rule, and each reader's own oracle is above
    what its rules save; the probe's oracle above the lens oracle."""
    exits = table("08_reader_exits").set_index(["reader", "rule"])
    assert set(exits.index.get_level_values("rule")) == {"threshold", "logistic"}
    assert (exits.consistency >= 0.97).all()
    lens_best = exits.loc["logit lens", "layers_saved"].max()
    assert (exits.loc["probe", "layers_saved"] > lens_best + 0.05).all()
    assert (exits["reader oracle saved"] > exits.layers_saved).all()
    assert exits.loc["probe", "reader oracle saved"].min() > exits.loc["logit lens", "reader oracle saved"].max()


def test_08_the_real_runs_reach_most_of_the_ideal_speedup():
    """Section 7: each reader rule's real run is faster than the full model, at ≥ 0.8 of the ideal speedup its
    exits allow (n = 40, interleaved, the fastest of ``ch08.timing_repeats`` timings of each prompt and run)."""
    real = table("08_real_run").set_index("run")
    rules = real.drop(index="full model")
    assert len(rules) == 3 and (rules["measured speedup"] > 1.0).all()
    np.testing.assert_allclose(rules["measured / ideal"], rules["measured speedup"] / rules["ideal speedup"], atol=1e-3)
    assert (rules["measured / ideal"] >= 0.8).all()


def test_08_certified_reader_rules_keep_the_guarantee_on_the_held_out_half():
    """Section 6: on the half of the test prompts calibration never saw, each certified rule disagrees with the
    full model on at most ε of them."""
    certified = table("08_certified")
    assert ((1 - certified["held-out consistency"]) <= certified.epsilon).all()


def test_08_moved_rules_lose_consistency_and_recertification_restores_it():
    """Section 8: read as they are on product reviews, both rules lose consistency; re-certified on unlabeled
    product prompts, each is back within ε of the full model on the other half."""
    shift = table("08_domain_shift")
    for reader, rows in shift.groupby("reader"):
        by = rows.set_index("data")
        assert by.loc["product reviews, as moved", "consistency"] < by.loc["movie reviews (test)", "consistency"]
        assert 1 - by.loc["product reviews, re-certified", "consistency"] <= 0.05, reader
