"""Calibrated label decisions at every layer (raw, contextual, batch).

Small models lean towards one label word, so the raw argmax over label logits is often a constant
prediction. Calibration subtracts, at each layer, a per-label offset from the label log-probabilities
(log-softmax over the label words):
- ``raw``: no offset;
- ``contextual`` (Zhao et al. 2021): the log-probabilities of a content-free input ("N/A") in the same prompt;
- ``batch`` (Zhou et al. 2023): the mean log-probabilities over unlabelled train inputs (the default).
Offsets are fitted on the train split only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common.numerics import log_softmax

CALIBRATION_METHODS = ("raw", "contextual", "batch")
DEFAULT_CALIBRATION = "batch"


def label_log_softmax(label_logits: np.ndarray) -> np.ndarray:
    """Log-probabilities renormalised over the label words (last axis): ``scipy.special.log_softmax``'s values
    (``common.numerics.log_softmax``: the same arithmetic without scipy's dispatch, which an exit check pays
    twice per checked layer)."""
    return log_softmax(label_logits)


@dataclass(frozen=True)
class Calibration:
    """Per-layer offsets ``(L+1, C)`` subtracted from the label log-probabilities."""

    method: str
    offsets: np.ndarray

    def apply(self, label_logits: np.ndarray, layer: int | None = None) -> np.ndarray:
        """Calibrated scores: ``(..., L+1, C) -> (..., L+1, C)``, or ``(..., C) -> (..., C)`` at ``layer``."""
        offsets = self.offsets if layer is None else self.offsets[layer]
        return label_log_softmax(np.asarray(label_logits, dtype=np.float64)) - offsets

    def to_dict(self) -> dict:
        return {"method": self.method, "offsets": self.offsets.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(data["method"], np.asarray(data["offsets"], dtype=np.float64))


def fit_calibration(method: str, *, unlabelled: np.ndarray | None = None, content_free: np.ndarray | None = None,
                    n_layers: int | None = None, n_labels: int | None = None) -> Calibration:
    """Fit ``method`` from label logits of unlabelled train inputs ``(n, L+1, C)`` (batch) or of content-free
    inputs ``(m, L+1, C)`` (contextual; averaged over m); ``raw`` needs only the shape."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"Unknown calibration {method!r}; choose one of {CALIBRATION_METHODS}.")
    source = {"batch": unlabelled, "contextual": content_free}.get(method)
    if method == "raw":
        if unlabelled is not None:
            n_layers, n_labels = unlabelled.shape[1] - 1, unlabelled.shape[2]
        if n_layers is None or n_labels is None:
            raise ValueError("raw calibration needs n_layers and n_labels (or unlabelled logits for the shape)")
        return Calibration("raw", np.zeros((n_layers + 1, n_labels)))
    if source is None or len(source) == 0:
        raise ValueError(f"{method} calibration needs {'unlabelled' if method == 'batch' else 'content_free'} label "
                         f"logits")
    return Calibration(method, label_log_softmax(np.asarray(source, dtype=np.float64)).mean(axis=0))
