"""``LogitLensReader``: today's reading as a reader — the model's own final norm and label rows of the
unembedding at every layer, calibrated with the task's lens calibration (``data.calibration``).

Offline it reads the task trace's label logits, so its ``ReaderTrace`` scores are the task trace's ``scores()``
exactly; online (``bind``) it is the runner's label path (the run's ``label_head``, then ``Calibration.apply`` at
the layer). Its ``reader_id`` is ``"logit_lens"``: a rule fitted on a lens feature table runs with it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import LayerLogits, Reader
from .trace import ReaderData


@dataclass(eq=False, repr=False)
class LogitLensReader(Reader):
    """The calibrated logit lens (no parameters; ``fit`` only records the task's calibration, label words and
    model). ``fit(model, task_trace)`` needs no states."""

    kind = "logit_lens"
    needs_states = False

    def _fit(self, model, data: ReaderData) -> dict:
        return {}

    def _set_fitted(self, data: ReaderData, hidden_size: int, arrays: dict, metadata: dict) -> None:
        super()._set_fitted(data, hidden_size, arrays, metadata)
        self.reader_id_ = "logit_lens"  # the lens of every TaskTrace: rules fitted on lens tables run with it

    def _layer_logits(self, model, label_head, arrays: dict) -> LayerLogits:
        if label_head is None:
            raise ValueError("the logit lens reads states through the model's label rows: pass the model")
        return lambda h, layer: label_head(h).double().cpu().numpy()

    def _read_layers(self, model, task_trace, states) -> np.ndarray:
        """The trace's own label logits, calibrated (n, L, C): ``task_trace.scores()`` for layers 0..L-1."""
        return self.calibration_.apply(task_trace.trace.label_logits)[:, : self.n_layers]

    def _array_shapes(self, n_layers: int, n_labels: int, hidden: int) -> dict[str, tuple[int, ...]]:
        return {}
