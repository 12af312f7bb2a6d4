"""Static figures for chapters 02 (features) and 03 (exit classifiers). Seaborn; each function takes a
``title`` (use ``plots.figure_title(what, model, task, n)``) and returns the matplotlib Figure."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


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
    palette = dict(zip(hue_order, sns.color_palette("colorblind")))
    for ax, feature in zip(axes, features):
        sns.lineplot(data, x="layer", y=feature, hue="oracle exit", hue_order=hue_order, palette=palette,
                     errorbar="se", ax=ax, legend=ax is axes[-1])
        for g, m in medians.items():
            ax.axvline(m, color=palette[g], ls=":", lw=1)
        ax.set(title=feature)
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1, 1), title="oracle exit (dotted: median)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def auc_by_layer(auc: pd.DataFrame, *, title: str, hue: str = "feature", style: str | None = None):
    """Per-layer AUC lines (``features.per_layer_auc`` output, possibly stacked with a ``label`` or ``task``
    column for ``style``); the dashed line is chance (0.5)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    auc = auc.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    sns.lineplot(auc, x="layer", y="auc", hue=hue, style=style, marker="o", markersize=4, ax=ax)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set(ylim=(0.2, 1.02), ylabel="ROC AUC at this layer", title=title)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1))
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
             hue: str = "policy", full_accuracy: float | None = None):
    """Layers saved vs accuracy (left) and vs consistency with the full model (right), one line per policy
    (``threshold_sweep`` rows stacked with a ``policy`` column). ``points``: rows with ``layers_saved``,
    ``accuracy``, ``consistency`` and ``policy`` (e.g. the thresholds chosen on train, and the oracle)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    curves = curves.reset_index(drop=True)
    points = None if points is None else points.reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharex=True)
    order = list(dict.fromkeys(list(curves[hue]) + ([] if points is None else list(points[hue]))))
    palette = dict(zip(order, sns.color_palette("colorblind", len(order))))
    for ax, metric in zip(axes, ["accuracy", "consistency"]):
        sns.lineplot(curves, x="layers_saved", y=metric, hue=hue, palette=palette, estimator=None, sort=False,
                     ax=ax, legend=False, alpha=0.8)
        if points is not None:
            sns.scatterplot(points, x="layers_saved", y=metric, hue=hue, palette=palette, s=90, marker="D",
                            edgecolor="black", ax=ax, legend=ax is axes[1])
        if metric == "accuracy" and full_accuracy is not None:
            ax.axhline(full_accuracy, color="black", ls="--", lw=1, label="full model")
            ax.axhline(full_accuracy - 0.01, color="black", ls=":", lw=1)
        ax.set(xlabel="layers saved (1 − mean exit / L)", ylabel=metric, xlim=(-0.02, 1.0))
    axes[0].set_title("accuracy (dashed: full model, dotted: −1 point)")
    axes[1].set_title("consistency with the full model")
    if axes[1].get_legend() is not None:
        sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1, 1), title="◆ threshold chosen on train; oracle")
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
    ax.scatter(means.to_numpy(), np.arange(len(order)), marker="D", s=60, color="black", zorder=5, label="mean")
    ax.set(xlim=(-0.5, n_layers + 0.5), xlabel="exit layer (L = ran the full model)", ylabel="", title=title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig
