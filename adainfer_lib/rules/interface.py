"""The exit-rule interface: what every part of the suite reads from a rule — the real early-exit runner,
every replay, the evaluation, the explorer, Learn-then-Test — and nothing else: no attribute probing, no
signature inspection. A rule has a stopping ``threshold`` and a ``min_layer`` (the first layer it checks); it
exits at the first layer ``>= min_layer`` whose stop score is ``>= threshold`` (else at L). Implemented by the
learned ``ExitPolicy`` (``policy.py``) and the rules without a classifier (``plain.py``).

Online, the runner calls ``rule.stop_proba_online(features, layer, state)`` once per checked layer with the
still-running rows' features and an ``OnlineState`` that it carries from layer to layer for the batch (the
prompt index of each running row, the earlier checks, and a ``memory`` where a rule keeps what it carries —
the CRF's forward messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ..common.replay import first_exit
from ..data.calibration import Calibration
from ..model.identity import ModelIdentity


@dataclass
class OnlineState:
    """What the runner carries for a rule across the checked layers of one batch.

    ``rows`` (B,): the prompt index of each running row (in the prompts given to ``run_early_exit``);
    ``history``: the earlier checks, oldest first (dicts with ``layer``, ``rows`` and the features);
    ``memory``: the rule's own state carried from layer to layer (keyed by the rule)."""

    rows: np.ndarray
    history: list[dict] = field(default_factory=list)
    memory: dict = field(default_factory=dict)


@runtime_checkable
class ExitRule(Protocol):
    """An exit rule: what the runner, the replays, the evaluation and the explorer use.

    - ``threshold`` (float) and ``min_layer`` (int): the stopping rule (first layer ``>= min_layer`` whose stop
      score is ``>= threshold``, else L);
    - ``needs_full_vocab``: whether a check needs the full vocabulary through the LM head (top_prob, gap,
      entropy) or only the label-word rows of the unembedding (the cheap check);
    - ``calibration`` (``Calibration`` or None) and ``label_words`` (list or None): what the rule was fitted
      with, for the online label features and the prediction;
    - ``fitted_for``: the ``ModelIdentity`` of the model and task it was fitted on (empty when it needs none);
    - ``stop_proba_online(features, layer, state) -> (B,)``: the stop scores of the B running rows at ``layer``
      from their online features (name → (B,) array), ``state`` an ``OnlineState``;
    - ``stop_matrix(table) -> (n, L+1)``: the stop scores of every example of a feature table at every layer
      (examples in ascending id order; NaN where never checked): the offline replay;
    - ``check_layers(n_layers, n_examples)``: ``ValueError`` when its layers do not fit a model of L layers;
    - ``with_threshold(t)``: a copy at another threshold (and ``threshold_range``: the allowed thresholds).
    """

    threshold: float
    min_layer: int

    @property
    def needs_full_vocab(self) -> bool: ...

    @property
    def calibration(self) -> Calibration | None: ...

    @property
    def label_words(self) -> list[str] | None: ...

    @property
    def fitted_for(self) -> ModelIdentity: ...

    @property
    def threshold_range(self) -> tuple[float | None, float | None]: ...

    def stop_proba_online(self, features: Mapping[str, np.ndarray], layer: int, state: OnlineState) -> np.ndarray: ...

    def stop_matrix(self, table: pd.DataFrame) -> np.ndarray: ...

    def check_layers(self, n_layers: int | None, n_examples: int | None = None) -> None: ...

    def with_threshold(self, threshold: float) -> ExitRule: ...


def exit_layers(rule: ExitRule, table: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
    """The rule's exits (n,) replayed on a feature table (examples in ascending id order), at ``threshold``
    (default the rule's own)."""
    return first_exit(rule.stop_matrix(table), rule.threshold if threshold is None else threshold, rule.min_layer)
