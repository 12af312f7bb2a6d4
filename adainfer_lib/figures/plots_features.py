"""Static figures for chapters 02 (features) and 03 (exit classifiers). Seaborn; each function takes a
``title`` (use ``plots.figure_title(what, model, task, n)``) and returns the matplotlib Figure."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .plots import ORACLE, check_series, integer_layers, legend_outside, series_style, ylim_for


def exit_groups(table: pd.DataFrame, n_groups: int = 2) -> pd.Series:
    """Per row, the example's group by its oracle exit: "early" / "late" (split at the median oracle exit),
    or tertiles "early" / "middle" / "late" with ``n_groups=3``."""
    per_example = table.drop_duplicates("example").set_index("example")["oracle_exit"]
    names = ["early", "late"] if n_groups == 2 else ["early", "middle", "late"]
    ranks = per_example.rank(method="first")
    groups = pd.qcut(ranks, n_groups, labels=names)
    return table["example"].map(groups).astype(str).rename("oracle exit")


def feature_trajectories(table: pd.DataFrame, features: Sequence[str], *, title: str, n_groups: int = 2):
    """Mean ± s.e. of each feature by layer, one line per group of examples (by oracle exit), with each
    group's median oracle exit marked."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    groups = exit_groups(table, n_groups)
    data = table.assign(**{"oracle exit": groups})
    fig, axes = plt.subplots(1, len(features), figsize=(4.2 * len(features), 3.8), sharex=True)
    axes = np.atleast_1d(axes)
    medians = data.drop_duplicates("example").groupby("oracle exit")["oracle_exit"].median()
    hue_order = sorted(medians.index, key=lambda g: medians[g])
    palette, _ = series_style(hue_order)
    for ax, feature in zip(axes, features):
        sns.lineplot(data, x="layer", y=feature, hue="oracle exit", hue_order=hue_order, palette=palette,
                     errorbar="se", ax=ax, legend=ax is axes[-1])
        for g, m in medians.items():
            ax.axvline(m, color=palette[g], ls=":", lw=1)
        ax.set(title=feature, ylim=ylim_for(data[feature], low=min(0.0, float(np.nanmin(data[feature]))), high=0))
        integer_layers(ax)
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.01, 1), frameon=False,
                        title="oracle exit (dotted: median)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def merge_duplicate_series(data: pd.DataFrame, hue: str, value: str, by: Sequence[str] = ("layer",),
                           keep: str | None = None) -> pd.DataFrame:
    """Series of ``data`` (one per ``hue`` value) whose ``value`` equals another's at every ``by`` point are
    drawn once, under a joint name ("label_gap = label_top_prob"): with two labels the label gap and the label
    top probability rank the examples identically, and two labels on one line only hide it."""
    keys = [k for k in by if k in data.columns] + ([keep] if keep else [])
    series = {name: g.set_index(keys)[value].round(10) for name, g in data.groupby(hue, sort=False)}
    names, merged = list(series), {}
    for i, name in enumerate(names):
        if name in merged:
            continue
        same = [other for other in names[i + 1:] if other not in merged
                and series[other].index.equals(series[name].index) and series[other].equals(series[name])]
        for other in same:
            merged[other] = None
        if same:
            merged[name] = " = ".join([name, *same])
    out = data[~data[hue].isin([k for k, v in merged.items() if v is None])].copy()
    out[hue] = out[hue].map(lambda n: merged.get(n) or n)
    return out


def auc_by_layer(auc: pd.DataFrame, *, title: str, hue: str = "feature", style: str | None = None):
    """Per-layer AUC lines (``features.per_layer_auc`` output, possibly stacked with a ``label`` or ``task``
    column for ``style``); the dashed line is chance (0.5). Features with identical AUCs at every layer are
    drawn as one line ("label_gap = label_top_prob"); the y-axis reaches every value."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    auc = merge_duplicate_series(auc.reset_index(drop=True), hue, "auc", keep=style)
    palette, markers = series_style(auc[hue])
    check_series(palette, "auc_by_layer")
    fig, ax = plt.subplots(figsize=(10, 4.4))
    if style is None:
        sns.lineplot(auc, x="layer", y="auc", hue=hue, style=hue, palette=palette, markers=markers, dashes=False,
                     markersize=5, ax=ax)
    else:
        sns.lineplot(auc, x="layer", y="auc", hue=hue, style=style, palette=palette, marker="o", markersize=5,
                     ax=ax)
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance (0.5)")
    ax.set(ylim=ylim_for(auc["auc"], low=0.2), ylabel="ROC AUC at this layer", title=title)
    integer_layers(ax)
    legend_outside(ax)
    fig.tight_layout()
    return fig


def correlation_heatmap(corr: pd.DataFrame, *, title: str):
    """Annotated heatmap of a feature correlation matrix."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(corr), 0.6 + 0.65 * len(corr)))
    sns.heatmap(corr, annot=True, fmt=".2f", cmap="vlag", vmin=-1, vmax=1, square=True, ax=ax,
                annot_kws={"fontsize": 8}, cbar_kws={"shrink": 0.7})
    ax.set(title=title)
    fig.tight_layout()
    return fig


def importance_bars(importance: pd.DataFrame, *, title: str, hue: str | None = None):
    """Permutation importances (``features.permutation_importance_table``), ± one std over repeats."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.4 * importance["feature"].nunique() * (1 if hue is None else 1.6)))
    sns.barplot(importance, y="feature", x="importance_mean", hue=hue, ax=ax, errorbar=None)
    if hue is None:
        ax.errorbar(importance["importance_mean"], np.arange(len(importance)), xerr=importance["importance_std"],
                    fmt="none", color="black", lw=1)
    ax.axvline(0, color="grey", lw=1)
    ax.set(xlabel="drop in ROC AUC when the feature is shuffled", ylabel="", title=title)
    fig.tight_layout()
    return fig


def tradeoff(curves: pd.DataFrame, *, title: str, points: pd.DataFrame | None = None,
             hue: str = "policy", full_accuracy: float | None = None, chance: float | None = None):
    """Layers saved vs accuracy (left) and vs consistency with the full model (right), one line per policy
    (``threshold_sweep`` rows stacked with a ``policy`` column). ``points``: rows with ``layers_saved``,
    ``accuracy``, ``consistency`` and ``policy`` (e.g. the thresholds chosen on train, and the oracle)."""
    import matplotlib.pyplot as plt

    curves = curves.reset_index(drop=True)
    points = None if points is None else points.reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharex=True)
    order = list(dict.fromkeys(list(curves[hue]) + ([] if points is None else list(points[hue]))))
    palette, markers = series_style(order)
    check_series([o for o in order if o != "oracle"], "tradeoff")
    for ax, metric in zip(axes, ["accuracy", "consistency"]):
        for name, curve in curves.groupby(hue, sort=False):
            ax.plot(curve["layers_saved"], curve[metric], color=palette[name], alpha=0.85, lw=1.6,
                    label=f"{name} (every threshold)")
        if points is not None:
            chosen = [n for n in dict.fromkeys(points[hue]) if n != "oracle"]
            for _, row in points.iterrows():
                name = row[hue]
                # each later policy's marker a size smaller and drawn above: points that coincide stay visible
                rank = chosen.index(name) if name in chosen else 0
                style = ORACLE if name == "oracle" else {"marker": markers[name], "s": max(170 - 30 * rank, 40),
                                                         "color": palette[name], "edgecolor": "black",
                                                         "zorder": 5 + rank}
                ax.scatter(row["layers_saved"], row[metric], label="oracle" if name == "oracle"
                           else f"{name}: threshold chosen on train", **style)
        if metric == "accuracy":
            if full_accuracy is not None:
                ax.axhline(full_accuracy, color="black", ls="--", lw=1, label="full model")
                ax.axhline(full_accuracy - 0.01, color="black", ls=":", lw=1, label="full model − 1 point")
            if chance is not None:
                ax.axhline(chance, color="#999999", ls="-.", lw=1, label=f"chance ({chance:.2f})")
        values = [curves[metric]] + ([points[metric]] if points is not None else [])
        ax.set(xlabel="layers saved (1 − mean exit / L)", ylabel=metric, xlim=(-0.02, 1.0),
               ylim=ylim_for(pd.concat(values), low=min(0.4 if chance is None else chance - 0.05, 1.0)))
    axes[0].set_title("accuracy")
    axes[1].set_title("consistency with the full model")
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    axes[1].legend(entries.values(), entries.keys(), loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0,
                   fontsize=9, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def exit_histogram(exits: pd.DataFrame, n_layers: int, *, title: str, hue: str = "policy"):
    """Exit layers per policy (``exits``: columns ``policy``, ``layer``): one row of jittered points per
    policy, a box for the quartiles and a diamond for the mean exit layer."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    exits = exits.reset_index(drop=True)
    order = list(dict.fromkeys(exits[hue]))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(order)))
    sns.boxplot(exits, x="layer", y=hue, order=order, color="white", showfliers=False, width=0.5, ax=ax)
    sns.stripplot(exits, x="layer", y=hue, order=order, hue=hue, hue_order=order, jitter=0.25, alpha=0.35, size=3,
                  legend=False, ax=ax)
    means = exits.groupby(hue, sort=False)["layer"].mean().reindex(order)
    ax.scatter(means.to_numpy(), np.arange(len(order)), marker="D", s=60, color="black", zorder=5,
               label="mean exit layer")
    ax.set(xlim=(-0.5, n_layers + 0.5), xlabel=f"exit layer (L = {n_layers}: ran the full model)", ylabel="",
           title=title)
    legend_outside(ax)
    fig.tight_layout()
    return fig
