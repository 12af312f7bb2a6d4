"""What the weights fingerprint behind ``LensModel.cache_id`` costs, next to one forward pass.

Every cache of model outputs (the trace files, the prompt prefix's keys and values) is keyed by
``cache_id``, which hashes a sample of every parameter and buffer (``model.fingerprint``) at each lookup, so
that an edit in place gives another id. On the given model (fastest of ``--repeats`` calls each):
``cache_id``, ``weights_version`` (the in-memory edit token), one forward pass of a single token and of a
``--tokens``-token prompt (no cache, logits at the last position), then ``cache_id`` after the first decoder
layer's largest weight (an MLP matrix) was scaled in place (its whole content is then hashed, once per
version). Prints each time and its ratio to the one-token forward.

Usage: ``python benchmarks/fingerprint_cost.py [--model smollm2-135m] [--tokens 64] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def fastest(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn``, in seconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import torch

    from adainfer_lib import load_model
    from adainfer_lib.model.inputs import head_kwargs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=64, help="length of the longer prompt timed")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(args.model)
    one = torch.tensor([[model.tokenizer.eos_token_id or 1]])
    many = one.repeat(1, args.tokens)

    def forward(ids):
        return lambda: model.hf_model(input_ids=ids, use_cache=False, **head_kwargs(model))

    rows = {"cache_id": lambda: model.cache_id, "weights_version": lambda: model.weights_version,
            "forward, 1 token": forward(one), f"forward, {args.tokens} tokens": forward(many)}
    times = {name: fastest(fn, args.repeats) for name, fn in rows.items()}
    weight = max(model.layers[0].parameters(), key=lambda p: p.numel())  # an MLP weight of the first layer
    with torch.no_grad():
        weight.mul_(2.0)  # an edit in place: from now on this tensor is hashed whole (once per version)
    times["cache_id, one MLP weight edited"] = fastest(lambda: model.cache_id, args.repeats)
    n_params = sum(p.numel() for p in model.hf_model.parameters())
    print(f"{model.name}: {n_params / 1e6:.0f}M parameters, {len(list(model.hf_model.parameters()))} tensors, "
          f"{torch.get_num_threads()} threads")
    base = times["forward, 1 token"]
    for name, seconds in times.items():
        print(f"  {name:<34} {seconds * 1e3:8.2f} ms   {seconds / base:6.3f} x forward(1 token)")


if __name__ == "__main__":
    main()
