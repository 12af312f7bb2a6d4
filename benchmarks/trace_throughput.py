"""How much the logit lens costs on top of a plain forward pass, measured side by side in one run.

On the default model and ~50 prompts of ~100 tokens, times (interleaved, several rounds, best of each):
- a plain forward pass (last-position logits only: what the model costs anyway);
- ``trace`` with the full-vocabulary lens (top-k, top_prob, gap, entropy, KL at every layer);
- ``trace`` with label words only (two rows of the unembedding per layer);
- a naive lens: every position of every layer through the final norm and the head.
Prints each as a ratio to the plain forward pass.

Then the prompt-prefix KV cache, on the same 4-shot sentiment test prompts (one demonstration set, seed 0):
``trace`` without the cache (every prompt runs its ~160 tokens) and with it (the shared instruction and
demonstrations run once per run — their cost included: the model's prefix store is emptied before each
cached run — and each prompt runs only its query's tokens); ms per prompt and their ratio. For reference,
the same test reviews with demonstrations drawn per query (the protocol before, which no cache can share),
and both runs again with the label rows of the head only (``full_vocab=False``): what the cache does to the
forward pass alone, without the full-vocabulary lens that it cannot shorten.
Usage: ``python benchmarks/trace_throughput.py [--model NAME]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import adainfer_lib as ai
from adainfer_lib.model.inputs import prepare_prompts

SENTENCES = [
    "the film is a charming, funny and moving portrait of a family that refuses to fall apart",
    "a tedious, overlong mess that wastes a talented cast on a script with nothing to say",
    "the performances are strong but the story never finds a reason to exist",
    "an exhilarating ride from start to finish, with a score that lingers long after",
    "visually stunning yet emotionally hollow, it left me checking my watch",
]


def make_prompts(tokenizer, n: int, target_tokens: int) -> list[str]:
    """``n`` distinct prompts of about ``target_tokens`` tokens each."""
    prompts = []
    for i in range(n):
        text, j = f"Review {i}:", i
        while len(tokenizer(text)["input_ids"]) < target_tokens:
            text += " " + SENTENCES[j % len(SENTENCES)] + "."
            j += 1
        prompts.append(text + "\nSentiment:")
    return prompts


def _batches(model: ai.LensModel, prompts: list[str], batch_size: int):
    prepared = prepare_prompts(model, prompts, caller="benchmark", batch_size=batch_size, prefix_cache=False)
    return [prepared.batch(idx).forward_kwargs(model) for idx in prepared.batches]


def plain_forward(model: ai.LensModel, prompts: list[str], batch_size: int) -> None:
    for kwargs in _batches(model, prompts, batch_size):
        model.hf_model(**kwargs)


def naive_lens(model: ai.LensModel, prompts: list[str], batch_size: int) -> None:
    """All positions of all layers through norm + head, then softmax (what a straightforward lens does)."""
    for kwargs in _batches(model, prompts, batch_size):
        out = model.hf_model(**kwargs, output_hidden_states=True)
        for h in out.hidden_states[:-1]:
            torch.softmax(model.lens(h), dim=-1)
        torch.softmax(model.unembed(out.hidden_states[-1]), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=ai.DEFAULT_MODEL)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = ai.load_model(args.model)
    prompts = make_prompts(model.tokenizer, args.n, args.tokens)
    words = [" positive", " negative"]
    runs = {
        "plain forward": lambda: plain_forward(model, prompts, args.batch_size),
        "trace, full-vocab lens": lambda: ai.trace(model, prompts, label_words=words, batch_size=args.batch_size,
                                                   progress=False),
        "trace, label words only": lambda: ai.trace(model, prompts, label_words=words, full_vocab=False,
                                                    batch_size=args.batch_size, progress=False),
        "naive lens (all positions)": lambda: naive_lens(model, prompts, args.batch_size),
    }
    runs["plain forward"]()  # warm-up
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):  # interleaved, so drift in machine load hits every variant alike
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    n_tokens = sum(len(ids) for ids in model.tokenizer(prompts)["input_ids"]) / len(prompts)
    print(f"model {model!r}; {len(prompts)} prompts, {n_tokens:.0f} tokens on average, batch {args.batch_size}, "
          f"best of {args.rounds} interleaved rounds, {torch.get_num_threads()} threads")
    base = best["plain forward"]
    for name, seconds in best.items():
        print(f"{name:28s} {seconds:7.2f} s   {seconds / base:5.2f}x plain forward")
    prefix_cache_benchmark(model, args.n, args.batch_size, args.rounds)


def prefix_cache_benchmark(model: ai.LensModel, n: int, batch_size: int, rounds: int) -> None:
    """ms per prompt of ``trace`` on 4-shot sentiment prompts without and with the prompt-prefix KV cache."""
    fixed = ai.load_task("sentiment", n=n, n_train=50, seed=0)
    per_query = ai.load_task("sentiment", n=n, n_train=50, seed=0, demos="per_query")
    words = fixed.label_words

    def cached() -> None:
        model.__dict__.pop("_prefix_kv", None)  # the prefix's own forward pass is part of the cost
        ai.trace(model, fixed.prompts(), label_words=words, batch_size=batch_size, prefix=fixed.prefix, progress=False)

    def label_rows(prefix_cache: bool):
        def run() -> None:
            model.__dict__.pop("_prefix_kv", None)
            ai.trace(model, fixed.prompts(), label_words=words, batch_size=batch_size, full_vocab=False,
                     prefix_cache=prefix_cache, progress=False)
        return run

    runs = {
        "per-query demos, no cache": lambda: ai.trace(model, per_query.prompts(), label_words=words,
                                                      batch_size=batch_size, prefix_cache=False, progress=False),
        "one demo set, no cache": lambda: ai.trace(model, fixed.prompts(), label_words=words, batch_size=batch_size,
                                                   prefix_cache=False, progress=False),
        "one demo set, prefix cache": cached,
        "label rows only, no cache": label_rows(False),
        "label rows only, prefix cache": label_rows(True),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    tokens = prepare_prompts(model, fixed.prompts(), caller="benchmark", prefix=fixed.prefix)
    prefix_len = tokens.prefix.length
    print(f"\nprompt-prefix KV cache: {n} 4-shot sentiment test prompts (seed 0), "
          f"{tokens.n_tokens.mean():.0f} tokens on average of which {prefix_len} shared; batch {batch_size}, "
          f"best of {rounds} interleaved rounds, full-vocabulary lens")
    for name, seconds in best.items():
        print(f"{name:28s} {1000 * seconds / n:7.1f} ms / prompt")
    ratio = best["one demo set, no cache"] / best["one demo set, prefix cache"]
    print(f"prefix cache speedup on the same prompts: {ratio:.2f}x  (target >= 3); against per-query prompts "
          f"{best['per-query demos, no cache'] / best['one demo set, prefix cache']:.2f}x; label rows only "
          f"{best['label rows only, no cache'] / best['label rows only, prefix cache']:.2f}x (the forward pass alone)")


if __name__ == "__main__":
    main()
