"""Real early exit: the forward pass stops at the exit layer, and the layers after it never run.

``run_early_exit(model, prompts, policy)`` runs the Hugging Face model itself (its own embeddings, masks
and positions, inputs from ``inputs.prepare_prompts``) with hooks on the decoder layers (``model.hooks``):

- a **forward hook** on layer ``l`` (for ``l >= policy.min_layer`` only: below it there is no check at all)
  reads the last-position state ``h_l`` and hands the rule its online features (``features.online_features``:
  calibrated label features — ``Calibration.apply`` at layer ``l`` of the label rows of the unembedding, or
  of the full-vocabulary lens ``lens.lens_stats`` when ``policy.needs_full_vocab`` —, ``cos_prev``, ``layer``,
  ``layer_frac``; each computed when the rule reads it), asks ``policy.stop_proba_online`` and marks the rows
  that stop (proba >= ``policy.threshold``; every row stops at layer ``L``). When every row of the batch has
  stopped it raises ``hooks.StopForward``, which aborts the forward pass, caught outside: no later layer
  executes, not even the final norm or the LM head;
- with ``batch_size > 1``, a **forward pre-hook** on every layer keeps running only the unfinished rows: it
  slices the hidden states and every per-example tensor argument of the layer (the 4-D attention mask,
  ``position_embeddings`` (cos, sin), ``position_ids``: those with ``ndim >= 2`` whose first dimension is
  the batch size) down to the rows still active. Checked on every registered family in transformers 5.24
  (Llama, Mistral, Qwen2, Gemma, Gemma-3, OPT, GPT-2 (mask passed positionally), GPT-NeoX): their decoder
  layers return a tensor and take every per-example input as an argument, so slicing is exact there
  (``tests/test_early_exit.py`` checks batched == one by one for each). No family needed a fallback.

The prediction is the argmax of the calibrated label scores at the exit layer, the same rule as
``TaskTrace.predictions`` (so a run that exits at layer ``k`` equals the logit lens of a full run at ``k``).
"""

from __future__ import annotations

import time
from collections import ChainMap
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ..common.checks import NonFiniteError, check_finite
from ..common.replay import layers_saved
from ..data.calibration import Calibration
from ..features.online import ONLINE_FEATURES, online_features
from ..model import parallel
from ..model.hooks import StopForward, decoder_hooks, layer_input, layer_output, with_input
from ..model.identity import check_rule_model, identity_of
from ..model.inputs import Batch, _find_cache, label_token_ids, prepare_prompts
from ..model.lens import lens_stats
from ..model.loading import LensModel
from ..rules.interface import ExitRule, OnlineState

# ---------------------------------------------------------------------------------------------------
# Results


@dataclass
class ExitResult:
    """What ``run_early_exit`` returns for ``n`` prompts (``L`` layers, ``C`` label words).

    - ``predictions`` (n,): label id, argmax of the calibrated scores at the exit layer;
    - ``exit_layers`` (n,): the layer each prompt exited at (1..L; ``L`` = ran the full model);
    - ``stop_proba`` (n, L+1): the policy's stop probability at every visited layer (NaN elsewhere: layers
      below ``min_layer`` are never checked, layers after the exit never run);
    - ``label_logits`` (n, C): raw label-word logits at the exit layer; ``scores`` (n, C): calibrated (run with
      a ``reader``: its raw and decision scores; ``meta["reader"]`` names it);
    - ``exit_states`` (n, hidden): the residual state at the last position at the exit layer;
    - ``exit_features``: the online features at the exit layer, name -> (n,);
    - ``seconds`` (n,): wall-clock per example (the batch's time divided by its size; exact at batch
      size 1), building the batch included, tokenization and the shared prefix (computed once per run) not;
      ``check_seconds`` (n,): the part spent in exit checks;
      ``batch_seconds``: wall-clock of each batch; ``cpu_seconds`` (n,): process CPU time, the same way
      (less sensitive than wall-clock to other programs on a shared machine).
    """

    model_name: str
    n_layers: int
    label_words: list[str]
    predictions: np.ndarray
    exit_layers: np.ndarray
    stop_proba: np.ndarray
    label_logits: np.ndarray
    scores: np.ndarray
    exit_states: np.ndarray
    exit_features: dict[str, np.ndarray]
    seconds: np.ndarray
    check_seconds: np.ndarray
    batch_seconds: list[float]
    batch_size: int
    min_layer: int
    threshold: float
    cpu_seconds: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return len(self.predictions)

    @property
    def mean_exit_layer(self) -> float:
        return float(np.mean(self.exit_layers))

    @property
    def layers_saved(self) -> float:
        """1 - mean(exit layer) / L: the hardware-independent saving."""
        return layers_saved(self.exit_layers, self.n_layers)

    @property
    def ideal_speedup(self) -> float:
        """L / mean(exit layer): the speedup if time were proportional to the layers run."""
        return self.n_layers / self.mean_exit_layer

    def accuracy(self, gold: Sequence[int]) -> float:
        return float(np.mean(self.predictions == np.asarray(gold)))

    def to_frame(self) -> pd.DataFrame:
        """One row per example: prediction, exit layer, wall-clock seconds, check seconds."""
        return pd.DataFrame({"example": np.arange(self.n_examples), "prediction": self.predictions,
                             "exit_layer": self.exit_layers, "seconds": self.seconds,
                             "check_seconds": self.check_seconds})


@dataclass
class FullResult:
    """The dense model on ``n`` prompts: ``predictions`` (n,), raw ``label_logits`` (n, C), calibrated
    ``scores`` (n, C) at layer L, wall-clock ``seconds`` (n,) per example, ``batch_seconds`` and process
    ``cpu_seconds`` (n,)."""

    predictions: np.ndarray
    label_logits: np.ndarray
    scores: np.ndarray
    seconds: np.ndarray
    batch_seconds: list[float]
    cpu_seconds: np.ndarray | None = None

    def accuracy(self, gold: Sequence[int]) -> float:
        return float(np.mean(self.predictions == np.asarray(gold)))


# ---------------------------------------------------------------------------------------------------
# Resolving what the policy carries


def resolve_calibration(calibration: Calibration | str | None, *, n_layers: int, n_labels: int) -> Calibration:
    """The ``Calibration`` whose ``apply`` turns label logits into the scores a decision is made on:
    ``calibration`` itself (a ``Calibration``), the zero offsets of ``"raw"``. ``ValueError`` for None (say which
    calibration), another string, or offsets of another shape (fitted for another model or task);
    ``TypeError`` for anything else."""
    if isinstance(calibration, str):
        if calibration != "raw":
            raise ValueError(f"calibration {calibration!r} is a method name, not offsets: pass the fitted Calibration "
                             "(e.g. task_trace.calibration) or 'raw'.")
        return Calibration("raw", np.zeros((n_layers + 1, n_labels)))
    if calibration is None:
        raise ValueError("the label scores need calibration offsets and the rule carries none (rule.calibration "
                         "is None): pass calibration=<task_trace.calibration | 'raw'>.")
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a Calibration or 'raw', not {type(calibration).__name__}")
    offsets = np.asarray(calibration.offsets, dtype=np.float64)
    if offsets.shape != (n_layers + 1, n_labels):
        raise ValueError(f"calibration offsets have shape {offsets.shape}, expected {(n_layers + 1, n_labels)} "
                         "(L+1 layers x label words): fitted for another model or task?")
    return calibration


# ---------------------------------------------------------------------------------------------------
# One batch


def _slice_rows(value, idx: torch.Tensor, batch: int, cache: dict):
    """``value`` with every per-example tensor (ndim >= 2, first dim == batch) cut to rows ``idx``;
    tuples, lists and dicts are walked. ``cache`` reuses a tensor's slice across layers."""
    if torch.is_tensor(value):
        if value.ndim >= 2 and value.shape[0] == batch:
            hit = cache.get(id(value))
            if hit is None or hit[0] is not value:
                hit = (value, value.index_select(0, idx.to(value.device)))
                cache[id(value)] = hit
            return hit[1]
        return value
    if isinstance(value, tuple):
        return tuple(_slice_rows(v, idx, batch, cache) for v in value)
    if isinstance(value, list):
        return [_slice_rows(v, idx, batch, cache) for v in value]
    if isinstance(value, dict):
        return {k: _slice_rows(v, idx, batch, cache) for k, v in value.items()}
    return value


class _BatchRun:
    """Hook state for one batch: which original rows the running hidden states hold, who has exited."""

    def __init__(self, model: LensModel, policy, *, inputs: Batch, calibration: Calibration, label_ids: torch.Tensor,
                 label_head: Callable[[torch.Tensor], torch.Tensor],
                 full_vocab: bool, min_layer: int, threshold: float, row_ids: np.ndarray,
                 reader: Callable[[torch.Tensor, int], tuple[np.ndarray, np.ndarray]] | None = None):
        self.model, self.policy = model, policy
        self.L = model.n_layers
        self.inputs = inputs
        self.batch = batch = inputs.size
        self.calibration, self.label_ids = calibration, label_ids
        self.label_head = label_head  # the label rows of the unembedding, read once per run
        self.reader = reader  # a learned reader bound to this run (readers.Reader.bind), or None: the lens
        self.full_vocab, self.min_layer, self.threshold = full_vocab, min_layer, threshold
        self.row_ids = np.asarray(row_ids)  # prompt index of each batch row
        self.rows = torch.arange(batch)  # original rows held by the running hidden states, in order
        self.done = np.zeros(batch, dtype=bool)
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, states (rows, hidden)) of the last layer
        self.slice_cache: dict = {}
        self.check_seconds = 0.0
        self.state = OnlineState(rows=self.row_ids)  # what the rule carries from layer to layer
        C = len(label_ids)
        self.exit_layer = np.full(batch, -1)
        self.stop_proba = np.full((batch, self.L + 1), np.nan)
        self.label_logits = np.zeros((batch, C))
        self.scores = np.zeros((batch, C))
        self.states: list[torch.Tensor | None] = [None] * batch
        self.features: dict[str, np.ndarray] = {k: np.full(batch, np.nan) for k in ONLINE_FEATURES}

    # ---- hooks -----------------------------------------------------------------------------------
    def before(self, index: int, args: tuple, kwargs: dict):
        """Pre-hook of decoder layer ``index``: layer 0's input is layer 0's state; rows that exited since the
        last layer are dropped from the hidden states, the layer's per-example arguments and its prefix cache."""
        hidden = layer_input(args, kwargs)
        if index == 0:
            self._layer_state(0, self.inputs.gather_last(hidden, self.rows))
        keep = ~self.done[self.rows.numpy()]
        if not keep.all():  # rows exited since the last layer: drop them from the running states
            positions = torch.from_numpy(np.flatnonzero(keep)).to(hidden.device)
            hidden = hidden.index_select(0, positions)
            self.rows = self.rows[torch.from_numpy(keep)]
            self.slice_cache = {}
        if len(self.rows) == self.batch:
            return None
        idx = self.rows
        cache = _find_cache(args, kwargs)
        if cache is not None and index < len(cache.layers):  # this layer's prefix keys/values: active rows only
            layer_cache = cache.layers[index]
            if getattr(layer_cache, "keys", None) is not None and layer_cache.keys.shape[0] == self.batch:
                layer_cache.batch_select_indices(idx.to(layer_cache.keys.device))  # transformers' own
        args, kwargs = with_input(args, kwargs, hidden)
        args = (args[0], *_slice_rows(args[1:], idx, self.batch, self.slice_cache)) if args else args
        kwargs = {k: (v if k == "hidden_states" else _slice_rows(v, idx, self.batch, self.slice_cache))
                  for k, v in kwargs.items()}
        return args, kwargs

    def after(self, index: int, _args: tuple, _kwargs: dict, output) -> None:
        """Forward hook of decoder layer ``index``: its output is the state of layer ``index + 1``."""
        self._layer_state(index + 1, self.inputs.gather_last(layer_output(output), self.rows))

    # ---- the check -------------------------------------------------------------------------------
    def _layer_state(self, layer: int, h: torch.Tensor) -> None:
        """State ``h`` (active rows, hidden) after ``layer``: check if due; keep it for the next cos_prev."""
        if layer >= self.min_layer:
            start = time.perf_counter()
            self._check(layer, h)
            self.check_seconds += time.perf_counter() - start
        if layer < self.L:
            self.prev = (self.rows, h)  # a fresh tensor per layer: never written to, so features may read it later
        if self.done.all():
            raise StopForward  # every row has exited: abort the forward pass

    def _previous(self, layer: int) -> torch.Tensor | None:
        """The running rows' states at ``layer - 1`` (None at layer 0): rows only leave, so the rows now running
        are a subset of those then, in the same order."""
        if self.prev is None or layer == 0:
            return None
        rows, h = self.prev
        if rows is self.rows:
            return h
        return h.index_select(0, torch.searchsorted(rows, self.rows).to(h.device))

    def _lens(self, layer: int, h: torch.Tensor) -> tuple[Callable[[], dict], Callable[[], tuple]]:
        """What a check at ``layer`` reads of the lens of ``h``, each computed once, when first asked for: the
        full-vocabulary statistics (``lens.lens_stats``) and the label logits with their calibrated scores,
        (n, C) each — ``Calibration.apply`` of the label logits, read from the full-vocabulary lens or, for a
        check on label rows only, from the run's ``label_head``; with a reader, its raw and decision scores."""
        memo: dict = {}

        def stats() -> dict:
            if "stats" not in memo:
                memo["stats"] = lens_stats(self.model, h, self.label_ids, full_vocab=True, top_k=1)
                self._require_finite((memo["stats"]["top_prob"], memo["stats"]["label_logits"]),
                                     "the full-vocabulary lens", layer, h)
            return memo["stats"]

        def label() -> tuple[np.ndarray, np.ndarray]:
            if "label" not in memo and self.reader is not None:
                memo["label"] = self.reader(h, layer)
                self._require_finite(memo["label"], "the reader's label scores", layer, h)
            if "label" not in memo:
                logits = (stats()["label_logits"] if self.full_vocab else self.label_head(h)).double().cpu().numpy()
                self._require_finite(logits, "the label logits", layer, h)
                memo["label"] = logits, self.calibration.apply(logits, layer)
            return memo["label"]

        return stats, label

    def _require_finite(self, values, what: str, layer: int, h: torch.Tensor) -> None:
        """``NonFiniteError`` unless ``values`` (computed from the state ``h`` at ``layer``) are finite, naming the
        residual stream when ``h`` itself is not: a non-finite state makes everything read from it non-finite, so
        checking what a check reads costs one ``isfinite`` per check, not two, and still names where it arose."""
        try:
            check_finite(values, what, model=self.model, layer=layer)
        except NonFiniteError:
            self._blame_the_state(layer, h)
            raise

    def _blame_the_state(self, layer: int, h: torch.Tensor) -> None:
        """``NonFiniteError`` naming the residual stream at ``layer`` when ``h`` holds NaN or inf (called once
        something read from ``h`` was found not finite)."""
        check_finite(h, "the residual stream", model=self.model, layer=layer)

    def _check(self, layer: int, h: torch.Tensor) -> None:
        rows = self.rows.numpy()
        n = len(rows)
        stats, label = self._lens(layer, h)
        feats = online_features(layer, self.L, h, self._previous(layer), vocab_stats=stats if self.full_vocab else None,
                                label_scores=lambda: label()[1])
        self.state.rows = self.row_ids[rows]
        try:
            proba = np.asarray(self.policy.stop_proba_online(feats, layer, self.state), dtype=np.float64).reshape(n)
        except ValueError:  # features that are not finite (cos_prev of a non-finite state): name the state
            self._blame_the_state(layer, h)
            raise
        self.state.history.append(ChainMap({"layer": layer, "rows": self.state.rows}, feats))
        self.stop_proba[rows, layer] = proba
        stop = (proba >= self.threshold) | (layer >= self.L)
        if not stop.any():
            return
        for pos in np.flatnonzero(stop):
            row = rows[pos]
            self.exit_layer[row] = layer
            self.label_logits[row], self.scores[row] = label()[0][pos], label()[1][pos]
            self.states[row] = h[pos].detach().float().cpu()
            for name in ONLINE_FEATURES:
                self.features[name][row] = feats[name][pos]
        self.done[rows[stop]] = True


def _layer_hooks(model: LensModel, run: _BatchRun) -> dict:
    """Only the hooks this run needs (``decoder_hooks`` arguments): pre-hooks to slice rows (batch > 1) and for
    layer-0 work; forward hooks from layer ``min_layer - 1`` on (the layer before the first check feeds
    cos_prev)."""
    L = model.n_layers
    before = [i for i in range(L) if run.batch > 1 or (i == 0 and run.min_layer <= 1)]
    first_post = max(1, run.min_layer - 1)
    return {"before": dict.fromkeys(before, run.before),
            "after": dict.fromkeys([i for i in range(L) if i + 1 >= first_post], run.after)}


# ---------------------------------------------------------------------------------------------------
# Public entry points


def run_early_exit(
    model: LensModel,
    prompts: Sequence[str],
    policy,
    *,
    label_words: Sequence[str] | None = None,
    calibration: Calibration | str | None = None,
    batch_size: int = 1,
    full_vocab: bool | None = None,
    prefix_cache: bool = True,
    prefix: str | None = None,
    progress: bool = False,
    distributed: bool | None = None,
    reader=None,
) -> ExitResult:
    """Run ``prompts`` through ``model``, stopping each at the first layer ``>= policy.min_layer`` whose
    ``policy.stop_proba_online(features, layer, state)`` is ``>= policy.threshold`` (else at ``L``).

    Compute really stops: layers after a row's exit do not run for that row (batch > 1: the pre-hooks drop
    it from the running batch; when no row is left the forward pass is aborted). ``policy`` is an
    ``ExitRule`` (``TypeError`` otherwise); its ``needs_full_vocab`` says whether a check needs the LM head over
    the full vocabulary or only the label rows of the unembedding (the cheap check). ``features`` passed to it
    are arrays over the rows still running: ``ONLINE_FEATURES`` plus ``pred``; ``state`` is the batch's
    ``OnlineState`` (each running row's prompt index, the earlier checks, the rule's carried memory).
    ``calibration`` (a ``Calibration`` or ``"raw"``) overrides the rule's own. ``full_vocab=True`` computes the
    full-vocabulary features even when the rule does not need them (slower checks).

    ``reader`` (a fitted ``readers.Reader``) reads the label scores at each check instead of the lens's label
    rows: the rule's label features and the prediction (argmax) are the reader's, its cost part of each check; at
    L the model's calibrated output decides. ``ReaderModelMismatchError`` for a reader of another model or label
    words, ``PolicyModelMismatchError`` for a rule fitted on another reader's table (a lens rule: no reader).

    Inputs go through ``inputs.prepare_prompts`` (the same checks, label-word resolution and right padding
    as ``lens.trace``); with ``prefix_cache`` the prompts' shared token prefix runs once (outside the timed
    batches; ``run_full`` shares it) and each batch runs only the rest. Under ``accelerate launch`` with several
    processes (``distributed=None`` decides from the environment, ``False`` turns it off) the length-sorted
    batches are dealt round robin across the processes (``model.parallel``) and the results gathered in prompt
    order on every process: the same batches, so the same numbers, as one process. Errors: ``TypeError``/``ValueError``
    for bad prompts (bare string, empty, longer than the context) or ``batch_size``, ``ValueError`` for label
    words that are not one distinct token after the prompt, or calibration offsets of the wrong shape.
    """

    prepared = prepare_prompts(model, prompts, caller="run_early_exit", batch_size=batch_size,
                               prefix_cache=prefix_cache, prefix=prefix)
    if not isinstance(policy, ExitRule):
        raise TypeError(f"run_early_exit takes an exit rule (ExitPolicy, GapThresholdPolicy, FixedExitPolicy, ...), "
                        f"not {type(policy).__name__}")
    words = list(label_words or policy.label_words or [])
    if not words:
        raise ValueError("run_early_exit needs the task's label words (label_words=task.label_words).")
    calibration = _check_reading(model, policy, reader, words, calibration, len(prepared.texts))
    L = model.n_layers
    label_ids = torch.tensor(label_token_ids(model.tokenizer, words, prepared.texts[0], owner=model.name),
                             dtype=torch.long, device=model.device)
    need_full = bool(policy.needs_full_vocab) if full_vocab is None else bool(full_vocab)
    min_layer, threshold = int(min(max(int(policy.min_layer), 0), L)), float(policy.threshold)

    head = model.label_head(label_ids)  # the label rows, read once per run; a reader is bound to this run once
    bound_reader = None if reader is None else reader.bind(model, head)
    collected = _Collected(len(prepared.tokens), L, len(words))

    def work(b: int) -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        batch = prepared.batch(prepared.batches[b])
        run = _BatchRun(model, policy, inputs=batch, calibration=calibration, label_ids=label_ids, label_head=head,
                        full_vocab=need_full, min_layer=min_layer, threshold=threshold, row_ids=prepared.batches[b],
                        reader=bound_reader)
        _run_batch(model, run, batch)
        return _batch_record(prepared.batches[b], run, time.perf_counter() - t0, time.process_time() - c0)

    with torch.no_grad():
        done = parallel.run_batches(parallel.process_state(distributed), len(prepared.batches), work,
                                    desc="early exit", progress=progress)
    for _, record in done:
        collected.add(record)
    meta = {"weights": model.weights_note, "full_vocab_checks": need_full,
            "prefix_tokens": 0 if prepared.prefix is None else prepared.prefix.length,
            "reader": "logit_lens" if reader is None else reader.reader_id}
    return collected.result(model_name=model.name, n_layers=L, label_words=words, batch_size=batch_size,
                            min_layer=min_layer, threshold=threshold, meta=meta)


def _check_reading(model: LensModel, policy, reader, words: list[str], calibration, n_examples: int) -> Calibration:
    """Refuse a rule or reader fitted for another model, label words or reader (``PolicyModelMismatchError``,
    ``ReaderModelMismatchError``), then the ``Calibration`` of the run (``resolve_calibration``: the reader's, the
    given one, or the rule's); ``ValueError`` for a calibration given with a reader (it has its own)."""
    used = replace(identity_of(model), label_words=tuple(words))  # the model's cache id, read once
    check_rule_model(policy, used, n_examples=n_examples, reader="logit_lens" if reader is None else reader.reader_id)
    if reader is not None:
        reader.check_model(used)  # another model or other label words
        if calibration is not None:
            raise ValueError("calibration= and reader= together: a reader decides with the calibration it was "
                             "fitted with (reader.calibration); drop calibration=, or refit the reader")
        calibration = reader.calibration
    return resolve_calibration(policy.calibration if calibration is None else calibration, n_layers=model.n_layers,
                               n_labels=len(words))


def _run_batch(model: LensModel, run: _BatchRun, batch: Batch) -> None:
    """One forward pass of ``batch`` with ``run``'s hooks (aborted once every row has exited)."""
    with decoder_hooks(model, **_layer_hooks(model, run)):
        try:
            model.hf_model(**batch.forward_kwargs(model))
        except StopForward:
            pass
    if (run.exit_layer < 0).any():  # cannot happen: layer L always stops every row
        raise RuntimeError("early exit: some rows never reached an exit (was the model's layer list changed?)")


def _batch_record(idx: np.ndarray, run: _BatchRun, elapsed: float, cpu: float) -> dict:
    """What one batch contributes to the result, as plain CPU data (it may travel to another process)."""
    return {"idx": np.asarray(idx), "seconds": elapsed, "cpu_seconds": cpu,
            "check_seconds": run.check_seconds, "exit_layers": run.exit_layer, "stop_proba": run.stop_proba,
            "label_logits": run.label_logits, "scores": run.scores, "features": run.features,
            "states": [state.cpu() for state in run.states]}


class _Collected:
    """The per-prompt results of ``run_early_exit``, filled batch by batch."""

    def __init__(self, n: int, n_layers: int, n_labels: int):
        self.exit_layers, self.stop_proba = np.full(n, -1), np.full((n, n_layers + 1), np.nan)
        self.label_logits, self.scores = np.zeros((n, n_labels)), np.zeros((n, n_labels))
        self.states: list[torch.Tensor | None] = [None] * n
        self.features = {k: np.full(n, np.nan) for k in ONLINE_FEATURES}
        self.seconds, self.cpu_seconds, self.check_seconds = np.zeros(n), np.zeros(n), np.zeros(n)
        self.batch_seconds: list[float] = []

    def __len__(self) -> int:
        return len(self.exit_layers)

    def add(self, record: dict) -> None:
        """One batch's ``_batch_record`` (from this process or, gathered, from another one)."""
        idx, elapsed, cpu = record["idx"], record["seconds"], record["cpu_seconds"]
        self.batch_seconds.append(elapsed)
        self.seconds[idx], self.cpu_seconds[idx] = elapsed / len(idx), cpu / len(idx)
        self.check_seconds[idx] = record["check_seconds"] / len(idx)
        for name in ("exit_layers", "stop_proba", "label_logits", "scores"):
            getattr(self, name)[idx] = record[name]
        for k in ONLINE_FEATURES:
            self.features[k][idx] = record["features"][k]
        for pos, i in enumerate(idx):
            self.states[i] = record["states"][pos]

    def result(self, **fields) -> ExitResult:
        return ExitResult(predictions=self.scores.argmax(-1), exit_layers=self.exit_layers, stop_proba=self.stop_proba,
                          label_logits=self.label_logits, scores=self.scores,
                          exit_states=torch.stack(self.states).numpy(), exit_features=self.features,
                          seconds=self.seconds, check_seconds=self.check_seconds, batch_seconds=self.batch_seconds,
                          cpu_seconds=self.cpu_seconds, **fields)


def run_full(
    model: LensModel,
    prompts: Sequence[str],
    *,
    label_words: Sequence[str],
    calibration: Calibration | str = "raw",
    batch_size: int = 1,
    prefix_cache: bool = True,
    prefix: str | None = None,
    progress: bool = False,
    distributed: bool | None = None,
) -> FullResult:
    """The dense model, plain: one forward pass per batch (logits at each row's last real token only),
    prediction = argmax of the calibrated label scores at layer L. The reference that early exit is timed
    against: same inputs, batches, prompt-prefix cache and data parallelism as ``run_early_exit`` (see its
    errors)."""

    prepared = prepare_prompts(model, prompts, caller="run_full", batch_size=batch_size, prefix_cache=prefix_cache,
                               prefix=prefix)
    if isinstance(label_words, str) or not label_words:
        raise ValueError(f"run_full() needs the task's label words as a list (label_words=task.label_words), "
                         f"not {label_words!r}")
    words = list(label_words)
    L = model.n_layers
    calibration = resolve_calibration(calibration, n_layers=L, n_labels=len(words))
    label_ids = torch.tensor(label_token_ids(model.tokenizer, words, prepared.texts[0], owner=model.name),
                             dtype=torch.long, device=model.device)
    n = len(prepared.tokens)
    label_logits, seconds, cpu_seconds, batch_seconds = np.zeros((n, len(words))), np.zeros(n), np.zeros(n), []

    def work(b: int) -> tuple[float, float, np.ndarray]:
        t0, c0 = time.perf_counter(), time.process_time()
        logits = _final_label_logits(model, prepared.batch(prepared.batches[b]), label_ids)
        return time.perf_counter() - t0, time.process_time() - c0, logits

    with torch.no_grad():
        done = parallel.run_batches(parallel.process_state(distributed), len(prepared.batches), work,
                                    desc="full model", progress=progress)
    for b, (elapsed, cpu, logits) in done:
        idx = prepared.batches[b]
        label_logits[idx] = logits
        batch_seconds.append(elapsed)
        seconds[idx], cpu_seconds[idx] = elapsed / len(idx), cpu / len(idx)
    check_finite(label_logits, "the model's label logits", model=model, layer=L)
    scores = calibration.apply(label_logits, L)
    return FullResult(predictions=scores.argmax(-1), label_logits=label_logits, scores=scores,
                      seconds=seconds, batch_seconds=batch_seconds, cpu_seconds=cpu_seconds)


def _final_label_logits(model: LensModel, batch: Batch, label_ids: torch.Tensor) -> np.ndarray:
    """The label-word logits (B, C) of the model's output at each row's last real token (logits computed at
    those positions only where the model supports ``logits_to_keep``)."""
    kwargs = batch.forward_kwargs(model)
    keep = torch.unique(batch.last)  # sorted positions whose logits we need
    if "logits_to_keep" in kwargs:
        kwargs["logits_to_keep"] = keep
        logits, at = model.hf_model(**kwargs).logits, torch.searchsorted(keep, batch.last)
    else:
        logits, at = model.hf_model(**kwargs).logits, batch.last
    rows = torch.arange(len(batch.last), device=logits.device)
    return logits[rows, at.to(logits.device)][:, label_ids.to(logits.device)].double().cpu().numpy()


@contextmanager
def count_layer_rows(model: LensModel) -> Iterator[np.ndarray]:
    """Count, per decoder layer, the rows (examples) it computes while the block runs: yields an array (L,)
    that fills in place. After ``run_early_exit`` it shows which layers really ran, and for how many rows."""
    counts = np.zeros(model.n_layers, dtype=int)

    def count(index: int, _args, _kwargs, output) -> None:
        counts[index] += layer_output(output).shape[0]

    with decoder_hooks(model, after=count):
        yield counts


def measure_check_cost(results: ExitResult | Sequence[ExitResult], full_seconds) -> float:
    """Mean cost of one exit check as a fraction of one layer's cost: (check seconds / checks, over all
    ``results``) / (the dense model's mean seconds per example / L). ``full_seconds``: the dense model's
    seconds per example on the same prompts (an array, or their mean). The evaluation table's ``check_cost``
    and ``benchmarks/early_exit_speed.py`` report it."""
    results = [results] if isinstance(results, ExitResult) else list(results)
    checks = sum(int(np.isfinite(r.stop_proba).sum()) for r in results)
    per_check = sum(float(r.check_seconds.sum()) for r in results) / max(checks, 1)
    per_layer = float(np.mean(full_seconds)) / results[0].n_layers
    return per_check / per_layer

