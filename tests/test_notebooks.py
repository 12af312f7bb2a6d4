"""Every chapter executes top to bottom in quick mode — its exact identities are ``assert``s in the cells, so a
broken one is an error here — and it is committed without outputs. The firm facts the prose states are checked on
the published tables by ``tests/test_results.py``."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; clear them before committing"


DEFAULT_MODEL, SECOND_MODEL = "smollm2-135m", "gemma3-270m"


def quick_run(path: Path, model: str):
    """One chapter on one model. A model's chapters run in order on one pytest-xdist worker (``--dist
    loadgroup``): chapter 01 traces what the later chapters read from the cache. The second offline model's runs
    are marked ``second_model``: ``make test-models`` runs them (nine chapters, about 14 minutes of one core),
    ``make test`` — CI — leaves them out to stay within 15 minutes; the tiny random models of
    ``tests/conftest.py`` keep its architecture (gemma3_text) in every library test."""
    marks = [pytest.mark.xdist_group(f"notebooks-{model}")] + ([pytest.mark.second_model] if model == SECOND_MODEL
                                                                else [])
    return pytest.param(path, model, id=f"{path.stem}-{model}", marks=marks)


QUICK_RUNS = [quick_run(path, model) for model in (DEFAULT_MODEL, SECOND_MODEL) for path in NOTEBOOKS]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "model"), QUICK_RUNS)
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
    assert not errors, f"{path.name} on {model}: " + "; ".join(f"{e['ename']}: {e['evalue'][:300]}" for e in errors)
    nbformat.write(nb, tmp_path / path.name)
