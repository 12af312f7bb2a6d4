"""Solutions to chapter 01's exercises. Each takes the objects the notebook has and returns the answer."""

from __future__ import annotations

import numpy as np


def exercise_1(tt, fraction: float = 0.9) -> int:
    """First layer whose accuracy reaches ``fraction`` of the final accuracy."""
    accuracy = tt.accuracy_by_layer()
    return int(np.flatnonzero(accuracy >= fraction * accuracy[-1])[0])


def exercise_2(tt) -> dict:
    """Oracle layers saved and full accuracy with raw (uncalibrated) decisions.

    Why the oracle can look better while the model is worse: the oracle counts a layer as safe when its decision
    equals the final one. Raw decisions lean towards one label word (``most_frequent_label_share`` near 1), so
    the final decision is nearly constant and early layers that already lean the same way "agree" with it for
    free — without looking at the input. Consistency measures agreement with the full model, not correctness:
    read it beside accuracy."""
    raw = tt.with_calibration("raw")
    return {"oracle_layers_saved": 1 - raw.earliest_consistent_layer().mean() / raw.n_layers,
            "accuracy_full": float((raw.final_predictions() == raw.gold).mean())}


def exercise_3(tt) -> int:
    """The most changes of decision before settling: per example, a loop over layers 1..its earliest consistent
    layer counting the layers whose decision differs from the next one's; the largest count. Layer 0 is the
    embeddings: its label scores tie up to rounding, and no exit rule stops there."""
    preds, earliest = tt.predictions(), tt.earliest_consistent_layer()
    most = 0
    for example in range(tt.n_examples):
        changes = sum(preds[example, layer] != preds[example, layer + 1] for layer in range(1, earliest[example]))
        most = max(most, int(changes))
    return most


#: Written answers to the exercises' "why" questions (the functions above compute the numbers).
WHY = {
    2: "Raw decisions lean towards one label word (most_frequent_label_share near 1), so the final prediction is "
       "nearly constant. The oracle counts a layer as safe when its decision equals the final one and stays so; "
       "when the final answer is almost always the same word, early layers that already lean that way 'agree' "
       "without reading the input, and the oracle saves many layers. Consistency measures agreement with the full "
       "model, not correctness: read it beside accuracy — compare both with the batch-calibrated row.",
    3: "An example that changes its mind several times before it settles agrees with its final label at some layers "
       "in between: the stop label must be 'settled' (agrees from here on), not 'consistent' (agrees here) — a rule "
       "stopping at the first agreement would have been right by luck, and on another input the same luck fails.",
}
