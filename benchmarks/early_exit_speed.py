"""Does early exit save wall-clock time, not just layers? Measured side by side with the full model.

On the default model and N 4-shot sentiment test prompts (default 40), batch size 1:
1. fit an exit policy on the task's TRAIN split (``ExitPolicy``: by default a CRF over label-word features,
   whose checks need only the label rows of the LM head; threshold tuned on train with out-of-fold
   probabilities for at most 1 point of accuracy loss; first checked layer from train too (``--min-layer
   auto``); ``--features paper`` uses the paper's full-vocabulary gap/top_prob; ``--classifier gap``: the
   bare calibrated label-gap threshold, grid-searched on train);
2. time the full model (plain forward, last-position logits) and the real early exit on the same prompts,
   both on the cached prompt prefix (one demonstration set: its keys and values computed once, the fair
   comparison),
   interleaved (per prompt, both in alternating order), ``--repeats`` times, fastest kept per prompt;
3. print the measured speedup (total full time / total early-exit time), the ideal speedup
   (L / mean exit layer), their ratio (target >= 0.9), and the cost of one exit check as a fraction of one
   layer's cost (check seconds measured inside the hooks / (full-model seconds / L));
4. check the real run against the replay of the same policy on the traced test prompts: exit layers and
   answers equal for how many of the prompts (a faster check must not change a decision).

Usage: ``python benchmarks/early_exit_speed.py [--n 40] [--n-train 250] [--classifier crf|svm|logistic|gap]
[--features label_gap,label_top_prob,layer_frac] [--repeats 2] [--threads 0]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def fit_policy(model, task, classifier: str, features: list[str] | None, min_layer: int | str, max_loss: float):
    """A policy fitted (and its threshold tuned) on the train split only."""
    from adainfer_lib import GapThresholdPolicy, fit_policies, trace_task

    train = trace_task(model, task, split="train", full_vocab=True, progress=False)
    if classifier == "gap":
        return GapThresholdPolicy.fit(train, max_drop=max_loss), train
    spec = {"classifier": classifier, "features": features}
    return fit_policies(train, {"policy": spec}, min_layer=min_layer, max_loss=max_loss)["policy"], train


def replay_agreement(model, task, policy, exits: np.ndarray, predictions: np.ndarray) -> tuple[int, int]:
    """How many prompts' (exit layer, answer) of the real run equal the policy's replay on the traced test split."""
    from adainfer_lib.data.task_trace import trace_task
    from adainfer_lib.features.table import feature_table
    from adainfer_lib.rules.interface import exit_layers

    test = trace_task(model, task, split="test", full_vocab=True, progress=False)
    replayed = exit_layers(policy, feature_table(test))
    answers = test.predictions()[np.arange(len(replayed)), replayed]
    return int(np.sum(replayed == exits)), int(np.sum(answers == predictions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--n", type=int, default=40, help="test prompts timed")
    parser.add_argument("--n-train", type=int, default=250, help="train examples the policy is fitted on")
    parser.add_argument("--classifier", default="crf", choices=["svm", "crf", "logistic", "gap"])
    parser.add_argument("--features", default="label_gap,label_top_prob,layer_frac",
                        help="comma-separated ONLINE_FEATURES ('paper' = gap,top_prob over the full vocabulary)")
    parser.add_argument("--min-layer", default="auto",
                        help="first layer checked ('auto': chosen on train, the 5th percentile of the oracle exit)")
    parser.add_argument("--max-loss", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    import adainfer_lib as ai
    from adainfer_lib import load_task, run_early_exit, run_full, time_interleaved
    from adainfer_lib.runner.early_exit import measure_check_cost

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ai.load_model(args.model)
    task = load_task(args.task, n=args.n, n_train=args.n_train)
    L = model.n_layers
    features = None if args.features == "paper" else [f for f in args.features.split(",") if f]
    start = time.perf_counter()
    min_layer = args.min_layer if args.min_layer == "auto" else int(args.min_layer)
    policy, train = fit_policy(model, task, args.classifier, features, min_layer, args.max_loss)
    fit_s = time.perf_counter() - start
    prompts = task.prompts("test")
    words = task.label_words
    cal = train.calibration  # fitted on the train split; the policy carries the same offsets

    results, full_results = {}, {}

    def full(i: int) -> float:
        res = run_full(model, [prompts[i]], label_words=words, calibration=cal, prefix=task.prefix)
        if i not in full_results or res.seconds[0] < full_results[i].seconds[0]:
            full_results[i] = res
        return float(res.seconds[0])

    def early(i: int) -> float:
        res = run_early_exit(model, [prompts[i]], policy, label_words=words, prefix=task.prefix)
        if i not in results or res.seconds[0] < results[i].seconds[0]:
            results[i] = res
        return float(res.seconds[0])

    timings = time_interleaved({"full": full, "early exit": early}, range(len(prompts)), repeats=args.repeats,
                               progress=True)
    seconds = timings.pivot(index="example", columns="method", values="seconds")
    exits = np.array([results[i].exit_layers[0] for i in range(len(prompts))])
    checks = np.array([np.isfinite(results[i].stop_proba).sum() for i in range(len(prompts))])
    check_s = np.array([results[i].check_seconds[0] for i in range(len(prompts))])
    gold = np.asarray(task.test["label"])
    pred_full = np.array([full_results[i].predictions[0] for i in range(len(prompts))])
    pred_exit = np.array([results[i].predictions[0] for i in range(len(prompts))])

    full_total, exit_total = seconds["full"].sum(), seconds["early exit"].sum()
    measured = full_total / exit_total
    ideal = L / exits.mean()
    layer_s = full_total / len(prompts) / L
    check_cost = measure_check_cost([results[i] for i in range(len(prompts))], full_total / len(prompts))
    cpu_full = sum(float(full_results[i].cpu_seconds[0]) for i in range(len(prompts)))
    cpu_exit = sum(float(results[i].cpu_seconds[0]) for i in range(len(prompts)))
    tokens = np.mean([len(model.tokenizer(p)["input_ids"]) for p in prompts])
    prefix_tokens = int(results[0].meta["prefix_tokens"])
    name = policy.__class__.__name__ + (f"({policy.classifier}, {'+'.join(policy.features_)})"
                                        if hasattr(policy, "features_") else f"(label_gap >= {policy.threshold})")
    print()
    print(f"model {model.name} ({model.weights_note}), L={L}; task {task.name}, 4-shot, n={len(prompts)} test "
          f"prompts (~{tokens:.0f} tokens, {prefix_tokens} of them a shared prefix whose keys and values both "
          f"methods reuse), batch size 1, {args.repeats} interleaved repeats (fastest kept), "
          f"torch threads {torch.get_num_threads()}")
    print(f"policy {name}: threshold {policy.threshold:.2f}, min_layer {policy.min_layer}, label rows only: "
          f"{not getattr(policy, 'needs_full_vocab', False)}; fitted on {len(task.train)} train examples "
          f"({fit_s:.0f} s incl. tracing)")
    print(f"accuracy: full model {np.mean(pred_full == gold):.3f}, early exit {np.mean(pred_exit == gold):.3f}; "
          f"consistency {np.mean(pred_full == pred_exit):.3f}")
    print(f"mean exit layer {exits.mean():.2f} / {L}  (layers saved {1 - exits.mean() / L:.1%})")
    print(f"full model     {1000 * full_total / len(prompts):8.1f} ms / prompt  ({1000 * layer_s:.2f} ms / layer)")
    print(f"early exit     {1000 * exit_total / len(prompts):8.1f} ms / prompt  "
          f"({checks.mean():.1f} checks / prompt, {1000 * check_s.mean():.2f} ms of checks)")
    print(f"measured speedup {measured:.3f}x")
    print(f"ideal speedup    {ideal:.3f}x  (L / mean exit layer)")
    print(f"ratio            {measured / ideal:.3f}  (target >= 0.9)")
    cpu_speedup = cpu_full / cpu_exit
    print(f"(process CPU time of the same runs: speedup {cpu_speedup:.3f}x, ratio {cpu_speedup / ideal:.3f})")
    print(f"one exit check   {check_cost:.3f} of one layer's cost")
    same_exits, same_answers = replay_agreement(model, task, policy, exits, pred_exit)
    print(f"real run == replay on the traced test prompts: exit layers {same_exits}/{len(prompts)}, answers "
          f"{same_answers}/{len(prompts)}")


if __name__ == "__main__":
    main()
