"""Boundaries that hold (issue 12, parts 3-5): inputs are checked where they enter, a policy knows its model,
and the architecture registry never guesses.

Every case asserts the exact error (``pytest.raises(..., match=...)``) or the right value. Model-level cases
run on a tiny random model of every registered family (fixture ``tiny_model``) where the kind applies.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import NotFittedError

from adainfer_lib import fit_policies, pareto_curves, run_evaluation, shortgpt_curve, suggest_min_layer
from adainfer_lib.common.checks import check_exit_layers, check_int, check_number, check_threshold
from adainfer_lib.data.calibration import Calibration
from adainfer_lib.data.task_trace import TaskTrace
from adainfer_lib.features.table import feature_table
from adainfer_lib.model.identity import (
    ModelMismatchError,
    PolicyModelMismatchError,
    check_rule_model,
    check_trace_model,
)
from adainfer_lib.model.loading import LensModel
from adainfer_lib.model.registry import RegistryPathError, get_submodule
from adainfer_lib.rules.plain import FixedExitPolicy, GapThresholdPolicy, ScheduledExitPolicy
from adainfer_lib.rules.policy import ExitPolicy
from adainfer_lib.rules.tuning import (
    choose_threshold,
    compare_policies,
    simulate,
    simulate_exits,
    threshold_sweep,
    tune_threshold,
)
from adainfer_lib.runner.early_exit import run_early_exit
from conftest import TINY_TYPES, make_tiny_model, make_trace, synthetic_table, task_trace_from_predictions, tiny_config

PROMPTS = ["The capital of France is", "Review: a moving film.\nSentiment:", "1, 2, 3, 4,", "Hi"]
WORDS = [" positive", " negative"]


def table_of(model_id: str, n_layers: int, *, label_words=WORDS, name: str = "model-a", seed: int = 0) -> pd.DataFrame:
    """A synthetic feature table that says it was traced with model ``model_id`` (L = ``n_layers``)."""
    table = synthetic_table(30, n_layers, n_labels=len(label_words), seed=seed)
    table.attrs.update({"model": name, "model_cache_id": model_id, "label_words": list(label_words)})
    return table


def policy_of(model_id: str, n_layers: int, **kw) -> ExitPolicy:
    """A fitted threshold policy recording model ``model_id`` and ``WORDS`` (raw calibration offsets)."""
    return ExitPolicy("threshold", threshold=0.5).fit(table_of(model_id, n_layers, **kw))


@pytest.fixture(scope="module")
def llama(default_tokenizer):
    return make_tiny_model("llama", default_tokenizer)


@pytest.fixture(scope="module")
def train():
    return synthetic_table(40, 8, seed=0)


@pytest.fixture(scope="module")
def logistic(train):
    return ExitPolicy("logistic", features=("label_gap", "layer_frac"), label_scheme="settled").fit(train)


# ===================================================================================================
# 3. Inputs are checked where they enter
# ---------------------------------------------------------------------------------------------------
# The shared checks


def test_shared_checks_name_the_value_and_what_is_allowed():
    assert check_int(np.int64(3), "n", low=1) == 3 and check_int(None, "n", none_ok=True) is None
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, not 0"):
        check_int(0, "n", low=1)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, not 1.5 \(float\)"):
        check_int(1.5, "n", low=1)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, not True"):
        check_int(True, "n", low=1)
    with pytest.raises(ValueError, match=r"C must be a positive number, not 0"):
        check_number(0, "C", positive=True)
    assert check_threshold(1.01) == 1.01 and check_threshold(0) == 0.0
    for bad in (-0.01, 1.02, float("nan"), "0.5", None):
        with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1.01\] \(a stop probability"):
            check_threshold(bad)
    np.testing.assert_array_equal(check_exit_layers([0, 3, 2.0], 3), [0, 3, 2])
    with pytest.raises(ValueError, match=r"exit layers must be integers in 0..3 .* got \[4, 7\]"):
        check_exit_layers([1, 4, 7], 3)
    with pytest.raises(ValueError, match=r"exit layers: 2 given for 3 examples"):
        check_exit_layers([1, 2], 3, n_examples=3)


# ---------------------------------------------------------------------------------------------------
# Exit rules: FixedExitPolicy, ScheduledExitPolicy


def test_fixed_exit_beyond_the_model_is_an_error(tiny_model):
    L = tiny_model.n_layers
    with pytest.raises(ValueError, match=rf"FixedExitPolicy layer must be integers in 0..{L} \(the model has L={L}"):
        run_early_exit(tiny_model, PROMPTS, FixedExitPolicy(L + 2), label_words=WORDS, calibration="raw")


def test_fixed_exit_at_the_bounds_exits_there(llama):
    L = llama.n_layers
    for layer in (0, 1, L):
        res = run_early_exit(llama, PROMPTS, FixedExitPolicy(layer), label_words=WORDS, calibration="raw")
        assert (res.exit_layers == layer).all()


@pytest.mark.parametrize("bad, message", [
    (-1, r"FixedExitPolicy layer must be integers >= 0, got \[-1\]"),
    (1.5, r"FixedExitPolicy layer must be integers >= 0, got \[1.5\]"),
    (True, r"FixedExitPolicy layer must be integers >= 0, got \[True\]"),
])
def test_fixed_exit_layer_is_checked_at_construction(bad, message):
    with pytest.raises(ValueError, match=message):
        FixedExitPolicy(bad)


def test_scheduled_exits_are_checked_against_model_and_prompts(tiny_model):
    L = tiny_model.n_layers
    with pytest.raises(ValueError, match=rf"ScheduledExitPolicy layers must be integers in 0..{L} .* got \[{L + 1}\]"):
        run_early_exit(tiny_model, PROMPTS, ScheduledExitPolicy([1, 2, L + 1, 1]), label_words=WORDS,
                       calibration="raw")
    with pytest.raises(ValueError, match=r"ScheduledExitPolicy layers: 2 given for 4 examples"):
        run_early_exit(tiny_model, PROMPTS, ScheduledExitPolicy([1, 2]), label_words=WORDS, calibration="raw")
    with pytest.raises(ValueError, match=r"ScheduledExitPolicy layers: 5 given for 4 examples"):
        run_early_exit(tiny_model, PROMPTS, ScheduledExitPolicy([1, 1, 1, 1, 1]), label_words=WORDS,
                       calibration="raw")


def test_scheduled_exits_run_where_scheduled(llama):
    schedule = [0, 1, llama.n_layers, 2]
    res = run_early_exit(llama, PROMPTS, ScheduledExitPolicy(schedule), label_words=WORDS, calibration="raw",
                         batch_size=2)
    np.testing.assert_array_equal(res.exit_layers, schedule)


@pytest.mark.parametrize("bad, message", [
    ([], r"non-empty 1-D sequence .* got \(0,\) array"),
    ([[1, 2]], r"non-empty 1-D sequence .* got \(1, 2\) array"),
    (3, r"non-empty 1-D sequence .* got \(\) array"),
    ([1, -2], r"ScheduledExitPolicy layers must be integers >= 0, got \[-2\]"),
    ([1, 2.5], r"ScheduledExitPolicy layers must be integers >= 0, got \[1.0, 2.5\]"),
])
def test_scheduled_layers_are_checked_at_construction(bad, message):
    with pytest.raises(ValueError, match=message):
        ScheduledExitPolicy(bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=1.2), r"threshold must be a number in \[0, 1.01\] .*, not 1.2"),
    (dict(min_layer=-3), r"min_layer must be an integer >= 0 \(0 = the embeddings\), not -3"),
    (dict(feature="entropy"), r"feature must be one of \('label_gap', 'label_top_prob'\), not 'entropy'"),
])
def test_gap_threshold_rule_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GapThresholdPolicy(**kwargs)


def test_gap_threshold_min_layer_beyond_the_model_is_an_error(llama):
    L = llama.n_layers
    rule = GapThresholdPolicy(min_layer=L + 1, label_words=WORDS, calibration=Calibration("raw", np.zeros((L + 1, 2))))
    with pytest.raises(ValueError,
                       match=rf"min_layer must be an integer in 0..{L} \(the model has L={L} layers\), not {L + 1}"):
        run_early_exit(llama, PROMPTS, rule)
    assert (run_early_exit(llama, PROMPTS, replace(rule, min_layer=L)).exit_layers == L).all()


def test_exit_rule_threshold_and_label_words_are_checked():
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\], not 1.5"):
        FixedExitPolicy(1, threshold=1.5)
    with pytest.raises(ValueError, match=r"label_words must be None or a list of non-empty strings, not ' positive'"):
        FixedExitPolicy(1, label_words=" positive")
    with pytest.raises(ValueError, match=r"label_words must be None or a list of non-empty strings"):
        ScheduledExitPolicy([1], label_words=[" positive", ""])
    assert FixedExitPolicy(1, label_words=(" a", " b")).label_words == [" a", " b"]


# ---------------------------------------------------------------------------------------------------
# LayerTrace tables


def test_trace_without_label_words_becomes_a_table(llama):
    from adainfer_lib.model.lens import trace

    t = trace(llama, PROMPTS, progress=False)
    assert t.label_words == [] and t.label_probs().shape == (len(PROMPTS), llama.n_layers + 1, 0)
    frame = t.to_frame()
    assert len(frame) == len(PROMPTS) * (llama.n_layers + 1)
    assert not [c for c in frame.columns if c.startswith("p_")]
    np.testing.assert_allclose(frame["top_prob"].to_numpy(), t.top_prob.ravel())


def test_label_columns_that_collide_are_an_error():
    base = make_trace(np.zeros((2, 4, 2)))
    assert base.label_columns() == ["p_w0", "p_w1"] and {"p_w0", "p_w1"} <= set(base.to_frame().columns)
    clash = replace(base, label_words=[" positive", "positive"])
    with pytest.raises(ValueError,
                       match=r"label words collide as table columns: "
                             r"\[' positive', 'positive'\] all give 'p_positive'"):
        clash.to_frame()
    twice = replace(base, label_words=[" yes", " yes"])
    with pytest.raises(ValueError, match=r"\[' yes', ' yes'\] all give 'p_yes'"):
        twice.to_frame()


# ---------------------------------------------------------------------------------------------------
# ExitPolicy arguments


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=-0.1), r"threshold must be a number in \[0, 1.01\] .*, not -0.1"),
    (dict(threshold=1.5), r"threshold must be a number in \[0, 1.01\] .*, not 1.5"),
    (dict(threshold=float("nan")), r"threshold must be a number in \[0, 1.01\]"),
    (dict(threshold="high"), r"threshold must be a number in \[0, 1.01\] .*, not 'high'"),
    (dict(min_layer=-1), r"min_layer must be an integer >= 0 \(0 = the embeddings\), not -1"),
    (dict(min_layer=2.5), r"min_layer must be an integer >= 0 \(0 = the embeddings\), not 2.5"),
    (dict(classifier="forest"), r"classifier must be one of \('svm', 'crf', 'logistic', 'threshold'\), not 'forest'"),
    (dict(label_scheme="lucky"), r"label_scheme must be one of \('consistent', 'correct', 'settled'\), not 'lucky'"),
    (dict(svm="rbf"), r"svm must be one of \('svc', 'linear'\), not 'rbf'"),
    (dict(C=0), r"C must be a positive number, not 0"),
    (dict(c1=-1.0), r"c1 must be a number >= 0, not -1.0"),
    (dict(max_iterations=0), r"max_iterations must be an integer >= 1, not 0"),
    (dict(crf_bins=-2), r"crf_bins must be an integer >= 0 \(or None\), not -2"),
    (dict(max_train_rows=1), r"max_train_rows must be an integer >= 2 \(or None\), not 1"),
])
def test_exit_policy_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExitPolicy(**kwargs)


def test_threshold_on_an_unbounded_feature_takes_any_finite_threshold(train):
    policy = ExitPolicy("threshold", features=("layer",), threshold=5).fit(train)
    assert policy.threshold_range == (None, None)
    assert (policy.exit_layers(train) == 5).all()
    with pytest.raises(ValueError, match=r"threshold must be a finite number, not inf"):
        ExitPolicy("threshold", features=("layer",), threshold=float("inf"))
    assert ExitPolicy("threshold").threshold_range == (0.0, 1.01)


def test_set_params_is_checked_and_keeps_the_old_value(logistic):
    policy = ExitPolicy("logistic", threshold=0.4)
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1.01\]"):
        policy.set_params(threshold=2.0)
    assert policy.threshold == 0.4
    assert policy.set_params(threshold=0.7).threshold == 0.7


def test_fit_names_missing_columns(train):
    with pytest.raises(ValueError, match=r"the table lacks column\(s\) \['settled'\]"):
        ExitPolicy("threshold", label_scheme="settled").fit(train.drop(columns=["settled"]))


def test_min_layer_beyond_the_model_is_refused_by_the_runner(llama):
    policy = policy_of(llama.cache_id, llama.n_layers)
    policy.min_layer = llama.n_layers + 3  # set after fitting, past the constructor's checks
    with pytest.raises(ValueError, match=rf"min_layer must be an integer in 0..{llama.n_layers} \(the model has L="):
        run_early_exit(llama, PROMPTS, policy)


# ---------------------------------------------------------------------------------------------------
# features.feature_table and TaskTrace


def test_feature_table_takes_a_task_trace_with_label_words():
    tt = task_trace_from_predictions(np.zeros((3, 4), int), [0, 1, 0])
    with pytest.raises(TypeError, match=r"feature_table takes a TaskTrace .*, not a LayerTrace"):
        feature_table(tt.trace)
    no_words = replace(tt.trace, label_logits=np.zeros((3, 4, 0), np.float32), label_words=[], label_ids=[])
    bare = TaskTrace(no_words, gold=np.full(3, -1), calibrations={"raw": Calibration("raw", np.zeros((4, 0)))},
                     task_name="t", label_names=[], method="raw")
    with pytest.raises(ValueError, match=r"feature_table needs a trace with label words"):
        feature_table(bare)


def test_task_trace_checks_gold_names_and_offsets():
    tt = task_trace_from_predictions(np.zeros((3, 4), int), [0, 1, 0])
    with pytest.raises(ValueError,
                       match=r"gold labels must be label ids in 0..1 \(or -1 = unknown\) .* got values \[0, 2\]"):
        replace(tt, gold=np.array([0, 2, 0]))
    with pytest.raises(ValueError, match=r"3 label names \['a', 'b', 'c'\] for 2 label words"):
        replace(tt, label_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"calibration 'raw' has offsets of shape \(5, 2\), expected \(4, 2\)"):
        replace(tt, calibrations={"raw": Calibration("raw", np.zeros((5, 2)))})


# ---------------------------------------------------------------------------------------------------
# Replays and threshold choice


def test_replay_arguments_are_checked(logistic, train):
    with pytest.raises(ValueError, match=r"max_loss must be a number in \[0, 1\] \(0.01 = 1 point\), not -0.1"):
        choose_threshold(logistic, train, max_loss=-0.1)
    with pytest.raises(ValueError, match=r"metric must be one of \('accuracy', 'consistency'\), not 'f1'"):
        choose_threshold(logistic, train, metric="f1")
    with pytest.raises(ValueError, match=r"cv must be None \(in-sample\) or an integer >= 2 \(folds\), not 1"):
        tune_threshold(logistic, train, cv=1)
    with pytest.raises(ValueError, match=r"thresholds is empty"):
        choose_threshold(logistic, train, thresholds=[])
    with pytest.raises(ValueError, match=r"each threshold must be a number in \[0, 1.01\] .*, not 1.5"):
        threshold_sweep(logistic, train, [0.2, 1.5])
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1.01\] .*, not 2.0"):
        simulate(logistic, train, threshold=2.0)
    with pytest.raises(TypeError, match=r"choose_threshold takes an exit rule .*, not dict"):
        choose_threshold({"threshold": 0.5}, train)
    with pytest.raises(TypeError, match=r"policy 'gap' is a GapThresholdPolicy, not an ExitPolicy"):
        compare_policies({"gap": GapThresholdPolicy()}, train, train)
    with pytest.raises(NotFittedError):
        compare_policies({"new": ExitPolicy("logistic")}, train, train)


def test_simulate_exits_checks_the_exit_layers(train):
    n, L = train["example"].nunique(), 8
    assert simulate_exits(train, np.full(n, L))["layers_saved"] == 0.0
    with pytest.raises(ValueError, match=rf"exits must be integers in 0..{L} .* got \[-1\]"):
        simulate_exits(train, np.r_[np.full(n - 1, 3), -1])
    with pytest.raises(ValueError, match=rf"exits must be integers in 0..{L} .* got \[9\]"):
        simulate_exits(train, np.full(n, L + 1))
    with pytest.raises(ValueError, match=rf"exits: {n - 1} given for {n} examples"):
        simulate_exits(train, np.full(n - 1, 3))
    with pytest.raises(ValueError, match=r"ci must be a number in \[0, 1\] \(or None\), not 95"):
        simulate_exits(train, np.full(n, L), ci=95)


# ---------------------------------------------------------------------------------------------------
# evaluate entry points


def test_evaluation_arguments_are_checked_before_any_work(llama):
    task = SimpleNamespace(name="toy", label_words=WORDS)  # no prompts: the checks come first
    mine = policy_of(llama.cache_id, llama.n_layers)
    with pytest.raises(TypeError, match=r"policies must be a mapping name -> fitted exit policy, not list"):
        run_evaluation(llama, task, [mine])
    with pytest.raises(TypeError, match=r"policy 'p' is a str, not an exit policy"):
        run_evaluation(llama, task, {"p": "svm"})
    with pytest.raises(ValueError, match=r"match must be the name of one of the policies \['mine'\], not 'yours'"):
        run_evaluation(llama, task, {"mine": mine}, match="yours")
    with pytest.raises(ValueError, match=r"repeats must be an integer >= 1, not 0"):
        run_evaluation(llama, task, {"mine": mine}, repeats=0)
    with pytest.raises(ValueError, match=r"n_timing must be an integer >= 0 \(or None\), not -5"):
        run_evaluation(llama, task, {"mine": mine}, n_timing=-5)
    with pytest.raises(ValueError,
                       match=rf"each k \(layers to drop\) must be an integer >= 0 and <= {llama.n_layers}, not 9"):
        shortgpt_curve(llama, task, [1, 9])
    with pytest.raises(ValueError, match=r"quantile must be a number in \[0, 1\], not 5"):
        suggest_min_layer(None, quantile=5)


def test_pareto_and_fit_policies_arguments_are_checked():
    tt = task_trace_from_predictions(np.tile([0, 1, 1, 1], (4, 1)), [1, 1, 0, 1])
    with pytest.raises(ValueError,
                       match=r"each of methods must be one of \('oracle', 'fixed', 'random', 'gap'\), not 'gaps'"):
        pareto_curves(tt, methods=("oracle", "gaps"))
    with pytest.raises(ValueError, match=r"each threshold must be a number in \[0, 1.01\] .*, not -1"):
        pareto_curves(tt, thresholds=[0.5, -1])
    with pytest.raises(ValueError, match=r"gap_min_layer must be an integer >= 0 and <= 3, not 7"):
        pareto_curves(tt, gap_min_layer=7)
    with pytest.raises(ValueError, match=r"min_layer must be 'auto' or an integer in 0..3, not -1"):
        fit_policies(tt, min_layer=-1)
    with pytest.raises(ValueError, match=r"specs must map names to dicts of ExitPolicy parameters; \['x'\]"):
        fit_policies(tt, {"x": "svm"})
    assert set(pareto_curves(tt, methods=("oracle", "fixed")).method) == {"oracle", "fixed"}


# ---------------------------------------------------------------------------------------------------
# The explorer's constructor


@pytest.fixture(scope="module")
def explorer_inputs(llama):
    """(task stand-in, a policy of the tiny Llama on WORDS) — the constructor checks run before the task's
    prompts or texts are used."""
    task = SimpleNamespace(name="toy", label_words=WORDS, label_names=["positive", "negative"])
    return task, policy_of(llama.cache_id, llama.n_layers)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(top_k=0), ValueError, r"top_k must be an integer >= 1, not 0"),
    (dict(max_examples=-1), ValueError, r"max_examples must be an integer >= 1, not -1"),
    (dict(cache_size=1.5), ValueError, r"cache_size must be an integer >= 1, not 1.5"),
    (dict(policies=["a"]), TypeError, r"policies must be a mapping name -> fitted ExitPolicy, not list"),
    (dict(policies={"gap": GapThresholdPolicy()}), TypeError,
     r"policies\['gap'\] is a GapThresholdPolicy: the explorer shows fitted ExitPolicy"),
    (dict(policies={"new": ExitPolicy()}), NotFittedError, r"not fitted"),
])
def test_explorer_arguments_are_checked(llama, explorer_inputs, kwargs, error, message):
    from adainfer_lib.figures.widgets import ExitExplorer

    task, policy = explorer_inputs
    with pytest.raises(error, match=message):
        ExitExplorer(llama, policy, task, **kwargs)


def test_explorer_refuses_a_dataset_trace_of_another_task(llama, explorer_inputs):
    from adainfer_lib.figures.widgets import ExitExplorer

    task, policy = explorer_inputs
    other = task_trace_from_predictions(np.zeros((2, llama.n_layers + 1), int), [0, 1])
    with pytest.raises(ValueError,
                       match=r"dataset_trace is of task 'synthetic' with label words \[' w0', ' w1'\], not of 'toy'"):
        ExitExplorer(llama, policy, task, dataset_trace=other)


# ===================================================================================================
# 4. A policy knows its model


def test_check_rule_model_names_both_models_and_both_word_lists():
    policy = policy_of("model-a-111", 8, name="model-a")
    check_rule_model(policy, SimpleNamespace(cache_id="model-a-111", name="model-a", n_layers=8), label_words=WORDS)
    check_rule_model(policy, model_id="model-a-111")
    with pytest.raises(PolicyModelMismatchError,
                       match=r"fitted on model 'model-a' \(cache id model-a-111\), not model 'model-b' \(cache id "
                             r"model-b-222\)"):
        check_rule_model(policy, SimpleNamespace(cache_id="model-b-222", name="model-b", n_layers=8))
    with pytest.raises(PolicyModelMismatchError, match=r"cache id model-b-222"):
        check_rule_model(policy, model_id="model-b-222")
    with pytest.raises(PolicyModelMismatchError,
                       match=r"carries label words \[' positive', ' negative'\] \(task 'synthetic'\), not \[' yes', ' "
                             r"no'\]"):
        check_rule_model(policy, label_words=[" yes", " no"])
    with pytest.raises(PolicyModelMismatchError, match=r"a model with L=8 layers \('model-a'\), not one with L=5"):
        check_rule_model(policy, table_of(None, 5))


def test_policies_without_a_recorded_model_pass():
    old = policy_of("model-a-111", 8)
    old.metadata_ = {k: v for k, v in old.metadata.items() if k not in ("model_cache_id", "model", "n_layers")}
    check_rule_model(old, model_id="anything")  # a policy from an older file: nothing to compare
    check_rule_model(FixedExitPolicy(2), model_id="anything", label_words=WORDS)
    check_rule_model(ScheduledExitPolicy([1, 2]), model_id="anything")
    check_rule_model(GapThresholdPolicy(), SimpleNamespace(cache_id="x", name="x", n_layers=3))
    with pytest.raises(PolicyModelMismatchError, match=r"carries label words \[' a', ' b'\], not"):
        check_rule_model(FixedExitPolicy(2, label_words=[" a", " b"]), label_words=WORDS)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_run_early_exit_refuses_a_policy_of_another_model_with_the_same_shapes(model_type, default_tokenizer):
    a = make_tiny_model(model_type, default_tokenizer, seed=0)
    b = make_tiny_model(model_type, default_tokenizer, seed=1)  # same config, other weights
    assert a.cache_id != b.cache_id and a.n_layers == b.n_layers
    policy = policy_of(a.cache_id, a.n_layers, name=a.name)
    assert run_early_exit(a, PROMPTS, policy).n_examples == len(PROMPTS)  # its own model: runs
    with pytest.raises(PolicyModelMismatchError,
                       match=rf"cache id {a.cache_id}\), not model '{b.name}' \(cache id {b.cache_id}\)"):
        run_early_exit(b, PROMPTS, policy)
    with pytest.raises(PolicyModelMismatchError,
                       match=r"carries label words \[' positive', ' negative'\] .*, not \[' yes', ' no'\]"):
        run_early_exit(a, PROMPTS, policy, label_words=[" yes", " no"])


def test_replays_refuse_a_table_of_another_model_or_task(logistic, train):
    other_model = train.copy()
    other_model.attrs = {**train.attrs, "model": "other", "model_cache_id": "other-999"}
    for replay in (lambda t: simulate(logistic, t), lambda t: threshold_sweep(logistic, t, [0.5]),
                   lambda t: logistic.exit_layers(t), lambda t: choose_threshold(logistic, t, cv=None),
                   lambda t: compare_policies({"p": logistic}, t, t, cv=None)):
        with pytest.raises(PolicyModelMismatchError,
                           match=r"cache id synthetic-0\), not model 'other' \(cache id other-999\)"):
            replay(other_model)
    other_task = synthetic_table(20, 8, n_labels=3, seed=3)
    with pytest.raises(PolicyModelMismatchError,
                       match=r"carries label words \[' l0', ' l1'\] \(task 'synthetic'\), not \[' l0', ' l1', ' l2'\]"):
        simulate(logistic, other_task)
    assert 0 <= simulate(logistic.for_task(other_task), other_task)["layers_saved"] <= 1  # moved on purpose: fine
    with pytest.raises(PolicyModelMismatchError, match=r"other-999"):
        logistic.for_task(other_model)


def test_evaluation_refuses_a_policy_or_trace_of_another_model(llama):
    task = SimpleNamespace(name="toy", label_words=WORDS)
    stranger = policy_of("stranger-000", llama.n_layers, name="stranger")
    with pytest.raises(PolicyModelMismatchError,
                       match=rf"'stranger' \(cache id stranger-000\), not model '{llama.name}'"):
        run_evaluation(llama, task, {"stranger": stranger})
    tt = task_trace_from_predictions(np.zeros((2, llama.n_layers + 1), int), [0, 1])
    tt.trace.meta["model_cache_id"] = "stranger-000"
    with pytest.raises(ModelMismatchError,
                       match=rf"this trace was made with model 'm' \(cache id stranger-000\), "
                             rf"not model '{llama.name}'"):
        run_evaluation(llama, task, {"mine": policy_of(llama.cache_id, llama.n_layers)}, task_trace=tt)
    with pytest.raises(PolicyModelMismatchError, match=r"carries label words \[' positive', ' negative'\]"):
        pareto_curves(task_trace_from_predictions(np.zeros((2, 4), int), [0, 1]), {"p": policy_of("x", 3)})
    check_trace_model(tt, SimpleNamespace(cache_id="stranger-000", name="m", n_layers=llama.n_layers))


def test_explorer_refuses_a_policy_of_another_model(llama, default_tokenizer, explorer_inputs):
    from adainfer_lib.figures.widgets import ExitExplorer

    task, _ = explorer_inputs
    other = make_tiny_model("llama", default_tokenizer, seed=1)
    foreign = policy_of(other.cache_id, other.n_layers, name=other.name)
    with pytest.raises(PolicyModelMismatchError,
                       match=rf"the explorer cannot show policy on model '{llama.name}', task 'toy': .*cache id "
                             rf"{other.cache_id}\), not model '{llama.name}'"):
        ExitExplorer(llama, foreign, task)
    with pytest.raises(PolicyModelMismatchError, match=r"the explorer cannot show policies\['b'\]"):
        ExitExplorer(llama, explorer_inputs[1], task, policies={"b": foreign})


def test_load_refuses_another_model_through_the_same_check(tmp_path, llama, default_tokenizer):
    policy = policy_of(llama.cache_id, llama.n_layers, name=llama.name)
    path = policy.save(tmp_path / "p.policy")
    assert ExitPolicy.load(path, model=llama).metadata["model_cache_id"] == llama.cache_id
    other = make_tiny_model("llama", default_tokenizer, seed=1)
    with pytest.raises(PolicyModelMismatchError,
                       match=rf"p.policy: this policy was fitted on model .*not model '{other.name}' \(cache id "
                             rf"{other.cache_id}\)"):
        ExitPolicy.load(path, model=other)


# ===================================================================================================
# 5. The architecture registry never guesses


@pytest.mark.parametrize("part", ["final_norm", "unembed", "layers"])
def test_misspelt_registry_path_is_an_error_naming_model_type_and_path(tiny_model, part):
    spec = tiny_model.spec
    wrong = getattr(spec, part) + "_typo"
    model_type = tiny_model.hf_model.config.model_type
    with pytest.raises(RegistryPathError,
                       match=rf"model type '{model_type}': the registry path '{wrong}' does not exist"):
        LensModel(tiny_model.name, tiny_model.hf_model, tiny_model.tokenizer, replace(spec, **{part: wrong}))


def test_misspelt_post_norm_path_is_an_error(default_tokenizer):
    opt = make_tiny_model("opt", default_tokenizer)
    spec = replace(opt.spec, post_norm=("model.decoder.projectout",))
    with pytest.raises(RegistryPathError, match=r"model type 'opt': the registry path 'model.decoder.projectout' does "
                                                r"not exist \(OPTForCausalLM.model.decoder has no attribute "
                                                r"'projectout'\)"):
        LensModel(opt.name, opt.hf_model, opt.tokenizer, spec)


def test_a_required_module_that_is_none_is_an_error(default_tokenizer):
    opt = make_tiny_opt(default_tokenizer, word_embed_proj_dim=32)
    assert opt.hf_model.model.decoder.project_out is None
    assert get_submodule(opt.hf_model, "model.decoder.project_out", optional=True) is None
    with pytest.raises(RegistryPathError,
                       match=r"model type 'opt': the registry path 'model.decoder.project_out' is None"):
        get_submodule(opt.hf_model, "model.decoder.project_out")
    with pytest.raises(RegistryPathError, match=r"leads to a int, not a torch module"):
        get_submodule(opt.hf_model, "config.vocab_size")


def make_tiny_opt(tokenizer, **config_changes) -> LensModel:
    """A tiny random OPT with ``config_changes`` (e.g. no ``project_out``, or post-norm: no final norm)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config("opt", vocab_size=len(tokenizer))
    for key, value in config_changes.items():
        setattr(config, key, value)
    hf = AutoModelForCausalLM.from_config(config).float().eval()
    return LensModel.wrap(hf, tokenizer, name="tiny-opt-variant")


def lens_and_logits_at_last_layer(model: LensModel, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(lens of the last decoder layer's raw output, the model's logits), both at the last position (1, vocab)."""
    captured = []
    hook = model.layers[-1].register_forward_hook(
        lambda _m, _a, out: captured.append((out[0] if isinstance(out, tuple) else out)[:, -1]))
    try:
        with torch.no_grad():
            ids = model.tokenizer(prompt, return_tensors="pt")
            logits = model.hf_model(**ids, use_cache=False).logits[:, -1]
    finally:
        hook.remove()
    return model.lens(captured[0]), logits


@pytest.mark.parametrize("variant", [
    dict(word_embed_proj_dim=32),                                # project_out is None
    dict(word_embed_proj_dim=32, do_layer_norm_before=False),    # post-norm: final_layer_norm is None too
    dict(do_layer_norm_before=False),                            # post-norm with a projection
])
def test_opt_with_none_modules_still_lenses_exactly(default_tokenizer, variant):
    opt = make_tiny_opt(default_tokenizer, **variant)
    decoder = opt.hf_model.model.decoder
    assert (decoder.project_out is None) == (variant.get("word_embed_proj_dim") == 32)
    assert (decoder.final_layer_norm is None) == (variant.get("do_layer_norm_before") is False)
    assert len(opt.post_norm) == (0 if decoder.project_out is None else 1)
    lens, logits = lens_and_logits_at_last_layer(opt, PROMPTS[1])
    torch.testing.assert_close(lens, logits, rtol=1e-4, atol=1e-4)


def test_lens_at_last_layer_equals_logits_on_every_family(tiny_model):
    lens, logits = lens_and_logits_at_last_layer(tiny_model, PROMPTS[1])
    torch.testing.assert_close(lens, logits, rtol=1e-4, atol=1e-4)
