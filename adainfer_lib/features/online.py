"""The online features: what an exit rule may read at a layer while the model runs, named once.

- ``ONLINE_FEATURES``: every feature the runner computes at a checked layer (and ``feature_table`` offline);
- ``FULL_VOCAB_FEATURES``: those that need the whole vocabulary through the LM head;
- ``UNIT_INTERVAL_FEATURES``: those in [0, 1] (a threshold on one is a stop probability);
- ``label_features(scores)``: the calibrated label-word features (``label_top_prob``, ``label_gap``, ``pred``).
"""

from __future__ import annotations

import numpy as np

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
