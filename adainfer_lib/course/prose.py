"""What the chapters' sentences about numbers share: the full-mode value beside a smaller run's, and thresholds
written for reading.

A sentence that depends on a number is written once, as an f-string in the cell that computes the number. In
quick or class mode that number is noisier than the published one, so the sentence shows both:
``beside_full(settings, 0.51, "01_calibration", "accuracy_full", n=24, task="sentiment")`` gives
"0.510 (quick mode, n = 24: noise; full mode 0.634, n = 500)". Firm facts about the method are tests over the
published tables (``tests/test_results.py``); exact identities are ``assert``s in the cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def published(settings, name: str) -> pd.DataFrame | None:
    """The published full-mode table ``results/<name>.csv`` of this run's model (``results/<model>/`` for a model
    other than the default), or None when it has none."""
    from .modes import output_folder

    path = output_folder("full", publish=True, model=settings.model) / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def full_mode(settings, name: str, column: str, **where) -> tuple[float, int | None] | None:
    """(mean of ``column``, mean ``n``) over the rows of the published table ``name`` (``published``) that match
    ``where``; None when this model has no such table, column or row."""
    table = published(settings, name)
    table = pd.DataFrame() if table is None else table
    for key, value in where.items():
        table = table[table[key] == value] if key in table else table.iloc[0:0]
    if column not in table or table.empty:
        return None
    return float(table[column].mean()), (int(table["n"].mean()) if "n" in table else None)


def note(settings, n: int | None = None, full: str | None = None) -> str:
    """The quick- or class-mode caveat of a sentence: "" in full mode, else " (quick mode, n = 24: noise; full mode
    ``full``)", without the full-mode part when ``full`` is None."""
    if settings.full:
        return ""
    noise = "noise" if settings.quick else "noisier than full mode"
    return f" ({settings.mode} mode{f', n = {n}' if n else ''}: {noise}{f'; full mode {full}' if full else ''})"


def beside_full(settings, value: float, name: str, column: str, *, n: int | None = None, fmt: str = "{:.3f}",
                **where) -> str:
    """``value`` as a reader should take it: alone (with n) in full mode; in quick or class mode with the published
    full-mode value of ``column`` in ``results/<name>.csv`` beside it (``full_mode``, ``note``)."""
    if settings.full:
        return fmt.format(value) + (f" (n = {n})" if n else "")
    ref = full_mode(settings, name, column, **where)
    full = (f"not saved for {settings.model}" if ref is None else
            fmt.format(ref[0]) + (f", n = {ref[1]}" if ref[1] else ""))
    return fmt.format(value) + note(settings, n, full)


def threshold_text(threshold: float | None) -> str:
    """A threshold as a student should read it: above 1 (or None, inf) it is a rule that never exits early."""
    if threshold is None or not np.isfinite(threshold) or threshold > 1:
        return "never exits (> 1)"
    return f"{threshold:.2f}"


def show_thresholds(table: pd.DataFrame, columns=("threshold",), missing: str | None = None) -> pd.DataFrame:
    """``table`` with its threshold columns written by ``threshold_text``; a missing one stays empty (the oracle
    has none), or says ``missing`` when given (e.g. "never exits: nothing certified")."""
    out = table.copy()
    for column in (c for c in columns if c in out):
        out[column] = [(missing if missing is not None else value)
                       if value is None or (isinstance(value, float) and np.isnan(value)) else threshold_text(value)
                       for value in out[column]]
    return out
