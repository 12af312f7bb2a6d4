"""The reader interface: a map from a layer's last-position residual state (B, d) to label scores (B, C).

Every reader (``LogitLensReader``, ``ProbeReader``, ``TunedLensReader``) is a ``Reader``:

- ``fit(model, task_trace, states)`` on a task's TRAIN split (``task_trace`` from ``trace_task(...,
  split="train")``, ``states`` from ``task_states(model, task, "train")``); what it records: the model and task
  (``fitted_for``), the label words and token ids, the task's lens ``calibration``;
- offline, ``read(model, task_trace, states)`` → ``ReaderTrace``: the same task trace with the reader's label
  scores (n, L+1, C), which every table, rule, replay and certification reads as it reads the lens;
- online, ``bind(model, label_head)`` → ``read(h, layer) -> (raw (B, C), scores (B, C))``, what
  ``run_early_exit(..., reader=...)`` calls at a checked layer: the prediction at an exit is the argmax of the
  scores. The same function scores offline and online, so a real run's exits equal the replay's;
- ``save(path)`` / ``Reader.load(path, model=None)``: no pickle (``persistence``), refused on another model.

Layer L is never read by the reader: there the model's own output decides (the lens at L is the model's logits,
calibrated as the task's decisions are), so the full model's decision, and "consistency" with it, are the same
for every reader. Readers of layers 0..L-1 are per layer (a layer's reader sees only that layer's state)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

from ..common.cache import content_key
from ..model.identity import ModelIdentity, ModelMismatchError, identity_of, refuse_other_model
from .persistence import ReaderState, finite_array, load_state, save_state
from .states import ResidualStates
from .trace import ReaderData, ReaderTrace, check_states_match, reader_data

OnlineRead = Callable[[torch.Tensor, int], tuple[np.ndarray, np.ndarray]]
LayerLogits = Callable[[torch.Tensor, int], np.ndarray]


class ReaderModelMismatchError(ModelMismatchError):
    """A reader used with a model, trace or task other than the one it was fitted on."""


class Reader:
    """Base class of the readers (see the module docstring). Subclasses are dataclasses of their constructor
    parameters and implement ``_fit(model, data) -> arrays``, ``_layer_logits(model, label_head, arrays) ->
    fn(h (B, d), layer) -> raw (B, C)`` and ``_array_shapes(L, C, d) -> {name: shape}``; ``_scores(raw, layer)``
    turns raw scores into the decision scores (default: the task's calibration at that layer)."""

    kind: ClassVar[str] = ""
    #: whether fitting / reading needs the residual states (the logit lens reads the trace's label logits)
    needs_states: ClassVar[bool] = True
    _KINDS: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Reader._KINDS[cls.kind] = cls

    # ---- parameters ----------------------------------------------------------------------------------
    def get_params(self) -> dict:
        """The constructor parameters (JSON scalars)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _check_params(self) -> None:
        """``ValueError`` naming a bad constructor parameter (subclasses)."""

    def __post_init__(self) -> None:
        self._check_params()

    # ---- fitted state --------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "arrays_"):
            raise ValueError(f"this {type(self).__name__} is not fitted: call fit(model, task_trace, states) "
                             "on the train split first")

    def _set_fitted(self, data: ReaderData, hidden_size: int, arrays: dict, metadata: dict) -> None:
        self.identity_, self.label_ids_, self.calibration_ = data.identity, tuple(data.label_ids), data.calibration
        self.hidden_size_, self.metadata_ = int(hidden_size), dict(metadata)
        self.arrays_ = {k: np.asarray(v) for k, v in arrays.items()}
        self.reader_id_ = f"{self.kind}-" + content_key(self.kind, self.get_params(), data.identity.to_dict(),
                                                    list(self.label_ids_), self.calibration_.method,
                                                    np.asarray(self.calibration_.offsets, dtype=np.float64),
                                                    *[self.arrays_[k] for k in sorted(self.arrays_)])

    @property
    def reader_id(self) -> str:
        """Identifies this fitted reader (kind + a content key of its parameters, identity and arrays): the
        ``reader`` a feature table and the rules fitted on it record."""
        self._check_fitted()
        return self.reader_id_

    @property
    def fitted_for(self) -> ModelIdentity:
        """The model and task the reader was fitted on, with ``reader`` = its ``reader_id``."""
        self._check_fitted()
        i = self.identity_
        return ModelIdentity(i.model_id, i.model, i.n_layers, i.label_words, i.task, self.reader_id)

    @property
    def label_words(self) -> list[str]:
        self._check_fitted()
        return list(self.identity_.label_words)

    @property
    def calibration(self):
        """The task's lens ``Calibration`` (L+1, C): decides at layer L (and at every layer for the logit lens)."""
        self._check_fitted()
        return self.calibration_

    @property
    def n_layers(self) -> int:
        self._check_fitted()
        return int(self.identity_.n_layers)

    def check_model(self, model) -> None:
        """``ReaderModelMismatchError`` naming both models when ``model`` (a ``LensModel``, trace, task trace or
        cache id, or a ``ModelIdentity``) is not the one the reader was fitted on; the label words too where
        ``model`` knows them (a trace)."""
        used = identity_of(model)
        refuse_other_model(self.identity_, used, "this reader was fitted on", ReaderModelMismatchError,
                           advice="fit the reader on states of this model")
        if used.label_words and tuple(used.label_words) != tuple(self.identity_.label_words):
            raise ReaderModelMismatchError(f"this reader reads label words {list(self.identity_.label_words)} "
                                           f"(task {self.identity_.task!r}), not {list(used.label_words)}")

    # ---- fitting -------------------------------------------------------------------------------------
    def fit(self, model, task_trace, states: ResidualStates | None = None) -> Reader:
        """Fit on a traced TRAIN split and its residual states (``readers.task_states(model, task, "train")``).
        ``ValueError`` when the states are not those of the trace's prompts and model; ``ReaderModelMismatchError``
        when ``model`` is not the trace's."""
        data = reader_data(task_trace, states, needs_states=self.needs_states)
        if model is not None:
            refuse_other_model(data.identity, identity_of(model), "the task trace was made with",
                               ReaderModelMismatchError, advice="trace the task with this model")
        return self.fit_data(model, data)

    def fit_data(self, model, data: ReaderData) -> Reader:
        """Fit on ``ReaderData`` (``fit`` builds it; out-of-fold fitting passes subsets)."""
        self._check_params()
        arrays = self._fit(model, data)
        hidden = 0 if data.states is None else data.states.shape[2]
        self._set_fitted(data, hidden, arrays, {"n_train_examples": int(data.n)})
        return self

    def clone(self) -> Reader:
        """An unfitted reader with the same parameters."""
        return type(self)(**self.get_params())

    def _fit(self, model, data: ReaderData) -> dict:
        raise NotImplementedError

    # ---- reading -------------------------------------------------------------------------------------
    def _scores(self, raw: np.ndarray, layer: int) -> np.ndarray:
        return self.calibration_.apply(raw, layer)

    def _layer_logits(self, model, label_head, arrays: dict) -> LayerLogits:
        raise NotImplementedError

    def bind(self, model, label_head: Callable[[torch.Tensor], torch.Tensor]) -> OnlineRead:
        """The online reader for one run of ``model``: ``read(h, layer)`` → (raw (B, C), scores (B, C)) float64
        for states ``h`` (B, d) at ``layer``; at layer L the model's own label logits (``label_head``, the
        run's label rows) and calibration. The caller checks the model first (``check_model``: ``run_early_exit``
        does, with the run's label words)."""
        self._check_fitted()
        layer_logits = self._layer_logits(model, label_head, self.arrays_)
        L = self.n_layers

        def read(h: torch.Tensor, layer: int) -> tuple[np.ndarray, np.ndarray]:
            if layer >= L:
                raw = label_head(h).double().cpu().numpy()
                return raw, self.calibration_.apply(raw, L)
            raw = layer_logits(h, layer)
            return raw, self._scores(raw, layer)

        return read

    def layer_scores(self, model, states: np.ndarray) -> np.ndarray:
        """Offline scores (n, L, C) at layers 0..L-1 of ``states`` (n, L+1, d) float32 — the same function as
        ``bind`` applies online, layer by layer."""
        self._check_fitted()
        head = None if model is None else model.label_head(torch.tensor(self.label_ids_, device=model.lens_device))
        layer_logits = self._layer_logits(model, head, self.arrays_)
        with torch.no_grad():
            return np.stack([self._scores(layer_logits(torch.from_numpy(np.ascontiguousarray(states[:, layer])),
                                                       layer), layer) for layer in range(self.n_layers)], axis=1)

    def _read_layers(self, model, task_trace, states: ResidualStates | None) -> np.ndarray:
        """The reader's scores (n, L, C) at layers 0..L-1 of the traced prompts."""
        if states is None:
            raise ValueError(f"{type(self).__name__} reads residual states: pass states=task_states(model, task, "
                             "split) for the task trace's split")
        check_states_match(task_trace, states)
        return self.layer_scores(model, states.states)

    def read(self, model, task_trace, states: ResidualStates | None = None) -> ReaderTrace:
        """The ``ReaderTrace`` of ``task_trace`` (any split of the task) with this reader's scores; layer L is the
        model's calibrated decision, read from the trace. ``ReaderModelMismatchError`` for another model or
        task's label words; ``ValueError`` for states that are not those of the trace."""
        self._check_fitted()
        self.check_model(task_trace.trace)
        if model is not None:
            self.check_model(model)
        L = self.n_layers
        lens = self.calibration_.apply(task_trace.trace.label_logits)  # (n, L+1, C): layer L decides
        scores = np.concatenate([self._read_layers(model, task_trace, states), lens[:, L:]], axis=1)
        return ReaderTrace.of(task_trace, scores, self.reader_id)

    # ---- persistence ---------------------------------------------------------------------------------
    def _array_shapes(self, n_layers: int, n_labels: int, hidden: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def state(self) -> ReaderState:
        """The fitted reader as plain data (``persistence.ReaderState``)."""
        self._check_fitted()
        return ReaderState(self.kind, self.get_params(), self.identity_, self.label_ids_, self.calibration_,
                           self.hidden_size_, dict(self.arrays_), dict(self.metadata_))

    @classmethod
    def from_state(cls, state: ReaderState, path: str | Path = "<state>") -> Reader:
        """The reader ``state`` describes, its parameters and arrays checked (``ValueError`` naming ``path`` and
        the field): the kind's arrays, each of its shape for L, C and d, with finite values only."""
        kind_cls = Reader._KINDS.get(state.kind)
        if kind_cls is None or (cls is not Reader and kind_cls is not cls):
            raise ValueError(f"{path}: a {state.kind!r} reader, not a {cls.kind or 'known'!r} one")
        try:
            reader = kind_cls(**state.params)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: header.params: {err}") from None
        shapes = reader._array_shapes(state.identity.n_layers, len(state.identity.label_words), state.hidden_size)
        if set(state.arrays) != set(shapes):
            raise ValueError(f"{path}: a {state.kind} reader holds arrays {sorted(shapes)}, the file "
                             f"{sorted(state.arrays)}")
        arrays = {name: finite_array(path, name, state.arrays[name], shape) for name, shape in shapes.items()}
        data = ReaderData(None, np.zeros((0, len(state.label_ids))), state.calibration, state.label_ids,
                          state.identity)
        reader._set_fitted(data, state.hidden_size, arrays, state.metadata)
        return reader

    def save(self, path: str | Path) -> Path:
        """Write the fitted reader to ``path`` (no pickle, atomic; ``persistence``)."""
        return save_state(self.state(), path)

    @classmethod
    def load(cls, path: str | Path, model=None) -> Reader:
        """Read a saved reader, every field checked (``ValueError`` naming the file and the field). With ``model``
        (a ``LensModel`` or its ``cache_id``), refuse a reader fitted on another model
        (``ReaderModelMismatchError`` naming the file and both models)."""
        reader = cls.from_state(load_state(path, Reader._KINDS), path)
        if model is not None:
            try:
                reader.check_model(model)
            except ReaderModelMismatchError as err:
                raise ReaderModelMismatchError(f"{path}: {err}") from None
        return reader

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        fitted = f", fitted on {self.identity_.model!r} / {self.identity_.task!r}" if hasattr(self, "arrays_") else ""
        return f"{type(self).__name__}({params}{fitted})"
