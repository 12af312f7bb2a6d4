"""benchmarks/gpu_check.py: the prepared GPU script imports, answers --help, judges with its stated tolerances,
and (dry run) runs end to end on the CPU, so that it works the first time a GPU is there."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help():
    run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--dry-run" in run.stdout and "Tolerances" in run.stdout


def test_judge_uses_the_stated_tolerances():
    gpu_check = _module()
    rows = gpu_check.judge({"pred_agree_L": 0.96, "label_prob_L_max": 0.2, "label_logits_max": 9.0}, "bfloat16")
    verdict = {r["check"]: r["ok"] for r in rows}
    assert verdict == {"pred_agree_L": True, "label_prob_L_max": False}  # bf16 logits are not checked
    assert not {r["check"]: r["ok"] for r in gpu_check.judge({"label_logits_max": 0.5}, "float32")}["label_logits_max"]


@pytest.mark.slow
def test_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--json", str(out)], capture_output=True,
                         text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "ALL CHECKS PASS" in run.stdout and "measured speedup" in run.stdout
    import json

    report = json.loads(out.read_text())
    entry = report["models"]["smollm2-135m"]
    assert {"cpu-float32", "split-float32", "benchmark"} <= set(entry)
    assert entry["split-float32"]["offloaded_to"] == "disk"
    assert entry["cpu-float32"]["values"]["pred_agree"] == 1.0
