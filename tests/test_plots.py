"""The static figures of chapters 01–03 (``figures.plots``, ``figures.plots_features``) draw the numbers they are
given: each test builds the figure from small data whose values are known and reads them back off its artists
(lines, bars, cells, marks), one render per figure kind. Titles are the caller's (``plots.figure_title``)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

matplotlib.use("Agg")

from test_course import HAND_GOLD, HAND_PREDS  # noqa: E402

from adainfer_lib.figures import plots  # noqa: E402
from adainfer_lib.figures import plots_features as pf  # noqa: E402
from adainfer_lib.figures.plots import series_style  # noqa: E402
from conftest import make_trace, task_trace_from_predictions  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def line_of(ax, colour: str):
    """The one line of ``ax`` drawn in ``colour`` with data (seaborn's legend handles have none)."""
    (line,) = [line for line in ax.lines if to_hex(line.get_color()) == colour.lower() and len(line.get_xdata()) > 2]
    return line


def test_layer_summary_and_its_curves():
    """Chapter 01's per-layer table from the six hand-worked examples (tests/test_course.py), and the accuracy,
    consistency and settled curves drawn through it, one colour per task, with each task's chance line."""
    summary = plots.layer_summary(task_trace_from_predictions(HAND_PREDS, HAND_GOLD))
    np.testing.assert_allclose(summary.accuracy, [3 / 6, 4 / 6, 3 / 6, 5 / 6, 5 / 6])
    np.testing.assert_allclose(summary.consistency, [2 / 6, 3 / 6, 4 / 6, 1, 1])  # agrees with layer 4
    np.testing.assert_allclose(summary.settled, [1 / 6, 2 / 6, 4 / 6, 1, 1])  # settled at 3, 0, 1, 2, 3, 2
    assert (summary.n == 6).all() and (summary.chance == 0.5).all()
    both = pd.concat([summary, summary.assign(task="other", accuracy=summary.accuracy / 2, chance=0.2)])
    palette, _ = series_style(both.task)
    accuracy, consistency = plots.layer_curves(both, title="t").axes
    for task, part in both.groupby("task"):
        np.testing.assert_allclose(line_of(accuracy, palette[task]).get_ydata(), part.accuracy)
        np.testing.assert_allclose(line_of(consistency, palette[task]).get_ydata(), part.consistency)
        chance = [line for line in accuracy.lines if to_hex(line.get_color()) == palette[task].lower()
                  and len(line.get_xdata()) == 2]
        assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), part.chance.iloc[0])
    (ax,) = plots.settled_curves(both, title="t").axes
    np.testing.assert_allclose(line_of(ax, palette["synthetic"]).get_ydata(), summary.settled)


def test_earliest_layer_histogram_shows_each_tasks_share_per_layer():
    tt = task_trace_from_predictions(HAND_PREDS, HAND_GOLD)
    earliest = pd.DataFrame({"task": "synthetic", "layer": tt.earliest_consistent_layer()})  # 3, 0, 1, 2, 3, 2
    (ax,) = plots.earliest_layer_hist(earliest, 4, title="t").axes
    (step,) = ax.lines
    np.testing.assert_allclose(step.get_ydata()[:5], [1 / 6, 1 / 6, 2 / 6, 2 / 6, 0])


def test_adainfer_idea_marks_where_the_gap_rule_stops():
    """One example whose label gap grows: the figure's exit line is at the first layer >= 1 where the gap (top-1
    minus top-2 of the softmax over the two label words, computed here by hand) reaches the threshold, and the
    text names the label there and the full model's."""
    from test_exercises import settling_trace

    tt = settling_trace(seed=0)
    scores = tt.scores()
    example = next(e for e in range(tt.n_examples) if tt.earliest_consistent_layer()[e] > 3)
    probs = np.exp(scores[example]) / np.exp(scores[example]).sum(-1, keepdims=True)
    gap = np.abs(probs[:, 1] - probs[:, 0])
    stop = next((layer for layer in range(1, tt.n_layers + 1) if gap[layer] >= 0.4), tt.n_layers)
    (ax,) = plots.adainfer_idea(tt, example, gap_threshold=0.4, title="t").axes
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_allclose(lines["gap = top-1 − top-2"].get_ydata(), gap, atol=1e-6)
    np.testing.assert_allclose(lines["top prob (label words)"].get_ydata(), probs.max(-1), atol=1e-6)
    (exit_line,) = [line for line in ax.lines if np.allclose(line.get_xdata(), stop) and line.get_label()[0] == "_"]
    preds = tt.predictions()[example]
    (text,) = ax.texts
    assert text.get_text() == (f" exit at layer {stop}: '{tt.label_names[preds[stop]]}'\n"
                               f" full model (layer {tt.n_layers}): '{tt.label_names[preds[-1]]}'")
    # a threshold the gap reaches at layers 0 and 1: the rule checks from layer 1 (layer 0 is the embeddings)
    (ax,) = plots.adainfer_idea(tt, example, gap_threshold=float(min(gap[0], gap[1])) - 1e-6, title="t").axes
    assert any(np.allclose(line.get_xdata(), 1) for line in ax.lines) and "exit at layer 1:" in ax.texts[0].get_text()


def test_early_exit_example_is_the_earliest_agreeing_gap_exit():
    """Chapter 00's example: among the examples the gap rule stops before the last layer with the full model's
    answer, the one it stops earliest (checked against a loop over the examples written out here)."""
    from test_exercises import settling_trace

    tt = settling_trace(seed=0)
    probs = np.exp(tt.scores()) / np.exp(tt.scores()).sum(-1, keepdims=True)
    gap, preds, L = np.abs(probs[..., 1] - probs[..., 0]), tt.predictions(), tt.n_layers
    best = None
    for e in range(tt.n_examples):
        stop = next((layer for layer in range(1, L + 1) if gap[e, layer] >= 0.4), L)
        if stop < L and preds[e, stop] == preds[e, L] and (best is None or stop < best[1]):
            best = (e, stop)
    assert best is not None and plots.early_exit_example(tt, gap_threshold=0.4) == best[0]
    with pytest.raises(ValueError, match="lower gap_threshold"):
        plots.early_exit_example(tt, gap_threshold=1.01)


def test_top_token_heatmap_cells_are_the_lens_top_tokens():
    n, L = 2, 3
    trace = make_trace(np.zeros((n, L + 1, 2)))
    ids = np.array([[[5], [6], [7], [8]], [[9], [5], [5], [6]]], dtype=np.int32)
    probs = np.array([[[0.1], [0.2], [0.5], [0.9]], [[0.3], [0.3], [0.6], [0.8]]], dtype=np.float32)
    from dataclasses import replace

    trace = replace(trace, top_ids=ids, top_probs=probs, token_strings={5: " Paris", 6: "\n", 7: "the", 8: "",
                                                                         9: " a"})
    fig = plots.top_token_heatmap(trace, [1, 0], ["second", "first"], title="t")
    ax = fig.axes[0]
    cells = np.asarray(ax.collections[0].get_array()).reshape(L + 1, n)  # rows: layers 0..L; columns: prompts
    np.testing.assert_allclose(cells, probs[[1, 0], :, 0].T)
    texts = np.array([t.get_text() for t in ax.texts if t.get_text()]).reshape(L + 1, n)
    assert texts[:, 0].tolist() == ["␣a", "␣Paris", "␣Paris", "⏎"] and texts[:, 1].tolist() == ["␣Paris", "⏎", "the",
                                                                                               "∅"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["second", "first"]


def test_feature_trajectories_follow_each_groups_mean():
    """Examples split at the median oracle exit; each panel's line for a group is that group's mean feature per
    layer, and the dotted line its median oracle exit."""
    from conftest import synthetic_table

    table = synthetic_table(20, 6, seed=0)
    groups = pf.exit_groups(table)
    per_example = table.drop_duplicates("example").assign(group=groups.loc[table.layer == 0].to_numpy())
    assert per_example.groupby("group").oracle_exit.max()["early"] <= per_example.groupby("group").oracle_exit.min()[
        "late"] and groups.value_counts().tolist() == [70, 70]  # 10 examples × 7 layers each
    fig = pf.feature_trajectories(table, ["label_gap", "gap"], title="t")
    palette, _ = series_style(["early", "late"])
    medians = per_example.groupby("group").oracle_exit.median()
    for ax, feature in zip(fig.axes, ["label_gap", "gap"]):
        means = table.assign(group=groups).groupby(["group", "layer"])[feature].mean()
        for group in ("early", "late"):
            np.testing.assert_allclose(line_of(ax, palette[group]).get_ydata(), means[group], rtol=1e-6)
            assert any(np.allclose(line.get_xdata(), medians[group]) for line in ax.lines
                       if to_hex(line.get_color()) == palette[group].lower())


def test_auc_by_layer_draws_identical_series_once():
    """With two labels the label gap and the label top probability rank the rows alike: one line named after
    both, through their per-layer AUCs; the other feature its own line; chance at 0.5."""
    from adainfer_lib.features.study import per_layer_auc
    from conftest import synthetic_table

    auc = per_layer_auc(synthetic_table(20, 6, seed=0), ["label_gap", "label_top_prob", "gap"], label="settled")
    fig = pf.auc_by_layer(auc, title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["label_gap = label_top_prob", "gap",
                                                                   "chance (0.5)"]
    palette, _ = series_style(["label_gap = label_top_prob", "gap"])
    for name, feature in (("label_gap = label_top_prob", "label_gap"), ("gap", "gap")):
        part = auc[auc.feature == feature].dropna(subset=["auc"])
        np.testing.assert_allclose(line_of(ax, palette[name]).get_xydata(), part[["layer", "auc"]].to_numpy())
    kept = pf.merge_duplicate_series(auc.assign(auc=np.where(auc.feature == "label_top_prob", 0.5, auc.auc)),
                                     "feature", "auc")
    assert set(kept.feature) == {"label_gap", "label_top_prob", "gap"}  # not identical: nothing merged


def test_correlation_heatmap_and_importance_bars_show_the_values():
    corr = pd.DataFrame([[1.0, 0.52], [0.52, 1.0]], index=["a", "b"], columns=["a", "b"])
    ax = pf.correlation_heatmap(corr, title="t").axes[0]
    assert [t.get_text() for t in ax.texts] == ["1.00", "0.52", "0.52", "1.00"]
    importance = pd.DataFrame({"feature": ["label_gap", "gap"], "importance_mean": [0.3, 0.05],
                               "importance_std": [0.02, 0.01]})
    ax = pf.importance_bars(importance, title="t").axes[0]
    assert [bar.get_width() for bar in ax.patches] == [0.3, 0.05]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["label_gap", "gap"]


def test_tradeoff_and_exit_histogram_draw_the_sweeps_points_and_means():
    curves = pd.DataFrame({"policy": ["p"] * 3 + ["q"] * 3, "layers_saved": [0.1, 0.2, 0.3, 0.1, 0.3, 0.5],
                           "accuracy": [0.8, 0.7, 0.6, 0.9, 0.8, 0.7], "consistency": [1, 0.9, 0.8, 1, 0.95, 0.9]})
    points = pd.DataFrame({"policy": ["p", "oracle"], "layers_saved": [0.2, 0.6], "accuracy": [0.7, 0.85],
                           "consistency": [0.9, 1.0]})
    fig = pf.tradeoff(curves, title="t", points=points, full_accuracy=0.85, chance=0.5)
    for ax, metric in zip(fig.axes, ["accuracy", "consistency"]):
        lines = {line.get_label(): line for line in ax.lines}
        for policy, part in curves.groupby("policy"):
            np.testing.assert_allclose(lines[f"{policy} (every threshold)"].get_xydata(),
                                       part[["layers_saved", metric]].to_numpy())
        marks = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
        assert marks == {"p: threshold chosen on train": [[0.2, points[metric][0]]],
                         "oracle": [[0.6, points[metric][1]]]}
    levels = {line.get_label(): line.get_ydata()[0] for line in fig.axes[0].lines if len(line.get_xdata()) == 2}
    assert levels == pytest.approx({"full model": 0.85, "full model − 1 point": 0.84, "chance (0.50)": 0.5})
    # chosen points that coincide (at n = 100 several policies save nothing at consistency 1) stay visible: each
    # later policy's marker is smaller and drawn above the earlier ones
    same = pd.DataFrame({"policy": ["p", "q"], "layers_saved": [0.0, 0.0], "accuracy": [0.8, 0.8],
                         "consistency": [1.0, 1.0]})
    ax = pf.tradeoff(curves, title="t", points=same).axes[0]
    p, q = (next(c for c in ax.collections if c.get_label().startswith(f"{n}:")) for n in ("p", "q"))
    assert q.get_sizes()[0] < p.get_sizes()[0] and q.get_zorder() > p.get_zorder()

    exits = pd.DataFrame({"policy": ["p"] * 4 + ["q"] * 3, "layer": [1, 2, 3, 6, 4, 4, 5]})
    ax = pf.exit_histogram(exits, 6, title="t").axes[0]
    (means,) = [c for c in ax.collections if c.get_label() == "mean exit layer"]
    np.testing.assert_allclose(means.get_offsets(), [[3.0, 0], [13 / 3, 1]])
    dots = [c.get_offsets() for c in ax.collections if c.get_label() != "mean exit layer" and len(c.get_offsets())]
    assert sorted(np.concatenate(dots)[:, 0].tolist()) == sorted(exits.layer.tolist())  # one dot per example
    assert ax.get_xlabel() == "exit layer (L = 6: ran the full model)"


def test_layer_curves_label_each_panel_with_its_own_measure():
    """Issue 23 §5: the consistency panel shared the accuracy panel's y axis and showed no label of its own, so
    the only y-label a reader saw beside both curves was "accuracy"."""
    import pandas as pd

    from adainfer_lib.figures.plots import layer_curves

    summary = pd.DataFrame({"task": ["a"] * 4, "layer": range(4), "accuracy": [0.5, 0.6, 0.7, 0.8],
                            "consistency": [0.4, 0.6, 0.8, 1.0], "chance": 0.5})
    fig = layer_curves(summary, title="t")
    shown = [ax.get_ylabel() for ax in fig.axes[:2] if ax.yaxis.label.get_visible()]
    assert shown == ["accuracy", "consistency"]
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), summary["consistency"])


def test_a_feature_or_task_keeps_its_colour_from_figure_to_figure_and_layers_tick_at_whole_numbers():
    """Chapter 02 drew "gap" blue in one figure and orange in the next (colours followed the order of appearance):
    known features and tasks have fixed colours; other names still get distinct ones in order."""
    from adainfer_lib.features.study import per_layer_auc
    from conftest import synthetic_table

    one, _ = series_style(["gap", "top_prob", "label_gap"])
    two, _ = series_style(["label_gap = label_top_prob", "entropy", "gap"])
    assert one["gap"] == two["gap"] and one["label_gap"] == two["label_gap = label_top_prob"]
    assert series_style(["topic", "sentiment"])[0]["topic"] == series_style(["topic"])[0]["topic"]
    mixed, _ = series_style(["gap", "something else"])
    assert len({mixed["gap"], mixed["something else"]}) == 2
    auc = per_layer_auc(synthetic_table(20, 6, seed=0), ["gap", "top_prob"], label="settled")
    ticks = pf.auc_by_layer(auc, title="t").axes[0].get_xticks()
    assert np.all(ticks == np.round(ticks)), ticks


def test_a_token_the_font_cannot_draw_is_marked_not_warned_about():
    """gemma3-270m's lens names CJK tokens; DejaVu Sans has no glyph for them, and matplotlib warned "Glyph ...
    missing" in chapter 01. The heatmap's cells mark such characters instead."""
    import warnings

    import matplotlib.pyplot as plt

    from adainfer_lib.figures.plots import MISSING_GLYPH, drawable_token

    assert drawable_token(" 映画") == "␣" + MISSING_GLYPH * 2 and drawable_token(" good") == "␣good"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig, ax = plt.subplots()
        ax.text(0.5, 0.5, drawable_token("映画 review"))
        fig.canvas.draw()
    plt.close(fig)


def test_five_features_draw_without_a_too_many_series_warning():
    """series_style's palette always holds "oracle"; check_series counted it, so chapter 02's five-feature AUC
    panels warned "6 series" to the student."""
    import warnings

    from adainfer_lib.features.study import per_layer_auc
    from conftest import synthetic_table

    auc = per_layer_auc(synthetic_table(20, 6, seed=0), ["gap", "top_prob", "entropy", "cos_prev", "layer_frac"],
                        label="settled")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pf.auc_by_layer(auc, title="t")
    with pytest.warns(UserWarning, match="6 series"):
        pf.auc_by_layer(per_layer_auc(synthetic_table(20, 6, seed=0), ["gap", "top_prob", "entropy", "cos_prev",
                                                                        "layer_frac", "label_gap"], label="settled"),
                        title="t")
