"""Checkers for the exercises at the end of chapters 01–04.

A student computes an answer in the notebook and calls the checker, which recomputes the reference from
the same objects and says what is wrong. Each checker returns a ``Feedback`` (truthy when correct) that
prints as one line. Reference solutions live in ``notebooks/solutions/``; the tests run every checker
against its solution and against a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .task_trace import TaskTrace


@dataclass(frozen=True)
class Feedback:
    """The verdict of a checker: ``ok`` and a message that says what is right or wrong."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return ("✅ " if self.ok else "❌ ") + self.message

    def _repr_markdown_(self) -> str:
        return str(self)


def _close(answer: object, reference: float, tol: float) -> bool:
    """``answer`` is a number within ``tol`` of ``reference`` (anything else, e.g. ``...``, is not)."""
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(value) and abs(value - reference) <= tol)


# ---- chapter 01 -------------------------------------------------------------------------------------


def first_layer_reaching(tt: TaskTrace, fraction: float = 0.9) -> int:
    """Reference: the first layer whose accuracy is at least ``fraction`` of the final layer's."""
    accuracy = tt.accuracy_by_layer()
    return int(np.argmax(accuracy >= fraction * accuracy[-1]))


def check_01_first_layer_reaching(tt: TaskTrace, answer: int, fraction: float = 0.9) -> Feedback:
    """Exercise 01.1: the first layer that reaches ``fraction`` of the final accuracy."""
    reference = first_layer_reaching(tt, fraction)
    accuracy = tt.accuracy_by_layer()
    if answer == reference:
        return Feedback(True, f"layer {reference} is the first with accuracy ≥ {fraction:.0%} of the final "
                              f"{accuracy[-1]:.3f} ({accuracy[reference]:.3f}, {tt.task_name}, n={tt.n_examples}).")
    if not isinstance(answer, (int, np.integer)) or not 0 <= answer <= tt.n_layers:
        return Feedback(False, f"answer a layer number between 0 and {tt.n_layers}, got {answer!r}.")
    if accuracy[answer] < fraction * accuracy[-1]:
        return Feedback(False, f"layer {answer} has accuracy {accuracy[answer]:.3f} < {fraction:.0%} × "
                               f"{accuracy[-1]:.3f}: it does not reach the bar.")
    return Feedback(False, f"layer {answer} reaches the bar, but an earlier layer does too: look for the *first*.")


def check_01_raw_oracle(tt: TaskTrace, oracle_layers_saved: float, accuracy_full: float) -> Feedback:
    """Exercise 01.2: the oracle's layers saved and the full model's accuracy under *raw* decisions."""
    raw = tt.with_calibration("raw")
    saved = 1 - raw.earliest_consistent_layer().mean() / raw.n_layers
    accuracy = float((raw.final_predictions() == raw.gold).mean())
    if not _close(accuracy_full, accuracy, 1e-3):
        return Feedback(False, f"the raw accuracy is off (got {accuracy_full!r}); use "
                               "tt.with_calibration('raw').final_predictions() against tt.gold.")
    if not _close(oracle_layers_saved, saved, 1e-3):
        return Feedback(False, f"the oracle saving is off (got {oracle_layers_saved!r}); it is "
                               "1 - mean(earliest consistent layer) / L with raw decisions.")
    return Feedback(True, f"raw decisions: accuracy {accuracy:.3f}, oracle saves {saved:.1%} of layers. A near-"
                          "constant final prediction makes early layers 'consistent' for free.")


def flips_back(tt: TaskTrace, example: int) -> bool:
    """True when ``example`` already predicts the final label at some layer before its earliest consistent
    layer, then changes its mind again (stopping at the first agreement would have been wrong)."""
    preds = tt.predictions()[example]
    earliest = tt.earliest_consistent_layer()[example]
    return bool(np.any(preds[:earliest] == preds[-1]))


def check_01_flip_example(tt: TaskTrace, example: int) -> Feedback:
    """Exercise 01.3: an example that agrees with the final answer early, then flips away and back."""
    if not isinstance(example, (int, np.integer)) or not 0 <= example < tt.n_examples:
        return Feedback(False, f"answer an example index between 0 and {tt.n_examples - 1}, got {example!r}.")
    if flips_back(tt, example):
        preds = tt.predictions()[example]
        first = int(np.argmax(preds == preds[-1]))
        return Feedback(True, f"example {example} first agrees with the final answer at layer {first}, but only "
                              f"settles at layer {tt.earliest_consistent_layer()[example]}.")
    return Feedback(False, f"example {example} never agrees with its final answer before its earliest consistent "
                           "layer: stopping at its first agreement would have been right.")
