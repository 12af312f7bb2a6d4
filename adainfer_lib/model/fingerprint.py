"""What a model's numbers depend on, cheaply: a content fingerprint of its weights and an in-memory edit token.

Every cache of model outputs (the trace files on disk, the prompt prefix's keys and values in memory) is keyed
by ``LensModel.cache_id``, and a cache id that ignored part of the weights answered for weights that had since
been edited (one decoder layer's MLP scaled in place: the cached prefix and trace were the old model's).

``WeightsFingerprint`` covers every parameter and buffer (their names, dtypes and shapes, then their values):

- **a sample of each tensor**, ``SAMPLE_BLOCKS`` evenly spaced blocks of ``BLOCK`` contiguous elements (smaller
  tensors whole), read through views kept from one call to the next, so any edit in place that reaches a
  sampled element shows — also one through ``.data``, which autograd's version counter does not see. This
  part identifies the weights a model was loaded with;
- **the exact content of every tensor edited since the model was wrapped**: a tensor whose autograd version
  counter or data pointer has moved (any in-place operation — ``mul_``, ``copy_``, ``load_state_dict``,
  ``p.data = ...``) is hashed whole, once per version. So a tracked edit changes the fingerprint even where
  no sampled element changed (one neuron), and costs in proportion to what was edited.

It depends on the values only: the same weights on another device, or offloaded by accelerate (their samples
read once through each module's own hook, as a forward pass does), give the same fingerprint. A call costs
about 2% of one forward pass of a single token on the default model and on gemma3-270m
(``benchmarks/fingerprint_cost.py`` measures both side by side). What it does not see: an edit through
``.data`` (no version counter) that changes no sampled element.

``weights_version(module)`` is the in-memory token (data pointers and version counters, within one process):
the prompt-prefix cache keys by it too.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

#: The sample of a tensor: this many evenly spaced blocks of ``BLOCK`` contiguous elements (tensors of at most
#: ``SAMPLE_BLOCKS * BLOCK`` elements are hashed whole).
SAMPLE_BLOCKS = 16
BLOCK = 64


def named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of ``module`` with its dotted name (a tensor shared by several modules, e.g.
    tied embeddings, once), walking ``_parameters`` / ``_buffers`` / ``_modules`` directly: the tensors of
    ``named_parameters()`` and ``named_buffers()``, at a fraction of the cost (this runs at every cache lookup)."""
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    stack = [("", module)]
    while stack:
        prefix, sub = stack.pop()
        for table in (sub._parameters, sub._buffers):
            for name, tensor in table.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    out.append((prefix + name, tensor))
        stack.extend((f"{prefix}{name}.", child) for name, child in reversed(sub._modules.items())
                     if child is not None)
    return out


def _state(t: torch.Tensor) -> tuple[int, int] | None:
    """(data pointer, autograd version) of ``t``; None on the meta device (accelerate's offloaded tensors)."""
    return None if t.device.type == "meta" else (t.data_ptr(), t._version)


def weights_version(module: nn.Module) -> int:
    """A token that changes when any parameter or buffer of ``module`` is edited in place (autograd's version
    counter) or replaced (its data pointer), within this process; offloaded tensors count by name only."""
    return hash(tuple((name, _state(t)) for name, t in named_tensors(module)))


def _sample(flat: torch.Tensor) -> torch.Tensor:
    """A view of the 1-D ``flat``: itself when small, else ``SAMPLE_BLOCKS`` evenly spaced blocks of ``BLOCK``
    contiguous elements, (SAMPLE_BLOCKS, BLOCK)."""
    n = flat.numel()
    if n <= SAMPLE_BLOCKS * BLOCK:
        return flat
    step = n // SAMPLE_BLOCKS
    return flat[: SAMPLE_BLOCKS * step].view(SAMPLE_BLOCKS, step)[:, :BLOCK]


def _raw(t: torch.Tensor) -> np.ndarray:
    """The bytes of ``t`` (contiguous, on the CPU) as a uint8 array."""
    t = t.detach().contiguous().cpu().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)


def _offloaded_samples(module: nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    """Samples (copies, on the CPU) of the tensors ``names`` of ``module`` that accelerate keeps on the meta
    device: each offloaded submodule's weights are brought in through its own hook, one submodule at a time
    (what a forward pass does). ``RuntimeError`` for a meta tensor no hook loads."""
    from accelerate.utils import align_module_device, has_offloaded_params

    samples: dict[str, torch.Tensor] = {}
    for prefix, sub in module.named_modules():
        if not has_offloaded_params(sub):
            continue
        with align_module_device(sub), torch.no_grad():
            for name, t in named_tensors(sub):
                full = f"{prefix}.{name}" if prefix else name
                if full in names and full not in samples and t.device.type != "meta":
                    samples[full] = _sample(t.detach().reshape(-1)).cpu().clone()
    missing = sorted(names - set(samples))
    if missing:
        raise RuntimeError(f"{missing[:3]} are on the meta device and no accelerate hook loads them: load the model "
                           "with device_map=... (and offload_folder=...) or pass it with its weights.")
    return samples


class WeightsFingerprint:
    """``fingerprint(module) -> str``: a hex digest of the weights of ``module`` (see the module docstring).

    Built from ``module`` as it is now: these are its original weights, whose later edits are hashed exactly.
    What is fixed between edits (the sample views, the names, dtypes and shapes, the digests of edited tensors)
    is rebuilt only when a data pointer or version counter moves; samples of offloaded tensors are read once
    (accelerate reloads those from its weights map at every forward pass). The digest reads the samples of
    each dtype and kind (whole tensors, blocks) in registration order, whatever device each tensor is on."""

    def __init__(self, module: nn.Module) -> None:
        self._original = {name: _state(t) for name, t in named_tensors(module)}
        self._layout: tuple | None = None
        self._header = b""
        # (dtype, kind) -> device -> [(position in registration order, sample view)]
        self._groups: dict[tuple, dict[torch.device, list[tuple[int, torch.Tensor]]]] = {}
        self._offloaded: dict[str, torch.Tensor] = {}
        self._exact: dict[tuple, bytes] = {}  # (name, state) -> digest of an edited tensor's whole content
        self._edits = b""

    def _build(self, module: nn.Module, tensors: list[tuple[str, torch.Tensor]], states: list) -> None:
        meta = {name for (name, _), state in zip(tensors, states) if state is None}
        if meta - set(self._offloaded):
            self._offloaded.update(_offloaded_samples(module, meta - set(self._offloaded)))
        self._header = repr([(name, str(t.dtype), tuple(t.shape)) for name, t in tensors]).encode()
        self._groups = {}
        edits = []
        for position, ((name, t), state) in enumerate(zip(tensors, states)):
            if name in meta:
                view, kind = self._offloaded[name], "sample"
            elif t.is_contiguous():
                view, kind = _sample(t.detach().view(-1)), "sample"
            else:  # no flat view of a non-contiguous tensor: sampled anew at each call (parameters are contiguous)
                view, kind = t.detach(), "copy"
            kind = kind if kind == "copy" else ("whole" if view.ndim == 1 else "blocks")
            self._groups.setdefault((view.dtype, kind), {}).setdefault(view.device, []).append((position, view))
            if state is not None and self._original.setdefault(name, state) != state:
                key = (name, state)
                if key not in self._exact:
                    self._exact[key] = hashlib.blake2b(_raw(t), digest_size=16).digest()
                edits.append(f"edited {name}:".encode() + self._exact[key])
        self._edits = b"".join(edits)

    @staticmethod
    def _group_bytes(kind: str, by_device: dict) -> list:
        """The samples of one (dtype, kind) group as byte buffers, in registration order: one ``torch.cat`` per
        device (blocks: (SAMPLE_BLOCKS * k, BLOCK), each tensor's blocks together)."""
        parts = []
        for members in by_device.values():
            views = [v for _, v in members]
            if kind == "copy":
                views = [_sample(v.reshape(-1)).reshape(-1) for v in views]
            raw = _raw(torch.cat(views))
            if len(by_device) == 1:
                return [raw]
            ends = np.cumsum([v.numel() * v.element_size() for v in views])
            parts += [(p, raw[a:b]) for (p, _), a, b in zip(members, np.r_[0, ends[:-1]], ends)]
        return [chunk for _, chunk in sorted(parts, key=lambda part: part[0])]

    def __call__(self, module: nn.Module) -> str:
        tensors = named_tensors(module)
        states = [_state(t) for _, t in tensors]
        layout = tuple(zip([name for name, _ in tensors], states))
        with torch.no_grad():
            if layout != self._layout:
                self._build(module, tensors, states)
                self._layout = layout
            digest = hashlib.blake2b(self._header, digest_size=16)
            for (dtype, kind), by_device in self._groups.items():
                digest.update(f"{dtype} {kind}".encode())
                for chunk in self._group_bytes(kind, by_device):
                    digest.update(chunk)
            digest.update(self._edits)
        return digest.hexdigest()
