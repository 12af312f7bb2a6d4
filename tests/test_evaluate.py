"""Baselines (oracle, fixed, random, label-gap threshold, ShortGPT layer dropping) and the evaluation table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from adainfer_lib import (
    best_within,
    pareto_curves,
    plot_exit_layers,
    plot_pareto,
    plot_speedup,
    run_evaluation,
    shortgpt_curve,
    time_interleaved,
)
from adainfer_lib.common.replay import first_exit
from adainfer_lib.data.calibration import fit_calibration
from adainfer_lib.data.task_trace import TaskTrace
from adainfer_lib.evaluation.baselines import (
    PrunedModel,
    block_influence,
    dropped_layers,
    fixed_exit_layer,
    layers_to_drop,
    random_exit_layers,
)
from adainfer_lib.model.lens import trace
from adainfer_lib.rules.plain import GapThresholdPolicy, label_feature_array
from adainfer_lib.runner.early_exit import run_early_exit, run_full
from conftest import encode_batch as encode

WORDS = [" negative", " positive"]
TEXTS = ["a moving, beautifully acted film", "dull and far too long", "I loved every minute", "a waste of time",
         "charming and funny", "ugly, loud and stupid", "the best film this year", "painfully boring"]


class ToyTask:
    """Duck-typed ``Task``: 2-shot sentiment prompts over a handful of texts."""

    name = "toy-sentiment"
    label_words = WORDS
    label_names = ["negative", "positive"]

    def __init__(self, n_test=6):
        labels = [1, 0] * (len(TEXTS) // 2)
        self.test = {"text": TEXTS[:n_test], "label": labels[:n_test]}
        self.train = {"text": TEXTS[::-1], "label": labels[::-1]}

    def prompt_for(self, text):
        return ("Review: great.\nSentiment: positive\n\nReview: awful.\nSentiment: negative\n\n"
                f"Review: {text}\nSentiment:")

    def prompts(self, split="test"):
        return [self.prompt_for(t) for t in getattr(self, split)["text"]]


def toy_trace(model, task) -> TaskTrace:
    t = trace(model, task.prompts("test"), label_words=WORDS, progress=False)
    unl = trace(model, task.prompts("train"), label_words=WORDS, full_vocab=False, progress=False)
    cals = {"raw": fit_calibration("raw", unlabelled=unl.label_logits),
            "batch": fit_calibration("batch", unlabelled=unl.label_logits)}
    return TaskTrace(trace=t, gold=np.asarray(task.test["label"]), calibrations=cals, task_name=task.name,
                     label_names=task.label_names)


@pytest.fixture(scope="module")
def llama(default_tokenizer):
    from conftest import make_tiny_model

    return make_tiny_model("llama", default_tokenizer)


# ---------------------------------------------------------------------------------------------------
# Exit layers without a classifier


def test_first_exit_rule():
    s = np.array([[0.9, 0.1, 0.6, 0.2], [0.0, 0.0, 0.0, 0.0], [0.0, 0.7, 0.8, 0.9]])
    np.testing.assert_array_equal(first_exit(s, 0.5, min_layer=1), [2, 3, 1])
    np.testing.assert_array_equal(first_exit(s, 0.5, min_layer=0), [0, 3, 1])
    np.testing.assert_array_equal(first_exit(s, 0.75, min_layer=1), [3, 3, 2])


def test_random_and_fixed_exits_match_the_mean_depth():
    layers = random_exit_layers(5000, 18.3, 30, seed=1)
    assert layers.min() >= 1 and layers.max() <= 30
    assert abs(layers.mean() - 18.3) < 0.2
    np.testing.assert_array_equal(layers, random_exit_layers(5000, 18.3, 30, seed=1))
    assert not np.array_equal(layers, random_exit_layers(5000, 18.3, 30, seed=2))
    assert abs(random_exit_layers(5000, 28.0, 30, seed=0).mean() - 28.0) < 0.1  # near the top: narrow range
    assert fixed_exit_layer(18.3, 30) == 18 and fixed_exit_layer(40, 30) == 30


# ---------------------------------------------------------------------------------------------------
# ShortGPT: really removed layers


def _identity_reference(model, drop, enc):
    """Logits with the ``drop`` layers replaced by the identity (a forward hook returning the input)."""
    handles = [model.layers[i].register_forward_hook(lambda m, args, out: args[0]) for i in drop]
    try:
        return model.hf_model(**enc, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def test_dropped_layers_equal_identity_layers_and_are_restored(tiny_model):
    prompts = ["Review: a moving, beautifully acted film.\nSentiment:", "Hi there"]
    enc = encode(tiny_model, prompts)
    L = tiny_model.n_layers
    original = tiny_model.layers
    before = tiny_model.hf_model(**enc, use_cache=False).logits
    for drop in ([0], [1], [0, 2]):
        ref = _identity_reference(tiny_model, drop, enc)
        with dropped_layers(tiny_model, drop) as m:
            assert m.n_layers == L - len(drop)
            got = tiny_model.hf_model(**enc, use_cache=False).logits
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert tiny_model.layers is original and tiny_model.n_layers == L
    with pytest.raises(RuntimeError, match="inside"):
        with dropped_layers(tiny_model, [1]):
            raise RuntimeError("inside")
    assert tiny_model.layers is original
    torch.testing.assert_close(tiny_model.hf_model(**enc, use_cache=False).logits, before)
    with pytest.raises(ValueError, match="drop"):
        with dropped_layers(tiny_model, [L]):
            pass


def test_dropped_layers_keep_mixed_layer_types_aligned(default_tokenizer):
    """Gemma-3 picks each layer's mask (sliding / full) by ``config.layer_types[i]``: removing a layer must
    remove its type too, else the layers after it get the wrong mask."""
    from transformers import AutoModelForCausalLM

    from adainfer_lib.model.loading import LensModel
    from conftest import tiny_config

    config = tiny_config("gemma3_text", vocab_size=len(default_tokenizer))
    config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LensModel.wrap(AutoModelForCausalLM.from_config(config).eval(), default_tokenizer)
    enc = encode(model, ["one two three four five six seven eight nine ten eleven twelve"])  # > sliding window 4
    for drop in ([0], [1]):
        ref = _identity_reference(model, drop, enc)
        with dropped_layers(model, drop):
            got = model.hf_model(**enc, use_cache=False).logits
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert model.hf_model.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]


def test_block_influence(tiny_model):
    prompts = ["Review: a moving, beautifully acted film.\nSentiment:", "Hi", "1, 2, 3, 4, 5,"]
    bi = block_influence(tiny_model, prompts, batch_size=3)
    assert bi.shape == (tiny_model.n_layers,) and np.all(bi >= -1e-6) and np.all(bi <= 2 + 1e-6)
    # padding tokens are left out: batched == one by one (weighted by tokens)
    singles = [block_influence(tiny_model, [p]) for p in prompts]
    n_tok = [len(tiny_model.tokenizer(p)["input_ids"]) for p in prompts]
    np.testing.assert_allclose(bi, np.average(singles, axis=0, weights=n_tok), rtol=1e-4, atol=1e-5)
    assert layers_to_drop(np.array([0.3, 0.1, 0.2, 0.5]), 2) == [1, 2]
    assert layers_to_drop(np.array([0.3, 0.1]), 0) == []


def test_pruned_model_calibrates_itself(llama):
    task = ToyTask()
    pruned = PrunedModel.build(llama, [1], label_words=WORDS, calibration_prompts=task.prompts("train"))
    assert pruned.calibration.method == "batch" and pruned.calibration.offsets.shape == (3, 2)
    res = pruned.run(task.prompts(), label_words=WORDS)
    assert res.predictions.shape == (6,)
    raw = PrunedModel.build(llama, [1], label_words=WORDS).run(task.prompts(), label_words=WORDS)
    np.testing.assert_allclose(res.label_logits, raw.label_logits)
    assert llama.n_layers == 3


# ---------------------------------------------------------------------------------------------------
# Gap threshold policy, Pareto curves


def test_gap_policy_replay_equals_real_run(llama):
    task = ToyTask()
    tt = toy_trace(llama, task)
    seen = np.unique(np.round(label_feature_array(tt)[:, 1:-1], 6))
    widest = np.argmax(np.diff(seen))
    policy = GapThresholdPolicy(threshold=float((seen[widest] + seen[widest + 1]) / 2), calibration=tt.calibration,
                                label_words=WORDS)
    real = run_early_exit(llama, task.prompts(), policy, batch_size=3)
    np.testing.assert_array_equal(real.exit_layers, policy.exit_layers(tt))
    np.testing.assert_array_equal(real.predictions, tt.predictions()[np.arange(6), real.exit_layers])
    fitted = GapThresholdPolicy.fit(tt, max_drop=0.0)
    exits = fitted.exit_layers(tt)
    assert np.mean(tt.predictions()[np.arange(6), exits] == tt.gold) >= np.mean(tt.final_predictions() == tt.gold)


def test_pareto_curves(llama):
    tt = toy_trace(llama, ToyTask())
    L = tt.n_layers
    policy = GapThresholdPolicy(calibration=tt.calibration, label_words=WORDS)
    curves = pareto_curves(tt, {"gap policy": policy}, thresholds=[0.0, 0.5, 1.01])
    assert set(curves.method) == {"gap policy", "oracle", "fixed", "random", "label gap threshold"}
    fixed = curves[curves.method == "fixed"]
    np.testing.assert_allclose(fixed.layers_saved, 1 - np.arange(1, L + 1) / L)
    np.testing.assert_allclose(fixed.accuracy.iloc[-1], np.mean(tt.final_predictions() == tt.gold))
    oracle = curves[curves.method == "oracle"].iloc[0]
    assert oracle.consistency == 1.0 and oracle.layers_saved >= fixed[fixed.consistency == 1].layers_saved.max() - 1e-9
    g = curves[curves.method == "gap policy"]
    assert g.layers_saved.iloc[0] == pytest.approx(1 - 1 / L)  # threshold 0: exit at min_layer 1
    assert g.layers_saved.iloc[-1] == 0  # unreachable threshold: full depth
    assert set(best_within(curves, 100.0).method) == set(curves.method)


# ---------------------------------------------------------------------------------------------------
# Timing and the evaluation table


def test_time_interleaved_rotates_and_keeps_fastest():
    order = []
    runners = {name: (lambda i, name=name: order.append(name) or {"a": 0.2, "b": 0.1, "c": 0.3}[name])
               for name in "abc"}
    t = time_interleaved(runners, [0, 1, 2], repeats=2, warmup=False)
    assert len(t) == 9 and set(t.method) == {"a", "b", "c"}
    assert order[:3] == ["a", "b", "c"] and order[3:6] == ["b", "c", "a"]
    assert t.groupby("method").seconds.mean().to_dict() == pytest.approx({"a": 0.2, "b": 0.1, "c": 0.3})


def test_evaluation_table(llama):
    task = ToyTask()
    tt = toy_trace(llama, task)
    L = tt.n_layers
    policy = GapThresholdPolicy(threshold=0.3, calibration=tt.calibration, label_words=WORDS)
    ev = run_evaluation(llama, task, {"gap": policy}, task_trace=tt, n_timing=3, batch_size=4, n_influence=4,
                        n_calibration=4, progress=False)
    table = ev.table
    assert list(table.method) == ["full", "gap", "oracle", "fixed", "random", "shortgpt"]
    for col in ("accuracy_full", "accuracy", "accuracy_change_pts", "consistency", "depth", "layers_saved",
                "ideal_speedup", "measured_speedup", "speedup_ratio", "check_cost", "n"):
        assert col in table.columns
    row = table.set_index("method")
    assert row.loc["full", "layers_saved"] == 0 and row.loc["full", "consistency"] == 1
    assert row.loc["full", "accuracy"] == pytest.approx(np.mean(tt.final_predictions() == tt.gold))
    saved = row.loc["gap", "layers_saved"]
    assert saved == pytest.approx(1 - ev.exits["gap"].mean() / L)
    assert len(ev.dropped) == round(L * saved)
    assert row.loc["oracle", "consistency"] == 1.0
    assert row.loc["fixed", "mean_exit_layer"] == round(ev.exits["gap"].mean())
    replayed = policy.exit_layers(tt)  # the trace's own replay of the same rule, next to the real run's exits
    assert row.loc["gap", "trace_agreement"] == pytest.approx(np.mean(ev.exits["gap"] == replayed))
    assert row.loc["gap", "trace_agreement"] >= 0.5
    assert np.isfinite(row.measured_speedup).all() and (row.n_timed == 3).all()
    assert row.loc["gap", "check_cost"] > 0
    assert set(ev.timings.method) == set(table.method)
    np.testing.assert_array_equal(ev.predictions["gap"], ev.results["gap"].predictions)
    assert llama.n_layers == 3  # the shortgpt run restored the model

    import matplotlib

    matplotlib.use("Agg")
    curves = pareto_curves(tt, {"gap": policy})
    pruned = shortgpt_curve(llama, task, [1], n_influence=4, n_calibration=4, full_predictions=tt.final_predictions())
    assert list(pruned.method) == ["shortgpt"] and pruned.layers_saved.item() == pytest.approx(1 / L)
    ax = plot_pareto(pd.concat([curves, pruned]), accuracy_full=row.loc["full", "accuracy"], model="tiny",
                     task=task.name, n=6)
    (line,) = [line for line in ax.lines if line.get_label() == "shortgpt"]
    np.testing.assert_allclose(line.get_xydata(), pruned[["layers_saved", "accuracy"]].to_numpy())
    # the real evaluation's own figures: n comes from the evaluation (6 test prompts), not from the caller
    assert plot_exit_layers(ev, model="tiny", task=task.name).get_title().endswith(f"{task.name}, n=6")
    assert plot_speedup(table, model="tiny", task=task.name).get_title().endswith(f"{task.name}, n=6")
    with pytest.raises(ValueError, match="baselines"):
        run_evaluation(llama, task, {"gap": policy}, task_trace=tt, baselines=("nope",))


def test_evaluation_figures_plot_the_evaluation():
    """Chapter 04's figures show the evaluation's numbers: the exit-layer histogram counts each method's exits
    per layer (the full model left out; n from the evaluation's gold labels), the speedup bars are the table's
    ideal and measured speedups per method (n and the timed prompts from the table), and the Pareto plot draws
    each method's sweep in order of layers saved, the oracle as a star, the full model's accuracy and one point
    below it, and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from adainfer_lib.evaluation.evaluate import Evaluation
    from adainfer_lib.figures.plots import series_style

    L = 6
    exits = {"full": np.full(7, L), "a": np.array([1, 1, 2, 6, 6, 6, 3]), "b": np.array([2, 2, 2, 2, 5, 5, 6])}
    ev = Evaluation(table=pd.DataFrame(), exits=exits, predictions={}, timings=pd.DataFrame(), gold=np.zeros(7, int),
                    n_layers=L)
    ax = plot_exit_layers(ev, model="tiny", task="toy")
    assert ax.get_title().splitlines() == ["Exit layer distribution", "tiny", "toy, n=7"]
    palette, _ = series_style(["a", "b"])
    assert len(ax.lines) == 2  # no line for the full model
    for method in ("a", "b"):
        (line,) = [line for line in ax.lines if to_hex(line.get_color()) == palette[method].lower()]
        np.testing.assert_array_equal(line.get_ydata()[: L + 1], np.bincount(exits[method], minlength=L + 1))

    table = pd.DataFrame({"method": ["full", "a", "b"], "ideal_speedup_timed": [1.0, 2.0, 1.5],
                          "measured_speedup": [1.0, 1.6, 1.1], "n_timed": 3, "n": 7})
    ax = plot_speedup(table, model="tiny", task="toy")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    ideal, measured = ([bar.get_height() for bar in bars] for bars in ax.containers)
    assert ideal == [2.0, 1.5] and measured == [1.6, 1.1]
    assert ax.get_title().splitlines() == ["Wall-clock speedup, batch 1, on 3 timed prompts", "tiny", "toy, n=7"]

    curves = pd.DataFrame({"method": ["gap", "gap", "gap", "fixed", "fixed", "oracle"],
                           "layers_saved": [0.5, 0.1, 0.3, 0.6, 0.2, 0.7], "accuracy": [0.7, 0.8, 0.78, 0.6, 0.75,
                                                                                       0.8]})
    ax = plot_pareto(curves, accuracy_full=0.8, model="tiny", task="toy", n=7, chance=0.5)
    for method, part in curves[curves.method != "oracle"].groupby("method"):
        (line,) = [line for line in ax.lines if line.get_label() == method]
        np.testing.assert_allclose(line.get_xydata(), part.sort_values("layers_saved")[["layers_saved", "accuracy"]])
    (star,) = [c for c in ax.collections if c.get_label() == "oracle"]
    np.testing.assert_allclose(star.get_offsets(), [[0.7, 0.8]])
    levels = {line.get_label(): line.get_ydata()[0] for line in ax.lines if line.get_label() not in ("gap", "fixed")}
    assert levels == pytest.approx({"full model": 0.8, "full model − 1 pt": 0.79, "chance (0.50)": 0.5})
    plt.close("all")


@pytest.mark.slow
def test_default_model_on_sentiment(default_model):
    """The real model on 16 real sentiment prompts: the early exit's real run agrees with its replay on the
    trace, saves layers, and the dense run equals the trace's last layer."""
    from adainfer_lib.data.task_trace import trace_task
    from adainfer_lib.data.tasks import load_task

    task = load_task("sentiment", n=16, n_train=32)
    tt = trace_task(default_model, task, progress=False)
    policy = GapThresholdPolicy(threshold=0.4, min_layer=10, calibration=tt.calibration, label_words=task.label_words)
    real = run_early_exit(default_model, task.prompts(), policy, batch_size=8)
    replay = policy.exit_layers(tt)
    assert np.mean(real.exit_layers == replay) >= 0.9
    assert real.layers_saved > 0.05
    dense = run_full(default_model, task.prompts()[:4], label_words=task.label_words, calibration=tt.calibration,
                     batch_size=4)
    np.testing.assert_array_equal(dense.predictions, tt.final_predictions()[:4])


def test_fit_policies_on_the_train_trace(llama):
    from adainfer_lib import fit_policies, suggest_min_layer
    from adainfer_lib.features.table import feature_table

    tt = toy_trace(llama, ToyTask())
    first = suggest_min_layer(tt)
    assert 1 <= first <= tt.n_layers
    assert first == max(1, int(np.floor(np.quantile(tt.earliest_consistent_layer(), 0.05))))
    specs = {"gap": {"classifier": "threshold", "features": ("label_gap",)},
             "gap from 2": {"classifier": "threshold", "features": ("label_gap",), "min_layer": 2}}
    fitted = fit_policies(tt, specs, min_layer=1, cv=None)
    assert fitted["gap"].min_layer == 1 and fitted["gap from 2"].min_layer == 2
    for policy in fitted.values():
        assert 0 <= policy.threshold <= 1.01
        np.testing.assert_allclose(policy.calibration.offsets, tt.calibration.offsets)
        # a fitted ExitPolicy carries what the runner needs: label words and calibration
        res = run_early_exit(llama, ToyTask().prompts(), policy, batch_size=3)
        replay = policy.exit_layers(feature_table(tt))
        np.testing.assert_array_equal(res.exit_layers, replay)
