"""Data-parallel traces under accelerate: two CPU processes give the single-process trace, and one cache file.

``accelerate launch --cpu --num_processes 2`` starts a single process in accelerate 1.15 (its CPU launcher
needs mpirun for more), so the two CPU processes are started with ``--multi_gpu`` (torchrun underneath) and
``ACCELERATE_USE_CPU=true``: gloo on the CPU (``test_the_launchers_start_the_processes_the_readme_says``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from adainfer_lib.model.parallel import my_share

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
LAUNCH = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]
ARRAYS = ("top_ids", "top_probs", "top_prob", "gap", "entropy", "kl_to_final", "cos_prev", "label_logits", "n_tokens")


class _Rank:
    """What ``my_share`` reads of accelerate's ``PartialState``; its split is accelerate's own code."""

    def __init__(self, rank: int, n: int):
        self.process_index, self.num_processes = rank, n

    @contextmanager
    def split_between_processes(self, inputs):
        from accelerate import PartialState

        with PartialState.split_between_processes(self, inputs) as share:
            yield share


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_shares_are_round_robin_and_cover_every_batch(n):
    for m in range(10):
        items = list(range(m))
        shares = [my_share(_Rank(r, n), items) for r in range(n)]
        assert shares == [items[r::n] for r in range(n)]
        assert sorted(sum(shares, [])) == items


def _data_dir(tmp_path: Path) -> Path:
    """A fresh data folder (no traces) that borrows the prepared models, tasks and sources."""
    from adainfer_lib.common.paths import data_dir

    folder = tmp_path / "data"
    folder.mkdir()
    for part in ("models", "tasks", "sources"):
        (folder / part).symlink_to(data_dir() / part)
    return folder


def _env(data: Path) -> dict:
    return {**os.environ, "ADAINFER_DATA": str(data), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


CLI = ["-m", "adainfer_lib.cli", "trace", "--task", "sentiment", "--n", "8", "--n-train", "8", "--seed", "0",
       "--no-progress"]


@pytest.mark.slow
def test_two_processes_trace_equals_one_and_write_each_cache_once(tmp_path, default_model):
    from adainfer_lib import load_task, trace_task
    from adainfer_lib.model.layer_trace import LayerTrace

    data = _data_dir(tmp_path)
    out = tmp_path / "gathered.npz"
    run = subprocess.run([*LAUNCH, *CLI, "--out", str(out)], env=_env(data), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 2 and summary["n"] == 8
    written = [line.split("trace cache written: ")[1] for line in run.stderr.splitlines()
               if "trace cache written: " in line]
    traces = sorted(str(p) for p in (data / "traces").iterdir())
    assert sorted(written) == traces and len(traces) == 3  # test split, train split, content-free prompt: once each
    assert all(line.startswith("[rank 0]") for line in run.stderr.splitlines() if "trace cache written" in line)
    assert summary["trace_cache"] in traces

    task = load_task("sentiment", n=8, n_train=8, seed=0)
    single = trace_task(default_model, task, cache=False, progress=False).trace
    gathered = LayerTrace.load(out)
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(gathered, name), getattr(single, name), atol=1e-5, rtol=1e-5,
                                   equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(gathered.top_ids[..., 0], single.top_ids[..., 0])
    cached = LayerTrace.load(summary["trace_cache"])  # the file the main process wrote is the gathered trace
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(cached, name), getattr(gathered, name))


@pytest.mark.parametrize("launcher, processes", [("--cpu", 1), ("--multi_gpu", 2)])
def test_the_launchers_start_the_processes_the_readme_says(tmp_path, launcher, processes):
    """README: on CPUs only, `accelerate launch --cpu --num_processes 2` starts one process (accelerate 1.15's
    CPU launcher needs mpirun for more) and `--multi_gpu --num_processes 2` — the command the slow tests above
    use — starts two, each told its rank."""
    script = tmp_path / "count.py"  # each process leaves a file: a child's stdout may not reach the launcher's
    script.write_text("import os, sys\nrank, size = os.environ.get('RANK', '0'), os.environ.get('WORLD_SIZE', '1')\n"
                      "open(f'{sys.argv[1]}.{rank}', 'w').write(size)\n")
    command = [*LAUNCH[:2], launcher, *LAUNCH[3:], str(script), str(tmp_path / "rank")]
    assert command[2] == launcher and "--num_processes" in command
    run = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    ranks = {path.name: path.read_text() for path in tmp_path.glob("rank.*")}
    assert ranks == {f"rank.{r}": str(processes) for r in range(processes)}


EXITS_SCRIPT = """
import sys
import numpy as np
import adainfer_lib as ai
from adainfer_lib.model import parallel

model = ai.load_model("smollm2-135m")
task = ai.load_task("sentiment", n=8, n_train=8, seed=0)
rule = ai.GapThresholdPolicy(threshold=0.3, min_layer=12, calibration="raw", label_words=task.label_words)
with ai.count_layer_rows(model) as rows:  # what THIS process computed
    res = ai.run_early_exit(model, task.prompts("test"), rule, batch_size=2, prefix=task.prefix)
state = parallel.process_state()
open(f"{sys.argv[1]}.rank{state.process_index}", "w").write(str(int(rows[0])))
full = ai.run_full(model, task.prompts("test"), label_words=task.label_words, batch_size=2, prefix=task.prefix)
if parallel.is_main(parallel.process_state()):
    np.savez(sys.argv[1], exit_layers=res.exit_layers, scores=res.scores, stop_proba=res.stop_proba,
             full_scores=full.scores, batches=len(res.batch_seconds))
"""


@pytest.mark.slow
def test_two_processes_run_the_real_exits_of_one(tmp_path, default_model):
    """The real early-exit evaluation's runs (``run_early_exit``, ``run_full``) split their batches across two
    processes and gather the results in prompt order: the same as one process."""
    from adainfer_lib import GapThresholdPolicy, load_task, run_early_exit, run_full

    script, out = tmp_path / "exits.py", tmp_path / "exits.npz"
    script.write_text(EXITS_SCRIPT)
    run = subprocess.run([*LAUNCH, str(script), str(out)], env=_env(_data_dir(tmp_path)), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    gathered = np.load(out)
    rows = [int(Path(f"{out}.rank{rank}").read_text()) for rank in (0, 1)]
    # each prompt ran once, in one of the processes (plus the shared prompt prefix, once per process); without the
    # split each process would run all 8
    assert len(rows) == 2 and rows == [5, 5]
    task = load_task("sentiment", n=8, n_train=8, seed=0)
    rule = GapThresholdPolicy(threshold=0.3, min_layer=12, calibration="raw", label_words=task.label_words)
    single = run_early_exit(default_model, task.prompts("test"), rule, batch_size=2, prefix=task.prefix)
    full = run_full(default_model, task.prompts("test"), label_words=task.label_words, batch_size=2, prefix=task.prefix)
    assert int(gathered["batches"]) == len(single.batch_seconds) == 4  # every batch, once
    np.testing.assert_array_equal(gathered["exit_layers"], single.exit_layers)
    np.testing.assert_allclose(gathered["scores"], single.scores, atol=1e-5)
    np.testing.assert_allclose(gathered["stop_proba"], single.stop_proba, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(gathered["full_scores"], full.scores, atol=1e-5)
