"""``TunedLensReader``: the tuned lens (Belrose et al. 2023) restricted to what a task needs.

Per layer l < L a translator moves the residual state before the model's own final norm and label rows read it:
``h' = h + s_l · T_l(h / s_l)``, with ``s_l`` the states' RMS at layer l on the train split (a fixed scale, so
one learning rate suits every layer) and ``T_l`` one of

- ``"bias"``: ``T(x) = b`` (d parameters a layer; the original's bias-only option);
- ``"low_rank"``: ``T(x) = b + (x V) U`` with V (d, r), U (r, d) (U starts at zero);
- ``"affine"``: ``T(x) = b + x A`` with A (d, d) (the original's full translator; a d × d map has far more
  parameters than a few hundred prompts constrain).

Every translator starts at zero, i.e. at the logit lens. Training: full-batch Adam (learning rate decayed
linearly to 0) on the train split's states at the answer position, minimising the sum over layers of KL(q ‖ p_l),
where q is the final layer's calibrated label distribution (the full model's decision: ``softmax`` of its
calibrated label scores at L) and p_l the calibrated label distribution the translated state gives at l (the
task's calibration offsets at l, as decisions are made). No gold labels. Deterministic under ``seed`` (V's
initialisation; CPU float32), seconds on a laptop for bias and low rank. The original trains on next-token KL
over the whole vocabulary at every position of a large corpus (SGD with Nesterov momentum, 250 steps × 262k
tokens): not a laptop recipe.

``choose_translator`` fits several translators on part of the train split and keeps the one with the best
held-out agreement with the full model (then refits it on the whole split): "bias, low rank or affine" is
decided by measurement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..common.checks import check_choice, check_int, check_number
from ..common.numerics import log_softmax, softmax
from .base import LayerLogits, Reader
from .trace import ReaderData, reader_data

TRANSLATORS = ("bias", "low_rank", "affine")


def _model_dtype(model) -> torch.dtype:
    return next(model.hf_model.parameters()).dtype


def _translate(h: torch.Tensor, layer: int | None, p: dict[str, torch.Tensor], translator: str) -> torch.Tensor:
    """``h + s · T(h / s)``: states ``h`` (B, d) at ``layer``, or (n, L, d) at every layer 0..L-1 when ``layer``
    is None; ``p``: the translator's tensors (scale (L,), bias (L, d), down (L, d, r) and up (L, r, d), or matrix
    (L, d, d))."""
    every = layer is None
    pick = slice(None) if every else layer
    s = p["scale"][pick][:, None] if every else p["scale"][layer]
    x = h / s
    delta = p["bias"][pick]
    if translator == "low_rank":
        low = torch.einsum("nld,ldr->nlr", x, p["down"]) if every else x @ p["down"][layer]
        delta = delta + (torch.einsum("nlr,lrd->nld", low, p["up"]) if every else low @ p["up"][layer])
    elif translator == "affine":
        delta = delta + (torch.einsum("nld,lde->nle", x, p["matrix"]) if every else x @ p["matrix"][layer])
    return h + s * delta


@dataclass(eq=False, repr=False)
class TunedLensReader(Reader):
    """A per-layer translator before the model's own norm and label rows (see the module docstring).
    Parameters: ``translator`` ("bias" | "low_rank" | "affine"), ``rank`` (low rank r), ``steps`` and ``lr`` of
    full-batch Adam, ``weight_decay`` (L2 on the linear part), ``seed``. ``fit`` needs the model."""

    translator: str = "low_rank"
    rank: int = 8
    steps: int = 300
    lr: float = 0.01
    weight_decay: float = 1e-3
    seed: int = 0

    kind = "tuned_lens"

    def _check_params(self) -> None:
        check_choice(self.translator, "translator", TRANSLATORS)
        check_int(self.rank, "rank", low=1)
        check_int(self.steps, "steps", low=0)
        check_number(self.lr, "lr", positive=True)
        check_number(self.weight_decay, "weight_decay", low=0.0)
        check_int(self.seed, "seed", low=0)

    def _array_shapes(self, n_layers: int, n_labels: int, hidden: int) -> dict[str, tuple[int, ...]]:
        L, d, r = n_layers, hidden, self.rank
        extra = {"low_rank": {"down": (L, d, r), "up": (L, r, d)}, "affine": {"matrix": (L, d, d)}, "bias": {}}
        return {"scale": (L,), "bias": (L, d), **extra[self.translator]}

    def _init(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        n, L, d = states.shape
        gen = torch.Generator().manual_seed(int(self.seed))
        p = {"scale": states.pow(2).mean(-1).sqrt().mean(0).clamp_min(1e-6), "bias": torch.zeros(L, d)}
        if self.translator == "low_rank":
            p["down"] = torch.randn(L, d, self.rank, generator=gen) / d ** 0.5
            p["up"] = torch.zeros(L, self.rank, d)
        elif self.translator == "affine":
            p["matrix"] = torch.zeros(L, d, d)
        return p

    def _fit(self, model, data: ReaderData) -> dict:
        if model is None:
            raise ValueError("the tuned lens reads through the model's final norm and label rows: fit(model, ...)")
        L = data.n_layers
        states = torch.from_numpy(np.ascontiguousarray(data.states[:, :L], dtype=np.float32))
        p = self._init(states)
        trained = [k for k in p if k != "scale"]
        with torch.no_grad():
            head = model.label_head(torch.tensor(data.label_ids, device=model.lens_device))
        q = torch.softmax(torch.from_numpy(data.final_scores).float(), -1)[:, None, :]  # (n, 1, C)
        offsets = torch.from_numpy(np.asarray(data.calibration.offsets[:L], dtype=np.float32))
        params = [p[k].requires_grad_(True) for k in trained]
        opt = torch.optim.Adam(params, lr=self.lr, fused=True)  # fused: 5x faster than the loop on a d x d map
        decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / max(self.steps, 1))  # to 0 at the end
        dtype = _model_dtype(model)
        with torch.enable_grad():
            for _ in range(self.steps):
                moved = _translate(states, None, p, self.translator)
                raw = head(moved.reshape(-1, moved.shape[-1]).to(dtype)).float().cpu().reshape(len(states), L, -1)
                logp = torch.log_softmax(raw - offsets, -1)  # the calibrated decision's distribution at each layer
                loss = (torch.special.xlogy(q, q) - q * logp).sum(-1).mean(0).sum()
                grads = torch.autograd.grad(loss, params)
                for name, param, grad in zip(trained, params, grads):
                    if name in ("up", "matrix"):  # + the gradient of weight_decay * ||param||^2, in place
                        grad.add_(param.detach(), alpha=2 * self.weight_decay)
                    param.grad = grad
                opt.step()
                decay.step()
        return {k: v.detach().numpy().astype(np.float32) for k, v in p.items()}

    def _layer_logits(self, model, label_head, arrays: dict) -> LayerLogits:
        if label_head is None:
            raise ValueError("the tuned lens reads through the model's final norm and label rows: pass the model")
        p = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
        on: dict = {}
        dtype = _model_dtype(model)

        def logits(h: torch.Tensor, layer: int) -> np.ndarray:
            if h.device not in on:
                on[h.device] = {k: v.to(h.device) for k, v in p.items()}
            moved = _translate(h.float(), layer, on[h.device], self.translator)
            return label_head(moved.to(dtype)).double().cpu().numpy()

        return logits


def choose_translator(model, task_trace, states, *, candidates: Sequence[dict] | None = None,
                      holdout: float = 0.25, tolerance: float = 0.01,
                      seed: int = 0) -> tuple[TunedLensReader, pd.DataFrame]:
    """Fit each candidate ``TunedLensReader`` (parameter dicts; default bias, low rank 8, affine) on the train
    split minus a random ``holdout`` share of its prompts, measure on the held-out prompts its agreement with the
    full model (mean over layers 0..L-1 of the share whose argmax is the full model's decision) and the mean KL,
    keep the first candidate (give them simplest first) within ``tolerance`` of the best agreement — a bigger map
    must earn its parameters by more than the held-out noise — and refit it on the whole split.
    Returns (the refitted reader, one row per candidate). ``ValueError`` for ``holdout`` outside (0, 1) or a
    negative ``tolerance``."""
    check_number(holdout, "holdout", low=0.0, high=1.0)
    check_number(tolerance, "tolerance", low=0.0)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), not {holdout}")
    candidates = list(candidates or ({"translator": "bias"}, {"translator": "low_rank", "rank": 8},
                                     {"translator": "affine"}))
    data = reader_data(task_trace, states)
    order = np.random.default_rng(seed).permutation(data.n)
    n_held = max(1, int(round(holdout * data.n)))
    held, fit_idx = np.sort(order[:n_held]), np.sort(order[n_held:])
    rows = []
    for params in candidates:
        reader = TunedLensReader(**params).fit_data(model, data.take(fit_idx))
        scores = reader.layer_scores(model, data.states[held])  # (m, L, C)
        target = data.targets[held]
        q = softmax(data.final_scores[held])[:, None]  # (m, 1, C): the full model's decision distribution
        kl = (q * (np.log(np.clip(q, 1e-300, None)) - log_softmax(scores))).sum(-1).mean()
        rows.append({**reader.get_params(), "held_out_agreement": float((scores.argmax(-1) == target[:, None]).mean()),
                     "held_out_kl": float(kl), "n_fit": len(fit_idx), "n_held_out": len(held)})
    table = pd.DataFrame(rows)
    agreement = table["held_out_agreement"].to_numpy()
    best = int(np.flatnonzero(agreement >= agreement.max() - tolerance - 1e-12)[0])
    table["chosen"] = np.arange(len(table)) == best
    return TunedLensReader(**candidates[best]).fit_data(model, data), table
