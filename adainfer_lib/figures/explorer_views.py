"""Pure render functions behind the interactive exit explorer (``widgets.ExitExplorer``).

Every function here takes arrays, tables or traces and returns a DataFrame, an HTML string or a matplotlib
``Figure`` — no widgets, no model, no state — so they can be tested and reused outside the explorer:

- one input (a one-example ``LayerTrace``): ``example_table`` (its feature-table rows, calibrated the
  policy's way), ``token_frame`` / ``token_table_html`` (top-k tokens per layer, full vocabulary or label
  words), ``layer_curves_figure`` (confidence features and the stop probability across layers, threshold,
  minimum layer and exit layer marked), ``exit_summary_html`` ("exit layer: 17 / 30", predictions);
- a whole split: ``stop_and_decisions`` (P(stop) and decisions, computed once per policy),
  ``threshold_sweep_frame`` (exit layers, layers saved and accuracy for every threshold), ``exits_frame``
  (each example's exit at one threshold), ``dataset_figure`` (exit-layer histogram at the current threshold
  + the sweep) and ``dataset_summary_html``.

Figures are built with ``matplotlib.figure.Figure`` (not pyplot), so nothing is shown or kept open behind
the caller's back; ``figure_png`` turns one into PNG bytes for an ``ipywidgets.Image``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from typing import Sequence

import numpy as np
import pandas as pd

from ..common.replay import Decisions, first_exit, metrics_at, sweep
from ..data.calibration import Calibration
from ..data.task_trace import TaskTrace
from ..features.online import UNIT_INTERVAL_FEATURES
from ..features.table import feature_table
from ..model.layer_trace import LayerTrace
from .plots import visible_token

LENS_MODES = ("full", "labels")
#: Thresholds of the dataset sweep (the slider's range, 0..1 in steps of 0.01).
SWEEP_THRESHOLDS = tuple(np.round(np.linspace(0.0, 1.0, 101), 2))


# ---------------------------------------------------------------------------------------------------
# One input


def slice_trace(layer_trace: LayerTrace, example: int) -> LayerTrace:
    """Example ``example`` of ``layer_trace`` as a one-example ``LayerTrace`` (arrays (1, L+1, ...))."""
    arrays = {name: getattr(layer_trace, name)[example : example + 1]
              for name in ("top_ids", "top_probs", "top_prob", "gap", "entropy", "kl_to_final", "cos_prev",
                           "label_logits", "n_tokens")}
    return LayerTrace(model_name=layer_trace.model_name, n_layers=layer_trace.n_layers,
                      label_words=list(layer_trace.label_words), label_ids=list(layer_trace.label_ids),
                      token_strings=layer_trace.token_strings, meta=dict(layer_trace.meta), **arrays)


def example_table(layer_trace: LayerTrace, calibration: Calibration, *, gold: int | None = None,
                  task_name: str = "text", label_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Feature-table rows (L+1 rows: ``features.feature_table``) of a one-example trace, decided with
    ``calibration`` (the policy's). ``gold`` unknown (typed text) → -1, so ``correct`` is all False."""
    if layer_trace.n_examples != 1:
        raise ValueError(f"example_table takes a one-example trace, got {layer_trace.n_examples} examples")
    names = list(label_names) if label_names is not None else [w.strip() for w in layer_trace.label_words]
    one = TaskTrace(trace=layer_trace, gold=np.array([-1 if gold is None else int(gold)]),
                    calibrations={calibration.method: calibration}, task_name=task_name, label_names=names,
                    split="explorer", method=calibration.method)
    return feature_table(one)


def label_probabilities(layer_trace: LayerTrace, calibration: Calibration, example: int = 0) -> np.ndarray:
    """Calibrated label-word probabilities of one example, (L+1, C): softmax over the label words of the
    calibrated scores (what the decision and ``label_gap`` use)."""
    from scipy.special import softmax

    return softmax(calibration.apply(layer_trace.label_logits[example]), axis=-1)


def token_frame(layer_trace: LayerTrace, example: int = 0, *, lens: str = "full",
                calibration: Calibration | None = None, label_names: Sequence[str] | None = None,
                k: int = 5) -> pd.DataFrame:
    """Top tokens per layer of one example: L+1 rows (index ``layer``), columns ``token_1..k`` then
    ``prob_1..k``.

    ``lens="full"``: the logit lens over the whole vocabulary (raw tokens, at most the traced top-k).
    ``lens="labels"``: the task's label words ranked by calibrated probability (``calibration``; raw
    label-word probabilities without one), named by ``label_names`` (default: the label words).
    """
    if lens not in LENS_MODES:
        raise ValueError(f"lens must be one of {LENS_MODES}, not {lens!r}")
    if lens == "full":
        if layer_trace.top_ids.shape[2] == 0:
            raise ValueError("this trace has no full-vocabulary tokens (traced with full_vocab=False): "
                             "use lens='labels'")
        k = min(k, layer_trace.top_ids.shape[2])
        ids = layer_trace.top_ids[example, :, :k]
        probs = layer_trace.top_probs[example, :, :k].astype(np.float64)
        tokens = np.vectorize(lambda t: layer_trace.token_strings.get(int(t), "?"), otypes=[object])(ids)
    else:
        if calibration is None:
            probs_all = layer_trace.label_probs()[example].astype(np.float64)
        else:
            probs_all = label_probabilities(layer_trace, calibration, example)
        names = np.array(list(label_names) if label_names is not None else list(layer_trace.label_words), dtype=object)
        k = min(k, probs_all.shape[1])
        order = np.argsort(-probs_all, axis=1, kind="stable")[:, :k]
        probs = np.take_along_axis(probs_all, order, axis=1)
        tokens = names[order]
    data = {f"token_{i + 1}": tokens[:, i] for i in range(k)}
    data.update({f"prob_{i + 1}": probs[:, i] for i in range(k)})
    return pd.DataFrame(data, index=pd.Index(np.arange(layer_trace.n_layers + 1), name="layer"))


@lru_cache(maxsize=1)
def _blues() -> tuple[str, ...]:
    """101 hex colours of matplotlib's Blues colormap (probabilities 0.00..1.00), computed once."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["Blues"]
    return tuple(to_hex(cmap(0.05 + 0.9 * i / 100)) for i in range(101))


def _cell_colour(p: float) -> tuple[str, str]:
    """(background, text colour) of a probability cell: matplotlib's Blues colormap."""
    p = float(np.clip(p, 0.0, 1.0)) if np.isfinite(p) else 0.0
    return _blues()[int(round(100 * p))], ("#ffffff" if p > 0.55 else "#111111")


def token_table_html(frame: pd.DataFrame, *, stop_proba: np.ndarray | None = None, exit_layer: int | None = None,
                     min_layer: int | None = None, threshold: float | None = None, title: str = "") -> str:
    """An HTML table of ``token_frame`` output: one row per layer, each cell a token (``visible_token``) and
    its probability, coloured by the probability; a P(stop) column (``—`` below ``min_layer``: no check
    there, bold at or above ``threshold``) and the exit layer's row outlined and marked ``◀ exit``."""
    k = sum(c.startswith("token_") for c in frame.columns)
    head = "".join(f"<th>#{i + 1}</th>" for i in range(k))
    if stop_proba is not None:
        head += "<th>P(stop)</th>"
    rows = []
    for layer in frame.index:
        cells = []
        for i in range(k):
            token, p = frame.at[layer, f"token_{i + 1}"], float(frame.at[layer, f"prob_{i + 1}"])
            bg, fg = _cell_colour(p)
            cells.append(f'<td style="background:{bg};color:{fg};padding:1px 5px;font-family:monospace;'
                         f'white-space:pre" title="{html.escape(repr(str(token)))}">'
                         f"{html.escape(visible_token(str(token)))} <small>{p:.2f}</small></td>")
        if stop_proba is not None:
            p = float(stop_proba[layer])
            checked = min_layer is None or layer >= min_layer
            text = "—" if not checked or not np.isfinite(p) else f"{p:.2f}"
            strong = checked and threshold is not None and np.isfinite(p) and p >= threshold
            mark = " ◀ exit" if exit_layer is not None and layer == exit_layer else ""
            cells.append(f'<td style="padding:1px 5px;text-align:right">{"<b>" if strong else ""}{text}'
                         f'{"</b>" if strong else ""}{mark}</td>')
        style = "outline:2px solid #d62728;" if exit_layer is not None and layer == exit_layer else ""
        if min_layer is not None and layer < min_layer:
            style += "opacity:0.55;"
        rows.append(f'<tr style="{style}"><th style="padding:1px 5px;text-align:right">{layer}</th>'
                    f'{"".join(cells)}</tr>')
    caption = (f'<caption style="caption-side:top;text-align:left"><b>{html.escape(title)}</b></caption>'
               if title else "")
    return ('<table class="adainfer-token-table" style="border-collapse:collapse;font-size:11px;line-height:1.2">'
            f'{caption}<thead><tr><th>layer</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def curve_features(features: Sequence[str], lens: str) -> tuple[str, ...]:
    """The features ``layer_curves_figure`` draws: the policy's own inputs on the probability scale (those of
    ``UNIT_INTERVAL_FEATURES`` but ``layer_frac``), what its stop probability is computed from; for a policy
    with none of them, the lens's confidence pair (``top_prob``, ``gap`` for ``lens="full"``, ``label_top_prob``,
    ``label_gap`` for ``"labels"``). ``ValueError`` for an unknown ``lens``."""
    if lens not in LENS_MODES:
        raise ValueError(f"lens must be one of {LENS_MODES}, not {lens!r}")
    own = tuple(f for f in features if f in UNIT_INTERVAL_FEATURES and f != "layer_frac")
    return own or (("top_prob", "gap") if lens == "full" else ("label_top_prob", "label_gap"))


def layer_curves_figure(table: pd.DataFrame, stop_proba: np.ndarray, *, lens: str = "full", threshold: float,
                        min_layer: int, exit_layer: int, title: str, features: Sequence[str] = ()):
    """The policy's input features of one example across layers (``curve_features(features, lens)``: the
    policy's probability-scale ``features``, else the lens's confidence pair) with the policy's stop
    probability, the threshold (dashed), the layers below ``min_layer`` (grey) and the exit layer (red line).
    ``table``: the example's L+1 feature-table rows (``example_table``); ``stop_proba`` (L+1,). Returns a
    ``Figure``."""
    from matplotlib.figure import Figure

    names = curve_features(features, lens)
    layers = table["layer"].to_numpy()
    L = int(layers.max())
    fig = Figure(figsize=(7.2, 3.6))
    ax = fig.add_subplot()
    for name, style in zip(names, ("-", "--")):
        ax.plot(layers, table[name].to_numpy(), style, marker=".", label=name)
    p = np.where(layers >= min_layer, np.asarray(stop_proba, dtype=np.float64), np.nan)
    ax.plot(layers, p, "-", marker="o", markersize=3, color="#2ca02c", label="P(stop)")
    ax.axhline(threshold, color="#2ca02c", linestyle=":", linewidth=1, label=f"threshold {threshold:.2f}")
    if min_layer > 0:
        ax.axvspan(-0.5, min_layer - 0.5, color="0.85", alpha=0.6, linewidth=0, label="below min layer")
    ax.axvline(exit_layer, color="#d62728", linewidth=1.5, label=f"exit at {exit_layer}")
    ax.set(xlim=(-0.5, L + 0.5), ylim=(-0.02, 1.02), xlabel="layer (0 = embeddings)", ylabel="probability")
    ax.set_title(title, fontsize=9, y=1.01)  # an explicit y skips matplotlib's costly automatic title placement
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.subplots_adjust(left=0.08, right=0.76, bottom=0.14, top=0.9)  # fixed margins: tight_layout costs ~0.1 s
    return fig


def exit_summary_html(*, exit_layer: int, n_layers: int, pred_exit: int, pred_full: int,
                      label_names: Sequence[str], gold: int | None = None, stop_at_exit: float | None = None,
                      threshold: float | None = None, min_layer: int | None = None, policy_name: str = "",
                      source: str = "") -> str:
    """The verdict for one input: ``exit layer: 17 / 30`` (in an element of class ``adainfer-exit-layer``,
    which the browser test reads), layers saved, the prediction at the exit vs the full model's, and the
    gold label when known."""
    saved = n_layers - exit_layer
    details = [f"layers saved: {saved} ({saved / n_layers:.0%})"]
    if stop_at_exit is not None and np.isfinite(stop_at_exit) and exit_layer < n_layers:
        details.append(f"P(stop) at exit {stop_at_exit:.2f}")
    if threshold is not None:
        details.append(f"threshold {threshold:.2f}")
    if min_layer is not None:
        details.append(f"min layer {min_layer}")
    verdict = ("same as the full model" if pred_exit == pred_full
               else "<b style='color:#d62728'>differs from the full model</b>")
    parts = [f'<div class="adainfer-exit-layer" style="font-size:15px;font-weight:bold">'
             f"exit layer: {exit_layer} / {n_layers}</div>",
             f"<div>{' · '.join(details)}</div>",
             f"<div>prediction at the exit: <b>{html.escape(label_names[pred_exit])}</b> · "
             f"full model (layer {n_layers}): <b>{html.escape(label_names[pred_full])}</b> — {verdict}</div>"]
    if gold is not None and gold >= 0:
        ok = "✔" if pred_exit == gold else "✘"
        parts.append(f"<div>gold label: <b>{html.escape(label_names[gold])}</b> {ok}</div>")
    if policy_name or source:
        parts.append(f"<div style='color:#666;font-size:11px'>{html.escape(source)}"
                     f"{' · policy: ' + html.escape(policy_name) if policy_name else ''}</div>")
    return '<div class="adainfer-exit-summary">' + "".join(parts) + "</div>"


def message_html(text: str, *, kind: str = "error") -> str:
    """A status line (``kind``: "error" red, "info" grey) with class ``adainfer-<kind>``."""
    colour = {"error": "#b00020", "info": "#555555"}.get(kind, "#555555")
    return f'<div class="adainfer-{kind}" style="color:{colour}">{html.escape(text)}</div>'


# ---------------------------------------------------------------------------------------------------
# A whole split


@dataclass(frozen=True)
class DatasetDecisions:
    """What a threshold move needs, computed once per policy: ``stop_proba`` (n, L+1) from the policy's
    classifier and the split's ``decisions`` (``common.replay.Decisions``: calibrated label ids per layer, gold
    labels, the full model's)."""

    stop_proba: np.ndarray
    decisions: Decisions

    @property
    def n_layers(self) -> int:
        return self.decisions.n_layers


def stop_and_decisions(policy, table: pd.DataFrame) -> DatasetDecisions:
    """P(stop) of ``policy`` for every row of the feature table ``table`` (one ``stop_matrix`` call) and the
    decisions of the table's rows, as (n, L+1) matrices (examples in ascending id order)."""
    return DatasetDecisions(np.asarray(policy.stop_matrix(table), dtype=np.float64), Decisions.from_table(table))


def exits_at(decisions: DatasetDecisions, threshold: float, min_layer: int) -> np.ndarray:
    """Exit layer per example (n,) under the stopping rule (``common.replay.first_exit``)."""
    return first_exit(decisions.stop_proba, threshold, min_layer)


def exits_frame(decisions: DatasetDecisions, threshold: float, min_layer: int, label_names: Sequence[str],
                texts: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per example at this threshold and minimum layer: ``exit_layer``, ``gold``, ``at_exit`` (the
    decision at the exit), ``full_model`` (the decision at layer L), and ``text`` when ``texts`` are given."""
    exits = exits_at(decisions, threshold, min_layer)
    names, split = np.asarray(list(label_names), dtype=object), decisions.decisions
    frame = pd.DataFrame({"exit_layer": exits, "gold": names[split.gold], "at_exit": names[split.at(exits)],
                          "full_model": names[split.final]})
    if texts is not None:
        frame.insert(0, "text", list(texts))
    return frame


def threshold_sweep_frame(decisions: DatasetDecisions, min_layer: int,
                          thresholds: Sequence[float] = SWEEP_THRESHOLDS) -> pd.DataFrame:
    """One row per threshold: ``threshold``, then ``common.replay.metrics_at`` (``layers_saved`` = 1 − mean
    exit / L, ``accuracy`` at the exit vs gold, ``consistency`` vs the full model, ``full_accuracy``,
    ``mean_exit_layer``, ...)."""
    return sweep(decisions.decisions, decisions.stop_proba, [float(t) for t in thresholds], min_layer)


def dataset_figure(decisions: DatasetDecisions, sweep: pd.DataFrame, *, threshold: float, min_layer: int,
                   title: str, certified: float | None = None):
    """Two panels: the exit-layer histogram at ``threshold``, and accuracy / layers saved / consistency
    against the threshold (``sweep`` from ``threshold_sweep_frame``) with the current threshold marked (and the
    Learn-then-Test ``certified`` threshold, when given, as a dashed green line)."""
    from matplotlib.figure import Figure

    L = decisions.n_layers
    exits = exits_at(decisions, threshold, min_layer)
    fig = Figure(figsize=(11, 3.4))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.1]})
    counts = np.bincount(exits, minlength=L + 1)
    left.stairs(counts, np.arange(L + 2) - 0.5, fill=True, color="#4c72b0")  # one artist: cheaper than bar()
    left.axvline(exits.mean(), color="#d62728", linewidth=1.2, label=f"mean exit {exits.mean():.1f}")
    left.set(xlim=(-0.5, L + 0.5), xlabel="exit layer", ylabel="examples")
    left.set_title(f"exit layers at threshold {threshold:.2f}, min layer {min_layer}", fontsize=9, y=1.01)
    left.legend(fontsize=8, loc="upper left")
    t = sweep["threshold"].to_numpy()
    right.plot(t, sweep["accuracy"], label="accuracy at exit")
    right.plot(t, sweep["consistency"], "--", label="consistency with full model")
    right.plot(t, sweep["layers_saved"], label="layers saved")
    right.axhline(sweep["full_accuracy"].iloc[0], color="0.4", linestyle=":", linewidth=1, label="full-model accuracy")
    right.axvline(threshold, color="#d62728", linewidth=1.2)
    if certified is not None:
        right.axvline(certified, color="#029e73", linestyle="--", linewidth=1.2, label=f"certified {certified:.2f}")
    right.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="threshold", ylabel="share")
    right.set_title("what the threshold trades", fontsize=9, y=1.01)
    right.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.055, right=0.99, bottom=0.14, top=0.83, wspace=0.18)
    return fig


def dataset_summary_html(decisions: DatasetDecisions, *, threshold: float, min_layer: int,
                         split: str = "test split") -> str:
    """One line for the split at this threshold: mean exit layer, layers saved, accuracy vs the full
    model's, consistency (class ``adainfer-dataset-summary``)."""
    m = metrics_at(decisions.decisions, exits_at(decisions, threshold, min_layer))
    return (f'<div class="adainfer-dataset-summary">{html.escape(split)}, n={m["n"]}, threshold {threshold:.2f}, '
            f"min layer {min_layer}: mean exit layer <b>{m['mean_exit_layer']:.1f} / {m['L']}</b> · layers saved "
            f"<b>{m['layers_saved']:.0%}</b> · accuracy <b>{m['accuracy']:.3f}</b> (full model "
            f"{m['full_accuracy']:.3f}, {m['accuracy_change_pts']:+.1f} pt) · consistency {m['consistency']:.3f}</div>")


def certify_decisions(decisions: DatasetDecisions, min_layer: int, *, delta: float, epsilon: float,
                      thresholds: Sequence[float] = SWEEP_THRESHOLDS):
    """Learn-then-Test (``risk_control.learn_then_test``, disagreement, fixed sequence) of the stopping rule at
    ``min_layer`` with the split behind ``decisions`` as the calibration set; candidates: the slider's
    ``thresholds``, tested from 1.00 down. Returns a ``risk_control.Certification``."""
    from ..certification import learn_then_test, replay_decisions

    replay = replay_decisions(decisions.stop_proba, decisions.decisions, min_layer=min_layer,
                              thresholds=sorted(thresholds, reverse=True))
    return learn_then_test(replay, delta=delta, epsilon=epsilon)


def certification_html(cert, threshold: float, *, split: str = "test split", width: int = 320) -> str:
    """The threshold slider's certificate (class ``adainfer-certification``): a 0–1 scale with the certified
    thresholds shaded green, ▲ at the certified threshold and a red tick at ``threshold``; and one sentence —
    whether ``threshold`` is certified (``cert.is_certified``) for ``cert.delta`` and ``cert.epsilon``."""
    certified = [float(t) for t, ok in zip(cert.thresholds, cert.certified) if ok]
    marks = "".join(f'<div style="position:absolute;left:{width * t - 2:.0f}px;top:3px;width:4px;height:6px;'
                    'background:#8fd3b8"></div>' for t in certified)
    if cert.threshold is not None:
        marks += (f'<div class="adainfer-cert-marker" style="position:absolute;left:{width * cert.threshold - 6:.0f}px;'
                  f'top:6px;color:#029e73;font-size:11px" title="certified threshold">▲</div>')
    marks += (f'<div style="position:absolute;left:{width * float(np.clip(threshold, 0, 1)) - 1:.0f}px;top:0;'
              'width:2px;height:12px;background:#d62728" title="current threshold"></div>')
    scale = (f'<div style="position:relative;width:{width}px;height:20px;border-top:1px solid #bbb;'
             f'margin:2px 0 0 98px">'
             f'{marks}<span style="position:absolute;left:-4px;top:9px;font-size:9px;color:#777">0</span>'
             f'<span style="position:absolute;left:{width - 4}px;top:9px;font-size:9px;color:#777">1</span></div>')
    where = (f"Learn-then-Test on the {html.escape(split)} (n={cert.n}) as calibration, δ = {cert.delta:.1%}, "
             f"ε = {cert.epsilon:.0%}: ")
    if cert.threshold is None:
        what = "<b>no threshold is certified</b> (the rule should never exit early)"
    else:
        what = (f"certified threshold <b>{cert.threshold:.2f}</b> (▲; calibration disagreement "
                f"{cert.calibration_risk:.1%})")
    if cert.is_certified(threshold):
        now = f" — the current threshold {threshold:.2f} <b>is certified</b>."
    else:
        if cert.threshold is None or threshold < cert.threshold:
            why = "it exits more eagerly than any certified one"
        else:
            why = "it is not one of the tested candidates"
        now = f" — the current threshold {threshold:.2f} is <b>not certified</b> ({why})."
    return f'<div class="adainfer-certification">{scale}{where}{what}{now}</div>'


def figure_png(fig, *, dpi: int = 80) -> bytes:
    """PNG bytes of a matplotlib ``Figure`` (for ``ipywidgets.Image``)."""
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})  # fast over small
    return buffer.getvalue()
