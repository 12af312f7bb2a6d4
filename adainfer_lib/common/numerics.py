"""Softmax and log-softmax over the last axis of small NumPy arrays: scipy's arithmetic, without its dispatch.

``scipy.special.softmax`` / ``log_softmax`` check their input's array namespace on every call, which costs
more than the arithmetic on the (B, C) arrays of an online exit check — the label softmax twice per checked
layer, the CRF's stop probability once. These functions do scipy's operations in scipy's order on NumPy
arrays, so they return scipy's values bit for bit (``tests/test_calibration.py`` checks it); offline (feature
tables, replays) and online (the runner) call the same ones.
"""

from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    """``scipy.special.log_softmax(x, axis=-1)``: shift by the row maximum (0 where it is not finite), subtract
    the log of the sum of exponentials. Same shape and dtype as ``x``."""
    x = np.asarray(x)
    shift = np.max(x, axis=-1, keepdims=True)
    shift = np.where(np.isfinite(shift), shift, 0)
    shifted = x - shift
    with np.errstate(divide="ignore"):  # a row of -inf: log(0) = -inf, as scipy
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    """``scipy.special.softmax(x, axis=-1)``: exponentials of ``x`` minus the row maximum, over their sum."""
    x = np.asarray(x)
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return shifted / np.sum(shifted, axis=-1, keepdims=True)
