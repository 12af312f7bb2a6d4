"""Every chapter executes top to bottom in quick mode, its checked claims hold, and it is committed without
outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from adainfer_lib.course.claims import claims_in

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; clear them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executes_in_quick_mode(path, model, tmp_path):
    """Every chapter runs unchanged on both offline models (``ADAINFER_MODEL`` switches the set-up cell's)."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)
    os.environ["ADAINFER_QUICK"] = "1"
    os.environ["ADAINFER_MODEL"] = model
    try:
        NotebookClient(nb, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    failed = [c["text"] for c in claims_in(nb) if c["failed"]]
    assert not failed, f"{path.name} on {model}: checked claims that do not hold: {failed}"
    nbformat.write(nb, tmp_path / path.name)
