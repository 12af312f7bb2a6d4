"""The set-up cell every chapter runs: seeds, plotting theme, no gradients, quick mode."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from ..common.hub import offline_by_default
from ..model.loading import DEFAULT_MODEL

# Shots per task in the chapters. MMLU prompts are long (4-shot: 614 tokens on average, up to 1,700), so on
# a CPU the chapters use 1-shot MMLU; pass shots=5 on a GPU to match the paper's protocol.
STUDY_SHOTS = {"sentiment": 4, "topic": 4, "mmlu": 1}
STUDY_SIZES = {"n": (500, 24), "n_train": (250, 40)}  # (full, quick)


@dataclass(frozen=True)
class NotebookSettings:
    """What a chapter needs to know about this run.

    ``quick`` (``ADAINFER_QUICK=1``) shrinks every n so CI can execute the chapter in a minute or two;
    ``model`` is the model name the chapter should load (``ADAINFER_MODEL`` overrides the cell's choice).
    """

    quick: bool
    model: str
    seed: int

    def n(self, full: int, quick: int) -> int:
        """``quick`` examples in quick mode, ``full`` otherwise (``ADAINFER_N`` caps both)."""
        cap = int(os.environ.get("ADAINFER_N", "0") or 0)
        value = quick if self.quick else full
        return min(value, cap) if cap else value

    def task(self, name: str, **overrides):
        """``name`` as every chapter studies it: same sizes, shots and seed, hence shared trace caches."""
        from ..data.tasks import load_task

        kwargs = {"n": self.n(*STUDY_SIZES["n"]), "n_train": self.n(*STUDY_SIZES["n_train"]),
                  "shots": STUDY_SHOTS.get(name, 4), "seed": self.seed}
        return load_task(name, **{**kwargs, **overrides})

    def save_result(self, obj, name: str, model=None):
        """Save a table (CSV) or figure (PNG) for the README: under ``results/`` in full mode, under
        ``build/quick-results/`` in quick mode (so a CI run never overwrites the published numbers); a model
        other than the default saves into a sub-folder named after it (``results/gemma3-270m/``).
        With ``model`` (a ``LensModel``) a table gets ``model``, ``weights`` and ``date`` columns."""
        import datetime as dt

        from ..common.paths import REPO_ROOT

        folder = REPO_ROOT / ("build/quick-results" if self.quick else "results")
        if self.model != DEFAULT_MODEL:
            folder = folder / "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model)
        folder.mkdir(parents=True, exist_ok=True)
        if hasattr(obj, "to_csv"):
            if model is not None:
                obj = obj.assign(model=model.name, weights=model.weights_note, date=dt.date.today().isoformat())
            path = folder / f"{name}.csv"
            obj.to_csv(path, index=False, float_format="%.4f")
        else:
            path = folder / f"{name}.png"
            obj.savefig(path, dpi=150, bbox_inches="tight")
        return path

    def load_model(self, **kwargs):
        """The chapter's model (``ADAINFER_MODEL`` overrides the name given to ``setup_notebook``)."""
        from ..model.loading import load_model

        return load_model(self.model, **kwargs)


def setup_notebook(model: str = DEFAULT_MODEL, *, seed: int = 0) -> NotebookSettings:
    """Seed everything, set the seaborn theme, turn gradients off; returns the run's settings.

    Environment variables (set them before starting JupyterLab, or in the shell that runs a notebook):

    - ``ADAINFER_QUICK=1`` — quick mode: every n shrinks (24 test / 40 train prompts per task) so a chapter runs
      in a minute; its numbers are noise, and the chapters show the full-mode value from ``results/`` beside them;
    - ``ADAINFER_N=<k>`` — caps every n at k (e.g. 200 for a faster full run);
    - ``ADAINFER_MODEL=<name>`` — overrides the model named here (``gemma3-270m``, or a hub name);
    - ``ADAINFER_ONLINE=1`` — allows hub access (a hub model, ``source="hub"`` data); off by default;
    - ``ADAINFER_DATA=<dir>`` — where prepared models, task files and traces live (default ``data/``).
    """
    import numpy as np
    import seaborn as sns
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_grad_enabled(False)
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", rc={"figure.dpi": 100})
    offline_by_default()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # no frozen "Loading weights 0%" bar in an executed notebook
    quick = os.environ.get("ADAINFER_QUICK", "0") not in ("", "0", "false", "False")
    return NotebookSettings(quick=quick, model=os.environ.get("ADAINFER_MODEL", model), seed=seed)
