"""Baselines that AdaInfer is compared against, all at the same budget of layers.

- **oracle**: exit at the earliest layer from which the prediction equals the full model's and stays so
  (``TaskTrace.earliest_consistent_layer``): an upper bound that needs the full run to know.
- **fixed**: every example exits at the same layer (the AdaInfer policy's mean depth, rounded).
- **random**: exit layers drawn at random (seeded) with the same mean depth.
- **label gap threshold**: exit at the first layer whose calibrated label gap reaches a threshold (the bare
  rule AdaInfer's classifier has to beat; also the stand-in policy when no fitted ``ExitPolicy`` exists).
- **ShortGPT layer dropping** (Men et al. 2024): static pruning by Block Influence
  ``BI_i = 1 - mean_t cos(h_in_t, h_out_t)`` of layer ``i`` over the tokens of train prompts; the ``k``
  least influential layers are really removed from the model (``dropped_layers``) and it runs dense.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..data.calibration import label_log_softmax
from ..common.checks import check_choice, check_min_layer, check_threshold
from ..exits.runner import FullResult, run_full
from ..model.inputs import prepare_prompts
from ..model.loading import LensModel
from ..model.registry import get_submodule


# ---------------------------------------------------------------------------------------------------
# Exit layers decided without a classifier


def first_exit(stop_scores: np.ndarray, threshold: float, min_layer: int = 1) -> np.ndarray:
    """The stopping rule on a whole trajectory: ``stop_scores`` (n, L+1) -> exit layer (n,), the first layer
    ``>= min_layer`` whose score is ``>= threshold``, else L."""
    scores = np.asarray(stop_scores, dtype=np.float64)
    L = scores.shape[1] - 1
    ok = scores >= threshold
    ok[:, : max(min_layer, 0)] = False
    ok[:, L] = True
    return ok.argmax(1)


def oracle_exit_layers(task_trace) -> np.ndarray:
    """Earliest consistent layer per example (n,): the oracle's exits (needs the full run)."""
    return np.asarray(task_trace.earliest_consistent_layer())


def fixed_exit_layer(mean_layer: float, n_layers: int) -> int:
    """The fixed exit layer with (as nearly as an integer allows) the given mean depth."""
    return int(np.clip(round(float(mean_layer)), 0, n_layers))


def random_exit_layers(n: int, mean_layer: float, n_layers: int, *, seed: int = 0, min_layer: int = 1) -> np.ndarray:
    """``n`` random exit layers in ``[min_layer, L]`` whose expected mean is ``mean_layer``: uniform on an
    interval centred on it (as wide as the bounds allow), then randomly rounded so the mean is kept."""
    rng = np.random.default_rng(seed)
    m = float(np.clip(mean_layer, min_layer, n_layers))
    half = min(n_layers - m, m - min_layer)
    x = rng.uniform(m - half, m + half, size=n)
    layers = np.floor(x + rng.random(n)).astype(int)
    return np.clip(layers, min_layer, n_layers)


def label_feature_array(task_trace, name: str = "label_gap") -> np.ndarray:
    """A calibrated label feature (``label_gap`` / ``label_top_prob``) at every layer: (n, L+1)."""
    from ..exits.runner import _label_features

    scores = task_trace.scores()
    n, layers, c = scores.shape
    return np.asarray(_label_features(scores.reshape(n * layers, c))[name], dtype=np.float64).reshape(n, layers)


@dataclass
class GapThresholdPolicy:
    """Exit at the first layer ``>= min_layer`` whose calibrated label gap (top-1 minus top-2 label
    probability) is ``>= threshold``. Its "stop probability" is the gap itself. Duck-types ``ExitPolicy``
    for ``run_early_exit`` (label rows only: the cheapest check there is).

    ``ValueError`` at construction for ``threshold`` outside [0, 1.01], ``min_layer`` not an integer >= 0, or
    ``feature`` other than ``label_gap`` / ``label_top_prob``; ``run_early_exit`` refuses a ``min_layer``
    beyond the model's L (``check_layers``)."""

    threshold: float = 0.4
    min_layer: int = 1
    calibration: object = None  # Calibration or offsets (L+1, C)
    label_words: list[str] | None = None
    feature: str = "label_gap"
    needs_full_vocab: bool = False

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        check_min_layer(self.min_layer)
        check_choice(self.feature, "feature", ("label_gap", "label_top_prob"))

    def check_layers(self, n_layers: int | None, n_examples: int | None = None) -> None:
        """``ValueError`` when ``min_layer`` is beyond the model's L (``n_layers``; None: not checked)."""
        if n_layers is not None:
            check_min_layer(self.min_layer, n_layers)

    @property
    def features(self) -> list[str]:
        return [self.feature]

    def stop_proba_online(self, features: dict, layer: int, history=None) -> np.ndarray:
        return np.asarray(features[self.feature], dtype=np.float64)

    def exit_layers(self, data) -> np.ndarray:
        """Exit layers (n,) from a ``TaskTrace`` or a feature table (rows example x layer)."""
        if hasattr(data, "scores"):
            scores = label_feature_array(data, self.feature)
        else:
            wide = data.pivot(index="example", columns="layer", values=self.feature).sort_index(axis=1)
            scores = wide.to_numpy()
        return first_exit(scores, self.threshold, self.min_layer)

    @classmethod
    def fit(cls, task_trace, *, max_drop: float = 0.01, min_layers: Sequence[int] | None = None,
            thresholds: Sequence[float] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))) -> GapThresholdPolicy:
        """Grid search on ``task_trace`` (a trace of the *train* split) over ``thresholds`` x ``min_layers``
        (default 1..L-1): the pair that saves the most layers while its accuracy stays within ``max_drop``
        of the full model's (ties: the more accurate). A larger ``min_layer`` also skips the checks below it."""
        gaps = label_feature_array(task_trace)
        preds = task_trace.predictions()
        gold = np.asarray(task_trace.gold)
        L = task_trace.n_layers
        full = float(np.mean(preds[:, -1] == gold))
        rows = np.arange(len(gold))
        best = (0.0, full, max(thresholds), 1)  # (layers saved, accuracy, threshold, min_layer)
        for m in (range(1, L) if min_layers is None else min_layers):
            for t in sorted(thresholds):
                exits = first_exit(gaps, t, m)
                acc = float(np.mean(preds[rows, exits] == gold))
                saved = 1 - float(np.mean(exits)) / L
                if acc >= full - max_drop - 1e-12 and (saved, acc) > best[:2]:
                    best = (saved, acc, t, m)
        return cls(threshold=float(best[2]), min_layer=int(best[3]), calibration=task_trace.calibration,
                   label_words=list(task_trace.trace.label_words))


# ---------------------------------------------------------------------------------------------------
# ShortGPT: Block Influence and real layer removal


def block_influence(model: LensModel, prompts: Sequence[str], *, batch_size: int = 8, progress: bool = False) -> np.ndarray:
    """ShortGPT's Block Influence of every layer (L,): ``1 - mean cos(h_in, h_out)`` over all real
    (non-padding) tokens of ``prompts``. Low BI = the layer barely changes the residual stream."""
    from tqdm.auto import tqdm

    L = model.n_layers
    sums = torch.zeros(L, dtype=torch.float64)
    count = 0
    state: dict = {}

    def pre(index):
        def hook(_module, args, kwargs):
            state[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def post(index):
        def hook(_module, _args, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(state.pop(index).float(), out.float(), dim=-1)  # (B, S)
            sums[index] += (cos * state["mask"]).sum().double().cpu()

        return hook

    handles = []
    for index, layer in enumerate(model.layers):
        handles.append(layer.register_forward_pre_hook(pre(index), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(index)))
    try:
        prepared = prepare_prompts(model, prompts, caller="block_influence", batch_size=batch_size, prefix_cache=False)
        with torch.no_grad():
            for idx in tqdm(prepared.batches, desc="block influence", disable=not progress):
                batch = prepared.batch(idx)
                state["mask"] = batch.attention_mask.float()
                count += int(batch.attention_mask.sum())
                model.hf_model(**batch.forward_kwargs(model))
    finally:
        for handle in handles:
            handle.remove()
    return 1.0 - (sums / max(count, 1)).numpy()


def layers_to_drop(influence: np.ndarray, k: int) -> list[int]:
    """Indices (0-based, decoder layer ``i`` produces lens layer ``i + 1``) of the ``k`` least influential
    layers, sorted."""
    k = int(np.clip(k, 0, len(influence)))
    return sorted(int(i) for i in np.argsort(influence, kind="stable")[:k])


@contextmanager
def dropped_layers(model: LensModel, drop: Sequence[int]) -> Iterator[LensModel]:
    """Run ``model`` with the decoder layers ``drop`` really removed: the model's layer list is swapped for a
    shorter ``nn.ModuleList`` (and ``config.num_hidden_layers`` / ``config.layer_types`` follow, since some
    families pick masks by ``layer_types[i]``); everything is restored on exit, also on error. Inside,
    ``model.layers`` / ``model.n_layers`` describe the pruned model."""
    drop = sorted(set(int(i) for i in drop))
    L = model.n_layers
    if any(i < 0 or i >= L for i in drop):
        raise ValueError(f"layers to drop must be in 0..{L - 1}, got {drop}")
    parent_path, _, attr = model.spec.layers.rpartition(".")
    parent = get_submodule(model.hf_model, parent_path) if parent_path else model.hf_model
    original = getattr(parent, attr)
    config = model.hf_model.config
    saved_config = {k: getattr(config, k) for k in ("num_hidden_layers", "layer_types") if hasattr(config, k)}
    kept = [i for i in range(L) if i not in drop]
    pruned = nn.ModuleList([original[i] for i in kept])
    # Attention modules address the KV cache by their ``layer_idx``: renumber them to their new position (a
    # prompt-prefix cache of the pruned model has len(kept) layers), and put the numbers back afterwards.
    indexed = [(m, position, m.layer_idx) for position, layer in enumerate(pruned) for m in layer.modules()
               if isinstance(getattr(m, "layer_idx", None), int)]
    # nn.Module.__setattr__ registers the new list as the submodule
    setattr(parent, attr, pruned)
    model.layers = pruned
    try:
        for module, position, _ in indexed:
            module.layer_idx = position
        if "num_hidden_layers" in saved_config:
            config.num_hidden_layers = len(kept)
        if saved_config.get("layer_types") is not None:
            config.layer_types = [saved_config["layer_types"][i] for i in kept]
        yield model
    finally:
        setattr(parent, attr, original)
        model.layers = original
        for module, _, original_index in indexed:
            module.layer_idx = original_index
        for k, v in saved_config.items():
            setattr(config, k, v)


def run_dropped(model: LensModel, prompts: Sequence[str], drop: Sequence[int], *, label_words: Sequence[str],
                calibration_prompts: Sequence[str] | None = None, batch_size: int = 8,
                progress: bool = False) -> FullResult:
    """The pruned model (``drop`` removed) run dense on ``prompts``. Its final-layer label scores are
    batch-calibrated with its own mean label log-probabilities over ``calibration_prompts`` (unlabelled train
    prompts; raw scores if None): the full model's offsets would not fit a model with layers missing."""
    offsets = pruned_calibration(model, drop, calibration_prompts, label_words=label_words, batch_size=batch_size)
    with dropped_layers(model, drop):
        return run_full(model, prompts, label_words=label_words, calibration=offsets, batch_size=batch_size,
                        progress=progress)


def pruned_calibration(model: LensModel, drop: Sequence[int], calibration_prompts: Sequence[str] | None, *,
                       label_words: Sequence[str], batch_size: int = 8) -> np.ndarray:
    """Batch-calibration offsets (L-k+1, C) of the pruned model (only the last row is used): the mean label
    log-probabilities of ``calibration_prompts``; zeros (raw) when there are none."""
    n_kept = model.n_layers - len(set(drop))
    if not calibration_prompts:
        return np.zeros((n_kept + 1, len(label_words)))
    with dropped_layers(model, drop):
        res = run_full(model, calibration_prompts, label_words=label_words, calibration="raw", batch_size=batch_size)
    mean = label_log_softmax(res.label_logits).mean(0)
    return np.tile(mean, (n_kept + 1, 1))
