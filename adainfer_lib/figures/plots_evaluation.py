"""Chapter 04's figures: accuracy vs layers saved, exit-layer distributions, measured vs ideal speedup
(seaborn; each titled with model, task and n)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..evaluation.evaluate import Evaluation

def _title(what: str, model: str, task: str, n: int) -> str:
    """A two-line title (these plots sit side by side, one per task)."""
    return f"{what}\n{model}, {task}, n={n}"


def plot_pareto(curves: pd.DataFrame, *, accuracy_full: float, model: str, task: str, n: int, ax=None):
    """Accuracy vs layers saved per method (lines: knob sweeps; the oracle a star; the full model dashed)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    lines = curves[curves.method != "oracle"].sort_values(["method", "layers_saved"])
    sns.lineplot(lines, x="layers_saved", y="accuracy", hue="method", marker="o", sort=False, ax=ax,
                 estimator=None, markersize=4)
    oracle = curves[curves.method == "oracle"]
    if len(oracle):
        ax.scatter(oracle.layers_saved, oracle.accuracy, marker="*", s=250, color="black", label="oracle", zorder=5)
    ax.axhline(accuracy_full, ls="--", color="grey", label="full model")
    ax.axhline(accuracy_full - 0.01, ls=":", color="grey", label="full model − 1 pt")
    ax.set(xlabel="layers saved (1 − mean exit layer / L)", ylabel="accuracy", xlim=(-0.02, 1.0),
           title=_title("Accuracy vs layers saved", model, task, n))
    ax.legend(fontsize=8, loc="lower left")
    return ax


def plot_exit_layers(evaluation: Evaluation, methods: Sequence[str] | None = None, *, model: str, task: str, ax=None):
    """Distribution of exit layers per method (one histogram line per method)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    methods = [m for m in (methods or evaluation.exits) if m != "full"]
    long = pd.DataFrame([{"method": m, "exit layer": int(layer)} for m in methods for layer in evaluation.exits[m]])
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    sns.histplot(long, x="exit layer", hue="method", discrete=True, element="step", fill=False, ax=ax,
                 binrange=(0, evaluation.n_layers))
    ax.set(xlim=(0, evaluation.n_layers + 1),
           title=_title("Exit layer distribution", model, task, len(evaluation.gold)))
    return ax


def plot_speedup(table: pd.DataFrame, *, model: str, task: str, ax=None):
    """Measured wall-clock speedup next to the ideal ``L / mean exit layer``, per method."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = table[table.method != "full"].melt(id_vars=["method"], value_vars=["ideal_speedup", "measured_speedup"],
                                              var_name="speedup", value_name="× full model")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(data, x="method", y="× full model", hue="speedup", ax=ax)
    ax.axhline(1.0, color="grey", ls="--")
    n_timed = int(table.n_timed.iloc[0]) if len(table) else 0
    ax.set(title=_title(f"Wall-clock speedup (batch 1, {n_timed} prompts timed)", model, task, int(table.n.iloc[0])))
    return ax
