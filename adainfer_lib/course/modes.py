"""Which size a run is — quick, class or full — and where its tables and figures go.

Every size the chapters use is named once, in ``SIZES`` (prompt counts: ``ADAINFER_N`` caps them) and
``SETTINGS`` (per-mode choices that are not prompt counts: δ, repeats, thresholds; never capped), as
``name: (quick, class, full)``. A chapter asks for ``settings.n("ch06.pool")`` or ``settings.param("ch06.delta")``
(``NotebookSettings``), never for a number of its own.

- **quick** (``ADAINFER_MODE=quick`` or ``ADAINFER_QUICK=1``): a chapter in a minute or two, for CI and for
  reading the code; its numbers are noise.
- **class** (``ADAINFER_MODE=class``): the size a 90-minute class runs (``make class``), chosen so that each
  chapter's story holds at that n; the chapters say where a number is still noisy.
- **full** (the default): the study sizes of the published numbers.

Only a *publishing* run writes ``results/`` (``ADAINFER_PUBLISH=1``, which ``tools/reproduce.py`` sets for a
full-mode run, i.e. ``make reproduce``); every other run — quick, class, a full-mode run in JupyterLab,
any ``ADAINFER_N`` cap without publishing — writes the same file names under ``build/<mode>/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

MODES = ("quick", "class", "full")

# Prompt counts, name -> (quick, class, full). ADAINFER_N caps each of them.
# Class mode keeps full mode's 250 train prompts: thresholds are chosen on train for "at most 1 point lost",
# and at 150 train prompts that is 1.5 prompts — chapter 03's label-feature CRF then saved 13% / 7% of the layers
# (accuracy / consistency criterion) with bootstrap intervals 1.5 points wide; at 250 it saves 21.7% / 20.8% on
# the class test split (full mode: 21.5% / 20.6%) with intervals 4.5 points wide (smollm2-135m, sentiment, seed 0).
SIZES: dict[str, tuple[int, int, int]] = {
    "test": (24, 200, 500),                 # every chapter's study: test prompts per task (settings.task)
    "train": (40, 250, 250),                # ... and train prompts per task (class = full, see above)
    "ch01.protocols_test": (24, 100, 200),  # one demonstration set vs demonstrations drawn per query
    "ch01.protocols_train": (40, 100, 100),
    "ch04.test": (12, 40, 100),             # every method runs for real on these prompts
    "ch04.timed": (1, 5, 10),               # prompts timed at batch size 1
    "ch04.influence": (8, 16, 24),          # prompts ShortGPT's layer influence is measured on
    "ch04.shortgpt_calibration": (8, 24, 40),
    # chapter 06 in class mode = full mode but for the timing: replays of a cached pool are cheap (full mode ran
    # the chapter in 1.0 min with its traces cached), and a smaller pool cannot check the guarantee: at pool 600,
    # calibration 300, δ 5% Learn-then-Test certified 0.88 (24.9% saved, 4.0% held-out disagreement), but 14% of
    # 100 draws showed a 300-prompt test split above δ (ε 5%), test noise rather than the rule. The same n as full
    # mode (pool + fresh) also shares full mode's trace cache.
    "ch06.pool": (64, 2000, 2000),          # traced prompts that calibration/test splits are drawn from
    "ch06.fresh": (6, 100, 100),            # fresh prompts for the real run of the certified rule
    "ch06.calibration": (32, 1000, 1000),   # calibration-set size (at most half the pool)
    "ch06.timed": (1, 5, 10),
    "ch07.prompts": (2, 20, 100),           # generation: the main study (batched, batch size 1's decisions)
    "ch07.timed": (1, 4, 12),               # ... of which run again at batch size 1, timed (and checked)
    "ch07.sweep_timed": (1, 2, 4),          # sweep prompts timed at batch size 1 per threshold
    "ch07.sweep": (1, 4, 10),
    "ch07.speculative": (1, 4, 12),
    "ch07.settling": (1, 4, 8),
    "ch08.real": (4, 20, 40),               # prompts run for real with a reader inside the runner
    "ch08.shift": (24, 200, 200),           # product-review prompts the movie-review readers are moved to
}

# Per-mode choices that are not prompt counts, name -> (quick, class, full). Never capped.
SETTINGS: dict[str, tuple[object, object, object]] = {
    # demonstration seeds chapter 01 reports mean ± sd over: the third seed is a third of quick mode's chapter 01
    # (each seed traces every task's test and train prompts anew)
    "ch01.seeds": ((0, 1), (0, 1, 2), (0, 1, 2)),
    "ch02.importance_repeats": (3, 5, 10),       # permutation-importance repeats (logistic)
    "ch02.svm_importance_repeats": (2, 3, 5),
    "ch02.check_cost_repeats": (10, 20, 50),     # timing repeats of one exit check
    "warmup": (False, True, True),               # warm up before timing (chapters 04, 06)
    "ch04.shortgpt_depths": ((6,), (9,), (9,)),  # extra ShortGPT depths on sentiment (layers removed)
    "ch04.max_consistency_loss": (0.05, 0.02, 0.01),  # exercise 2's criterion (1 point of 40 train prompts is noise)
    "ch06.delta": (0.10, 0.02, 0.02),            # the risk level certified
    "ch06.draws": (200, 500, 500),               # random calibration/test splits of the guarantee check
    "ch06.price_n_cals": ((16, 32, 64), (200, 500, 1000, 2000), (200, 500, 1000, 2000)),  # kept where <= the pool
    "ch06.price_deltas": ((0.05, 0.10, 0.20), (0.01, 0.02, 0.05), (0.01, 0.02, 0.05)),
    "ch07.new_tokens": (6, 24, 32),
    "ch07.thresholds": ((0.9, 0.99), (0.8, 0.9, 0.99), (0.8, 0.9, 0.95, 0.99)),
    # the tuned-lens translators chapter 08 chooses among (readers.choose_translator): a full d x d map costs
    # ~30 s a fit at 40 train prompts on one core (smollm2-135m, 300 steps) and the chapter fits the chosen
    # one 5 more times out of fold, so only full mode tries it; quick mode trains 100 steps instead of 300
    "ch08.translators": (({"translator": "bias", "steps": 100}, {"translator": "low_rank", "rank": 8, "steps": 100}),
                         ({"translator": "bias"}, {"translator": "low_rank", "rank": 8}),
                         ({"translator": "bias"}, {"translator": "low_rank", "rank": 8}, {"translator": "affine"})),
    # chapter 08's real runs: each (prompt, run) timed this many times, interleaved, its fastest kept (one timing each
    # at n = 40 gave measured / ideal 1.04 / 0.87 / 0.87 on one cold run and 0.82 / 0.77 / 0.68 on the next)
    "ch08.timing_repeats": (1, 2, 3),
    "ch08.shortgpt_fractions": ((1 / 3,), (1 / 6, 1 / 3), (1 / 6, 1 / 3)),   # ShortGPT removes these shares of L
    # the probe's C chapter 08 chooses among by its out-of-fold exits (evaluation.reader_rules.choose_probe_c):
    # each C is a probe per layer fitted 6 times (all of train, then 5 folds); over 3 seeds at n = 500 the choice
    # was 0.01 on sentiment and topic (README, Benchmarks)
    "ch08.cs": ((0.01, 0.05), (0.01, 0.05), (0.01, 0.05, 0.2)),
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    """The boolean environment variable ``name`` (unset: False); anything but 1/0/true/false/yes/no/on/off is
    an error naming it."""
    value = environ.get(name, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"{name}={environ[name]!r}: expected 1 or 0 (true/false, yes/no, on/off)")
    return value in _TRUE


def run_mode(environ: Mapping[str, str] | None = None) -> str:
    """The run's mode from ``ADAINFER_MODE`` (``quick``, ``class`` or ``full``; default ``full``) and the older
    ``ADAINFER_QUICK=1`` (= quick). Raises ``ValueError`` on an unknown mode, or when the two disagree."""
    environ = os.environ if environ is None else environ
    quick = _flag(environ, "ADAINFER_QUICK")
    raw = environ.get("ADAINFER_MODE", "").strip()
    if not raw:
        return "quick" if quick else "full"
    mode = raw.lower()
    if mode not in MODES:
        raise ValueError(f"ADAINFER_MODE={raw!r}: expected one of {', '.join(MODES)}")
    if quick and mode != "quick":
        raise ValueError(f"ADAINFER_QUICK=1 asks for quick mode but ADAINFER_MODE={raw!r}: unset one of them")
    return mode


def size_cap(environ: Mapping[str, str] | None = None) -> int | None:
    """``ADAINFER_N`` (a positive integer capping every prompt count), or None when unset."""
    environ = os.environ if environ is None else environ
    raw = environ.get("ADAINFER_N", "").strip()
    if not raw or raw == "0":   # "0" has always meant "no cap"
        return None
    if not raw.isdigit():
        raise ValueError(f"ADAINFER_N={raw!r}: expected a positive integer (the cap on every n), or unset")
    return int(raw)


def publishing(mode: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this run publishes to ``results/`` (``ADAINFER_PUBLISH=1``); only a full-mode run may."""
    environ = os.environ if environ is None else environ
    publish = _flag(environ, "ADAINFER_PUBLISH")
    if publish and mode != "full":
        raise ValueError(f"ADAINFER_PUBLISH=1 writes results/, which only full mode may; this run is in {mode} "
                         "mode (its tables go under build/): unset ADAINFER_PUBLISH")
    return publish


def size(name: str, mode: str, cap: int | None = None) -> int:
    """The prompt count ``name`` of ``SIZES`` in ``mode``, capped at ``cap``."""
    if name not in SIZES:
        raise KeyError(f"no size {name!r} in adainfer_lib.course.modes.SIZES; sizes: {', '.join(SIZES)}")
    value = SIZES[name][_index(mode)]
    return min(value, cap) if cap else value


def setting(name: str, mode: str):
    """The per-mode choice ``name`` of ``SETTINGS`` in ``mode`` (never capped)."""
    if name not in SETTINGS:
        raise KeyError(f"no setting {name!r} in adainfer_lib.course.modes.SETTINGS; settings: {', '.join(SETTINGS)}")
    return SETTINGS[name][_index(mode)]


def _index(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return MODES.index(mode)


def model_folder(model: str) -> str:
    """The sub-folder a model other than the default writes into (its name, made file-safe)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)


def output_folder(mode: str, *, publish: bool, model: str, root: Path | None = None) -> Path:
    """Where a run's tables and figures go: ``results/`` when publishing, else ``build/<mode>/``; a model other
    than the default in a sub-folder named after it (``results/gemma3-270m/``)."""
    from ..common.paths import REPO_ROOT
    from ..model.loading import DEFAULT_MODEL

    if publish and mode != "full":
        raise ValueError(f"only full mode publishes to results/, got mode {mode!r}")
    _index(mode)
    folder = (root or REPO_ROOT) / ("results" if publish else f"build/{mode}")
    return folder if model == DEFAULT_MODEL else folder / model_folder(model)
