"""``ProbeReader``: a linear probe per layer on the last-position residual state (Alain & Bengio 2016's linear
classifier probes), trained to predict the FULL model's calibrated decision.

Per layer l < L: ``StandardScaler`` → ``LogisticRegression(C)`` (scikit-learn, L2, lbfgs, multinomial), fitted
on the train split's states at l with the full model's decision (the argmax of its calibrated label scores at
layer L) as the target. **No gold labels are used**: the probe learns what the model will answer, which is what
an exit must reproduce (consistency, and the disagreement risk Learn-then-Test certifies, need no labels); a
probe trained on gold labels could beat the model's accuracy at some layer, but its exits would then disagree
with the model they stand in for, and it would need labelled data.

``C = 0.05`` by default: with d = 576 standardised features (the default model) and a few hundred prompts a
layer, an unregularised probe separates the train prompts perfectly at every layer and is over-confident on
new ones; a strong L2 penalty keeps its confidence honest enough to threshold (DESIGN §7's measurement used
0.05; ``C`` is a parameter, to be chosen on train by cross-validation where it matters).

The fitted scaler and classifier are folded into one affine map per layer, ``logits = h @ W[l].T + b[l]``
(W (L, C, d), b (L, C), float64): online a check is one d × C matmul, and offline the same arithmetic, so real
runs and replays agree. A label the full model never predicts on train gets a logit of ``ABSENT_LOGIT``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common.checks import check_int, check_number
from ..common.numerics import log_softmax
from .base import LayerLogits, Reader
from .trace import ReaderData

#: The logit of a label the full model never predicted on the train prompts (the probe cannot predict it).
ABSENT_LOGIT = -1e3


def fit_linear_layer(X: np.ndarray, y: np.ndarray, n_labels: int, *, C: float, max_iter: int,
                     tol: float) -> tuple[np.ndarray, np.ndarray]:
    """One layer's probe: ``StandardScaler`` → ``LogisticRegression(C)`` on ``X`` (n, d) and labels ``y`` (n,) in
    0..n_labels-1, folded into (W (n_labels, d), b (n_labels,)) with ``softmax(X @ W.T + b)`` = the classifier's
    probabilities (binary: logits [0, decision function]); labels absent from ``y`` get ``ABSENT_LOGIT``, a single
    present label a constant prediction."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    W, b = np.zeros((n_labels, X.shape[1])), np.full(n_labels, ABSENT_LOGIT)
    classes = np.unique(y)
    if len(classes) == 1:
        b[classes[0]] = 0.0
        return W, b
    scaler = StandardScaler().fit(X)
    clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(scaler.transform(X), y)
    coef, intercept = clf.coef_, clf.intercept_
    if len(classes) == 2:  # sklearn's binary model: P(classes[1]) = sigmoid(decision) = softmax([0, decision])
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    W[classes] = coef / scaler.scale_
    b[classes] = intercept - (coef / scaler.scale_) @ scaler.mean_
    return W, b


@dataclass(eq=False, repr=False)
class ProbeReader(Reader):
    """A regularised linear probe per layer (see the module docstring). Parameters: ``C`` (inverse L2 strength,
    > 0), ``max_iter`` and ``tol`` of lbfgs. Deterministic: lbfgs on the same data gives the same weights.
    Scores: the probe's log-probabilities over the label words, (B, C)."""

    C: float = 0.05
    max_iter: int = 2000
    tol: float = 1e-4

    kind = "probe"

    def _check_params(self) -> None:
        check_number(self.C, "C", positive=True)
        check_int(self.max_iter, "max_iter", low=1)
        check_number(self.tol, "tol", positive=True)

    def _fit(self, model, data: ReaderData) -> dict:
        L, C = data.n_layers, len(data.label_ids)
        y = data.targets
        layers = [fit_linear_layer(data.states[:, layer].astype(np.float64), y, C, C=self.C,
                                   max_iter=self.max_iter, tol=self.tol) for layer in range(L)]
        return {"weight": np.stack([w for w, _ in layers]), "bias": np.stack([b for _, b in layers])}

    def _scores(self, raw: np.ndarray, layer: int) -> np.ndarray:
        return log_softmax(raw)

    def _layer_logits(self, model, label_head, arrays: dict) -> LayerLogits:
        W, b = arrays["weight"], arrays["bias"]
        return lambda h, layer: h.double().cpu().numpy() @ W[layer].T + b[layer]

    def _array_shapes(self, n_layers: int, n_labels: int, hidden: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (n_layers, n_labels, hidden), "bias": (n_layers, n_labels)}
