"""Chapter 04's figures: accuracy vs layers saved, exit-layer distributions, measured vs ideal speedup
(seaborn; each titled with model, task and n)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..common.checks import check_choice
from ..evaluation.evaluate import Evaluation
from .plots import ORACLE, check_series, legend_outside, series_style, ylim_for


def _title(what: str, model: str, task: str, n: int) -> str:
    """A three-line title (these plots sit side by side, one per task: a long model name must not run into the
    next panel's title)."""
    return f"{what}\n{model}\n{task}, n={n}"


STAR_COLOURS = ["black", "#B22222", "#6A3D9A"]   # "oracle" first; other oracles (a reader's own) after it


def plot_pareto(curves: pd.DataFrame, *, accuracy_full: float, model: str, task: str, n: int, ax=None,
                chance: float | None = None, legend: bool = True, metric: str = "accuracy"):
    """``metric`` (accuracy or consistency with the full model) vs layers saved per method (lines: knob
    sweeps, each its own colour and marker; every method named ``...oracle`` a star, "oracle" black; for
    accuracy the full model dashed, 1 point below it dotted, chance dash-dot; for consistency 1 and 0.98).
    ``legend=False`` for all but one panel of a row of panels that show the same methods (colours follow the
    methods' order, so they agree across panels). ``ValueError`` for another ``metric``."""
    import matplotlib.pyplot as plt

    check_choice(metric, "metric", ("accuracy", "consistency"))
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 5))
    stars = curves.method.astype(str).str.endswith("oracle")
    lines = curves[~stars]
    palette, markers = series_style(sorted(lines.method.unique()))
    check_series(palette.keys() - {"oracle"}, "plot_pareto")
    for method, line in lines.sort_values("layers_saved").groupby("method", sort=True):
        ax.plot(line.layers_saved, line[metric], color=palette[method], marker=markers[method], markersize=5,
                lw=1.5, label=method)
    oracles = sorted(curves[stars].method.unique(), key=lambda m: (m != "oracle", m))
    for colour, method in zip(STAR_COLOURS * len(oracles), oracles):
        point = curves[curves.method == method]
        ax.scatter(point.layers_saved, point[metric], label=method, **(ORACLE | {"color": colour}))
    if metric == "accuracy":
        ax.axhline(accuracy_full, ls="--", color="grey", label="full model")
        ax.axhline(accuracy_full - 0.01, ls=":", color="grey", label="full model − 1 pt")
        if chance is not None:
            ax.axhline(chance, ls="-.", color="#999999", label=f"chance ({chance:.2f})")
        low = min(accuracy_full - 0.1, chance - 0.05 if chance is not None else 1.0)
        high = min(1.02, accuracy_full + 0.05)
    else:
        ax.axhline(1.0, ls="--", color="grey", label="full model")
        ax.axhline(0.98, ls=":", color="grey", label="0.98 consistency")
        low, high = 0.8, 1.02
    ax.set(xlabel="layers saved (1 − mean exit layer / L)", ylabel=metric if metric == "accuracy" else
           "consistency with the full model", xlim=(-0.02, 1.0),
           ylim=ylim_for(curves[metric], low=max(0.0, low), high=high),
           title=_title(f"{metric.capitalize()} vs layers saved", model, task, n))
    if legend:
        legend_outside(ax)
    return ax


def plot_exit_layers(evaluation: Evaluation, methods: Sequence[str] | None = None, *, model: str, task: str, ax=None):
    """Distribution of exit layers per method (one histogram line per method)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    methods = [m for m in (methods or evaluation.exits) if m != "full"]
    long = pd.DataFrame([{"method": m, "exit layer": int(layer)} for m in methods for layer in evaluation.exits[m]])
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    palette, _ = series_style(methods)
    check_series(methods, "plot_exit_layers")
    sns.histplot(long, x="exit layer", hue="method", hue_order=methods, palette=palette, discrete=True,
                 element="step", fill=False, lw=2, ax=ax, binrange=(0, evaluation.n_layers))
    ax.set(xlim=(0, evaluation.n_layers + 1), ylabel="examples",
           title=_title("Exit layer distribution", model, task, len(evaluation.gold)))
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return ax


def plot_speedup(table: pd.DataFrame, *, model: str, task: str, ax=None, legend: bool = True):
    """Measured wall-clock speedup next to the ideal one **on the same timed prompts** (``L / mean exit layer``
    over the timed prompts: ``ideal_speedup_timed``), per method. The title gives how many prompts were timed;
    with one timed prompt both bars describe that prompt only."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ideal = "ideal_speedup_timed" if "ideal_speedup_timed" in table else "ideal_speedup"
    data = table[table.method != "full"].rename(columns={ideal: "ideal (same timed prompts)",
                                                         "measured_speedup": "measured"})
    data = data.melt(id_vars=["method"], value_vars=["ideal (same timed prompts)", "measured"],
                     var_name="speedup", value_name="× full model")
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4))
    sns.barplot(data, x="method", y="× full model", hue="speedup", palette=["#BBBBBB", "#0072B2"], ax=ax)
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    n_timed = int(table.n_timed.iloc[0]) if len(table) else 0
    ax.set(xlabel="", title=_title(f"Wall-clock speedup, batch 1, on {n_timed} timed prompt{'s' * (n_timed != 1)}",
                                   model, task, int(table.n.iloc[0])))
    if ax.get_legend() is not None:
        if legend:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False, title="speedup")
        else:
            ax.get_legend().remove()
    return ax
