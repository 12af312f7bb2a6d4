"""The set-up cell every chapter runs: seeds, plotting theme, no gradients, the run's mode and sizes."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..common.hub import offline_by_default
from ..model.loading import DEFAULT_MODEL
from . import modes

# Shots per task in the chapters. MMLU prompts are long (4-shot: 614 tokens on average, up to 1,700), so on
# a CPU the chapters use 1-shot MMLU; pass shots=5 on a GPU to match the paper's protocol.
STUDY_SHOTS = {"sentiment": 4, "topic": 4, "mmlu": 1}


@dataclass(frozen=True)
class NotebookSettings:
    """What a chapter needs to know about this run.

    ``mode`` is ``"quick"``, ``"class"`` or ``"full"`` (``ADAINFER_MODE``; ``adainfer_lib.course.modes`` names
    every size of each mode once); ``quick`` is True in quick mode only. ``cap`` is ``ADAINFER_N`` (it caps every
    prompt count); ``publish`` (``ADAINFER_PUBLISH=1``, set by ``tools/reproduce.py``) sends tables and figures
    to ``results/`` instead of ``build/<mode>/``. ``model`` is the model name the chapter should load
    (``ADAINFER_MODEL`` overrides the cell's choice).
    """

    mode: str
    model: str
    seed: int
    cap: int | None = None
    publish: bool = False

    def __post_init__(self):
        modes.output_folder(self.mode, publish=self.publish, model=self.model)   # checks mode and publish

    @classmethod
    def from_environ(cls, model: str = DEFAULT_MODEL, *, seed: int = 0,
                     environ: Mapping[str, str] | None = None) -> NotebookSettings:
        """The settings the ``ADAINFER_*`` variables of ``environ`` (default: ``os.environ``) ask for; a bad
        value is a ``ValueError`` naming the variable (``adainfer_lib.course.modes``)."""
        environ = os.environ if environ is None else environ
        mode = modes.run_mode(environ)
        return cls(mode=mode, model=environ.get("ADAINFER_MODEL", model), seed=seed,
                   cap=modes.size_cap(environ), publish=modes.publishing(mode, environ))

    @property
    def quick(self) -> bool:
        """Quick mode (the smallest sizes, for CI and for reading the code)."""
        return self.mode == "quick"

    @property
    def full(self) -> bool:
        """Full mode (the study sizes of the published numbers; ``ADAINFER_N`` may still cap them)."""
        return self.mode == "full"

    def n(self, name: str) -> int:
        """The prompt count ``name`` of ``modes.SIZES`` in this run's mode, capped by ``ADAINFER_N``."""
        return modes.size(name, self.mode, self.cap)

    def param(self, name: str):
        """The per-mode choice ``name`` of ``modes.SETTINGS`` in this run's mode (δ, repeats, thresholds...)."""
        return modes.setting(name, self.mode)

    def task(self, name: str, **overrides):
        """``name`` as every chapter studies it: same sizes, shots and seed, hence shared trace caches."""
        from ..data.tasks import load_task

        kwargs = {"n": self.n("test"), "n_train": self.n("train"), "shots": STUDY_SHOTS.get(name, 4),
                  "seed": self.seed}
        return load_task(name, **{**kwargs, **overrides})

    def describe(self) -> str:
        """One line for the set-up cell: the mode, the study sizes and where tables and figures go."""
        from ..common.paths import REPO_ROOT

        cap = f", capped at ADAINFER_N={self.cap}" if self.cap else ""
        where = self.output_folder.relative_to(REPO_ROOT)
        return (f"{self.mode} mode: {self.n('test')} test / {self.n('train')} train prompts per task{cap} "
                f"(adainfer_lib/course/modes.py); tables and figures go to {where}/")

    @property
    def output_folder(self) -> Path:
        """Where ``save_result`` writes: ``results/`` when publishing, else ``build/<mode>/`` (per model)."""
        return modes.output_folder(self.mode, publish=self.publish, model=self.model)

    def save_result(self, obj, name: str, model=None):
        """Save a table (CSV) or figure (PNG) under ``output_folder``: ``results/`` only in a publishing run
        (``make reproduce``), ``build/<mode>/`` otherwise, so a quick, class or capped run never overwrites the
        published numbers; a model other than the default saves into a sub-folder named after it
        (``results/gemma3-270m/``). With ``model`` (a ``LensModel``) a table gets ``model``, ``weights`` and
        ``date`` columns."""
        import datetime as dt

        folder = self.output_folder
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


def hosted_notebook(modules: Mapping[str, object] | None = None) -> str | None:
    """``"colab"`` when this kernel runs on Google Colab (``google.colab`` is imported there before any cell,
    the test ARENA's set-up cells use), else None. ``modules`` defaults to ``sys.modules``."""
    import sys

    return "colab" if "google.colab" in (sys.modules if modules is None else modules) else None


def prepare_hosted(model: str, environ: dict[str, str] | None = None) -> list[str]:
    """What ``setup_notebook`` does on a hosted runtime (Colab), whose disk starts empty and is wiped when
    recycled: class mode unless ``ADAINFER_MODE``/``ADAINFER_QUICK`` say otherwise (set in ``environ``,
    default ``os.environ``), then the chapter's offline ``model`` and the task data prepared where they are
    missing (``data.prepare``'s steps; minutes the first time). Returns the lines it printed."""
    from ..data.sources import prepare_sources
    from ..model.loading import OFFLINE_MODELS, is_prepared, prepare_offline_model

    environ = os.environ if environ is None else environ
    said = []

    def say(line: str) -> None:  # printed when it happens: the student sees why the cell takes minutes
        print(line)
        said.append(line)

    if not (environ.get("ADAINFER_MODE") or environ.get("ADAINFER_QUICK")):
        environ["ADAINFER_MODE"] = "class"
        say("hosted notebook (Colab): class mode (set ADAINFER_MODE before setup_notebook to change it)")
    if model in OFFLINE_MODELS and not is_prepared(model):
        say(f"hosted notebook (Colab): preparing {model} (once per runtime, a few minutes)")
        prepare_offline_model(model)
    prepare_sources()  # idempotent: a second call only checks the prepared files
    return said


def setup_notebook(model: str = DEFAULT_MODEL, *, seed: int = 0) -> NotebookSettings:
    """Seed everything, set the seaborn theme, turn gradients off; returns the run's settings.

    Environment variables (set them before starting JupyterLab, or in the shell that runs a notebook):

    - ``ADAINFER_MODE=quick|class|full`` — the sizes, named once in ``adainfer_lib.course.modes.SIZES``: quick (a
      chapter in a minute or two, numbers that are noise; ``ADAINFER_QUICK=1`` is the same), class (the size a
      class runs, ``make class``), full (the study sizes; the default); an unknown mode is an error. Outside full
      mode the chapters show the full-mode value from ``results/`` beside their own;
    - ``ADAINFER_N=<k>`` — caps every prompt count at k (e.g. 200 for a faster full run);
    - ``ADAINFER_PUBLISH=1`` — write tables and figures to ``results/`` (full mode only; ``tools/reproduce.py``
      sets it); without it they go to ``build/<mode>/``;
    - ``ADAINFER_MODEL=<name>`` — overrides the model named here (``gemma3-270m``, or a hub name);
    - ``ADAINFER_ONLINE=1`` — allows hub access (a hub model, ``source="hub"`` data); off by default;
    - ``ADAINFER_DATA=<dir>`` — where prepared models, task files and traces live (default ``data/``).
    """
    if hosted_notebook():   # Colab: the runtime's disk is empty; docs/teaching.md has the install cell before this
        prepare_hosted(os.environ.get("ADAINFER_MODEL", model))
    settings = NotebookSettings.from_environ(model, seed=seed)   # a bad ADAINFER_* value fails here, first
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
    print(settings.describe())
    return settings
