"""Solutions to chapter 01's exercises. Each takes the objects the notebook has and returns the answer."""

from __future__ import annotations

import numpy as np


def exercise_1(tt, fraction: float = 0.9) -> int:
    """First layer whose accuracy reaches ``fraction`` of the final accuracy."""
    accuracy = tt.accuracy_by_layer()
    return int(np.flatnonzero(accuracy >= fraction * accuracy[-1])[0])


def exercise_2(tt) -> dict:
    """Oracle layers saved and full accuracy with raw (uncalibrated) decisions."""
    raw = tt.with_calibration("raw")
    return {"oracle_layers_saved": 1 - raw.earliest_consistent_layer().mean() / raw.n_layers,
            "accuracy_full": float((raw.final_predictions() == raw.gold).mean())}


def exercise_3(tt) -> int | None:
    """An example that agrees with its final answer before settling, then flips away (None if none)."""
    preds = tt.predictions()
    earliest = tt.earliest_consistent_layer()
    for example in range(tt.n_examples):
        if np.any(preds[example, : earliest[example]] == preds[example, -1]):
            return example
    return None
