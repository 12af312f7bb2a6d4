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
label words, calibration method and offsets, n_layers) — plain JSON-able values only.

Helpers for studying features: ``per_layer_auc``, ``split_by_example`` / ``group_folds`` (never split one
example's layers across train and test), ``feature_correlations``, ``permutation_importance_table``, and
``synthetic_table`` (a fast stand-in with the same columns, for tests and exercises).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..common.replay import n_layers_of, oracle_exits, settled_mask
from ..data.calibration import label_log_softmax

#: Features an exit rule may use while the model runs: nothing that needs later layers (``kl_to_final``)
#: or the gold label. The same names ``early_exit.run_early_exit`` computes at each checked layer.
ONLINE_FEATURES: tuple[str, ...] = ("layer", "layer_frac", "top_prob", "gap", "entropy", "cos_prev",
                                    "label_top_prob", "label_gap")
#: Online features whose values lie in [0, 1] (probabilities, gaps, depth): a threshold on one of them is a
#: stop probability. ``layer``, ``entropy`` and ``cos_prev`` are not.
UNIT_INTERVAL_FEATURES: tuple[str, ...] = ("layer_frac", "top_prob", "gap", "label_top_prob", "label_gap")
#: Online features that need the whole vocabulary through the LM head (a full-vocabulary lens per check).
FULL_VOCAB_FEATURES: tuple[str, ...] = ("top_prob", "gap", "entropy")
#: Every numeric feature column of ``feature_table`` (online ones plus ``kl_to_final``).
FEATURE_COLUMNS: tuple[str, ...] = ONLINE_FEATURES + ("kl_to_final",)
#: The label schemes a policy can learn (columns of the table).
LABEL_SCHEMES: tuple[str, ...] = ("consistent", "correct", "settled")


def label_features(calibrated_scores: np.ndarray) -> dict[str, np.ndarray]:
    """Label-word features from calibrated scores ``(..., C)``: probabilities are the softmax of the scores
    over the C label words; returns ``label_top_prob``, ``label_gap`` (top-1 minus top-2 probability; top-2 counts
    as 0 for a single label) and ``pred`` (argmax of the scores), each of shape ``(...)``.

    The single definition: ``feature_table`` uses it for every layer, ``early_exit`` for the layer it is at.
    """
    scores = np.asarray(calibrated_scores, dtype=np.float64)
    probs = np.exp(label_log_softmax(scores))
    top = -np.sort(-probs, axis=-1)
    gap = top[..., 0] - (top[..., 1] if probs.shape[-1] > 1 else 0.0)
    return {"label_top_prob": top[..., 0], "label_gap": gap, "pred": scores.argmax(-1)}


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
        "n_layers": int(L),
        "n_examples": int(n),
        "full_vocab": bool(tr.meta.get("full_vocab", not np.isnan(tr.top_prob).all())),
        "label_words": list(tr.label_words),
        "label_names": list(tt.label_names),
        "calibration": tt.calibration.to_dict(),
    })
    return table


def describe(table: pd.DataFrame) -> str:
    """``"<model>, <task>, n=<examples>"`` for figure titles and reports."""
    return f"{table.attrs.get('model', '?')}, {table.attrs.get('task', '?')}, n={table['example'].nunique()}"


# ---------------------------------------------------------------------------------------------------
# Studying features


def per_layer_auc(table: pd.DataFrame, feature: str | Sequence[str], label: str = "consistent") -> pd.DataFrame:
    """ROC AUC of ``feature`` (higher = more likely positive) for ``label`` at each layer separately.

    Returns columns ``feature``, ``layer``, ``auc`` (NaN where a layer has one class only or the feature
    is NaN), ``n``, ``positive_rate``. AUC 0.5 = the feature says nothing about the label at that layer.
    """
    from sklearn.metrics import roc_auc_score

    features = [feature] if isinstance(feature, str) else list(feature)
    rows = []
    for name in features:
        for layer, part in table.groupby("layer", sort=True):
            y = part[label].to_numpy().astype(bool)
            x = part[name].to_numpy(dtype=np.float64)
            ok = np.isfinite(x)
            auc = np.nan
            if ok.any() and 0 < y[ok].sum() < ok.sum():
                auc = float(roc_auc_score(y[ok], x[ok]))
            rows.append({"feature": name, "layer": int(layer), "auc": auc, "n": int(ok.sum()),
                         "positive_rate": float(y.mean())})
    return pd.DataFrame(rows)


def feature_auc(table: pd.DataFrame, features: Sequence[str], label: str = "settled", *,
                min_layer: int = 1) -> pd.DataFrame:
    """ROC AUC of each feature for ``label`` pooled over the decision layers ``min_layer <= layer < L`` —
    what one threshold on that feature, applied at every layer, has to work with. Columns ``feature``,
    ``auc`` (below 0.5: lower values mean "stop", e.g. entropy), ``n``; sorted by |auc − 0.5|."""
    from sklearn.metrics import roc_auc_score

    L = n_layers_of(table)
    part = table[(table["layer"] >= min_layer) & (table["layer"] < L)]
    y = part[label].to_numpy().astype(bool)
    rows = []
    for name in features:
        x = part[name].to_numpy(dtype=np.float64)
        ok = np.isfinite(x)
        auc = float(roc_auc_score(y[ok], x[ok])) if ok.any() and 0 < y[ok].sum() < ok.sum() else np.nan
        rows.append({"feature": name, "auc": auc, "n": int(ok.sum())})
    out = pd.DataFrame(rows)
    return out.iloc[np.argsort(-np.abs(out["auc"].fillna(0.5).to_numpy() - 0.5), kind="stable")].reset_index(drop=True)


def lens_check_cost(model, label_words: Sequence[str], *, context: str = "Answer:", batch: int = 1,
                    repeats: int = 30) -> pd.DataFrame:
    """Measured seconds of one exit check at one layer (``lens.lens_stats`` on ``batch`` states): with the
    full vocabulary through the LM head (needed for top_prob, gap, entropy) vs the label-word rows only.
    Median of ``repeats`` timings after one warm-up; also the cost relative to the label-only check. The
    label words are resolved as the tokens that follow ``context`` (a prompt's end, e.g. ``task.prompts()[0]``)."""
    import time

    import torch

    from ..model.lens import lens_stats

    device = model.lens_device  # where the lens computes (the final norm's device; offloaded models included)
    ids = torch.tensor(model.label_token_ids(list(label_words), context), dtype=torch.long, device=device)
    hidden = model.hf_model.config.hidden_size
    dtype = next(model.hf_model.parameters()).dtype
    states = torch.randn(batch, hidden, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if states.is_cuda else (lambda: None)  # time the kernels, not their launch
    rows = []
    for full in (True, False):
        times = []
        with torch.no_grad():
            for i in range(repeats + 1):
                sync()
                t0 = time.perf_counter()
                lens_stats(model, states, ids, full_vocab=full, top_k=1)
                sync()
                if i:
                    times.append(time.perf_counter() - t0)
        rows.append({"check": "full vocabulary" if full else "label words only",
                     "vocab rows": model.vocab_size if full else len(ids), "batch": batch,
                     "seconds (median)": float(np.median(times))})
    out = pd.DataFrame(rows)
    out["× label-only"] = out["seconds (median)"] / out["seconds (median)"].iloc[-1]
    return out


def split_by_example(table: pd.DataFrame, test_size: float = 0.25, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) tables with every example's layers on one side only (``GroupShuffleSplit``,
    groups = ``example``). Use it to hold out examples *within* one traced split; the notebooks fit on the
    task's train split and test on its test split, which are different examples by construction."""
    from sklearn.model_selection import GroupShuffleSplit

    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train_idx, test_idx = next(splitter.split(table, groups=table["example"]))
    return table.iloc[train_idx].copy(), table.iloc[test_idx].copy()


def group_folds(table: pd.DataFrame, n_splits: int = 5):
    """``GroupKFold`` folds over examples: a list of (train row positions, test row positions)."""
    from sklearn.model_selection import GroupKFold

    return list(GroupKFold(n_splits=n_splits).split(table, groups=table["example"]))


def feature_correlations(table: pd.DataFrame, features: Sequence[str] | None = None, *,
                         method: str = "spearman", layers: Sequence[int] | None = None) -> pd.DataFrame:
    """Correlation matrix of ``features`` over the rows (optionally only ``layers``); all-NaN features
    (e.g. full-vocabulary ones of a label-only trace) are dropped."""
    features = list(features or [f for f in FEATURE_COLUMNS if f != "layer"])
    part = table if layers is None else table[table["layer"].isin(list(layers))]
    part = part[features].astype(np.float64)
    return part.loc[:, part.notna().any()].corr(method=method)


class _FixedRows:
    """Adapter for permutation importance: scores a matrix of ``features`` columns while the table's other
    columns (``example``, ``layer``, labels) stay as they are, so a sequence model still sees sequences."""

    def __init__(self, policy, table: pd.DataFrame, features: Sequence[str]):
        self.policy, self.table, self.features = policy, table, list(features)

    def fit(self, X, y=None):  # pragma: no cover - permutation_importance never fits
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        frame = self.table.copy()
        frame[self.features] = np.asarray(X, dtype=np.float64)
        return self.policy.predict_proba(frame)


def permutation_importance_table(policy, table: pd.DataFrame, *, label: str | None = None, n_repeats: int = 5,
                                 seed: int = 0, scoring: str = "roc_auc") -> pd.DataFrame:
    """Permutation importance (``sklearn.inspection.permutation_importance``) of each of a *fitted*
    policy's features on ``table``: how much the score drops when one feature's values are shuffled across
    rows. ``scoring``: ``"roc_auc"`` of the stop probability for ``label`` (default: the policy's label
    scheme) or ``"accuracy"`` of ``predict``. Rows are the policy's decision layers (min_layer..L-1).
    Returns ``feature``, ``importance_mean``, ``importance_std``, ``baseline`` sorted by importance."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import accuracy_score, roc_auc_score

    features = list(policy.features_)
    label = label or policy.label_scheme
    part = policy.decision_rows(table)
    y = part[label].to_numpy().astype(int)
    threshold = policy.threshold

    def score(estimator, X, y_true):
        proba = estimator.predict_proba(X)[:, 1]
        if scoring == "roc_auc":
            return roc_auc_score(y_true, proba)
        if scoring == "accuracy":
            return accuracy_score(y_true, proba >= threshold)
        raise ValueError(f"scoring must be 'roc_auc' or 'accuracy', not {scoring!r}")

    adapter = _FixedRows(policy, part, features)
    X = part[features].to_numpy(dtype=np.float64)
    result = permutation_importance(adapter, X, y, scoring=score, n_repeats=n_repeats, random_state=seed)
    return pd.DataFrame({
        "feature": features,
        "importance_mean": result.importances_mean,
        "importance_std": result.importances_std,
        "baseline": score(adapter, X, y),
    }).sort_values("importance_mean", ascending=False, ignore_index=True)


# ---------------------------------------------------------------------------------------------------
# A synthetic table (tests, exercises)


def synthetic_table(n_examples: int = 60, n_layers: int = 12, *, n_labels: int = 2, seed: int = 0,
                    noise: float = 0.15) -> pd.DataFrame:
    """A fake ``feature_table`` with the same columns and attrs, fast to build.

    Each example "settles" on its final answer at a random layer; before it the layer decisions are random,
    after it they equal the final one. ``label_gap``/``label_top_prob``/``gap``/``top_prob`` rise after the
    settling layer (plus ``noise``), so the features are informative about ``consistent`` and ``settled``.
    """
    rng = np.random.default_rng(seed)
    n, L = n_examples, n_layers
    layers = np.arange(L + 1)
    settle = rng.integers(1, L + 1, size=n)  # layer at which the answer settles (<= L)
    final = rng.integers(0, n_labels, size=n)
    gold = np.where(rng.random(n) < 0.8, final, rng.integers(0, n_labels, size=n))
    early = rng.integers(0, n_labels, size=(n, L + 1))
    preds = np.where(layers[None, :] >= settle[:, None], final[:, None], early)
    after = (layers[None, :] >= settle[:, None]).astype(float)
    depth = layers[None, :] / L
    signal = 0.55 * after + 0.25 * depth
    label_gap = np.clip(signal + noise * rng.standard_normal((n, L + 1)), 0, 1)
    gap = np.clip(0.8 * signal + noise * rng.standard_normal((n, L + 1)), 0, 1)
    cos = np.clip(0.7 + 0.25 * depth + 0.05 * rng.standard_normal((n, L + 1)), -1, 1)
    cos[:, 0] = np.nan
    columns = {
        "layer_frac": np.tile(layers / L, n),
        "top_prob": np.clip(gap + 0.1 + 0.05 * rng.random((n, L + 1)), 0, 1),
        "gap": gap,
        "entropy": np.clip(6 * (1 - signal) + noise * rng.standard_normal((n, L + 1)), 0, None),
        "kl_to_final": np.clip(3 * (1 - after) * (1 - depth), 0, None),
        "cos_prev": cos,
        "label_top_prob": np.clip((1 + label_gap) / 2, 0, 1),
        "label_gap": label_gap,
        **_decision_columns(preds, gold),
    }
    table = _table(columns, n, L + 1)
    table.attrs.update({"model": "synthetic", "model_cache_id": "synthetic-0", "task": "synthetic",
                        "split": "synthetic", "n_layers": L, "n_examples": n, "full_vocab": True,
                        "label_words": [f" l{c}" for c in range(n_labels)],
                        "label_names": [f"l{c}" for c in range(n_labels)],
                        "calibration": {"method": "raw", "offsets": np.zeros((L + 1, n_labels)).tolist()}})
    return table
