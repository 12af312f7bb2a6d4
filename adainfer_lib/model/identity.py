"""Which model (and task) something belongs to, and the refusals when an exit rule, trace or table meets
another one.

A feature's value, a calibration offset and a layer number all belong to one model: a rule fitted on one
model's trace and run on another's gives numbers that look fine and mean nothing. ``ModelIdentity`` is what
identifies a model (its ``LensModel.cache_id``, name and L) and a task's label words; ``identity_of`` reads
it from a ``LensModel``, a ``LayerTrace``, a ``TaskTrace``, a feature table or a cache id, and
``check_rule_model`` / ``check_trace_model`` compare two of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import pandas as pd


class ModelMismatchError(ValueError):
    """Something fitted or traced on one model (or task) used with another model (or task's label words)."""


class PolicyModelMismatchError(ModelMismatchError):
    """An exit rule used with a model, trace, feature table or label words other than those it was fitted on."""


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies a model, and the task it was used on; None where unknown (an unknown field passes every
    comparison). ``model_id``: ``LensModel.cache_id``; ``model``: its name; ``n_layers``: L;
    ``label_words``: the task's label words; ``task``: the task's name; ``reader``: what turned the residual
    states into label scores — ``"logit_lens"`` for the lens, a learned reader's ``reader_id`` (``readers``)."""

    model_id: str | None = None
    model: str | None = None
    n_layers: int | None = None
    label_words: tuple[str, ...] | None = None
    task: str | None = None
    reader: str | None = None

    def to_dict(self) -> dict:
        return {"model_cache_id": self.model_id, "model": self.model, "n_layers": self.n_layers,
                "label_words": None if self.label_words is None else list(self.label_words), "task": self.task,
                "reader": self.reader}

    @classmethod
    def from_dict(cls, data: dict) -> ModelIdentity:
        words = data.get("label_words")
        layers = data.get("n_layers")
        return cls(data.get("model_cache_id"), data.get("model"), None if layers is None else int(layers),
                   None if not words else tuple(words), data.get("task"), data.get("reader"))


def identity_of(source) -> ModelIdentity:
    """The ``ModelIdentity`` behind ``source``: a ``ModelIdentity`` itself, a ``LensModel`` (anything with a
    ``cache_id``), a ``LayerTrace``
    (``meta["model_cache_id"]``), a ``TaskTrace``, a feature table (the ``attrs`` that ``feature_table``
    writes), a cache id string, or None (unknown). ``TypeError`` for anything else."""
    if source is None:
        return ModelIdentity()
    if isinstance(source, ModelIdentity):
        return source
    if isinstance(source, str):
        return ModelIdentity(model_id=source)
    if isinstance(source, pd.DataFrame):
        return ModelIdentity.from_dict(source.attrs)
    if hasattr(source, "trace") and hasattr(source, "gold"):  # a TaskTrace (or a reader's): its LayerTrace
        return replace(identity_of(source.trace), task=getattr(source, "task_name", None),
                       reader=getattr(source, "reader", None))
    if hasattr(source, "label_logits") and hasattr(source, "meta"):  # a LayerTrace
        words = tuple(source.label_words) or None
        return ModelIdentity(source.meta.get("model_cache_id"), source.model_name, source.n_layers, words)
    if hasattr(source, "cache_id"):  # a LensModel
        return ModelIdentity(source.cache_id, getattr(source, "name", None), getattr(source, "n_layers", None))
    raise TypeError(f"cannot tell which model {type(source).__name__!r} belongs to: pass a LensModel, a LayerTrace, "
                    "a TaskTrace, a feature table or a model cache id")


def refuse_other_model(recorded: ModelIdentity, used: ModelIdentity, subject: str, error: type[ModelMismatchError],
                       advice: str = "refit it on a trace of this model") -> None:
    """The one comparison of identities: ``error`` naming both models when both cache ids are known and
    differ, or both layer counts are known and differ; unknown identities pass."""
    a, b = recorded.model_id, used.model_id
    if a is not None and b is not None and a != b:
        raise error(f"{subject} model {recorded.model!r} (cache id {a}), not model {used.model!r} "
                    f"(cache id {b}): features, calibration offsets and layer count belong to one model — {advice}")
    la, lb = recorded.n_layers, used.n_layers
    if la is not None and lb is not None and int(la) != int(lb):
        raise error(f"{subject} a model with L={la} layers ({recorded.model!r}), not one with L={lb} "
                    f"({used.model!r}) — {advice}")
    ra, rb = recorded.reader, used.reader
    if ra is not None and rb is not None and ra != rb:
        raise error(f"{subject} label scores read by {ra!r}, not by {rb!r}: its features and decisions are "
                    f"that reader's — pass reader=<the reader it was fitted with>, or {advice}")


def check_rule_model(rule, model=None, *, model_id: str | None = None, label_words: Sequence[str] | None = None,
                     n_examples: int | None = None, reader: str | None = None) -> None:
    """Refuse to use an exit ``rule`` (``rules.ExitRule``) with a model, trace or task it was not fitted for.

    ``model``: a ``LensModel``, or what a replay runs on — a ``LayerTrace``, a ``TaskTrace`` or a feature
    table; ``model_id``, ``label_words`` and ``reader`` (the ``reader_id`` that reads the label scores:
    ``"logit_lens"`` or a learned reader's) override what ``model`` says. ``PolicyModelMismatchError`` naming
    both models when the rule's ``fitted_for`` records another model (cache id, or layer count) or another
    reader, or both label-word lists when it carries other label words (its calibration offsets are per label
    word). Then
    ``rule.check_layers`` checks its layers against the model's L and ``n_examples`` prompts (``ValueError``).
    Rules that recorded no identity (``FixedExitPolicy``, ``ScheduledExitPolicy``) pass the identity checks."""
    used = identity_of(model)
    if model_id is not None:
        used = replace(used, model_id=model_id)
    if label_words is not None:
        used = replace(used, label_words=tuple(label_words) or None)
    if reader is not None:
        used = replace(used, reader=reader)
    fitted = rule.fitted_for
    refuse_other_model(fitted, used, "this policy was fitted on", PolicyModelMismatchError)
    words = tuple(rule.label_words) if rule.label_words else None
    if words and used.label_words and words != used.label_words:
        task = f" (task {fitted.task!r})" if fitted.task else ""
        raise PolicyModelMismatchError(
            f"this policy carries label words {list(words)}{task}, not {list(used.label_words)}: its "
            "calibration offsets are per label word — refit it on this task, or move it here with "
            "ExitPolicy.for_task(feature_table of this task)")
    rule.check_layers(None if used.n_layers is None else int(used.n_layers), n_examples=n_examples)


def check_trace_model(traced, model) -> None:
    """``ModelMismatchError`` naming both models when ``traced`` (a ``LayerTrace``, ``TaskTrace`` or feature
    table) was traced with a model other than ``model`` (a ``LensModel``, or another trace or table); passes
    where either identity is unknown."""
    refuse_other_model(identity_of(traced), identity_of(model), "this trace was made with", ModelMismatchError,
                       advice="trace the prompts with this model")
