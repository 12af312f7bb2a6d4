"""Per-layer features of a traced task, as one tidy table: ``feature_table(task_trace)``.

One row per example × layer (layers 0..L) with

- ``example``, ``layer``, ``layer_frac`` (= layer / L);
- full-vocabulary lens statistics (the paper's features): ``top_prob``, ``gap`` (top-1 minus top-2
  probability over the whole vocabulary), ``entropy`` — NaN when the task was traced with
  ``full_vocab=False``;
- ``kl_to_final`` (KL(p_l || p_L): needs the last layer, so it is *not* an online feature) and ``cos_prev``
  (cosine between h_l and h_{l-1}; NaN at layer 0 — exit policies fill it with 0, see ``policy.py``);
- task-aware features over the label words, from the **calibrated** scores (the same calibration that
  makes the decision): ``label_top_prob``, ``label_gap``;
- decisions and labels: ``pred`` (calibrated label decision at this layer), ``final_pred`` (at layer L),
  ``gold``, and the label schemes ``consistent`` (pred == final_pred), ``correct`` (pred == gold),
  ``settled`` (pred == final_pred at this layer *and every later one*: "consistent from here on"), plus
  ``oracle_exit`` (the example's earliest settled layer, ``TaskTrace.earliest_consistent_layer``).

The table's ``attrs`` carry what a policy fitted on it must remember (model and its cache id, task,
label words, calibration method and offsets, n_layers, the ``reader`` of the label scores: ``"logit_lens"``
or a learned reader's id, ``readers``) — plain JSON-able values only.

The label features and decisions come from ``task_trace.scores()``: for a ``readers.ReaderTrace`` they are a
learned reader's (probe, tuned lens) instead of the lens's, and every column and rule downstream reads them
the same way.

The helpers for studying features are in ``study.py``, the online feature names in ``online.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..common.replay import oracle_exits, settled_mask
from .online import label_features


def _table(columns: dict[str, np.ndarray], n: int, layers: int) -> pd.DataFrame:
    return pd.DataFrame({"example": np.repeat(np.arange(n), layers), "layer": np.tile(np.arange(layers), n),
                         **{k: np.asarray(v).reshape(-1) for k, v in columns.items()}})


def _decision_columns(preds: np.ndarray, gold: np.ndarray) -> dict[str, np.ndarray]:
    n, layers = preds.shape
    settled = settled_mask(preds)
    return {
        "pred": preds,
        "final_pred": np.repeat(preds[:, -1:], layers, axis=1),
        "gold": np.repeat(np.asarray(gold)[:, None], layers, axis=1),
        "consistent": preds == preds[:, -1:],
        "correct": preds == np.asarray(gold)[:, None],
        "settled": settled,
        "oracle_exit": np.repeat(oracle_exits(preds)[:, None], layers, axis=1),
    }


def feature_table(task_trace) -> pd.DataFrame:
    """One row per example × layer of ``task_trace`` (a ``TaskTrace``): see the module docstring for the
    columns. Rows are ordered by example, then layer; ``attrs`` hold the fitting metadata.

    ``TypeError`` for anything but a ``TaskTrace`` (a bare ``LayerTrace`` has no gold labels or calibration:
    wrap it, or use ``trace_task``); ``ValueError`` for a trace without label words (every decision and label
    feature is over the label words)."""
    if not all(hasattr(task_trace, a) for a in ("trace", "gold", "scores", "calibration")):
        raise TypeError(f"feature_table takes a TaskTrace (trace_task(model, task), or TaskTrace(trace, gold, "
                        f"calibrations, ...)), not a {type(task_trace).__name__}")
    if not task_trace.trace.label_words:
        raise ValueError("feature_table needs a trace with label words (trace(model, prompts, label_words=...)): "
                         "decisions, label features and labels are all over the label words")
    tt = task_trace
    tr = tt.trace
    n, L = tt.n_examples, tt.n_layers
    layers = L + 1
    label = label_features(tt.scores())  # (n, L+1) each
    columns = {
        "layer_frac": np.tile(np.arange(layers) / L, n),
        "top_prob": tr.top_prob, "gap": tr.gap, "entropy": tr.entropy,
        "kl_to_final": tr.kl_to_final, "cos_prev": tr.cos_prev,
        "label_top_prob": label["label_top_prob"], "label_gap": label["label_gap"],
        **_decision_columns(label["pred"], tt.gold),
    }
    for name in ("top_prob", "gap", "entropy", "kl_to_final", "cos_prev"):
        columns[name] = np.asarray(columns[name], dtype=np.float64)
    table = _table(columns, n, layers)
    table.attrs.update({
        "model": tr.model_name,
        "model_cache_id": tr.meta.get("model_cache_id"),
        "weights": tr.meta.get("weights"),
        "task": tt.task_name,
        "split": getattr(tt, "split", None),
        "prompts_key": tr.meta.get("prompts_key"),  # which prompts (content hash): a policy records its train set
        "n_layers": int(L),
        "n_examples": int(n),
        "full_vocab": bool(tr.meta.get("full_vocab", not np.isnan(tr.top_prob).all())),
        "label_words": list(tr.label_words),
        "label_names": list(tt.label_names),
        "calibration": tt.calibration.to_dict(),
        "reader": str(getattr(tt, "reader", "logit_lens")),
    })
    return table


def describe(table: pd.DataFrame) -> str:
    """``"<model>, <task>, n=<examples>"`` for figure titles and reports."""
    return f"{table.attrs.get('model', '?')}, {table.attrs.get('task', '?')}, n={table['example'].nunique()}"
