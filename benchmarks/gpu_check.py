"""GPU check (issue 16, part 3): the suite's numbers on a GPU equal the CPU's, and what early exit saves there.

For each model (default: the default model and gemma3-270m), 4-shot sentiment, one demonstration set (seed 0):
1. reference: float32 on the CPU: chapter 01's ``trace_task`` (test and train splits, full vocabulary), an
   exit policy fitted on the train trace (``GapThresholdPolicy.fit``, the cheap label-gap rule of chapter 04,
   at most 1 point of accuracy lost on train) and chapter 04's real exits (``run_early_exit``, batch 1);
2. the same on the device in float32 and in bfloat16 (same prompts, same policy), compared with the
   reference under the tolerances below (set before any GPU run, from the precision of each dtype: they are
   claims to check, not fitted to results);
3. the default model split by accelerate (``device_map``: every other decoder layer and the LM head on the
   CPU, the rest on the GPU; its hooks move the offloaded weights in at forward time), float32, vs the reference;
4. the early-exit benchmark on the device (bfloat16, batch 1, ``--repeats`` interleaved rounds, fastest kept per
   prompt): dense vs early exit, measured speedup (dense seconds / early-exit seconds, the runner's own
   per-batch wall clock: CUDA is synchronised there, since every check reads its result on the host), ideal
   speedup (L / mean exit layer), their ratio, and one check's cost as a fraction of one layer's.

Tolerances (float32 device vs float32 CPU | bfloat16 device vs float32 CPU):
- ``label_logits``: max |difference| over examples x layers x label words  <= 1e-2 | not checked (bf16 logits
  of size 10-30 differ by ~0.1-0.5: the decisions below are what matters);
- ``label_prob_L``: max |difference| of the calibrated label probabilities at layer L  <= 1e-3 | <= 0.15, and
  their mean |difference| <= 1e-4 | <= 0.03;
- ``pred_agree``: share of (example, layer) label predictions that agree  >= 0.99 | >= 0.90, and at layer L
  >= 1.0 | >= 0.95;
- ``top1_agree_L``: share of examples whose full-vocabulary top-1 token at layer L agrees >= 1.0 | >= 0.90;
- real exits: ``exit_agree`` (same exit layer) >= 0.95 | >= 0.75; ``exit_pred_agree`` (same prediction at the
  exit) >= 0.98 | >= 0.90; ``exit_mean_shift`` |mean exit layer difference| <= 0.25 | <= 1.5 layers.

Prints one line per check (value, tolerance, PASS/FAIL) and the benchmark; ``--json PATH`` writes everything
with the date, the device and the versions. Exit status 1 when a check fails.
``--dry-run`` runs the same code on the CPU (float32 "device", the default model, a few prompts, the split model
offloaded to the disk instead) to test the script where no GPU is available (``tests/test_gpu_check.py``).

Usage: ``python benchmarks/gpu_check.py [--models smollm2-135m,gemma3-270m] [--n 64] [--n-train 64]
[--repeats 3] [--device cuda] [--json results/gpu_check.json] [--dry-run]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time

import numpy as np
from scipy.special import softmax

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# (float32 on the device, bfloat16 on the device) vs float32 on the CPU; None = not checked.
TOLERANCES = {
    "label_logits_max": {"float32": 1e-2, "bfloat16": None},
    "label_prob_L_max": {"float32": 1e-3, "bfloat16": 0.15},
    "label_prob_L_mean": {"float32": 1e-4, "bfloat16": 0.03},
    "pred_agree": {"float32": 0.99, "bfloat16": 0.90},
    "pred_agree_L": {"float32": 1.0, "bfloat16": 0.95},
    "top1_agree_L": {"float32": 1.0, "bfloat16": 0.90},
    "exit_agree": {"float32": 0.95, "bfloat16": 0.75},
    "exit_pred_agree": {"float32": 0.98, "bfloat16": 0.90},
    "exit_mean_shift": {"float32": 0.25, "bfloat16": 1.5},
}
HIGHER_IS_BETTER = {"pred_agree", "pred_agree_L", "top1_agree_L", "exit_agree", "exit_pred_agree"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--n", type=int, default=64, help="test prompts compared and timed")
    parser.add_argument("--n-train", type=int, default=64, help="train prompts (calibration and the exit policy)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (fastest kept)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="dtypes compared on the device")
    parser.add_argument("--bench-dtype", default="bfloat16", help="dtype of the early-exit benchmark")
    parser.add_argument("--no-split", action="store_true", help="skip the device_map (split model) check")
    parser.add_argument("--json", default=None, help="write all numbers here")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU only, float32, the default model, 4 prompts: tests the script without a GPU")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.dtypes, args.bench_dtype, args.models = "cpu", "float32", "float32", "smollm2-135m"
        args.n, args.n_train, args.repeats = min(args.n, 4), min(args.n_train, 8), 1
    return args


def compare_traces(ref, got) -> dict:
    """Trace comparisons (``TaskTrace`` of the same prompts): see the module docstring."""
    ref_p, got_p = ref.predictions(), got.predictions()
    ref_s, got_s = ref.scores(), got.scores()
    dp = np.abs(softmax(ref_s[:, -1], axis=-1) - softmax(got_s[:, -1], axis=-1))
    return {
        "label_logits_max": float(np.abs(ref.trace.label_logits - got.trace.label_logits).max()),
        "label_prob_L_max": float(dp.max()),
        "label_prob_L_mean": float(dp.mean()),
        "pred_agree": float((ref_p == got_p).mean()),
        "pred_agree_L": float((ref_p[:, -1] == got_p[:, -1]).mean()),
        "top1_agree_L": float((ref.trace.top_ids[:, -1, 0] == got.trace.top_ids[:, -1, 0]).mean()),
        "accuracy_L": float((got_p[:, -1] == got.gold).mean()),
        "reference_accuracy_L": float((ref_p[:, -1] == ref.gold).mean()),
    }


def compare_exits(ref, got) -> dict:
    return {
        "exit_agree": float((ref.exit_layers == got.exit_layers).mean()),
        "exit_pred_agree": float((ref.predictions == got.predictions).mean()),
        "exit_mean_shift": float(abs(ref.exit_layers.mean() - got.exit_layers.mean())),
        "mean_exit_layer": float(got.exit_layers.mean()),
        "reference_mean_exit_layer": float(ref.exit_layers.mean()),
    }


def judge(values: dict, dtype: str) -> list[dict]:
    """One row per toleranced value: name, value, tolerance, ok."""
    rows = []
    for name, tol in TOLERANCES.items():
        limit = tol.get(dtype)
        if name not in values or limit is None:
            continue
        ok = values[name] >= limit if name in HIGHER_IS_BETTER else values[name] <= limit
        rows.append({"check": name, "value": values[name], "tolerance": (">= " if name in HIGHER_IS_BETTER else "<= ")
                     + f"{limit:g}", "ok": bool(ok)})
    return rows


def split_map(hf_model, spec, device: str, offload: str) -> dict:
    """Every other decoder layer and the unembedding (with the embedding where the two are tied) on ``offload``
    ("cpu" or "disk"), the rest on ``device``."""
    n_layers = len(hf_model.get_submodule(spec.layers))
    device_map = {f"{spec.layers}.{i}": offload if i % 2 else device for i in range(n_layers)}
    device_map[spec.unembed] = offload
    if getattr(hf_model.config, "tie_word_embeddings", False):  # a tied pair must sit together (SmolLM2 ties)
        embed = hf_model.get_input_embeddings()
        device_map[next(n for n, m in hf_model.named_modules() if m is embed)] = offload
    for name in hf_model.state_dict():
        if not any(name == k or name.startswith(k + ".") for k in device_map):
            device_map[name.rsplit(".", 1)[0]] = device
    return device_map


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def benchmark(model, task, policy, device: str, repeats: int) -> dict:
    """Dense vs early exit, batch 1, interleaved (order alternates per prompt), fastest of ``repeats`` kept."""
    import adainfer_lib as ai

    prompts, words = task.prompts("test"), task.label_words
    runs = {
        "full": lambda p: ai.run_full(model, [p], label_words=words, calibration=policy.calibration,
                                      prefix=task.prefix),
        "exit": lambda p: ai.run_early_exit(model, [p], policy, label_words=words, prefix=task.prefix),
    }
    for run in runs.values():  # warm-up: kernel selection, allocations, the prefix's keys and values
        run(prompts[0])
    best = {k: np.full(len(prompts), np.inf) for k in runs}
    exits, checks, check_s = np.zeros(len(prompts)), np.zeros(len(prompts)), np.zeros(len(prompts))
    for r in range(repeats):
        for i, p in enumerate(prompts):
            for name in (list(runs) if (i + r) % 2 == 0 else list(runs)[::-1]):
                sync(device)
                res = runs[name](p)
                sync(device)
                if res.seconds[0] < best[name][i]:
                    best[name][i] = res.seconds[0]
                    if name == "exit":
                        exits[i], checks[i] = res.exit_layers[0], np.isfinite(res.stop_proba).sum()
                        check_s[i] = res.check_seconds[0]
    L = model.n_layers
    full_total, exit_total = best["full"].sum(), best["exit"].sum()
    layer_s = full_total / len(prompts) / L
    measured, ideal = full_total / exit_total, L / exits.mean()
    return {"n": len(prompts), "repeats": repeats, "full_ms_per_prompt": 1000 * full_total / len(prompts),
            "exit_ms_per_prompt": 1000 * exit_total / len(prompts), "mean_exit_layer": float(exits.mean()),
            "L": L, "measured_speedup": float(measured), "ideal_speedup": float(ideal),
            "ratio": float(measured / ideal),
            "check_cost_in_layers": float(check_s.sum() / max(checks.sum(), 1) / layer_s),
            "policy": f"GapThresholdPolicy(threshold={policy.threshold}, min_layer={policy.min_layer})"}


def check_model(name: str, args, report: dict) -> list[dict]:
    import torch

    import adainfer_lib as ai

    rows: list[dict] = []
    task = ai.load_task(args.task, n=args.n, n_train=args.n_train, seed=0)
    t0 = time.perf_counter()
    ref = ai.load_model(name)  # float32, CPU
    ref_train = ai.trace_task(ref, task, split="train", cache=False, progress=False)
    policy = ai.GapThresholdPolicy.fit(ref_train, max_drop=0.01)
    ref_test = ai.trace_task(ref, task, cache=False, progress=False)
    ref_exit = ai.run_early_exit(ref, task.prompts(), policy, label_words=task.label_words, prefix=task.prefix)
    print(f"[{name}] reference float32 CPU: {time.perf_counter() - t0:.0f} s; policy {policy.threshold=}, "
          f"{policy.min_layer=}; accuracy L {np.mean(ref_test.final_predictions() == ref_test.gold):.3f}", flush=True)
    entry = report.setdefault(name, {})
    for dtype in [d for d in args.dtypes.split(",") if d]:
        model = ai.load_model(name, device=args.device, dtype=getattr(torch, dtype))
        got = ai.trace_task(model, task, cache=False, progress=False)
        res = ai.run_early_exit(model, task.prompts(), policy, label_words=task.label_words, prefix=task.prefix)
        values = {**compare_traces(ref_test, got), **compare_exits(ref_exit, res)}
        judged = judge(values, dtype)
        entry[f"{args.device}-{dtype}"] = {"values": values, "checks": judged}
        rows += [{"model": name, "run": f"{args.device} {dtype}", **row} for row in judged]
        if dtype == args.bench_dtype:
            entry["benchmark"] = benchmark(model, task, policy, args.device, args.repeats)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if not args.no_split and name == args.models.split(",")[0]:
        with tempfile.TemporaryDirectory() as tmp:
            offload = "disk" if args.device == "cpu" else "cpu"
            device_map = split_map(ref.hf_model, ref.spec, "cpu" if args.device == "cpu" else 0, offload)
            split = ai.load_model(name, device_map=device_map, offload_folder=tmp if offload == "disk" else None)
            got = ai.trace_task(split, task, cache=False, progress=False)
            res = ai.run_early_exit(split, task.prompts(), policy, label_words=task.label_words, prefix=task.prefix)
            values = {**compare_traces(ref_test, got), **compare_exits(ref_exit, res)}
            judged = judge(values, "float32")
            entry["split-float32"] = {"values": values, "checks": judged, "offloaded_to": offload}
            rows += [{"model": name, "run": f"device_map ({offload} offload) float32", **row} for row in judged]
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_grad_enabled(False)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("No CUDA device: run this on a GPU machine, or pass --dry-run to test the script on the CPU.")
        return 2
    import accelerate
    import transformers

    report = {"date": dt.date.today().isoformat(),
              "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu (dry run)",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "accelerate": accelerate.__version__},
              "task": args.task, "n": args.n, "n_train": args.n_train, "tolerances": TOLERANCES, "models": {}}
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        rows += check_model(name, args, report["models"])
    print(f"\n{report['date']}, {report['device']}; {args.task}, n={args.n} test prompts, 4-shot, seed 0")
    for row in rows:
        print(f"{'PASS' if row['ok'] else 'FAIL'}  {row['model']:<14} {row['run']:<28} {row['check']:<18} "
              f"{row['value']:.4g}  ({row['tolerance']})")
    for name, entry in report["models"].items():
        b = entry.get("benchmark")
        if b:
            print(f"{name} early exit on {args.device} {args.bench_dtype}, batch 1, n={b['n']}: full "
                  f"{b['full_ms_per_prompt']:.1f} ms, exit {b['exit_ms_per_prompt']:.1f} ms per prompt; mean exit "
                  f"layer {b['mean_exit_layer']:.1f}/{b['L']}; measured speedup {b['measured_speedup']:.3f}x, ideal "
                  f"{b['ideal_speedup']:.3f}x, ratio {b['ratio']:.3f}; one check = {b['check_cost_in_layers']:.2f} "
                  f"layers")
    report["all_ok"] = all(row["ok"] for row in rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print("ALL CHECKS PASS" if report["all_ok"] else "SOME CHECKS FAIL")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
