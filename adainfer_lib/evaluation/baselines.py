"""Baselines that AdaInfer is compared against, all at the same budget of layers.

- **oracle**: exit at the earliest layer from which the prediction equals the full model's and stays so
  (``common.replay.oracle_exits``): an upper bound that needs the full run to know.
- **fixed**: every example exits at the same layer (the AdaInfer policy's mean depth, rounded).
- **random**: exit layers drawn at random (seeded) with the same mean depth.
- **label gap threshold**: ``rules.GapThresholdPolicy`` (the bare rule AdaInfer's classifier has to beat).
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

from ..data.calibration import Calibration, label_log_softmax
from ..model.hooks import decoder_hooks, layer_input, layer_output
from ..model.inputs import prepare_prompts
from ..model.loading import LensModel
from ..model.registry import get_submodule
from ..runner.early_exit import FullResult, run_full

# ---------------------------------------------------------------------------------------------------
# Exit layers decided without a classifier


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


# ---------------------------------------------------------------------------------------------------
# ShortGPT: Block Influence and real layer removal


def block_influence(model: LensModel, prompts: Sequence[str], *, batch_size: int = 8,
                    progress: bool = False) -> np.ndarray:
    """ShortGPT's Block Influence of every layer (L,): ``1 - mean cos(h_in, h_out)`` over all real
    (non-padding) tokens of ``prompts``. Low BI = the layer barely changes the residual stream."""
    from tqdm.auto import tqdm

    sums = torch.zeros(model.n_layers, dtype=torch.float64)
    count = 0
    running: dict[str, torch.Tensor] = {}  # the running batch's attention mask (B, S)

    def influence(index: int, args: tuple, kwargs: dict, output) -> None:
        cos = nn.functional.cosine_similarity(layer_input(args, kwargs).float(), layer_output(output).float(), dim=-1)
        sums[index] += (cos * running["mask"]).sum().double().cpu()  # over the batch's real tokens

    prepared = prepare_prompts(model, prompts, caller="block_influence", batch_size=batch_size, prefix_cache=False)
    with torch.no_grad(), decoder_hooks(model, after=influence):
        for idx in tqdm(prepared.batches, desc="block influence", disable=not progress):
            batch = prepared.batch(idx)
            running["mask"] = batch.attention_mask.float()
            count += int(batch.attention_mask.sum())
            model.hf_model(**batch.forward_kwargs(model))
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


def pruned_calibration(model: LensModel, drop: Sequence[int], calibration_prompts: Sequence[str] | None, *,
                       label_words: Sequence[str], batch_size: int = 8) -> Calibration:
    """Batch calibration of the pruned model (offsets (L-k+1, C); only the last row is used): the mean label
    log-probabilities of ``calibration_prompts`` (unlabelled train prompts); raw (zeros) when there are none.
    The full model's offsets would not fit a model with layers missing."""
    n_kept = model.n_layers - len(set(drop))
    if not calibration_prompts:
        return Calibration("raw", np.zeros((n_kept + 1, len(label_words))))
    with dropped_layers(model, drop):
        res = run_full(model, calibration_prompts, label_words=label_words, calibration="raw", batch_size=batch_size)
    return Calibration("batch", np.tile(label_log_softmax(res.label_logits).mean(0), (n_kept + 1, 1)))


@dataclass
class PrunedModel:
    """ShortGPT's pipeline in one place: ``model`` with the decoder layers ``drop`` (0-based) removed and its own
    ``calibration`` (``pruned_calibration``). ``run`` runs it dense (``run_full``) inside ``dropped_layers``."""

    model: LensModel
    drop: list[int]
    calibration: Calibration

    @classmethod
    def build(cls, model: LensModel, drop: Sequence[int], *, label_words: Sequence[str],
              calibration_prompts: Sequence[str] | None = None, batch_size: int = 8) -> PrunedModel:
        drop = sorted(set(int(i) for i in drop))
        cal = pruned_calibration(model, drop, calibration_prompts, label_words=label_words, batch_size=batch_size)
        return cls(model, drop, cal)

    @property
    def n_layers(self) -> int:
        return self.model.n_layers - len(self.drop)

    def run(self, prompts: Sequence[str], *, label_words: Sequence[str], batch_size: int = 8, prefix: str | None = None,
            progress: bool = False, distributed: bool | None = None) -> FullResult:
        with dropped_layers(self.model, self.drop):
            return run_full(self.model, prompts, label_words=label_words, calibration=self.calibration,
                            batch_size=batch_size, prefix=prefix, progress=progress, distributed=distributed)

