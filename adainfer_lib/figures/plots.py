"""Static figures for the layer statistics (seaborn). Each returns its matplotlib Axes or Figure and is
titled with the model, the task and n."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from ..common.replay import first_exit
from ..data.task_trace import TaskTrace
from ..features.online import label_features
from ..model.layer_trace import LayerTrace


def figure_title(what: str, model: str, task: str, n: int) -> str:
    """``"<what> — <model>, <task>, n=<n>"``: the title convention of every figure in the suite."""
    return f"{what} — {model}, {task}, n={n}"


# ---- the rules every figure of the suite follows, in one place ----------------------------------------
# At most MAX_SERIES series per panel; each series its own colour *and* marker (Okabe-Ito colours, which stay
# apart for colour-blind readers and in grey print; no two oranges); legends outside the data; chance lines
# where accuracy is plotted; axes never clipped below the data.

MAX_SERIES = 5
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#666666"]
MARKERS = ["o", "s", "^", "v", "P", "X", "D"]
ORACLE = {"marker": "*", "s": 260, "color": "black", "zorder": 6}   # the oracle never shares a policy's marker


#: Series whose colour and marker never change from figure to figure: the tasks, and the features (a merged
#: series "label_gap = label_top_prob" takes its first name's).
FIXED_SERIES = {name: i for family in (("sentiment", "topic", "mmlu", "products"),
                                       ("top_prob", "gap", "entropy", "cos_prev", "label_top_prob", "label_gap",
                                        "layer_frac"))
                for i, name in enumerate(family)}


def series_style(names) -> tuple[dict, dict]:
    """``(palette, markers)``: a distinct colour and marker per series name — the fixed one of
    ``FIXED_SERIES`` when every name has one (so "gap" is the same colour in every figure), else in order of
    first appearance; the oracle is black (drawn with its own star by the caller)."""
    names = [n for n in dict.fromkeys(names) if n != "oracle"]
    fixed = [FIXED_SERIES.get(str(n).split(" = ")[0]) for n in names]
    if not (names and None not in fixed and len(set(fixed)) == len(fixed)):
        fixed = list(range(len(names)))
    palette = {n: COLOURS[i % len(COLOURS)] for n, i in zip(names, fixed)}
    markers = {n: MARKERS[i % len(MARKERS)] for n, i in zip(names, fixed)}
    return palette | {"oracle": "black"}, markers | {"oracle": "*"}


def integer_layers(ax) -> None:
    """Ticks of the x axis (layers) at whole numbers only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def check_series(names, where: str) -> None:
    """Warn when a panel would show more than ``MAX_SERIES`` series (a reader cannot follow more); the oracle
    (a ``series_style`` palette always holds it) does not count."""
    import warnings

    names = [n for n in dict.fromkeys(names) if n != "oracle"]   # the oracle is a star, not a series
    if len(names) > MAX_SERIES:
        warnings.warn(f"{where}: {len(names)} series in one panel ({names}); show at most {MAX_SERIES}",
                      stacklevel=3)


def legend_outside(ax, title: str | None = None, **kwargs) -> None:
    """Move the axes' legend to the right of the data (nothing hides a point)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=9,
              title=title, title_fontsize=9, frameon=False, **kwargs)


def ylim_for(values, low: float = 0.0, high: float = 1.02, pad: float = 0.03) -> tuple[float, float]:
    """``(low, high)`` widened so that no value is cut off (NaN ignored)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return low, high
    return min(low, float(values.min()) - pad), max(high, float(values.max()) + pad)


TOKEN_KEY = "␣ = space, ⏎ = newline, ⇥ = tab, ∅ = empty token, ▯ = a character the figure's font lacks"
MISSING_GLYPH = "▯"


def visible_token(token: str, width: int = 10) -> str:
    """A token as it can be read in a figure cell: spaces as ␣, newlines as ⏎, cut to ``width``."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")[:width] or "∅"


@functools.cache
def _font_characters() -> frozenset[int]:
    """The code points matplotlib's default font draws (its character map, read once)."""
    from matplotlib import font_manager

    return frozenset(font_manager.get_font(font_manager.findfont(font_manager.FontProperties())).get_charmap())


def drawable_token(token: str, width: int = 10) -> str:
    """``visible_token`` with every character the default font lacks (CJK, emoji: matplotlib would warn "Glyph
    missing" and draw a box) replaced by ``MISSING_GLYPH``, so a figure cell says so instead."""
    return "".join(c if ord(c) in _font_characters() else MISSING_GLYPH for c in visible_token(token, width))


def layer_summary(tt: TaskTrace) -> pd.DataFrame:
    """Per layer (L+1 rows): accuracy vs gold, consistency with the final layer, and the share of examples
    already settled (their prediction equals the final one from this layer on)."""
    earliest = tt.earliest_consistent_layer()
    layers = np.arange(tt.n_layers + 1)
    return pd.DataFrame({
        "task": tt.task_name,
        "layer": layers,
        "layer_frac": layers / tt.n_layers,
        "accuracy": tt.accuracy_by_layer(),
        "consistency": tt.consistency_by_layer(),
        "settled": (earliest[:, None] <= layers[None, :]).mean(0),
        "chance": 1 / len(tt.label_names),
        "n": tt.n_examples,
    })


def top_token_heatmap(trace: LayerTrace, examples: list[int], labels: list[str], *, title: str, every: int = 1):
    """Tuned-lens-style grid: one column per prompt, one row per layer; the cell shows the lens's top-1
    token and its colour the top-1 probability."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    layers = trace.layers[::every]
    probs = trace.top_probs[examples][:, ::every, 0].T  # (layers, examples)
    tokens = np.array([[drawable_token(trace.token_strings.get(int(t), "?")) for t in trace.top_ids[e, ::every, 0]]
                       for e in examples]).T
    fig, ax = plt.subplots(figsize=(2.5 + 1.9 * len(examples), 0.36 * len(layers) + 2.0))
    sns.heatmap(probs, annot=tokens, fmt="", cmap="Blues", vmin=0, vmax=1, ax=ax, annot_kws={"fontsize": 9},
                cbar_kws={"label": "top-1 probability"}, yticklabels=layers, xticklabels=labels)
    ax.invert_yaxis()
    ax.set(xlabel=f"prompt\n(cell: the lens's top-1 token over the full vocabulary; {TOKEN_KEY})",
           ylabel="layer (0 = embeddings)", title=title)
    fig.tight_layout()
    return fig


def layer_curves(summary: pd.DataFrame, *, title: str):
    """Accuracy and consistency by layer, one line per task (``summary`` from ``layer_summary``, stacked)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    long = summary.melt(id_vars=["task", "layer"], value_vars=["accuracy", "consistency"], var_name="measure")
    palette, markers = series_style(summary["task"])
    check_series(palette, "layer_curves")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=True)
    for ax, measure in zip(axes, ["accuracy", "consistency"]):
        sns.lineplot(long[long.measure == measure], x="layer", y="value", hue="task", style="task", palette=palette,
                     markers=markers, dashes=False, ax=ax, legend=ax is axes[1])
        if measure == "accuracy" and "chance" in summary:
            for task, chance in summary.groupby("task", sort=False)["chance"].first().items():
                ax.axhline(chance, color=palette[task], ls="-.", lw=1)
        ax.set(title=f"{measure} of the lens's decision at layer l"
                     + (" (dash-dot: chance)" if measure == "accuracy" and "chance" in summary else ""),
               ylim=(0, 1.02), ylabel=measure)
        ax.yaxis.label.set_visible(True)  # a shared y axis hides the right panel's label: it is not accuracy
        ax.tick_params(axis="y", labelleft=True)
        integer_layers(ax)
    legend_outside(axes[1], title="task")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def settled_curves(summary: pd.DataFrame, *, title: str):
    """Share of examples whose answer has appeared and stays, by layer: how many could stop by then."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    palette, markers = series_style(summary["task"])
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.lineplot(summary, x="layer", y="settled", hue="task", style="task", palette=palette, markers=markers,
                 dashes=False, ax=ax)
    ax.set(ylim=(0, 1.02), ylabel="share settled (could stop here)", title=title)
    integer_layers(ax)
    legend_outside(ax, title="task")
    fig.tight_layout()
    return fig


def earliest_layer_hist(earliest: pd.DataFrame, n_layers: int, *, title: str):
    """Distribution of the earliest consistent layer per task (``earliest``: columns task, layer)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    palette, _ = series_style(earliest["task"])
    fig, ax = plt.subplots(figsize=(10, 4))
    sns.histplot(earliest, x="layer", hue="task", palette=palette, bins=np.arange(n_layers + 2) - 0.5,
                 stat="probability", common_norm=False, element="step", fill=False, lw=2, ax=ax)
    ax.set(xlabel="earliest layer from which the prediction equals the final one and stays",
           ylabel="share of the task's examples", title=title)
    integer_layers(ax)
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


def early_exit_example(tt: TaskTrace, *, gap_threshold: float = 0.4, min_layer: int = 1) -> int:
    """The example of ``tt`` that the gap rule (stop at the first layer ``>= min_layer`` whose label-word gap is
    ``>= gap_threshold``) stops earliest while reading the full model's answer: the example ``adainfer_idea``
    draws. Ties go to the lowest index. ``ValueError`` when the rule stops no example before the last layer
    with the full model's answer (lower ``gap_threshold``)."""
    feats = label_features(tt.scores())  # (n, L+1) each
    exits = first_exit(feats["label_gap"], gap_threshold, min_layer)
    n, L = tt.n_examples, tt.n_layers
    agrees = feats["pred"][np.arange(n), exits] == feats["pred"][:, L]
    candidates = np.where(agrees & (exits < L), exits, L + 1)
    if n == 0 or candidates.min() > L:
        raise ValueError(f"the gap rule at threshold {gap_threshold} stops none of the {n} examples before layer {L} "
                         f"with the full model's answer: choose a lower gap_threshold")
    return int(candidates.argmin())


def adainfer_idea(tt: TaskTrace, example: int, *, gap_threshold: float = 0.4, title: str):
    """The idea of AdaInfer on one real example: the label-word ``top_prob`` and ``gap`` grow over the
    layers; a rule that stops once the gap crosses a threshold skips every layer after it."""
    import matplotlib.pyplot as plt

    feats = label_features(tt.scores()[example])  # over the label words, at every layer (L+1,)
    layers, preds = np.arange(tt.n_layers + 1), feats["pred"]
    stop = int(first_exit(feats["label_gap"][None], gap_threshold, 1)[0])  # the stopping rule, from layer 1
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(layers, feats["label_top_prob"], marker="o", label="top prob (label words)")
    ax.plot(layers, feats["label_gap"], marker="s", label="gap = top-1 − top-2")
    ax.axhline(gap_threshold, ls=":", c="gray", label=f"gap threshold {gap_threshold}")
    ax.axvspan(stop + 0.5, tt.n_layers + 0.5, color="tab:red", alpha=0.08, label="layers skipped")
    ax.axvline(stop, c="tab:red", lw=2)
    right_half = stop > tt.n_layers / 2  # the note grows away from the legend on the right of the axes
    ax.text(stop, 1.02, f" exit at layer {stop}: '{tt.label_names[preds[stop]]}'\n"
                        f" full model (layer {tt.n_layers}): '{tt.label_names[preds[-1]]}'",
            va="bottom", ha="right" if right_half else "left", fontsize=9)
    ax.set(xlabel="layer", ylabel="probability", ylim=(0, 1.2), xlim=(-0.5, tt.n_layers + 0.5), title=title)
    legend_outside(ax)
    fig.tight_layout()
    return fig
