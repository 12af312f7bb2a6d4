"""Smoke test of tests/browser_harness.py: a real JupyterLab + ipywidgets in Chromium.

Writes a two-widget notebook (IntSlider -> HTML "value: N" via observe), runs it
through the JupyterLab UI, moves the slider with the keyboard and checks the HTML
widget follows. Screenshot: tmp_path/browser.png, copied to test-output/.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

try:
    import nbformat
    from playwright.sync_api import expect, sync_playwright
except ImportError as _err:  # pragma: no cover
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off"):
        raise  # under CI the browser test must run, not skip
    pytest.skip(f"browser test needs playwright + nbformat ({_err}); pip install -e .[test]",
                allow_module_level=True)

# tests/ has no __init__.py: pytest puts it on sys.path
from browser_harness import browser_page, jupyterlab_server, open_notebook_and_run_all, require_chromium  # noqa: E402

NB_NAME = "slider_smoke.ipynb"


def _write_notebook(path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Browser harness smoke test"),
        nbformat.v4.new_code_cell("import sys\nprint('KERNEL_PREFIX=' + sys.prefix)"),
        nbformat.v4.new_code_cell(
            "import ipywidgets as widgets\n"
            "slider = widgets.IntSlider(value=5, min=0, max=10, description='n')\n"
            "label = widgets.HTML(value=f'value: {slider.value}')\n"
            "def _on_change(change):\n"
            "    label.value = f\"value: {change['new']}\"\n"
            "slider.observe(_on_change, names='value')\n"
            "widgets.VBox([slider, label])"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(nb, str(path))


@pytest.mark.browser
def test_slider_updates_html_in_jupyterlab(tmp_path):
    require_chromium()
    t0 = time.monotonic()
    root = tmp_path / "root"
    root.mkdir()
    _write_notebook(root / NB_NAME)
    shot = tmp_path / "test_browser_harness.png"

    with jupyterlab_server(root) as lab, sync_playwright() as pw:
        t_server = time.monotonic() - t0
        with browser_page(pw, shot, viewport={"width": 1280, "height": 900}, timeout_ms=30_000) as page:
            result = open_notebook_and_run_all(
                page, lab.base_url, lab.token, NB_NAME, timeout=90
            )
            assert result["executed"] == result["code_cells"] == 2, result

            # The kernel runs in this interpreter's environment (the venv), not in some
            # other python3 (its executable may be bin/python3 rather than bin/python).
            expect(
                page.locator(".jp-OutputArea-output").filter(has_text="KERNEL_PREFIX=")
            ).to_have_text(f"KERNEL_PREFIX={sys.prefix}", timeout=10_000)

            html = page.locator(".widget-html-content").filter(has_text="value:")
            expect(html).to_have_text("value: 5", timeout=20_000)

            handle = page.locator(".widget-slider .noUi-handle")
            expect(handle).to_have_count(1)
            expect(handle).to_have_attribute("role", "slider")
            handle.focus()
            handle.press("ArrowRight")
            expect(html).to_have_text("value: 6")
            handle.press("ArrowRight")
            expect(html).to_have_text("value: 7")
            handle.press("ArrowLeft")
            expect(html).to_have_text("value: 6")

    assert shot.exists() and shot.stat().st_size > 0
    print(
        f"browser harness: server {t_server:.1f}s, open+run all {result['seconds']:.1f}s, "
        f"total {time.monotonic() - t0:.1f}s"
    )
