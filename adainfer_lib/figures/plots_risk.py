"""Static figures for chapter 06 (guaranteed exits, Learn-then-Test). Seaborn; each function takes a ``title``
(use ``plots.figure_title(what, model, task, n)``) and returns the matplotlib Figure."""

from __future__ import annotations

import numpy as np
import pandas as pd

STATUS_COLOURS = {"certified": "#029e73", "failed": "#d55e00", "not tested": "#949494"}


def certification_figure(cert, *, title: str):
    """Learn-then-Test on one calibration set (a ``risk_control.Certification``), thresholds from conservative
    (left) to aggressive (right). Top: the empirical risk of every candidate, coloured by status (certified /
    failed: stopped the fixed sequence / not tested), δ dashed, the certified threshold as a vertical line, and
    the layers saved on a second axis. Bottom: the p-values (log scale) against ε."""
    import matplotlib.pyplot as plt

    frame = cert.to_frame()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    saved = top.twinx()
    saved.plot(frame.threshold, frame.layers_saved, color="#0173b2", lw=1.2, alpha=0.6)
    saved.set_ylabel("layers saved (calibration)", color="#0173b2")
    saved.set_ylim(0, max(0.05, float(frame.layers_saved.max()) * 1.15))
    saved.grid(False)
    for status, colour in STATUS_COLOURS.items():
        part = frame[frame.status == status]
        if len(part):
            top.scatter(part.threshold, part.empirical_risk, s=14, color=colour, label=f"{status} ({len(part)})",
                        zorder=3)
            bottom.scatter(part.threshold, np.clip(part.p_value, 1e-12, 1), s=10, color=colour, zorder=3)
    top.axhline(cert.delta, color="black", ls="--", lw=1, label=f"δ = {cert.delta:.1%}")
    bottom.axhline(cert.epsilon, color="black", ls="--", lw=1, label=f"ε = {cert.epsilon:.0%}")
    if cert.threshold is not None:
        for ax in (top, bottom):
            ax.axvline(cert.threshold, color=STATUS_COLOURS["certified"], lw=1.5)
        top.annotate(f"certified: {cert.threshold:g}", (cert.threshold, 0.62), xycoords=("data", "axes fraction"),
                     xytext=(-4, 0), textcoords="offset points", ha="right", va="center", rotation=90,
                     color=STATUS_COLOURS["certified"])
    top.set(ylabel=f"{cert.risk.replace('_', ' ')} (calibration, n={cert.n})", title=title)
    top.set_ylim(0, max(2.5 * cert.delta, float(frame.empirical_risk[frame.status != "not tested"].max()
                                                if (frame.status != "not tested").any() else 0) * 1.1))
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    bottom.set(yscale="log", ylabel="p-value of H₀: risk > δ", xlabel="threshold (conservative → aggressive)")
    bottom.set_ylim(max(1e-12, float(np.clip(frame.p_value, 1e-12, 1).min()) / 3), 2)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    lo, hi = float(frame.threshold.min()), float(frame.threshold.max())
    top.set_xlim(hi + 0.02 * (hi - lo or 1), lo - 0.02 * (hi - lo or 1))  # conservative on the left
    fig.tight_layout()
    return fig


def violations_figure(summary: pd.DataFrame, *, title: str):
    """Share of calibration draws whose test risk exceeded δ, per rule (``risk_control.violation_summary``),
    with ± one binomial standard error at ε, and ε as a dashed line: Learn-then-Test must stay at or below it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 0.9 + 0.55 * len(summary)))
    y = np.arange(len(summary))
    colours = ["#029e73" if r == "Learn-then-Test" else "#de8f05" for r in summary.rule]
    ax.barh(y, summary.violation_rate, xerr=summary.se, color=colours, alpha=0.85, capsize=3)
    for yi, (rate, se, saved) in enumerate(zip(summary.violation_rate, summary.se, summary.layers_saved)):
        ax.text(rate + se + 0.01, yi, f"{rate:.1%} (saves {saved:.1%})", va="center", fontsize=8)
    epsilon = float(summary.epsilon.iloc[0])
    ax.axvline(epsilon, color="black", ls="--", lw=1, label=f"ε = {epsilon:.0%}")
    right = min(1.15, max(0.3, float(summary.violation_rate.max()) + 0.25))
    ax.set(yticks=y, yticklabels=summary.rule, xlim=(0, right), title=title,
           xlabel=f"share of draws with test risk > δ = {float(summary.delta.iloc[0]):.1%} (± s.e. at ε)")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def price_figure(price: pd.DataFrame, *, title: str):
    """The price of the guarantee: layers saved (mean over draws) against the calibration size, one line per
    δ (``risk_control.price_of_guarantee``), with the oracle's saving as the ceiling."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = price.assign(δ=price["delta"].map(lambda d: f"{d:.0%}" if d * 100 == round(d * 100) else f"{d:.1%}"))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sns.lineplot(data, x="n_cal", y="layers_saved", hue="δ", marker="o", ax=ax)
    oracle = float(price["oracle_layers_saved"].iloc[0])
    ax.axhline(oracle, color="grey", ls="--", lw=1, label=f"oracle ({oracle:.1%})")
    ax.set(xscale="log", xticks=sorted(price.n_cal.unique()), xticklabels=sorted(price.n_cal.unique()),
           xlabel="calibration prompts n_cal", ylabel="layers saved (certified threshold)",
           ylim=(0, max(0.05, oracle * 1.1)), title=title)
    ax.minorticks_off()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False,
              title=f"δ (ε = {float(price.epsilon.iloc[0]):.0%})")
    fig.tight_layout()
    return fig
