"""Fitting the AdaInfer policies on the TRAIN split: the paper's two classifiers, a suggested first layer
to check, and thresholds tuned out-of-fold."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..common.checks import check_int, check_number

#: The paper's two classifiers over the paper's two features (``gap``, ``top_prob``, full vocabulary).
ADAINFER_POLICIES: dict[str, dict] = {
    "AdaInfer (SVM)": {"classifier": "svm"},
    "AdaInfer (CRF)": {"classifier": "crf"},
}


def suggest_min_layer(train_trace, quantile: float = 0.05) -> int:
    """A first layer worth checking, from the TRAIN split: the ``quantile`` of the oracle exit layers
    (below it almost no example has settled on its final answer, so checks there are wasted time).
    ``ValueError`` for ``quantile`` outside [0, 1]."""
    check_number(quantile, "quantile", low=0.0, high=1.0)
    exits = np.asarray(train_trace.earliest_consistent_layer())
    return int(max(1, np.floor(np.quantile(exits, quantile))))


def fit_policies(train_trace, specs: Mapping[str, dict] | None = None, *, min_layer: int | str = "auto",
                 max_loss: float = 0.01, cv: int | None = 3) -> dict:
    """Fit ``ExitPolicy(**spec)`` for each ``name -> spec`` (default ``ADAINFER_POLICIES``) on the feature
    table of ``train_trace`` (a trace of the TRAIN split) and tune each threshold there (``tune_threshold``:
    the most layers saved for at most ``max_loss`` accuracy loss, out-of-fold over ``cv`` folds).
    ``min_layer="auto"``: ``suggest_min_layer(train_trace)``; a spec's own ``min_layer`` wins.
    ``ValueError`` for ``min_layer`` neither "auto" nor an integer in 0..L, for a spec that is not a dict of
    ``ExitPolicy`` parameters, and for ``max_loss`` / ``cv`` as in ``choose_threshold``."""
    from ..features.table import feature_table
    from ..rules.policy import ExitPolicy
    from ..rules.tuning import tune_threshold

    if min_layer != "auto":
        check_int(min_layer, "min_layer", low=0, high=train_trace.n_layers,
                  allowed=f"'auto' or an integer in 0..{train_trace.n_layers}")
    specs = ADAINFER_POLICIES if specs is None else specs
    bad = [name for name, spec in specs.items() if not isinstance(spec, Mapping)]
    if bad:
        raise ValueError(f"specs must map names to dicts of ExitPolicy parameters; {bad} are not dicts")
    table = feature_table(train_trace)
    first = suggest_min_layer(train_trace) if min_layer == "auto" else int(min_layer)
    fitted = {}
    for name, spec in specs.items():
        policy = ExitPolicy(**{"min_layer": first, **spec}).fit(table)
        fitted[name] = tune_threshold(policy, table, max_loss=max_loss, cv=cv)
    return fitted
