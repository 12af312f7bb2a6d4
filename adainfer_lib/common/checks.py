"""Argument checks at the library's entry points: one error style for every kind of bad input.

Each check returns the value it accepted (as the plain Python type the caller uses) or raises ``ValueError``
naming the argument, the bad value and what is allowed — at the call that received it, not three functions
later as a numpy message about broadcasting or zero-size arrays.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

#: The thresholds of the stopping rule are stop probabilities; 1.01 is allowed as "never stop early".
THRESHOLD_RANGE: tuple[float, float] = (0.0, 1.01)


def check_int(value, name: str, *, low: int | None = None, high: int | None = None, none_ok: bool = False,
              allowed: str | None = None) -> int | None:
    """``value`` as an ``int`` (Python or numpy integer; not a bool, not a float) within ``low..high``
    (inclusive, each optional); ``None`` passes when ``none_ok``. ``ValueError`` otherwise, naming ``name``,
    the value and ``allowed`` (default: the range)."""
    if value is None and none_ok:
        return None
    if allowed is None:
        bounds = ("" if low is None else f">= {low}") + (" and " if low is not None and high is not None else "") + \
                 ("" if high is None else f"<= {high}")
        allowed = f"an integer {bounds}".strip() + (" (or None)" if none_ok else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {allowed}, not {value!r} ({type(value).__name__})")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {allowed}, not {value!r}")
    return int(value)


def check_number(value, name: str, *, low: float | None = None, high: float | None = None,
                 none_ok: bool = False, positive: bool = False, allowed: str | None = None) -> float | None:
    """``value`` as a finite ``float`` within ``[low, high]`` (each optional; ``positive``: also ``> 0``);
    ``None`` passes when ``none_ok``. ``ValueError`` otherwise, naming ``name``, the value and ``allowed``."""
    if value is None and none_ok:
        return None
    if allowed is None:
        if low is not None and high is not None:
            allowed = f"a number in [{low:g}, {high:g}]"
        elif positive:
            allowed = "a positive number"
        elif low is not None:
            allowed = f"a number >= {low:g}"
        elif high is not None:
            allowed = f"a number <= {high:g}"
        else:
            allowed = "a finite number"
        allowed += " (or None)" if none_ok else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(float(value)):
        raise ValueError(f"{name} must be {allowed}, not {value!r}")
    if (low is not None and value < low) or (high is not None and value > high) or (positive and value <= 0):
        raise ValueError(f"{name} must be {allowed}, not {value!r}")
    return float(value)


def check_threshold(value, name: str = "threshold", *, low: float | None = THRESHOLD_RANGE[0],
                    high: float | None = THRESHOLD_RANGE[1]) -> float:
    """A stopping-rule threshold: a finite number in ``[low, high]`` (default ``[0, 1.01]``: stop probabilities,
    1.01 = never stop early). ``ValueError`` otherwise."""
    extra = " (a stop probability; 1.01 = never stop early)" if (low, high) == THRESHOLD_RANGE else ""
    allowed = None if low is None or high is None else f"a number in [{low:g}, {high:g}]{extra}"
    return check_number(value, name, low=low, high=high, allowed=allowed)


def check_choice(value, name: str, choices: Sequence):
    """``value`` if it is one of ``choices``; ``ValueError`` naming the value and the choices otherwise."""
    try:
        ok = value in tuple(choices)
    except TypeError:  # unhashable or incomparable value
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {tuple(choices)}, not {value!r}")
    return value


def check_exit_layers(layers, n_layers: int | None, name: str = "exit layers", *,
                      n_examples: int | None = None) -> np.ndarray:
    """Exit layers (one per example, or one for all) as a 1-D int array: integers in ``0..L`` (``n_layers`` =
    L; 0 exits on the embeddings, as the oracle may; L runs the full model; ``n_layers=None``: only ``>= 0``,
    for a rule built before its model is known). With ``n_examples``, exactly one per example. ``ValueError``
    naming the bad values (the first few), the allowed range and the count."""
    allowed = "integers >= 0" if n_layers is None else \
        f"integers in 0..{n_layers} (the model has L={n_layers} layers; 0 = the embeddings)"
    arr = np.asarray(layers)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be one layer per example (a 1-D array), got shape {arr.shape}")
    whole_floats = arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr))))
    integral = arr.dtype.kind in "iu" or whole_floats
    if arr.size and not integral:
        raise ValueError(f"{name} must be {allowed}, got {arr.reshape(-1)[:5].tolist()} ({arr.dtype})")
    arr = arr.astype(int).reshape(-1)
    bad = arr[(arr < 0) | (arr > (np.inf if n_layers is None else n_layers))]
    if bad.size:
        raise ValueError(f"{name} must be {allowed}, got {sorted(set(bad.tolist()))[:5]}")
    if n_examples is not None and len(arr) != n_examples:
        raise ValueError(f"{name}: {len(arr)} given for {n_examples} examples (one per example)")
    return arr


def check_min_layer(value, n_layers: int | None = None) -> int:
    """The stopping rule's first checked layer: an integer >= 0 (0 = the embeddings), and <= L once the
    model's ``n_layers`` = L is known (beyond it no layer would ever be checked). ``ValueError`` otherwise."""
    if n_layers is None:
        return check_int(value, "min_layer", low=0, allowed="an integer >= 0 (0 = the embeddings)")
    return check_int(value, "min_layer", low=0, high=n_layers,
                     allowed=f"an integer in 0..{n_layers} (the model has L={n_layers} layers)")


def check_label_count(words: Sequence[str], *, owner: str) -> None:
    """``ValueError`` unless ``words`` are 2 or more distinct label words: with one label every input's label
    distribution is certain at every layer (label_top_prob = label_gap = 1), so every exit rule would stop at its
    first checked layer, and accuracy is not a measure of anything."""
    if len(set(words)) < 2:
        raise ValueError(f"{owner} has {len(set(words))} distinct label word(s) {list(words)}: a classification "
                         "task needs 2 or more labels — with one, every input's answer is certain at every layer "
                         "and every exit rule stops at its first checked layer")


def check_subset(subset, n: int, name: str = "subset") -> np.ndarray:
    """The positions (k,) of a subset of ``n`` items, however it is named: None (all ``n``), a boolean mask of
    length ``n``, a ``slice``, or integer positions in ``0..n-1``, each at most once (in the order given).
    ``ValueError`` naming ``name`` for a mask of another length, positions out of range, repeated or not
    integers, a nested array, or an empty subset — a subset is counted by the items it selects, never by the
    length of the mask that selects them."""
    if subset is None:
        return np.arange(n)
    if isinstance(subset, slice):
        positions = np.arange(n)[subset]
    else:
        arr = np.asarray(subset)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a boolean mask, a slice or 1-D integer positions, got shape {arr.shape}")
        if arr.dtype == bool:
            if len(arr) != n:
                raise ValueError(f"{name} is a boolean mask of length {len(arr)}, but there are {n} items: a mask "
                                 "needs one entry per item")
            positions = np.flatnonzero(arr)
        elif arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must be a boolean mask, a slice or integer positions, not {arr.dtype} values")
        else:
            positions = arr.astype(int)
            bad = positions[(positions < 0) | (positions >= n)]
            if bad.size:
                raise ValueError(f"{name} has positions outside 0..{n - 1}: {sorted(set(bad.tolist()))[:5]}")
            if len(np.unique(positions)) != len(positions):
                raise ValueError(f"{name} names some positions more than once: each item counts once")
    if len(positions) == 0:
        raise ValueError(f"{name} selects none of the {n} items")
    return positions


class NonFiniteError(ValueError):
    """NaN or infinite values in a model's states, lens statistics, features or scores: every statistic and
    decision computed from them would be meaningless (a NaN never stops an exit rule, an argmax over NaN picks
    the first label), so they are an error where they arise, naming the layer, the model and its dtype."""


def _dtype_of(model) -> str | None:
    dtype = getattr(getattr(model, "hf_model", None), "dtype", None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def check_finite(values, what: str, *, model=None, layer: int | None = None, layer_axis: int | None = None) -> None:
    """``NonFiniteError`` unless every value of ``values`` (a torch tensor, a numpy array, or a tuple of them)
    is finite. One ``isfinite(...).all()`` per array: cheap enough for every checked layer.

    ``what`` names the values ("the residual stream"); ``model`` (a ``LensModel``) gives its name and dtype,
    ``layer`` the layer they belong to, or ``layer_axis`` the axis of ``values`` that runs over layers 0..L
    (the message then names the first layer with a non-finite value). The message suggests float32 when the
    model runs in a half-precision dtype (float16 overflows in some models: gemma3-270m from layer 9 on)."""
    parts = values if isinstance(values, tuple) else (values,)
    finite = [bool(p.isfinite().all()) if hasattr(p, "isfinite") else bool(np.isfinite(p).all()) for p in parts]
    if all(finite):
        return
    if layer is None and layer_axis is not None:
        bad = next(p for p, ok in zip(parts, finite) if not ok)
        bad = bad.detach().float().cpu().numpy() if hasattr(bad, "detach") else np.asarray(bad)
        by_layer = np.moveaxis(bad, layer_axis, 0).reshape(bad.shape[layer_axis], -1)
        layer = int(np.argmin(np.isfinite(by_layer).all(1)))  # the first layer with a non-finite value
    name, dtype = getattr(model, "name", None), _dtype_of(model)
    where = (f" at layer {layer}" if layer is not None else "") + (f" of {name}" if name else "") + \
        (f" ({dtype})" if dtype else "")
    if dtype in ("float16", "bfloat16"):
        advice = (f"its activations overflow in {dtype}: load the model in float32 "
                  f"(load_model({name!r}, dtype=torch.float32)); OFFLINE_MODELS lists the dtypes each model runs in")
    else:
        advice = "the weights or inputs produce them (weights edited to inf or NaN?)"
    raise NonFiniteError(f"NaN or infinite values in {what}{where}: {advice}")


def checked_array(source, field: str, value, shape: tuple[int, ...] | None = None, *, dtype=None,
                  advice: str = "") -> np.ndarray:
    """A stored array read back (a saved policy's or reader's field): ``value`` as an array of numbers
    (converted to ``dtype`` when given, else kept as it is) of ``shape`` (None: any 1-D), every value finite.
    ``ValueError`` naming ``source`` (the file) and ``field`` otherwise, ending with ``advice`` for NaN/inf."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {field} is not an array of numbers") from None
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{source}: {field} is not an array of numbers (dtype {arr.dtype})")
    if (shape is None and arr.ndim != 1) or (shape is not None and arr.shape != tuple(shape)):
        want = "1-D" if shape is None else tuple(shape)
        raise ValueError(f"{source}: {field} has shape {arr.shape}, expected {want}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{source}: {field} has {int((~np.isfinite(arr)).sum())} NaN or infinite value(s) of "
                         f"{arr.size}" + (f": {advice}" if advice else ""))
    return arr
