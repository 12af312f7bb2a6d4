"""Exit rules on a learned reader, fitted on its out-of-fold reading of the train split, and the probe's C chosen
by the exits it allows: what chapter 08 and ``benchmarks/reader_exits.py`` both run.

- ``READER_RULES``: the rules tried on every reader — one confidence threshold on ``label_top_prob`` of the
  reader's scores, and a logistic regression on that confidence and the depth (``layer_frac``) that learns which
  (confidence, layer) pairs already agree with the full model (label scheme ``consistent``; the depth lets it ask
  for more confidence early than late);
- ``fit_reader_rule(kind, oof_table)``: one of them fitted on the reader's out-of-fold train feature table and its
  threshold chosen there (``rules.tuning.choose_threshold``: the most layers saved within ``max_loss`` of
  consistency);
- ``certify_reader_rule(rule, calibration)``: chapter 06's Learn-then-Test on a reader's rule, over
  ``CERTIFICATION_CANDIDATES`` (the same grid refined near 1: on the default 0.01 grid the first candidate below
  1.00 is 0.99, so a probe whose right threshold is 0.995 certified nothing and saved 0%);
- ``choose_probe_c(model, train, states, cs)``: the ``ProbeReader`` whose C lets its threshold rule save the most
  layers on the out-of-fold train table within ``max_loss`` (ties: the better out-of-fold agreement). Agreement
  alone prefers a weaker regularisation whose confidences are too sure of themselves to exit early (measured on
  sentiment and topic, 3 seeds: README, Benchmarks).
"""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd

from ..certification import Certification, certify_threshold
from ..common.checks import check_choice, check_int, check_number
from ..features.table import feature_table
from ..readers import ProbeReader, out_of_fold_trace
from ..rules.policy import CONFIDENCE_THRESHOLDS, ExitPolicy
from ..rules.tuning import choose_threshold, simulate

#: The exit rules tried on every reader, by name: a factory of the unfitted rule.
READER_RULES: dict[str, Callable[[], ExitPolicy]] = {
    "threshold": lambda: ExitPolicy("threshold", features=("label_top_prob",), min_layer=1),
    "logistic": lambda: ExitPolicy("logistic", features=("label_top_prob", "layer_frac"), min_layer=1,
                                   label_scheme="consistent"),
}

#: Learn-then-Test candidates for a reader's rule, conservative → aggressive: ``CONFIDENCE_THRESHOLDS`` up to 1.
CERTIFICATION_CANDIDATES: tuple[float, ...] = tuple(sorted((float(t) for t in CONFIDENCE_THRESHOLDS if t <= 1.0),
                                                           reverse=True))


def fit_reader_rule(kind: str, oof_table: pd.DataFrame, *, max_loss: float = 0.015) -> ExitPolicy:
    """``READER_RULES[kind]`` fitted on a reader's OUT-OF-FOLD train feature table
    (``feature_table(out_of_fold_trace(...))``), with the threshold that saves the most layers there within
    ``max_loss`` of consistency (a learned rule's stop probabilities are out of fold again; the threshold rule's grid
    is ``CONFIDENCE_THRESHOLDS``, refined near 1 where a reader's confidences crowd). ``ValueError`` for an unknown
    ``kind`` or ``max_loss`` outside [0, 1]."""
    check_choice(kind, "kind", tuple(READER_RULES))
    check_number(max_loss, "max_loss", low=0.0, high=1.0, allowed="a number in [0, 1] (0.015 = 1.5 points)")
    rule = READER_RULES[kind]().fit(oof_table)
    threshold, _ = choose_threshold(rule, oof_table, max_loss=max_loss, metric="consistency",
                                    thresholds=CONFIDENCE_THRESHOLDS if kind == "threshold" else None)
    return rule.with_threshold(threshold)


def certify_reader_rule(rule, calibration: pd.DataFrame, *, delta: float = 0.05,
                        epsilon: float = 0.05) -> tuple[ExitPolicy, Certification]:
    """``certification.certify_threshold`` (Learn-then-Test, disagreement risk, fixed-sequence binomial tests:
    no labels needed) of a reader's ``rule`` on the feature table ``calibration`` of prompts the reader and the rule
    never saw, over ``CERTIFICATION_CANDIDATES``. Returns (the certified copy of the rule, its ``Certification``);
    the copy never exits early when nothing is certified. ``ValueError`` for ``delta`` or ``epsilon`` outside
    (0, 1)."""
    return certify_threshold(rule, calibration, delta=delta, epsilon=epsilon, thresholds=CERTIFICATION_CANDIDATES)


def choose_probe_c(model, train, states, cs: Sequence[float] = (0.01, 0.05, 0.2), *, max_loss: float = 0.015,
                   cv: int = 5) -> tuple[ProbeReader, pd.DataFrame, pd.DataFrame]:
    """The probe's C among ``cs``, chosen on the TRAIN split (``train``: its task trace, ``states``: its residual
    states) out of fold: for each C, a ``ProbeReader`` fitted on all of train, its ``cv``-fold out-of-fold reading,
    the mean out-of-fold agreement with the full model over layers 1..L-1, and the layers its threshold rule
    (``fit_reader_rule("threshold")``) saves on that out-of-fold table; the C that saves the most wins (ties: the
    better agreement, then the smaller C). Returns (the chosen probe, its out-of-fold feature table — what its exit
    rules are fitted on —, one row per C with ``C``, ``oof_mean_agreement``, ``oof_layers_saved``, ``chosen``).
    ``ValueError`` for an empty ``cs`` or a C <= 0, ``cv`` < 2."""
    cs = [float(check_number(c, "C", positive=True)) for c in cs]
    if not cs:
        raise ValueError("cs: give at least one C (inverse L2 strength) to choose among")
    check_int(cv, "cv", low=2)
    rows, fitted = [], []
    for c in cs:
        probe = ProbeReader(C=c).fit(model, train, states)
        oof = out_of_fold_trace(probe, model, train, states, cv=cv)
        table = feature_table(oof)
        saved = simulate(fit_reader_rule("threshold", table, max_loss=max_loss), table)["layers_saved"]
        rows.append({"C": c, "oof_mean_agreement": float(oof.consistency_by_layer()[1:-1].mean()),
                     "oof_layers_saved": float(saved)})
        fitted.append((probe, table))
    choice = pd.DataFrame(rows)
    best = int(choice.assign(neg_c=-choice["C"]).sort_values(["oof_layers_saved", "oof_mean_agreement", "neg_c"],
                                                             ascending=False, kind="stable").index[0])
    choice["chosen"] = choice.index == best
    return (*fitted[best], choice)
