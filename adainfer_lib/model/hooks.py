"""Hooks on the decoder layers: the one way the library looks into (or changes) a forward pass.

A decoder layer is called as ``layer(hidden_states, *rest, **kwargs)`` — the hidden states positional or as
the keyword ``hidden_states``, depending on the family (GPT-2 passes more positionally than Llama) — and
returns the new hidden states as a tensor or as a tuple whose first item they are (older transformers, some
families). ``layer_input`` / ``with_input`` / ``layer_output`` read and rebuild these, for every family.

``decoder_hooks(model, before=..., after=..., bypass=...)`` registers, for the duration of a ``with`` block,

- ``before(index, args, kwargs)`` before decoder layer ``index`` runs (a forward pre-hook with keyword
  arguments): it returns None, or new ``(args, kwargs)`` for the layer;
- ``after(index, args, kwargs, output)`` after it (a forward hook with keyword arguments, seeing the
  arguments the layer ran with): it returns None, or a new output;
- ``bypass(index, args, kwargs)``: called in place of the layer; when it returns an output, the layer does
  not run and that is its output (None: the layer runs). PyTorch has no hook that can skip a module, so only
  this one wraps the layers' ``forward`` (an instance attribute, removed afterwards; a ``forward`` that
  accelerate installed is wrapped and put back). Generation's CALM propagation needs it: each layer above the
  exit computes only its keys and values, from the arguments the model gives that layer (Gemma-3 gives each
  layer its own rotary tables, built inside the model's forward), so the layer must be called, not run.

Each hook is a callable (every layer) or a mapping ``{index: callable}`` (those layers only). Every hook is
removed when the block ends, on an exception too. A hook may raise ``StopForward`` to end the forward pass
(the caller catches it around the model call): the layers after it, the final norm and the head never run.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch

#: ``before(index, args, kwargs) -> None | (args, kwargs)``
BeforeHook = Callable[[int, tuple, dict], Any]
#: ``after(index, args, kwargs, output) -> None | output``
AfterHook = Callable[[int, tuple, dict, Any], Any]
#: ``bypass(index, args, kwargs) -> None | output``
BypassHook = Callable[[int, tuple, dict], Any]


class StopForward(Exception):
    """Raised by a layer hook to end the forward pass there (every row has exited, the token is decided):
    the caller catches it around the model call."""


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states (batch, positions, hidden) a decoder layer is called with: its first positional
    argument, else the keyword ``hidden_states``. ``KeyError`` when the call has neither."""
    return args[0] if args else kwargs["hidden_states"]


def with_input(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with the hidden states replaced by ``hidden``, where the call passed them."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def layer_output(output) -> torch.Tensor:
    """The hidden states a decoder layer returns: the output itself (a tensor), or the first item of a tuple."""
    return output[0] if isinstance(output, tuple) else output


def _per_layer(hook, n_layers: int, name: str) -> dict[int, Callable]:
    """``{index: callable}`` from a callable (every layer), a mapping or None; ``ValueError`` for an index out
    of range, ``TypeError`` for anything else."""
    if hook is None:
        return {}
    if callable(hook):
        return dict.fromkeys(range(n_layers), hook)
    if isinstance(hook, Mapping):
        bad = [i for i in hook if not isinstance(i, int) or not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"decoder_hooks({name}=...): layer indices {bad} are not in 0..{n_layers - 1}")
        return dict(hook)
    raise TypeError(f"decoder_hooks({name}=...) takes a callable or a mapping {{layer index: callable}}, not "
                    f"{type(hook).__name__}")


def _bypassing(layer: torch.nn.Module, index: int, hook: BypassHook) -> Callable:
    original = layer.forward

    def forward(*args, **kwargs):
        out = hook(index, args, kwargs)
        return original(*args, **kwargs) if out is None else out

    return forward


@contextmanager
def decoder_hooks(model, *, before: BeforeHook | Mapping[int, BeforeHook] | None = None,
                  after: AfterHook | Mapping[int, AfterHook] | None = None,
                  bypass: BypassHook | Mapping[int, BypassHook] | None = None) -> Iterator[None]:
    """Hooks on ``model.layers`` (a ``LensModel``'s decoder layers, or anything with a ``layers`` list) while
    the block runs: see the module docstring for ``before``, ``after`` and ``bypass``. Removed on exit, also
    on error."""
    layers = list(model.layers)
    hooks = {name: _per_layer(hook, len(layers), name)
             for name, hook in (("before", before), ("after", after), ("bypass", bypass))}
    handles: list = []
    patched: list[tuple[torch.nn.Module, Any]] = []
    try:
        for index, fn in hooks["bypass"].items():
            layer = layers[index]
            patched.append((layer, layer.__dict__.get("forward")))
            layer.forward = _bypassing(layer, index, fn)
        for index, fn in hooks["before"].items():
            handles.append(layers[index].register_forward_pre_hook(
                lambda _m, args, kwargs, _i=index, _f=fn: _f(_i, args, kwargs), with_kwargs=True))
        for index, fn in hooks["after"].items():
            handles.append(layers[index].register_forward_hook(
                lambda _m, args, kwargs, output, _i=index, _f=fn: _f(_i, args, kwargs, output), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer, own in reversed(patched):
            if own is None:
                del layer.forward
            else:
                layer.forward = own


@contextmanager
def residual_states(model, pick: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Record the residual stream during the block: yields a list that fills, per forward pass, with the
    ``L + 1`` tensors ``pick(h)`` of the hidden states entering layer 0 (the embeddings) and leaving every
    layer, in order. ``pick`` chooses what to keep (positions, rows, device; detach it)."""
    states: list[torch.Tensor] = []
    with decoder_hooks(model, before={0: lambda _i, args, kwargs: states.append(pick(layer_input(args, kwargs)))},
                       after=lambda _i, _a, _k, output: states.append(pick(layer_output(output)))):
        yield states
