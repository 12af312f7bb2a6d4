"""Architecture registry: where each model family keeps its decoder layers, final norm and unembedding.

The logit lens needs three pieces of every causal LM: the list of decoder layers, the final norm that the
model applies after the last layer, and the unembedding (LM head). Families name them differently, and a
silent heuristic that guesses wrong (a missing RMSNorm, a forgotten projection) corrupts every statistic.
So support is explicit: one ``ArchitectureSpec`` per family, looked up by ``config.model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ArchitectureSpec:
    """Dotted attribute paths, relative to the ``*ForCausalLM`` module, of the parts the lens needs."""

    family: str
    model_types: tuple[str, ...]
    layers: str
    final_norm: str
    unembed: str
    # Applied after the final norm and before the unembedding (OPT-350m projects 1024 -> 512 here).
    post_norm: tuple[str, ...] = ()
    # ``final_norm`` and ``post_norm`` may be attributes that exist and are None (post-norm OPT has no final
    # norm; most OPT sizes have no ``project_out``): that means "no module". A path that does not exist is an
    # error (``RegistryPathError``), never a silent identity.


_LLAMA_LIKE = dict(layers="model.layers", final_norm="model.norm", unembed="lm_head")

ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec("Llama / SmolLM", ("llama",), **_LLAMA_LIKE),
    ArchitectureSpec("Mistral", ("mistral",), **_LLAMA_LIKE),
    ArchitectureSpec("Qwen2 / Qwen3", ("qwen2", "qwen3"), **_LLAMA_LIKE),
    ArchitectureSpec("Gemma / Gemma2 / Gemma3", ("gemma", "gemma2", "gemma3_text"), **_LLAMA_LIKE),
    ArchitectureSpec(
        "OPT",
        ("opt",),
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        unembed="lm_head",
        post_norm=("model.decoder.project_out",),
    ),
    ArchitectureSpec(
        "GPT-2", ("gpt2",), layers="transformer.h", final_norm="transformer.ln_f", unembed="lm_head",
    ),
    ArchitectureSpec(
        "GPT-NeoX / Pythia",
        ("gpt_neox",),
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",  # "embed_out" before transformers 5
    ),
)


class UnsupportedArchitectureError(ValueError):
    """The model's family is not in the registry, so we cannot lens it safely."""


def supported_model_types() -> list[str]:
    """All ``config.model_type`` values the registry knows."""
    return sorted(t for spec in ARCHITECTURES for t in spec.model_types)


def spec_for(model_type: str) -> ArchitectureSpec:
    """The registry entry for ``model_type``, or a clear error naming what is supported."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    families = "; ".join(f"{s.family} ({', '.join(s.model_types)})" for s in ARCHITECTURES)
    raise UnsupportedArchitectureError(
        f"Architecture {model_type!r} is not in the adainfer registry, so its final norm and unembedding "
        f"cannot be located safely. Supported: {families}. To add one, append an ArchitectureSpec to "
        "adainfer_lib.model.registry.ARCHITECTURES."
    )


class RegistryPathError(UnsupportedArchitectureError):
    """A registry path that does not lead to a module of this model (a misspelt entry, or a transformers
    version that renamed the module): the lens would be built without that piece, so we refuse."""


def _model_type(root: nn.Module) -> str:
    return str(getattr(getattr(root, "config", None), "model_type", type(root).__name__))


def get_submodule(root: nn.Module, path: str, *, optional: bool = False) -> nn.Module | None:
    """``root.a.b.c`` for ``path == "a.b.c"``.

    The registry never guesses: an attribute on the path that does not exist raises ``RegistryPathError``
    naming the model type, the path and the missing part. Only an attribute that exists and is ``None``
    means "this model has no such module" (post-norm OPT has no ``final_layer_norm``; most OPT sizes have no
    ``project_out``): then the result is ``None`` when ``optional``, and ``RegistryPathError`` otherwise.
    A part that is neither a module nor ``None`` also raises ``RegistryPathError``.
    """
    module: object = root
    walked: list[str] = []
    for part in path.split("."):
        if not hasattr(module, part):
            owner = ".".join([type(root).__name__, *walked])
            raise RegistryPathError(
                f"model type {_model_type(root)!r}: the registry path {path!r} does not exist ({owner} has no "
                f"attribute {part!r}). Fix the ArchitectureSpec in adainfer_lib.model.registry.ARCHITECTURES."
            )
        module = getattr(module, part)
        walked.append(part)
        if module is None:
            if optional:
                return None
            raise RegistryPathError(
                f"model type {_model_type(root)!r}: the registry path {path!r} is None on this model "
                f"({'.'.join(walked)} is None), but the lens needs that module."
            )
    if not isinstance(module, nn.Module):
        raise RegistryPathError(
            f"model type {_model_type(root)!r}: the registry path {path!r} leads to a "
            f"{type(module).__name__}, not a torch module."
        )
    return module


def layer_list(root: nn.Module, spec: ArchitectureSpec) -> nn.ModuleList:
    """The decoder layers of ``root``; ``RegistryPathError`` if the path does not exist, and
    ``UnsupportedArchitectureError`` if it does not lead to a ``ModuleList``."""
    layers = get_submodule(root, spec.layers)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(
            f"{spec.family}: expected decoder layers at {spec.layers!r}, found {type(layers).__name__}"
        )
    return layers


def final_logit_softcap(config) -> float | None:
    """Gemma-2-style tanh soft-capping of the logits, if the config asks for it."""
    cap = getattr(config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def apply_softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(logits / cap)``, or ``logits`` unchanged when ``cap`` is None."""
    return logits if cap is None else cap * torch.tanh(logits / cap)
