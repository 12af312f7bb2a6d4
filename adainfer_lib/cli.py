"""Command line: trace a task through the logit lens, on one process or data-parallel under ``accelerate launch``.

    python -m adainfer_lib.cli trace --model smollm2-135m --task sentiment --n 200 --seed 0
    accelerate launch --num_processes 8 -m adainfer_lib.cli trace --model meta-llama/Llama-2-7b-hf \\
        --task mmlu --dtype bfloat16 --seed 0

``trace`` runs ``trace_task`` (the split's prompts, plus the train split and the content-free prompt that the
calibrations are fitted on) and leaves the traces in ``data/traces/`` (``ADAINFER_DATA``), where notebooks
and ``trace_task(..., cache=True)`` find them. Under ``accelerate launch`` each process takes its share of the
batches on its own device (``PartialState().device``: one GPU each, or the CPU with ``--cpu``), the results
are gathered in prompt order, and the main process writes each cache file once. The main process prints one
JSON line: model, task, n, n_train (the train examples the calibrations were fitted on), processes, seconds,
the full model's accuracy, and the trace file. Bad arguments (a count out of range, an unknown task or model,
an ``--n`` larger than the task has) are usage errors (exit status 2) reported before any model is loaded.
``python -m adainfer_lib`` is the same command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .common.hub import offline_by_default

DTYPES = ("float32", "bfloat16", "float16")


def int_at_least(low: int):
    """An argparse ``type``: the text as an ``int`` >= ``low``, else argparse's usage error (exit status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, not {value}")
        return value
    parse.__name__ = f"integer >= {low}"  # what argparse calls the type in its messages
    return parse


def build_parser(prog: str = "python -m adainfer_lib.cli") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="adainfer command line (see the module docstring)")
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("trace", help="trace a task's prompts through the logit lens (cached in data/traces)",
                            description="Trace a task through the logit lens; data-parallel under accelerate launch.")
    t.set_defaults(usage_error=t.error)  # checks after parsing report through the subcommand's usage
    t.add_argument("--model", default=None, help="offline alias, local folder or hub name (default: smollm2-135m)")
    t.add_argument("--task", required=True, help="task name, e.g. sentiment, topic, mmlu")
    t.add_argument("--n", type=int_at_least(1), default=None, help="test examples (default: all)")
    t.add_argument("--seed", type=int_at_least(0), default=0, help="demonstration and split seed (default 0)")
    t.add_argument("--shots", type=int_at_least(0), default=4, help="demonstrations per prompt (default 4)")
    t.add_argument("--n-train", type=int_at_least(0), default=None,
                   help="train examples for the calibrations (default 500)")
    t.add_argument("--split", default="test", choices=("test", "train"), help="split to trace (default test)")
    t.add_argument("--batch-size", type=int_at_least(1), default=8)
    t.add_argument("--label-only", action="store_true", help="label-word rows of the unembedding only")
    t.add_argument("--dtype", default="float32", choices=DTYPES)
    t.add_argument("--device", default=None,
                   help="one device for the whole model (default: this process's accelerate device, else cpu)")
    t.add_argument("--device-map", default=None,
                   help="let accelerate split the model, e.g. 'auto' (one process only)")
    t.add_argument("--offload-folder", default=None, help="where a device map offloads weights to 'disk'")
    t.add_argument("--no-cache", action="store_true", help="neither read nor write data/traces (timing runs)")
    t.add_argument("--out", default=None, help="also save the split's LayerTrace (.npz) here")
    t.add_argument("--no-progress", action="store_true")
    return parser


def check_trace_args(args):
    """The task ``args`` name (loaded: no model needed) once the model name is known to resolve.

    Everything is checked here, before any weights are read; ``ValueError`` (``ModelNotFoundError`` and
    ``UnsupportedArchitectureError`` are ones) says what is wrong: an unknown task, an ``--n`` larger than the
    task's test split (with the task's size), an unknown model."""
    from .data.tasks import load_task
    from .model.loading import DEFAULT_MODEL, check_model_name

    task = load_task(args.task, n=args.n, seed=args.seed, shots=args.shots, n_train=args.n_train)
    check_model_name(args.model or DEFAULT_MODEL)
    return task


def run_trace(args, task) -> dict:
    """Trace ``task`` (checked by ``check_trace_args``) as ``args`` say; the summary (main process only)."""
    import torch

    from .data.task_trace import trace_task
    from .model import parallel
    from .model.loading import DEFAULT_MODEL, load_model
    from .model.trace_cache import trace_cache_path

    state = parallel.process_state()
    processes = 1 if state is None else state.num_processes
    if args.device_map is not None and processes > 1:
        raise SystemExit("--device-map splits one model across devices; with several processes each process "
                         "takes one device (--device or accelerate's), so use one or the other.")
    device = args.device or (None if args.device_map else (str(state.device) if state is not None else "cpu"))
    model = load_model(args.model or DEFAULT_MODEL, dtype=getattr(torch, args.dtype), device=device,
                       device_map=args.device_map, offload_folder=args.offload_folder)
    start = time.perf_counter()
    tt = trace_task(model, task, split=args.split, full_vocab=not args.label_only, cache=not args.no_cache,
                    batch_size=args.batch_size, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    path = None if args.no_cache else trace_cache_path(model, task.prompts(args.split), task.label_words, 5,
                                                          not args.label_only, True)
    if args.out and parallel.is_main(state):
        tt.trace.save(args.out)
    summary = {"model": model.name, "task": task.name, "split": args.split, "n": tt.n_examples,
               "n_train": len(task.train), "n_layers": tt.n_layers, "seed": args.seed, "processes": processes,
               "device": str(model.device),
               "seconds": round(seconds, 3), "trace_seconds": tt.trace.meta.get("seconds"),
               "accuracy_full": round(float((tt.final_predictions() == tt.gold).mean()), 4),
               "trace_cache": None if path is None else str(path), "out": args.out}
    parallel.wait(state)
    return summary if parallel.is_main(state) else {}


def main(argv: list[str] | None = None, prog: str = "python -m adainfer_lib.cli") -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; 0 on success. Bad arguments end in
    argparse's usage error (``SystemExit(2)``, no traceback) before any model is loaded."""
    args = build_parser(prog).parse_args(argv)
    import os

    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("adainfer_lib").setLevel(logging.INFO)  # e.g. "trace cache written: <path>"
    offline_by_default()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.command == "trace":
        try:
            task = check_trace_args(args)
        except ValueError as err:
            args.usage_error(str(err))
        summary = run_trace(args, task)
        if summary:
            print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
