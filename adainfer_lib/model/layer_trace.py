"""``LayerTrace``: the logit lens's statistics of ``n`` prompts at every layer, and its file format.

The container ``model.lens.trace`` fills and ``model.trace_cache`` stores: per example × layer arrays, the label
words and their token ids, the top tokens' strings, and ``meta`` (what was traced, how, and by which weights).
A saved trace is an ``.npz`` archive with a JSON header and no pickles; ``load`` checks its format version.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.cache import atomic_write_bytes

TRACE_FORMAT_VERSION = 1
TRACE_ARRAYS = ("top_ids", "top_probs", "top_prob", "gap", "entropy", "kl_to_final", "cos_prev", "label_logits",
                "n_tokens")


class CorruptCacheError(ValueError):
    """A cached trace that cannot be read back or does not match what was asked for."""


@dataclass
class LayerTrace:
    """Logit-lens statistics of ``n`` prompts at layers ``0..L`` (last prompt position).

    Arrays (``n`` examples, ``L + 1`` layers, ``k`` top tokens, ``C`` label words):
    ``top_ids``/``top_probs`` (n, L+1, k); ``top_prob``, ``gap``, ``entropy``, ``kl_to_final``, ``cos_prev``
    (n, L+1) — full-vocabulary statistics are NaN when traced with ``full_vocab=False``, and ``cos_prev`` is
    NaN at layer 0; ``label_logits`` (n, L+1, C) raw logits of the label words; ``n_tokens`` (n,).
    """

    model_name: str
    n_layers: int
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_prob: np.ndarray
    gap: np.ndarray
    entropy: np.ndarray
    kl_to_final: np.ndarray
    cos_prev: np.ndarray
    label_logits: np.ndarray
    n_tokens: np.ndarray
    label_words: list[str] = field(default_factory=list)
    label_ids: list[int] = field(default_factory=list)
    token_strings: dict[int, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, layers = self.top_prob.shape
        if layers != self.n_layers + 1:
            raise ValueError(f"expected {self.n_layers + 1} layers (0..L), got {layers}")
        for name in ("gap", "entropy", "kl_to_final", "cos_prev"):
            if getattr(self, name).shape != (n, layers):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(n, layers)}")
        if self.top_ids.shape != self.top_probs.shape or self.top_ids.shape[:2] != (n, layers):
            raise ValueError(f"top_ids {self.top_ids.shape} / top_probs {self.top_probs.shape} do not match "
                             f"{(n, layers)}")
        if self.label_logits.shape != (n, layers, len(self.label_words)):
            raise ValueError(
                f"label_logits has shape {self.label_logits.shape}, expected {(n, layers, len(self.label_words))}"
            )
        if self.n_tokens.shape != (n,):
            raise ValueError(f"n_tokens has shape {self.n_tokens.shape}, expected {(n,)}")

    @property
    def n_examples(self) -> int:
        return self.top_prob.shape[0]

    @property
    def layers(self) -> np.ndarray:
        """Layer numbers ``0..L``."""
        return np.arange(self.n_layers + 1)

    def label_probs(self) -> np.ndarray:
        """Label-word probabilities renormalised over the label words: (n, L+1, C). A trace without label
        words (``trace(model, prompts)``) gives an empty (n, L+1, 0) array."""
        if not self.label_words:
            return np.zeros((*self.label_logits.shape[:2], 0), dtype=self.label_logits.dtype)
        from scipy.special import softmax

        return softmax(self.label_logits, axis=-1)

    def top_tokens(self, example: int) -> pd.DataFrame:
        """Top-k tokens of one example: one row per layer, columns ``token_i`` and ``prob_i``."""
        rows = {}
        for i in range(self.top_ids.shape[2]):
            rows[f"token_{i + 1}"] = [self.token_strings.get(int(t), "?") for t in self.top_ids[example, :, i]]
            rows[f"prob_{i + 1}"] = self.top_probs[example, :, i]
        return pd.DataFrame(rows, index=pd.Index(self.layers, name="layer"))

    def label_columns(self) -> list[str]:
        """The ``to_frame`` column of each label word: ``p_<word without surrounding spaces>``. ``ValueError``
        naming the words when two of them give the same column (" positive" and "positive", or a word listed
        twice): columns are never merged or renamed silently."""
        columns = [f"p_{word.strip()}" for word in self.label_words]
        clashes = {c: [w for w, c2 in zip(self.label_words, columns) if c2 == c]
                   for c in columns if columns.count(c) > 1}
        if clashes:
            detail = "; ".join(f"{words} all give {c!r}" for c, words in clashes.items())
            raise ValueError(f"label words collide as table columns: {detail}. Label words must differ after "
                             "stripping spaces to become columns of to_frame().")
        return columns

    def to_frame(self) -> pd.DataFrame:
        """Tidy table, one row per example × layer: example, layer, top_prob, gap, entropy, kl_to_final,
        cos_prev, top_token, and ``p_<word>`` per label word (renormalised over the label words; none for a
        trace without label words). Column names come from ``label_columns``: label words that collide after
        stripping spaces (" positive" and "positive") raise ``ValueError`` instead of sharing a column."""
        columns = self.label_columns()
        n, layers = self.top_prob.shape
        frame = pd.DataFrame(
            {
                "example": np.repeat(np.arange(n), layers),
                "layer": np.tile(np.arange(layers), n),
                "top_prob": self.top_prob.ravel(),
                "gap": self.gap.ravel(),
                "entropy": self.entropy.ravel(),
                "kl_to_final": self.kl_to_final.ravel(),
                "cos_prev": self.cos_prev.ravel(),
                "top_token": [self.token_strings.get(int(t), "?") for t in self.top_ids[..., 0].ravel()]
                if self.top_ids.shape[2]
                else None,
            }
        )
        probs = self.label_probs()
        for c, column in enumerate(columns):
            frame[column] = probs[..., c].ravel()
        return frame

    # ---- persistence -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """An ``.npz`` archive (no pickles): the arrays plus a JSON header."""
        header = {
            "format_version": TRACE_FORMAT_VERSION,
            "model_name": self.model_name,
            "n_layers": self.n_layers,
            "label_words": self.label_words,
            "label_ids": self.label_ids,
            "token_strings": {str(k): v for k, v in self.token_strings.items()},
            "meta": self.meta,
        }
        buffer = BytesIO()
        np.savez_compressed(buffer, header=np.array(json.dumps(header)), **{k: getattr(self, k) for k in TRACE_ARRAYS})
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename)."""
        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> LayerTrace:
        """Read a saved trace; ``CorruptCacheError`` if it is truncated, unreadable or of another format."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                header = json.loads(str(archive["header"]))
                arrays = {k: archive[k] for k in TRACE_ARRAYS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as err:
            raise CorruptCacheError(f"cannot read trace {path}: {err}") from err
        if header.get("format_version") != TRACE_FORMAT_VERSION:
            raise CorruptCacheError(f"trace {path} has format {header.get('format_version')}, expected "
                                    f"{TRACE_FORMAT_VERSION}")
        return cls(
            model_name=header["model_name"],
            n_layers=header["n_layers"],
            label_words=header["label_words"],
            label_ids=header["label_ids"],
            token_strings={int(k): v for k, v in header["token_strings"].items()},
            meta=header["meta"],
            **arrays,
        )
