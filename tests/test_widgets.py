"""The interactive exit explorer, driven from Python: set widget values, click, check the views follow.

Fast tests use a tiny random Llama (3 layers) on a small real sentiment task. Properties over many settings
(exits never fall as the threshold rises, never come before the minimum layer) are checked on the widget-free
``ExplorerState`` (milliseconds per setting); the widget tests check its wiring with a few moves and one
render of every view. One slow test runs the default model at quick-mode sizes and prints the first render's
and a slider move's time (printed only: timings are measured in benchmarks/, not asserted).
"""

from __future__ import annotations

import html
import re
import time

import numpy as np
import pandas as pd
import pytest

from adainfer_lib import trace_task
from adainfer_lib.common.replay import Decisions, first_exit
from adainfer_lib.data import sources
from adainfer_lib.data.tasks import load_task
from adainfer_lib.features.table import feature_table
from adainfer_lib.figures import explorer_state
from adainfer_lib.figures import explorer_views as views
from adainfer_lib.figures.explorer_state import ExplorerState
from adainfer_lib.figures.widgets import ExitExplorer, load_saved_policies
from adainfer_lib.rules.policy import ExitPolicy
from conftest import make_tiny_model

EXIT_RE = re.compile(r"exit layer: (\d+) / (\d+)")
THRESHOLDS = np.round(np.linspace(0, 1, 11), 2)


def shown_exit(explorer: ExitExplorer) -> tuple[int, int]:
    """(exit layer, L) as the summary widget shows them."""
    match = EXIT_RE.search(explorer.summary.value)
    assert match, explorer.summary.value
    return int(match.group(1)), int(match.group(2))


@pytest.fixture(scope="module")
def tiny(default_tokenizer):
    return make_tiny_model("llama", default_tokenizer)


@pytest.fixture(scope="module")
def task():
    sources.prepare_sources()
    return load_task("sentiment", n=10, n_train=16, shots=2, seed=0)


@pytest.fixture(scope="module")
def traces(tiny, task):
    train = trace_task(tiny, task, split="train", cache=False, progress=False)
    test = trace_task(tiny, task, cache=False, progress=False)
    return train, test


@pytest.fixture(scope="module")
def policies(traces):
    table = feature_table(traces[0])
    return {
        "threshold": ExitPolicy("threshold", threshold=0.3).fit(table),
        "logistic": ExitPolicy("logistic", features=("label_gap", "label_top_prob", "layer_frac"),
                               threshold=0.6).fit(table),
        "crf": ExitPolicy("crf", features=("label_gap", "label_top_prob"), label_scheme="consistent", min_layer=2,
                          threshold=0.5).fit(table),
    }


@pytest.fixture()
def explorer(tiny, task, traces, policies):
    return ExitExplorer(tiny, policies["threshold"], task, policies=policies, dataset_trace=traces[1])


# ---------------------------------------------------------------------------------------------------
# Pure view functions


def test_token_frame_shapes_full_and_label_lens(traces, task):
    tr = traces[1].trace
    cal = traces[1].calibration
    L = tr.n_layers
    full = views.token_frame(tr, 2, lens="full", k=5)
    assert full.shape == (L + 1, 10)
    assert list(full.columns[:2]) == ["token_1", "token_2"] and full.index.name == "layer"
    probs = full[[f"prob_{i}" for i in range(1, 6)]].to_numpy()
    assert (np.diff(probs, axis=1) <= 1e-7).all() and ((probs >= 0) & (probs <= 1)).all()
    labels = views.token_frame(tr, 2, lens="labels", calibration=cal, label_names=task.label_names, k=5)
    assert labels.shape == (L + 1, 2 * task.n_labels)  # k is capped at the number of label words
    assert set(labels["token_1"]) <= set(task.label_names)
    np.testing.assert_allclose(labels[["prob_1", "prob_2"]].sum(axis=1), 1.0, rtol=1e-9)
    # the top label word at each layer is the calibrated decision of the task trace
    winners = [task.label_names.index(t) for t in labels["token_1"]]
    np.testing.assert_array_equal(winners, traces[1].predictions()[2])
    with pytest.raises(ValueError, match="lens must be"):
        views.token_frame(tr, 0, lens="logits")


def test_token_table_html_rows_exit_mark_and_escaping():
    frame = pd.DataFrame({"token_1": ["<b>", " yes", "\n"], "token_2": ["a", "b", "c"],
                          "prob_1": [0.9, 0.5, 0.2], "prob_2": [0.05, 0.3, 0.1]},
                         index=pd.Index([0, 1, 2], name="layer"))
    out = views.token_table_html(frame, stop_proba=np.array([0.1, 0.7, 0.9]), exit_layer=1, min_layer=1,
                                 threshold=0.6, title="t")
    assert out.count("<tr") == 4  # header + 3 layers
    assert out.count("◀ exit") == 1 and "&lt;b&gt;" in out and "<b>&lt;" not in out
    assert "␣yes" in out and "⏎" in out
    assert "—" in out  # layer 0 is below the minimum layer: no check there


def test_exit_summary_html_states_the_exit_layer():
    out = views.exit_summary_html(exit_layer=17, n_layers=30, pred_exit=1, pred_full=0,
                                  label_names=["negative", "positive"], gold=1, threshold=0.5, min_layer=4)
    assert "exit layer: 17 / 30" in out and 'class="adainfer-exit-layer"' in out
    assert "layers saved: 13 (43%)" in out and "differs from the full model" in out and "✔" in out


def test_threshold_sweep_and_dataset_figure():
    rng = np.random.default_rng(0)
    P = rng.random((40, 13))
    preds = rng.integers(0, 2, (40, 13))
    d = views.DatasetDecisions(P, Decisions(preds, preds[:, -1], rng.integers(0, 2, 40), np.arange(40)))
    sweep = views.threshold_sweep_frame(d, min_layer=3)
    assert len(sweep) == len(views.SWEEP_THRESHOLDS)
    assert {"threshold", "mean_exit_layer", "layers_saved", "accuracy", "consistency", "full_accuracy"} <= set(sweep)
    assert (np.diff(sweep["mean_exit_layer"]) >= 0).all()  # a higher threshold never exits earlier
    assert sweep["mean_exit_layer"].iloc[0] == 3  # threshold 0: everything stops at the minimum layer
    last = sweep.iloc[-1]  # threshold 1: no stop probability in [0, 1) reaches it, all run to layer L
    assert last.threshold == 1.0 and last.mean_exit_layer == 12 and last.consistency == 1.0
    exits = views.exits_at(d, 0.5, 3)
    np.testing.assert_array_equal(exits, first_exit(P, 0.5, 3))
    fig = views.dataset_figure(d, sweep, threshold=0.5, min_layer=3, title="synthetic", certified=0.8)
    left, right = fig.axes
    (histogram,) = left.patches  # the exit layers at the threshold, one bin per layer
    np.testing.assert_array_equal(histogram.get_data().values, np.bincount(exits, minlength=13))
    np.testing.assert_array_equal(histogram.get_data().edges, np.arange(14) - 0.5)
    assert any(np.allclose(line.get_xdata(), exits.mean()) for line in left.lines)
    for column, line in zip(("accuracy", "consistency", "layers_saved"), right.lines):
        np.testing.assert_allclose(line.get_xydata(), sweep[["threshold", column]].to_numpy())
    marks = {line.get_label(): line.get_xdata()[0] for line in right.lines[3:]}
    assert 0.5 in marks.values() and marks["certified 0.80"] == 0.8  # the slider's threshold, the certified one
    assert views.figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    html = views.dataset_summary_html(d, threshold=0.5, min_layer=3)
    assert "n=40" in html and "threshold 0.50" in html


def test_layer_curves_figure(traces):
    tt = traces[1]
    table = views.example_table(views.slice_trace(tt.trace, 0), tt.calibration, gold=int(tt.gold[0]))
    assert len(table) == tt.n_layers + 1 and table["gold"].iloc[0] == tt.gold[0]
    stop = np.linspace(0, 1, tt.n_layers + 1)
    for lens, features in (("full", ("top_prob", "gap")), ("labels", ("label_top_prob", "label_gap"))):
        fig = views.layer_curves_figure(table, stop, lens=lens, threshold=0.5, min_layer=1, exit_layer=2, title="x")
        (ax,) = fig.axes
        lines = {line.get_label(): line for line in ax.lines}
        for name in features:  # the example's own feature rows, layer by layer
            np.testing.assert_allclose(lines[name].get_xydata(), table[["layer", name]].to_numpy())
        np.testing.assert_array_equal(lines["P(stop)"].get_ydata(), np.where(table["layer"] >= 1, stop, np.nan))
        assert np.allclose(lines["threshold 0.50"].get_ydata(), 0.5) and np.allclose(lines["exit at 2"].get_xdata(), 2)
    # a policy's own inputs are drawn whatever the lens: what its stop probability is computed from
    for lens in ("full", "labels"):
        fig = views.layer_curves_figure(table, stop, lens=lens, threshold=0.5, min_layer=1, exit_layer=2, title="x",
                                        features=("label_gap", "layer_frac", "cos_prev"))
        drawn = {line.get_label() for line in fig.axes[0].lines} & {"top_prob", "gap", "label_top_prob", "label_gap",
                                                                    "layer_frac", "cos_prev"}
        assert drawn == {"label_gap"}


def test_example_table_matches_the_dataset_feature_table(traces):
    """A sliced test example gives the same feature rows as the whole split's table."""
    tt = traces[1]
    whole = feature_table(tt)
    one = views.example_table(views.slice_trace(tt.trace, 3), tt.calibration, gold=int(tt.gold[3]),
                              task_name=tt.task_name, label_names=tt.label_names)
    part = whole[whole["example"] == 3].reset_index(drop=True)
    cols = ["layer", "top_prob", "gap", "label_gap", "label_top_prob", "pred", "final_pred", "consistent", "correct"]
    pd.testing.assert_frame_equal(one[cols].reset_index(drop=True), part[cols], check_dtype=False)


# ---------------------------------------------------------------------------------------------------
# The explorer, driven from Python


def test_explorer_builds_and_shows_every_view(explorer, tiny):
    L = tiny.n_layers
    assert explorer.error is None, explorer.error
    exit_layer, n = shown_exit(explorer)
    assert n == L and exit_layer == explorer.exit_layer and explorer.min_layer.value <= exit_layer <= L
    assert explorer.tokens.value.count("<tr") == L + 2
    assert explorer.curves.value[:4] == b"\x89PNG" and explorer.dataset_plot.value[:4] == b"\x89PNG"
    assert "test split, n=10" in explorer.dataset_summary.value
    assert explorer.stop_proba.shape == (L + 1,)
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_threshold_and_min_layer_sliders_show_the_states_answer(explorer):
    """The widget's wiring, one move per control: the summary shows the exit layer the state computes for the
    input, and the dataset line the mean exit the state computes for the split, at the sliders' values."""
    state = explorer.state
    for threshold, min_layer in ((0.0, 1), (1.0, 1), (0.5, 2)):
        explorer.threshold.value, explorer.min_layer.value = threshold, min_layer
        assert explorer.error is None, explorer.error
        name = explorer.policy_choice.value
        found = state.example_exit(state.example_trace(0), state.gold[0], name, threshold, min_layer)
        assert shown_exit(explorer) == (found.exit_layer, state.n_layers)
        mean_exit = state.dataset_exits(name, threshold, min_layer)["exit_layer"].mean()
        shown = re.search(r"mean exit layer <b>([\d.]+) /", explorer.dataset_summary.value).group(1)
        assert shown == f"{mean_exit:.1f}" and f"min layer {min_layer}" in explorer.dataset_summary.value


def test_switching_policy_takes_its_threshold_and_min_layer(explorer, policies):
    explorer.threshold.value = 0.11
    explorer.policy_choice.value = "crf"
    assert explorer.threshold.value == pytest.approx(policies["crf"].threshold)
    assert explorer.min_layer.value == policies["crf"].min_layer == 2
    assert "policy: crf" in explorer.summary.value and explorer.exit_layer >= 2
    assert explorer.policy is policies["crf"]


def test_a_never_exit_threshold_shows_as_such(tiny, task, traces, policies):
    """A tuned threshold of 1.01 (never stop early) is shown as 1.01, not clipped to 1.00 — where a stop
    probability of exactly 1 would stop — and every example runs all layers."""
    never = policies["threshold"].with_threshold(1.01)
    explorer = ExitExplorer(tiny, policies["logistic"], task, policies={"never": never}, dataset_trace=traces[1])
    explorer.policy_choice.value = "never"
    assert explorer.threshold.value == pytest.approx(1.01) and explorer.threshold.max == pytest.approx(1.01)
    assert "threshold 1.01" in explorer.dataset_summary.value
    assert (explorer.dataset_exits()["exit_layer"] == tiny.n_layers).all()


def test_typed_text_updates_the_token_table_and_is_cached(explorer, monkeypatch):
    calls = []
    real_trace = explorer_state.trace

    def counting_trace(*args, **kwargs):
        calls.append(args[1])
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(explorer_state, "trace", counting_trace)
    before_tokens, before_curves = explorer.tokens.value, explorer.curves.value
    explorer.text.value = "A thoroughly delightful <surprise> of a film."
    explorer.trace_button.click()
    assert explorer.error is None, explorer.error
    assert explorer.current_text == "A thoroughly delightful <surprise> of a film." and explorer.current_gold is None
    assert explorer.tokens.value != before_tokens and explorer.curves.value != before_curves
    assert "typed text" in explorer.summary.value and "gold label" not in explorer.summary.value
    assert len(calls) == 1 and calls[0][0].endswith("A thoroughly delightful <surprise> of a film.\nSentiment:")
    typed_tokens = explorer.tokens.value
    explorer.threshold.value = 0.9  # a slider move re-renders from the cache: no model run
    explorer.text.value = "A thoroughly delightful <surprise> of a film."
    explorer.trace_button.click()
    assert len(calls) == 1
    explorer.text.value = "Dull."
    explorer.trace_button.click()
    assert len(calls) == 2 and explorer.tokens.value != typed_tokens


def test_test_examples_come_from_the_dataset_trace_without_running_the_model(explorer, task, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a test example should be sliced out of dataset_trace, not traced")

    sliced = views.slice_trace(explorer.dataset_trace.trace, 5)
    monkeypatch.setattr(explorer_state, "trace", no_model)
    explorer.example.value = 5
    assert explorer.error is None, explorer.error
    assert explorer.current_text == task.test["text"][5] and explorer.text.value == task.test["text"][5]
    assert explorer.current_gold == task.test["label"][5] and "gold label" in explorer.summary.value
    monkeypatch.undo()
    # the slice equals a fresh trace of the same prompt (batched with padding vs alone: float noise only)
    fresh = explorer_state.trace(explorer.model, [task.prompt_for(task.test["text"][5])], label_words=task.label_words,
                          progress=False)
    np.testing.assert_allclose(sliced.label_logits, fresh.label_logits, atol=1e-4)


def test_empty_text_shows_a_message_instead_of_raising(explorer):
    before = explorer.summary.value
    for text in ("", "   \n "):
        explorer.text.value = text
        explorer.trace_button.click()  # must not raise
        assert "text is empty" in explorer.error
        assert 'class="adainfer-error"' in explorer.status.value and "text is empty" in explorer.status.value
        assert explorer.summary.value == before  # the last good views stay
    explorer.threshold.value = 0.0  # the explorer keeps working afterwards
    assert explorer.error is None and shown_exit(explorer)[0] == explorer.min_layer.value


def test_text_longer_than_the_context_shows_a_message(explorer, tiny):
    limit = tiny.hf_model.config.max_position_embeddings
    explorer.show_text("word " * (limit + 10))
    assert "longer than the model's context" in explorer.error and str(limit) in explorer.error
    assert 'class="adainfer-error"' in explorer.status.value


def test_lens_toggle_switches_the_token_table(explorer, task):
    explorer.lens.value = "labels"
    cells = re.findall(r'title="([^"]*)"', explorer.tokens.value)  # each cell's title: repr(token), escaped
    assert cells and {html.unescape(c).strip("'") for c in cells} == set(task.label_names)
    assert "label-word lens" in explorer.tokens.value
    explorer.lens.value = "full"
    assert "full-vocabulary lens" in explorer.tokens.value


def test_decisions_use_the_policys_calibration(tiny, task, traces):
    """A policy fitted on raw label scores is explored with raw decisions, though the traces default to batch."""
    train, test = traces
    assert test.method == "batch"
    assert (test.with_calibration("raw").predictions() != test.predictions()).any()  # the check can tell them apart
    raw_policy = ExitPolicy("threshold", threshold=0.4).fit(feature_table(train.with_calibration("raw")))
    explorer = ExitExplorer(tiny, raw_policy, task, dataset_trace=test)
    decisions, _ = explorer.state.dataset_decisions(explorer.policy_choice.value, explorer.min_layer.value)
    np.testing.assert_array_equal(decisions.decisions.predictions, test.with_calibration("raw").predictions())
    np.testing.assert_array_equal(explorer.table["pred"], test.with_calibration("raw").predictions()[0])


def test_explorer_without_dataset_trace(tiny, task, policies):
    explorer = ExitExplorer(tiny, policies["logistic"], task)
    assert explorer.error is None, explorer.error
    assert "Pass dataset_trace" in explorer.dataset_summary.value and explorer.dataset_plot.value == b""
    assert explorer.dataset_sweep() is None
    assert list(explorer.policies) == ["logistic · consistent"] and explorer.policy_choice.disabled
    explorer.threshold.value = 0.0
    assert shown_exit(explorer)[0] == policies["logistic"].min_layer


def test_given_policy_is_offered_beside_same_named_ones(tiny, task, policies):
    clash = {"logistic · consistent": policies["threshold"]}
    explorer = ExitExplorer(tiny, policies["logistic"], task, policies=clash)
    assert list(explorer.policies) == ["logistic · consistent (given)", "logistic · consistent"]
    assert explorer.policy is policies["logistic"] and explorer.error is None


def test_load_saved_policies_keeps_this_model_and_task(tmp_path, tiny, policies, default_tokenizer):
    policies["logistic"].save(tmp_path / f"{tiny.cache_id}-sentiment-logistic.policy")  # chapter 03's naming
    (tmp_path / "junk.policy").write_bytes(b"not a policy")
    other = make_tiny_model("llama", default_tokenizer, seed=1)  # other weights, other cache id
    assert other.cache_id != tiny.cache_id
    found = load_saved_policies(tiny, "sentiment", tmp_path)
    assert list(found) == ["saved: sentiment-logistic (logistic · consistent)"]
    assert next(iter(found.values())).classifier == "logistic"
    assert load_saved_policies(tiny, "topic", tmp_path) == {}
    assert load_saved_policies(other, "sentiment", tmp_path) == {}
    assert load_saved_policies(tiny, "sentiment", tmp_path / "missing") == {}


def test_load_saved_policies_skips_policies_of_other_train_prompts_or_calibration(tmp_path, tiny, task, traces,
                                                                                  policies):
    """A policy saved by a smaller run (other train prompts) or under another calibration is not offered beside
    this run's: chapter 05 once offered a quick-mode policy (40 train prompts) in a full-mode run."""
    train, _ = traces
    table = feature_table(train)
    policies["logistic"].save(tmp_path / f"{tiny.cache_id}-sentiment-logistic.policy")  # fitted on `table`
    fewer = trace_task(tiny, load_task("sentiment", n=10, n_train=8, shots=2, seed=0), split="train", cache=False,
                       progress=False)
    ExitPolicy("threshold", threshold=0.3).fit(feature_table(fewer)).save(tmp_path / "fewer.policy")
    raw = ExitPolicy("threshold", threshold=0.3).fit(feature_table(train.with_calibration("raw")))
    raw.save(tmp_path / "raw.policy")
    assert len(load_saved_policies(tiny, "sentiment", tmp_path)) == 3  # without a train table: all three
    found = load_saved_policies(tiny, "sentiment", tmp_path, train_table=table)
    assert list(found) == ["saved: sentiment-logistic (logistic · consistent)"]


# ---------------------------------------------------------------------------------------------------
# The default model


@pytest.mark.slow
def test_explorer_on_the_default_model_is_interactive(default_model):
    """Quick-mode sizes on SmolLM2: the first render, a slider move and a typed text, timed."""
    sources.prepare_sources()
    task = load_task("sentiment", n=24, n_train=40, shots=4, seed=0)  # = settings.task("sentiment") in quick mode
    train = trace_task(default_model, task, split="train", progress=False)
    test = trace_task(default_model, task, progress=False)
    policy = ExitPolicy("svm", threshold=0.6).fit(feature_table(train))
    start = time.perf_counter()
    explorer = ExitExplorer(default_model, policy, task, dataset_trace=test)
    first_render = time.perf_counter() - start
    assert explorer.error is None, explorer.error
    assert shown_exit(explorer)[1] == default_model.n_layers == 30
    moves, exits = [], []
    for t in (0.0, 0.3, 0.6, 0.9, 1.0):
        start = time.perf_counter()
        explorer.threshold.value = t
        moves.append(time.perf_counter() - start)
        exits.append(explorer.exit_layer)
    assert exits == sorted(exits) and exits[0] == 1 and exits[-1] == 30
    start = time.perf_counter()
    explorer.show_text("An instant classic: funny, moving and beautifully acted.")
    typed = time.perf_counter() - start
    assert explorer.error is None, explorer.error
    print(f"explorer on {default_model.name}: first render {first_render:.2f}s, slider move median "
          f"{np.median(moves):.2f}s (max {max(moves):.2f}s), typed text {typed:.2f}s (trace "
          f"{explorer.timings['trace']:.2f}s)")  # printed, never asserted: timings belong in benchmarks/


def test_explorer_state_answers_without_any_widget(tiny, task, policies, traces, monkeypatch):
    """The state behind the explorer runs with ipywidgets unavailable: the input's exit, the split's decisions,
    sweep and exits, and Learn-then-Test, equal to the replay of the same policy on the same trace."""
    import sys

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # any import of ipywidgets now fails
    _, test = traces
    state = ExplorerState(tiny, policies["logistic"], task, policies=policies, dataset_trace=test)
    name = state.policy_name
    found = state.example_exit(state.example_trace(3), task.test["label"][3], name, 0.5, 2)
    table = feature_table(test)
    replayed = first_exit(policies["logistic"].stop_matrix(table), 0.5, 2)
    assert found.exit_layer == replayed[3] and found.stop_proba.shape == (tiny.n_layers + 1,)
    decisions, sweep = state.dataset_decisions(name, 2)
    np.testing.assert_array_equal(views.exits_at(decisions, 0.5, 2), replayed)
    at_half = sweep.set_index("threshold").loc[0.5]
    assert len(sweep) == len(views.SWEEP_THRESHOLDS)
    assert at_half.layers_saved == pytest.approx(1 - replayed.mean() / tiny.n_layers)
    exits = state.dataset_exits(name, 0.5, 2)
    assert len(exits) == test.n_examples and (exits.exit_layer.to_numpy() == replayed).all()
    assert state.certify(name, 2, 0.1, 0.1) is state.certify(name, 2, 0.1, 0.1)  # once per setting
    with pytest.raises(ValueError, match="empty"):
        state.trace_text("   ")


# ---------------------------------------------------------------------------------------------------
# Monotone properties, on the state (no widget, no render: milliseconds per setting)


@pytest.fixture(scope="module")
def state(tiny, task, traces, policies):
    return ExplorerState(tiny, policies["threshold"], task, policies=policies, dataset_trace=traces[1])


def test_exit_layer_never_falls_as_the_threshold_rises(state):
    """For every policy, on several test examples and on the whole split: a higher threshold never exits
    earlier, threshold 0 stops at the first checked layer, and the input's exit equals its row of the split's
    exits (the explorer's two views agree)."""
    for name, policy in state.policies.items():
        m = policy.min_layer
        decisions, sweep = state.dataset_decisions(name, m)
        split_exits = np.stack([views.exits_at(decisions, float(t), m) for t in THRESHOLDS])  # (thresholds, n)
        assert (np.diff(split_exits, axis=0) >= 0).all(), name
        assert (split_exits[0] == m).all()  # threshold 0: every example stops at the minimum layer
        assert (np.diff(sweep["mean_exit_layer"]) >= 0).all() and sweep["mean_exit_layer"].iloc[0] == m
        for index in (0, 3, 7):
            layer_trace = state.example_trace(index)
            exits = [state.example_exit(layer_trace, state.gold[index], name, float(t), m).exit_layer
                     for t in THRESHOLDS]
            np.testing.assert_array_equal(exits, split_exits[:, index], err_msg=f"{name}, example {index}")


def test_no_exit_before_the_minimum_layer(state):
    """Every minimum layer 0..L, for a feature threshold and for the CRF (whose stop probabilities themselves
    depend on the minimum layer: its filtering starts there): threshold 0 exits exactly at it, higher
    thresholds never before it, for the input and for every example of the split."""
    L = state.n_layers
    layer_trace = state.example_trace(0)
    for name in ("threshold", "crf"):
        for m in range(L + 1):
            assert state.example_exit(layer_trace, state.gold[0], name, 0.0, m).exit_layer == m
            decisions, sweep = state.dataset_decisions(name, m)
            assert (views.exits_at(decisions, 0.0, m) == m).all() and sweep["mean_exit_layer"].iloc[0] == m
            for t in (0.5, 0.9):
                assert state.example_exit(layer_trace, state.gold[0], name, t, m).exit_layer >= m
                assert (views.exits_at(decisions, t, m) >= m).all()
                assert (state.dataset_exits(name, t, m)["exit_layer"] >= m).all()
    crf = state.policies["crf"]
    moved = state.policy_at("crf", crf.min_layer + 1)
    assert moved is not crf and moved.min_layer == crf.min_layer + 1 and crf.min_layer == 2  # the original kept
