"""Out-of-fold reading of the train split: what exit rules on a reader are fitted and tuned on.

A reader fitted on the train prompts is over-confident on those very prompts (at layer 20 a probe separates its
own training prompts almost perfectly): a threshold chosen on its in-sample confidence would exit too early on
new prompts. ``out_of_fold_trace`` reads each train prompt with a clone of the reader fitted on the other folds,
so the train feature table shows the confidence the reader will have on unseen prompts; the exit rules and
their thresholds are then fitted on it as usual (``rules.tuning.choose_threshold``), and run with the reader
fitted on the whole split (whose ``reader_id`` the out-of-fold trace carries)."""

from __future__ import annotations

import numpy as np

from ..common.checks import check_int
from .base import Reader
from .states import ResidualStates
from .trace import ReaderTrace, reader_data


def out_of_fold_trace(reader: Reader, model, task_trace, states: ResidualStates | None = None, *, cv: int = 5,
                      seed: int = 0) -> ReaderTrace:
    """The train split ``task_trace`` (with its ``states``) read out of fold: prompts are split into ``cv`` folds
    (shuffled with ``seed``), and each fold is read by ``reader.clone()`` fitted on the other folds. ``reader``
    must be fitted on the whole split: the trace carries its ``reader_id``, so rules fitted on the table run
    with it. A reader without parameters to learn (the logit lens) reads the split as it is.
    ``ValueError`` for ``cv`` < 2 or more folds than prompts, an unfitted reader, or states of other prompts."""
    from sklearn.model_selection import KFold

    reader._check_fitted()
    reader.check_model(task_trace.trace)
    if not reader.needs_states:
        return reader.read(model, task_trace, states)
    data = reader_data(task_trace, states)
    check_int(cv, "cv", low=2, high=data.n, allowed=f"an integer in 2..{data.n} (folds over the prompts)")
    L = data.n_layers
    scores = np.zeros((data.n, L, len(data.label_ids)))
    for fit_idx, held_idx in KFold(n_splits=cv, shuffle=True, random_state=seed).split(np.arange(data.n)):
        fold = reader.clone().fit_data(model, data.take(fit_idx))
        scores[held_idx] = fold.layer_scores(model, data.states[held_idx])
    lens = reader.calibration.apply(task_trace.trace.label_logits)
    return ReaderTrace.of(task_trace, np.concatenate([scores, lens[:, L:]], axis=1), reader.reader_id)
