"""Chapter 05's exit explorer in a real JupyterLab + headless Chromium: run the notebook (quick mode), move
the threshold slider with the keyboard, and check the rendered exit layer follows.

The server serves the repository root, as a user would open it. JupyterLab's autosave is switched off for
the run (a saved notebook would carry outputs, and chapters are committed without them), and the test
checks the notebook file is byte-for-byte unchanged afterwards. Screenshot: tmp_path/explorer.png, copied
to test-output/test_browser_explorer.png.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError as _err:  # pragma: no cover
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off"):
        raise  # under CI the browser test must run, not skip
    pytest.skip(f"browser test needs playwright ({_err}); pip install -e .[test]", allow_module_level=True)

# tests/ has no __init__.py: pytest puts it on sys.path
from browser_harness import REPO_ROOT, browser_page, jupyterlab_server, open_notebook_and_run_all, require_chromium  # noqa: E402

NOTEBOOK = "notebooks/05_interactive_exit_explorer.ipynb"
N_LAYERS = 30  # the default model, SmolLM2-135M-Instruct
NO_AUTOSAVE = {"@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False}}


def _slider(page, description: str):
    """The ipywidgets slider whose description label reads ``description`` (there are two sliders)."""
    return page.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(description)}\s*$")))


@pytest.mark.browser
@pytest.mark.slow
def test_threshold_slider_moves_the_exit_layer_in_jupyterlab(tmp_path):
    require_chromium()
    t0 = time.monotonic()
    notebook = REPO_ROOT / NOTEBOOK
    committed = notebook.read_bytes()
    # JupyterLab writes a checkpoint copy when it opens a notebook that has none: remove ours afterwards
    checkpoints = notebook.parent / ".ipynb_checkpoints"
    checkpoint = checkpoints / f"{notebook.stem}-checkpoint.ipynb"
    leftovers = [p for p in (checkpoints, checkpoint) if not p.exists()]
    shot = tmp_path / "test_browser_explorer.png"
    timings: dict[str, float] = {}

    with jupyterlab_server(REPO_ROOT, extra_env={"ADAINFER_QUICK": "1"}) as lab, sync_playwright() as pw:
        settings_dir = Path(lab.env["JUPYTERLAB_SETTINGS_DIR"])
        for rel, value in NO_AUTOSAVE.items():  # read by the page when it loads, below
            (settings_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (settings_dir / rel).write_text(json.dumps(value))
        timings["server"] = time.monotonic() - t0
        with browser_page(pw, shot, viewport={"width": 1400, "height": 1000}, timeout_ms=60_000) as page:
            result = open_notebook_and_run_all(page, lab.base_url, lab.token, NOTEBOOK, timeout=480)
            assert result["executed"] == result["code_cells"], result
            timings["run_all"] = result["seconds"]

            exit_line = page.locator(".adainfer-exit-layer")
            expect(exit_line).to_have_count(1, timeout=30_000)
            expect(exit_line).to_have_text(re.compile(rf"^exit layer: \d+ / {N_LAYERS}$"))
            expect(page.locator(".adainfer-error")).to_have_count(0)
            dataset = page.locator(".adainfer-dataset-summary")
            expect(dataset).to_have_count(1)
            # the readout is filled when the slider view renders, and JupyterLab renders cells outside the
            # viewport lazily (an empty inner_text failed CI once): bring it into view, wait for a number
            min_readout = _slider(page, "min layer").locator(".widget-readout")
            min_readout.scroll_into_view_if_needed()
            expect(min_readout).to_have_text(re.compile(r"^\s*\d+\s*$"))
            min_layer = int(min_readout.text_content().strip())

            threshold = _slider(page, "threshold")
            expect(threshold).to_have_count(1)
            handle = threshold.locator(".noUi-handle")
            readout = threshold.locator(".widget-readout")
            expect(handle).to_have_attribute("role", "slider")
            exit_line.scroll_into_view_if_needed()
            handle.focus()

            t_move = time.monotonic()
            handle.press("End")  # threshold 1.01 (never stop early): every input runs all layers
            expect(readout).to_have_text("1.01")
            expect(exit_line).to_have_text(f"exit layer: {N_LAYERS} / {N_LAYERS}")
            expect(dataset).to_contain_text("threshold 1.01")
            expect(dataset).to_contain_text(f"mean exit layer {N_LAYERS}.0 / {N_LAYERS}")
            timings["move_end"] = time.monotonic() - t_move

            t_move = time.monotonic()
            handle.press("Home")  # threshold 0: every input stops at the minimum layer
            expect(readout).to_have_text("0.00")
            expect(exit_line).not_to_have_text(f"exit layer: {N_LAYERS} / {N_LAYERS}")
            expect(exit_line).to_have_text(f"exit layer: {min_layer} / {N_LAYERS}")
            expect(dataset).to_contain_text("threshold 0.00")
            timings["move_home"] = time.monotonic() - t_move

            t_move = time.monotonic()
            for _ in range(3):
                handle.press("ArrowRight")
            expect(readout).to_have_text("0.03")
            expect(dataset).to_contain_text("threshold 0.03")
            timings["arrows"] = time.monotonic() - t_move
            expect(page.locator(".adainfer-error")).to_have_count(0)
            exit_line.scroll_into_view_if_needed()

    for path in reversed(leftovers):  # the file, then the folder if this run created it and it is empty
        if path.is_file():
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    assert shot.exists() and shot.stat().st_size > 0
    assert notebook.read_bytes() == committed, f"{NOTEBOOK} was modified by the browser run"
    print("browser explorer: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
          + f", total {time.monotonic() - t0:.1f}s")
