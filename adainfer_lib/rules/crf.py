"""The CRF exit scorer: a linear-chain CRF over each example's sequence of layers ``min_layer..L-1``.

Fitted with ``sklearn_crfsuite.CRF`` (L-BFGS with ``c1``/``c2`` elastic-net penalties). Each layer is described
by its standardised features as floats plus, with ``bins``, a one-hot quantile bin per feature (edges fitted on
the training rows) — a piecewise-constant, non-linear response. The stop probability at layer ``l`` is the CRF
marginal of "stop" at the **last position of the prefix** ``min_layer..l`` (the forward / filtering
probability): it uses no future layer, so the offline replay and the online runner agree.

We compute it with our own forward recursion over the fitted crfsuite weights — state weights ``W``
(attributes × 2) and transitions ``T`` (2 × 2): ``alpha_0 = x_0 W``, ``alpha_t = x_t W + logsumexp(alpha_{t-1}
+ T)`` and ``P(stop at t) = softmax(alpha_t)[1]`` (tests check it against crfsuite's own marginals). Online,
the forward message ``alpha`` of each running row is carried from one checked layer to the next in the
runner's ``OnlineState``: one step per layer, linear in depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..common.numerics import softmax


@dataclass
class CRFScorer:
    """A fitted linear-chain CRF over ``k`` features: standardisation (``mean``, ``scale`` (k,)), quantile bin
    ``edges`` (one array per feature), ``attributes`` (names of the design's columns), state weights ``W``
    (attributes, 2) and transitions ``T`` (2, 2)."""

    mean: np.ndarray
    scale: np.ndarray
    edges: list[np.ndarray]
    attributes: list[str]
    W: np.ndarray
    T: np.ndarray

    kind = "crf"

    # ---- fitting ------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, matrix: np.ndarray, examples: np.ndarray, layers: np.ndarray, labels: np.ndarray, *,
            features: Sequence[str], bins: int | None, c1: float, c2: float, max_iterations: int,
            **crf_params) -> tuple[CRFScorer, object]:
        """Fit on the decision rows (``matrix`` (rows, k), their ``examples``, ``layers`` and 0/1 ``labels``).
        Returns the scorer and the fitted ``sklearn_crfsuite.CRF`` (for its own marginals)."""
        import sklearn_crfsuite

        mean = matrix.mean(0)
        scale = matrix.std(0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        edges = []
        if bins and bins > 1:
            for j in range(matrix.shape[1]):
                qs = np.quantile(matrix[:, j], np.linspace(0, 1, bins + 1)[1:-1])
                edges.append(np.unique(qs))
        names = ["bias", *features]
        names += [f"{f}@bin{b}" for f, e in zip(features, edges) for b in range(len(e) + 1)]
        scorer = cls(mean, scale, edges, names, np.zeros((len(names), 2)), np.zeros((2, 2)))
        design = scorer.design(matrix)
        order = np.lexsort((layers, examples))
        examples, design, labels = examples[order], design[order], labels[order]
        starts = np.flatnonzero(np.r_[True, examples[1:] != examples[:-1]])
        ends = np.r_[starts[1:], len(examples)]
        xseqs, yseqs = [], []
        for s, e in zip(starts, ends):
            xseqs.append([{names[a]: float(v) for a, v in enumerate(row) if v != 0.0} for row in design[s:e]])
            yseqs.append([str(int(v)) for v in labels[s:e]])
        crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=c1, c2=c2, max_iterations=max_iterations,
                                   all_possible_transitions=True, **crf_params)
        crf.fit(xseqs, yseqs)
        index = {n: i for i, n in enumerate(names)}
        for (attr, label), weight in crf.state_features_.items():
            scorer.W[index[attr], int(label)] = weight
        for (a, b), weight in crf.transition_features_.items():
            scorer.T[int(a), int(b)] = weight
        return scorer, crf

    # ---- the forward recursion ------------------------------------------------------------------------------
    def design(self, matrix: np.ndarray) -> np.ndarray:
        """(rows, attributes) design: bias, standardised floats, one-hot quantile bins."""
        n, k = matrix.shape
        out = np.zeros((n, 1 + k + sum(len(edges) + 1 for edges in self.edges)))
        out[:, 0] = 1.0
        out[:, 1:1 + k] = (matrix - self.mean) / self.scale
        rows, start = np.arange(n), 1 + k
        for j, edges in enumerate(self.edges):  # one-hot bin of feature j
            out[rows, start + np.searchsorted(edges, matrix[:, j], side="right")] = 1.0
            start += len(edges) + 1
        return out

    def step(self, log_alpha: np.ndarray | None, matrix: np.ndarray) -> np.ndarray:
        """Forward recursion: log alpha at the next position (B, 2) from the previous one (B, 2), or None at
        the first position."""
        state = self.design(matrix) @ self.W
        if log_alpha is None:
            return state
        # logsumexp over the previous label: numpy's logaddexp.reduce equals scipy.special.logsumexp over two labels
        # (max + log1p(exp(min - max))) to float64 rounding (bit for bit on some CPUs) at 1/100 of its cost (scipy's
        # array-API dispatch takes ~0.25 ms a call: most of an online check); tests/test_policy.py checks it
        return state + np.logaddexp.reduce(log_alpha[:, :, None] + self.T[None], axis=1)

    @staticmethod
    def stop_probability(log_alpha: np.ndarray) -> np.ndarray:
        """P(stop) (B,) from the forward messages (B, 2)."""
        return softmax(log_alpha)[:, 1]

    # ---- offline: a table's sequences ----------------------------------------------------------------------
    def sequence_proba(self, matrix: np.ndarray, examples: np.ndarray, layers: np.ndarray) -> np.ndarray:
        """P(stop) (rows,) of rows ``matrix`` (rows, k) of examples ``examples`` at ``layers`` (all ``>=
        min_layer``): the filtering marginal over each example's rows up to that layer."""
        order = np.lexsort((layers, examples))
        matrix, examples = matrix[order], examples[order]
        new = np.r_[True, examples[1:] != examples[:-1]]
        position = np.arange(len(order)) - np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
        alpha = np.zeros((len(order), 2))
        for t in range(int(position.max()) + 1 if len(order) else 0):
            idx = np.flatnonzero(position == t)
            alpha[idx] = self.step(None if t == 0 else alpha[idx - 1], matrix[idx])
        proba = np.empty(len(order))
        proba[order] = self.stop_probability(alpha)
        return proba

    # ---- online: one step per checked layer ------------------------------------------------------------------
    def online_proba(self, matrix: np.ndarray, first: bool, rows: np.ndarray, memory: dict, key) -> np.ndarray:
        """P(stop) (B,) of the running ``rows`` (prompt ids) from their features ``matrix`` (B, k) at this layer.
        ``first``: this is the rule's first checked layer; otherwise each row's forward message from the previous
        checked layer is read from ``memory[key]`` (written there by the previous call). ``ValueError`` when a
        row has no message (the CRF scores a layer from the prefix ``min_layer..layer``)."""
        previous = None
        if not first:
            carried = memory.get(key)
            if carried is None:
                raise ValueError("the CRF scores a layer from the prefix of layers min_layer..layer: pass the "
                                 "OnlineState of the earlier checks (run it through run_early_exit)")
            position = carried[0]
            try:
                previous = carried[1][[position[int(r)] for r in rows]]
            except KeyError:
                raise ValueError("the OnlineState does not hold these rows' earlier checks") from None
        alpha = self.step(previous, matrix)
        memory[key] = ({int(r): i for i, r in enumerate(rows)}, alpha)
        return self.stop_probability(alpha)

    # ---- persistence -----------------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {"crf_mean": self.mean, "crf_scale": self.scale, "crf_W": self.W, "crf_T": self.T}
        out.update({f"crf_edges_{j}": e for j, e in enumerate(self.edges)})
        return out

    def config(self) -> dict:
        return {"attributes": list(self.attributes), "n_edges": len(self.edges)}

    @classmethod
    def from_saved(cls, config: dict, arrays: dict[str, np.ndarray]) -> CRFScorer:
        edges = [arrays[f"crf_edges_{j}"] for j in range(int(config["n_edges"]))]
        return cls(arrays["crf_mean"], arrays["crf_scale"], edges, list(config["attributes"]), arrays["crf_W"],
                   arrays["crf_T"])
