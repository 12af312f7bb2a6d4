"""Checked claims: a sentence about a number is computed from it, or checked against it.

Prose in a chapter that states a comparison ("raw decisions are less accurate than batch-calibrated ones")
goes stale as soon as the numbers move. So the cell beside such prose calls ``claim``, which

- prints the sentence **computed from the numbers** (``text`` when ``condition`` holds, ``otherwise`` when it
  does not, both formatted with the numbers), so the student reads what this run shows, with n; and
- records the claim as a display output with the MIME type ``CLAIM_MIME`` (beside its plain text), which
  ``tests/test_notebooks.py`` reads from every executed chapter: a **firm** claim (no ``otherwise``: the
  prose states it as a fact) that does not hold fails the test.

Quick mode's numbers are noise (n = 24), so a firm claim about what the method shows should be checked on
the full-mode numbers: ``reference`` reads them from ``results/`` (the last full-mode run, per model), and
``quick_and_full`` writes a quick-mode value beside its full-mode reference. A firm claim on quick-mode
numbers (``basis="quick"``) is only reported, never failed, unless it holds at any n (``strict=True``, e.g.
"equal to float precision").
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

CLAIM_MIME = "application/vnd.adainfer.claim+json"


@dataclass(frozen=True)
class Claim:
    """One checked sentence: its key, the text shown, whether it held, and on which numbers."""

    key: str
    text: str
    held: bool
    firm: bool                 # stated as a fact in the prose (no alternative sentence)
    basis: str                 # "full": full-mode numbers (this run or results/); "quick": quick-mode noise
    strict: bool = False       # must hold at any n, quick mode included
    numbers: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """A firm claim that did not hold on numbers it must hold on (what the notebook test fails on)."""
        return self.firm and not self.held and (self.basis == "full" or self.strict)

    def __str__(self) -> str:
        if not self.firm:
            return f"▸ {self.text}"
        if self.held:
            return f"✔ {self.text}"
        note = "" if self.failed else " (quick-mode numbers are noise; the full-mode run is what the prose describes)"
        return f"✘ does not hold: {self.text}{note}"

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = {k: _jsonable(v) for k, v in asdict(self).items()} | {"failed": self.failed}
        return {"text/plain": str(self), "text/markdown": str(self), CLAIM_MIME: data}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def claim(key: str, condition: bool, text: str, otherwise: str | None = None, *, basis: str = "full",
          strict: bool = False, show: bool = True, **numbers) -> Claim:
    """Print and record the sentence that ``numbers`` support.

    ``text`` (and ``otherwise``) are ``str.format`` templates over ``numbers``. Without ``otherwise`` the claim
    is *firm*: the chapter's prose states it, and a failure is reported (and fails the notebook test when
    ``basis="full"`` or ``strict``). With ``otherwise`` the claim is *adaptive*: the shown sentence follows the
    numbers, whichever way they go.

    ``basis``: ``"full"`` when ``numbers`` are full-mode numbers (this run in full mode, or ``reference``
    values), ``"quick"`` when they are this quick-mode run's.
    """
    if basis not in ("full", "quick"):
        raise ValueError(f"basis must be 'full' or 'quick', got {basis!r}")
    held = bool(condition)
    template = text if held or otherwise is None else otherwise
    result = Claim(key=key, text=template.format(**numbers), held=held, firm=otherwise is None, basis=basis,
                   strict=strict, numbers=numbers)
    if show:
        try:
            from IPython.display import display

            display(result)
        except ImportError:  # pragma: no cover - outside IPython
            print(result)
    return result


def basis(settings) -> str:
    """``"quick"`` or ``"full"``: what numbers this run's own values are."""
    return "quick" if settings.quick else "full"


def results_folder(settings=None, model: str | None = None):
    """``results/`` for the default model, ``results/<model>/`` for another (as ``save_result`` writes it)."""
    from ..common.paths import REPO_ROOT
    from ..model.loading import DEFAULT_MODEL

    name = model or (settings.model if settings is not None else DEFAULT_MODEL)
    folder = REPO_ROOT / "results"
    if name != DEFAULT_MODEL:
        folder = folder / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return folder


def reference(settings, name: str, column: str, **where) -> float | None:
    """The full-mode value of ``column`` in ``results/<name>.csv`` on the rows matching ``where`` (their mean
    when several match, e.g. over seeds); None when this model has no such saved result."""
    path = results_folder(settings) / f"{name}.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    for key, value in where.items():
        if key not in table.columns:
            return None
        table = table[table[key] == value]
    if column not in table.columns or table.empty:
        return None
    return float(table[column].mean())


def reference_n(settings, name: str, **where) -> int | None:
    """The ``n`` of the matching rows of ``results/<name>.csv`` (None when unknown)."""
    value = reference(settings, name, "n", **where)
    return None if value is None else int(value)


def quick_and_full(settings, value: float, ref: float | None, *, n: int | None = None, ref_n: int | None = None,
                   fmt: str = "{:.3f}") -> str:
    """``value`` as the reader should take it: in full mode the value itself; in quick mode the value with
    "(quick, n=…)" and its full-mode reference beside it (or a note that none is saved for this model)."""
    here = fmt.format(value) + (f" (n={n})" if n else "")
    if not settings.quick:
        return here
    quick = fmt.format(value) + (f" (quick mode, n={n})" if n else " (quick mode)")
    if ref is None:
        return f"{quick}; no full-mode reference saved for {settings.model}"
    return f"{quick}; full mode {fmt.format(ref)}" + (f" (n={ref_n})" if ref_n else "")


def claims_in(notebook) -> list[dict]:
    """Every recorded claim in an executed notebook (an ``nbformat`` node), in cell order."""
    found = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if CLAIM_MIME in data:
                record = data[CLAIM_MIME]
                found.append(json.loads(record) if isinstance(record, str) else dict(record))
    return found
