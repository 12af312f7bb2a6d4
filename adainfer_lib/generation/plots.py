"""Figures of chapter 07: where each generated token exited, where tokens settle, and the threshold sweep.
Pure functions of the results; each takes the figure's title (model, task and n) from the caller."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

MARKERS = {"full": "o", "skip": "v", "propagate": "s", "recompute": "D", "speculative": "P", "settle": "*"}


def token_exits_figure(results: dict, tokenizer, *, settle_layer: np.ndarray | None = None, title: str = "",
                       max_tokens: int = 32):
    """Exit layer of each generated token (x: position, labelled with the full model's tokens), one series per
    result (name -> ``GenerationResult``, the first being the full model's), and the oracle's settling layer
    (★) of the full model's tokens. A series stops where its text has diverged from the full model's: after
    that it is generating other tokens."""
    names = list(results)
    reference = results[names[0]]
    T = min(reference.n_tokens, max_tokens)
    fig, ax = plt.subplots(figsize=(max(8, 0.36 * T + 2), 4.2))
    for offset, name in enumerate(names[1:]):
        r = results[name]
        n = min(r.n_tokens, T)
        same = np.cumprod(r.tokens[:n] == reference.tokens[:n]).astype(bool)
        x = np.arange(n) + (offset - (len(names) - 2) / 2) * 0.12
        marker = MARKERS.get(r.method, "o")
        ax.plot(x[same], r.exit_layers[:n][same], marker=marker, linestyle="-", alpha=0.85,
                label=f"{name} (same text)")
        if (~same).any():
            ax.plot(x[~same], r.exit_layers[:n][~same], marker=marker, linestyle="none", mfc="none", alpha=0.5,
                    color=ax.lines[-1].get_color(), label=f"{name} (after divergence)")
    if settle_layer is not None:
        ax.plot(np.arange(T), settle_layer[:T], marker="*", markersize=11, linestyle="none", color="black",
                label="oracle: layer where the full model's token settles")
    ax.axhline(reference.n_layers, color="grey", lw=0.8, ls=":")
    ax.set_xticks(np.arange(T))
    ax.set_xticklabels([repr(tokenizer.decode([int(t)]))[1:-1] for t in reference.tokens[:T]], rotation=70,
                       fontsize=8)
    ax.set_ylim(0, reference.n_layers + 1)
    ax.set_xlabel("generated token (the full model's)")
    ax.set_ylabel("exit layer")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def settling_figure(agrees: np.ndarray, *, title: str = ""):
    """Share of generated tokens whose logit-lens top-1 at layer l equals the full model's token (x: layer),
    from ``token_settling``'s ``agrees`` arrays stacked over tokens (tokens, L+1)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    layers = np.arange(agrees.shape[1])
    ax.plot(layers, agrees.mean(0), marker="o")
    ax.set_xlabel("layer")
    ax.set_ylabel("lens top-1 =\nfull model's token")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def sweep_figure(summary: pd.DataFrame, *, title: str = ""):
    """Two panels against layers saved (1 − mean exit layer / L), one series per cache strategy, one point
    per threshold: agreement with the full model (share of its tokens before the first divergence), and the
    full model's NLL of the generated text (the full model's own output: dashed line)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, part in summary.groupby("method", sort=False):
        part = part.sort_values("layers_saved")
        kw = dict(marker=MARKERS.get(method, "o"), label=method)
        axes[0].plot(part.layers_saved, part.agree_share, **kw)
        axes[1].plot(part.layers_saved, part.nll, **kw)
        for _, row in part.iterrows():
            axes[0].annotate(f"{row.threshold:g}", (row.layers_saved, row.agree_share), fontsize=7,
                             textcoords="offset points", xytext=(3, 3))
    axes[1].axhline(summary.nll_full.mean(), color="black", ls="--", lw=1, label="full model's output")
    axes[0].set_ylabel("tokens before first divergence\n/ full length")
    axes[1].set_ylabel("full model's NLL of the text\n(nats/token)")
    for ax in axes:
        ax.set_xlabel("layers saved (where tokens were decided)")
        ax.set_xlim(left=0)
    axes[0].set_ylim(0, 1.02)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
