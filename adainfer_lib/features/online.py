"""The online features: what an exit rule may read at a layer while the model runs, named and built once.

- ``ONLINE_FEATURES``: every feature the runner computes at a checked layer (and ``feature_table`` offline);
  ``LABEL_FEATURES`` those over the label words, ``GENERATION_FEATURES`` the others (all that generation,
  which has no label words, can compute);
- ``FULL_VOCAB_FEATURES``: those that need the whole vocabulary through the LM head;
- ``UNIT_INTERVAL_FEATURES``: those in [0, 1] (a threshold on one is a stop probability);
- ``label_features(scores)``: the calibrated label-word features (``label_top_prob``, ``label_gap``, ``pred``);
- ``online_features(...)``: the features of the running rows at one checked layer, as an ``OnlineFeatures``
  mapping — the one builder, used by the runner and by generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.calibration import label_log_softmax

#: Online features that need the whole vocabulary through the LM head (a full-vocabulary lens per check).
FULL_VOCAB_FEATURES: tuple[str, ...] = ("top_prob", "gap", "entropy")
#: Online features over the label words, from the calibrated label scores.
LABEL_FEATURES: tuple[str, ...] = ("label_top_prob", "label_gap")
#: Features an exit rule may use while the model runs: nothing that needs later layers (``kl_to_final``)
#: or the gold label. The same names ``runner.run_early_exit`` computes at each checked layer.
ONLINE_FEATURES: tuple[str, ...] = ("layer", "layer_frac", *FULL_VOCAB_FEATURES, "cos_prev", *LABEL_FEATURES)
#: The online features that need no label words: what the generation loop computes at each checked layer.
GENERATION_FEATURES: tuple[str, ...] = tuple(f for f in ONLINE_FEATURES if f not in LABEL_FEATURES)
#: Online features whose values lie in [0, 1] (probabilities, gaps, depth): a threshold on one of them is a
#: stop probability. ``layer``, ``entropy`` and ``cos_prev`` are not.
UNIT_INTERVAL_FEATURES: tuple[str, ...] = ("layer_frac", "top_prob", "gap", "label_top_prob", "label_gap")
#: Every numeric feature column of ``feature_table`` (online ones plus ``kl_to_final``).
FEATURE_COLUMNS: tuple[str, ...] = ONLINE_FEATURES + ("kl_to_final",)
#: The label schemes a policy can learn (columns of the table).
LABEL_SCHEMES: tuple[str, ...] = ("consistent", "correct", "settled")


def label_features(calibrated_scores: np.ndarray) -> dict[str, np.ndarray]:
    """Label-word features from calibrated scores ``(..., C)``: probabilities are the softmax of the scores
    over the C label words; returns ``label_top_prob``, ``label_gap`` (top-1 minus top-2 probability; top-2 counts
    as 0 for a single label) and ``pred`` (argmax of the scores), each of shape ``(...)``.

    The single definition: ``feature_table`` uses it for every layer, ``online_features`` for the layer the
    model is at.
    """
    scores = np.asarray(calibrated_scores, dtype=np.float64)
    probs = np.exp(label_log_softmax(scores))
    top = -np.sort(-probs, axis=-1)
    gap = top[..., 0] - (top[..., 1] if probs.shape[-1] > 1 else 0.0)
    return {"label_top_prob": top[..., 0], "label_gap": gap, "pred": scores.argmax(-1)}


class OnlineFeatures(Mapping):
    """The online features of the B running rows at one checked layer: name -> (B,) float64 array (``pred``:
    the label decision, int). Each group of features is computed the first time one of them is read, so a
    rule pays only for the features it reads (a rule on ``label_gap`` never computes ``cos_prev``); everything
    a group needs was captured when the mapping was built, so reading later gives the same values.
    ``computed()``: the names computed so far."""

    def __init__(self, groups: Mapping[tuple[str, ...], Callable[[], Mapping[str, np.ndarray]]]):
        self._source = {name: fn for names, fn in groups.items() for name in names}
        self._values: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values.update(self._source[name]())  # KeyError for a feature not computed online
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._source

    def __iter__(self) -> Iterator[str]:
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)

    def computed(self) -> list[str]:
        return [name for name in self._source if name in self._values]


def _nan(n: int, names: tuple[str, ...]) -> Callable[[], dict[str, np.ndarray]]:
    return lambda: {name: np.full(n, np.nan) for name in names}


def _numpy(values: torch.Tensor) -> np.ndarray:
    return values.double().cpu().numpy()


def online_features(layer: int, n_layers: int, h: torch.Tensor, h_prev: torch.Tensor | None, *,
                    vocab_stats: Callable[[], Mapping[str, torch.Tensor]] | None = None,
                    label_scores: Callable[[], np.ndarray] | None = None) -> OnlineFeatures:
    """The online features of B running rows at ``layer`` (of ``n_layers``), computed when read:

    - ``layer``, ``layer_frac`` (= layer / L);
    - ``cos_prev``: the cosine between ``h`` (B, hidden), the rows' states at ``layer``, and ``h_prev`` (B,
      hidden) at ``layer - 1`` (in the states' dtype, as ``lens.trace`` computes it); NaN without ``h_prev``;
    - ``top_prob``, ``gap``, ``entropy`` from ``vocab_stats()`` (``lens.lens_stats`` with the full vocabulary:
      tensors (B,)); NaN when ``vocab_stats`` is None (the check reads label rows only);
    - ``label_top_prob``, ``label_gap`` and ``pred`` (``label_features``) from ``label_scores()``, the
      calibrated label scores (B, C); absent when ``label_scores`` is None (no label words: generation).
    """
    n = h.shape[0]

    def depth() -> dict[str, np.ndarray]:
        return {"layer": np.full(n, float(layer)), "layer_frac": np.full(n, layer / n_layers)}

    def cosine() -> dict[str, np.ndarray]:
        if h_prev is None:
            return {"cos_prev": np.full(n, np.nan)}
        return {"cos_prev": _numpy(torch.nn.functional.cosine_similarity(h, h_prev.to(h.device), dim=-1))}

    def vocab() -> dict[str, np.ndarray]:
        stats = vocab_stats()
        return {name: _numpy(stats[name]) for name in FULL_VOCAB_FEATURES}

    groups = {("layer", "layer_frac"): depth,
              FULL_VOCAB_FEATURES: _nan(n, FULL_VOCAB_FEATURES) if vocab_stats is None else vocab,
              ("cos_prev",): cosine}
    if label_scores is not None:
        groups[(*LABEL_FEATURES, "pred")] = lambda: label_features(label_scores())
    return OnlineFeatures(groups)
