"""Browser-test harness: a real JupyterLab server driven by headless Debian Chromium.

Used by the ``@pytest.mark.browser`` tests. Three building blocks:

* :func:`jupyterlab_server` -- context manager; starts ``python -m jupyter lab`` on
  127.0.0.1 (free port, random token) with every per-user directory in a temporary
  folder, waits for ``/api/status``, yields a :class:`LabServer` and tears the whole
  process group down afterwards (printing the server log when the block failed).
* :func:`chromium_browser` -- launches ``/usr/bin/chromium`` headless through
  Playwright (never a Playwright-downloaded browser). Skips the test when Chromium is
  missing, unless ``CI`` is set, where it fails instead.
* :func:`open_notebook_and_run_all` -- creates the kernel session over REST first
  (avoids JupyterLab's "Select Kernel" dialog), opens the notebook, waits until the
  browser is connected to an idle kernel, clicks Run -> Run All Cells and waits until
  every code cell has executed and the kernel is idle again.

Typical use::

    from playwright.sync_api import sync_playwright
    with jupyterlab_server(tmp_path) as lab, sync_playwright() as pw:
        browser = chromium_browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            open_notebook_and_run_all(page, lab.base_url, lab.token, "nb.ipynb")
            ...
        finally:
            browser.close()

Install the browser with ``tools/install_browser.sh`` (Debian package ``chromium``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_OUTPUT_DIR = REPO_ROOT / "test-output"  # git-ignored
CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# User settings written into the temporary JUPYTERLAB_SETTINGS_DIR.
LAB_USER_SETTINGS: dict[str, dict[str, Any]] = {
    # No "Would you like to receive official Jupyter news?" toast (it can cover widgets).
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


# --------------------------------------------------------------------------- helpers


def _is_ci() -> bool:
    value = os.environ.get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(
    base_url: str,
    token: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: float = 10.0,
) -> Any:
    """Call the Jupyter server REST API (token auth; no XSRF needed). Returns parsed JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base_url.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _tail(text: str, n_chars: int = 12000) -> str:
    return text if len(text) <= n_chars else "...\n" + text[-n_chars:]


# --------------------------------------------------------------------------- server


@dataclass
class LabServer:
    """A running JupyterLab started by :func:`jupyterlab_server`."""

    base_url: str  # e.g. "http://127.0.0.1:41234" (no trailing slash)
    token: str
    root_dir: Path
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 10.0) -> Any:
        """REST call, e.g. ``lab.api("GET", "/api/sessions")``."""
        return _api(self.base_url, self.token, method, path, body, timeout=timeout)

    def url(self, path: str = "/lab") -> str:
        """Absolute URL for *path* with the token appended."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}{path}{sep}token={self.token}"

    def log(self) -> str:
        """Server log so far (stdout + stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _server_env(tmp: Path, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    home = tmp / "home"
    dirs = {
        "HOME": home,
        "IPYTHONDIR": home / ".ipython",
        "JUPYTER_CONFIG_DIR": home / ".jupyter",
        "JUPYTER_DATA_DIR": home / ".local/share/jupyter",
        "JUPYTER_RUNTIME_DIR": tmp / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": home / ".jupyter/lab/user-settings",
        "JUPYTERLAB_WORKSPACES_DIR": home / ".jupyter/lab/workspaces",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_DATA_HOME": home / ".local/share",
        "MPLCONFIGDIR": home / ".config/matplotlib",
    }
    for name, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    # JUPYTER_DATA_DIR only replaces the *user* data dir; the interpreter's
    # share/jupyter (kernelspec python3, @jupyter-widgets labextension) stays on the
    # path. List it explicitly anyway so nothing can hide it.
    prefix_share = str(Path(sys.prefix) / "share" / "jupyter")
    old = env.get("JUPYTER_PATH")
    env["JUPYTER_PATH"] = prefix_share + (os.pathsep + old if old else "")
    # The kernel must be this interpreter: jupyter_client maps the "python" argv of the
    # python3 kernelspec to the server's sys.executable; also put its bin dir first.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # silences a debugpy warning in kernels
    env.pop("JUPYTER_PREFER_ENV_PATH", None)
    env.pop("JUPYTER_TOKEN", None)
    if extra_env:
        env.update(extra_env)
    return env


def _write_user_settings(settings_dir: Path) -> None:
    for rel, value in LAB_USER_SETTINGS.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2))


def _descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with ipykernel
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _stop_server(server: LabServer, grace: float = 10.0) -> None:
    proc = server.process
    if proc.poll() is not None:
        return
    # Kernels run in their own sessions / process groups: remember them by pid.
    children = _descendants(proc.pid)
    with contextlib.suppress(Exception):
        server.api("POST", "/api/shutdown", timeout=5)  # shuts kernels down cleanly
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    else:
        # Server gone; make sure nothing else in its process group lingers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for pid in children:  # leftover kernels (own process groups)
        _signal_pid(pid, signal.SIGKILL)


@contextlib.contextmanager
def jupyterlab_server(
    root_dir: str | os.PathLike,
    *,
    timeout: float = 60,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[LabServer]:
    """Start JupyterLab serving *root_dir*; yield a :class:`LabServer`.

    All per-user state (HOME, IPYTHONDIR, JUPYTER_CONFIG_DIR, JUPYTER_DATA_DIR,
    JUPYTER_RUNTIME_DIR, JUPYTERLAB_SETTINGS_DIR, JUPYTERLAB_WORKSPACES_DIR, XDG dirs)
    lives in a temporary folder; the interpreter's ``share/jupyter`` stays visible, so
    the python3 kernelspec and the ipywidgets labextension are found. *timeout* bounds
    the wait for ``/api/status``. On an exception inside the block the server log is
    printed to stderr; on exit the server, its kernels and its process group are killed.
    """
    root = Path(root_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="adainfer-lab-") as tmp_name:
        tmp = Path(tmp_name)
        env = _server_env(tmp, extra_env)
        _write_user_settings(Path(env["JUPYTERLAB_SETTINGS_DIR"]))
        token = secrets.token_hex(24)
        port = _free_port()
        cmd = [
            sys.executable, "-m", "jupyter", "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=20",  # real port is read back from the runtime file
            f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={token}",
            "--ServerApp.password=",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
            *extra_args,
        ]
        log_path = tmp / "jupyterlab.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group -> killpg on exit
        )
        server = LabServer(
            base_url=f"http://127.0.0.1:{port}",
            token=token,
            root_dir=root,
            process=proc,
            log_path=log_path,
            env=env,
        )
        failed = True
        try:
            _wait_for_server(server, Path(env["JUPYTER_RUNTIME_DIR"]), timeout)
            yield server
            failed = False
        finally:
            try:
                _stop_server(server)
            finally:
                log_file.close()
                if failed:
                    sys.stderr.write(
                        f"\n----- JupyterLab log ({' '.join(cmd[:4])} ...) -----\n"
                        f"{_tail(server.log())}\n----- end of JupyterLab log -----\n"
                    )


def _wait_for_server(server: LabServer, runtime_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited early with code {server.process.returncode}"
            )
        # With port_retries the server may have moved to another port: trust its own
        # jpserver-<pid>.json when it exists.
        info_file = runtime_dir / f"jpserver-{server.process.pid}.json"
        if info_file.exists():
            with contextlib.suppress(ValueError, OSError, KeyError):
                info = json.loads(info_file.read_text())
                server.base_url = f"http://127.0.0.1:{int(info['port'])}"
        try:
            status = server.api("GET", "/api/status", timeout=2)
            if isinstance(status, dict) and "started" in status:
                return
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as err:
            last_err = err
        time.sleep(0.2)
    raise TimeoutError(
        f"JupyterLab did not answer {server.base_url}/api/status within {timeout}s "
        f"(last error: {last_err!r})"
    )


# --------------------------------------------------------------------------- browser


def require_chromium() -> str:
    """Return the Chromium path; pytest.skip when missing (pytest.fail under CI)."""
    if os.path.exists(CHROMIUM_PATH) and os.access(CHROMIUM_PATH, os.X_OK):
        return CHROMIUM_PATH
    import pytest

    reason = (
        f"{CHROMIUM_PATH} not found: run tools/install_browser.sh "
        "(installs Debian's 'chromium'; Playwright browser downloads are not used)"
    )
    if _is_ci():
        pytest.fail(f"CI is set and {reason}", pytrace=False)
    pytest.skip(reason)
    raise AssertionError("unreachable")  # pragma: no cover


def chromium_browser(playwright: Any, *, headless: bool = True, extra_args: Sequence[str] = ()):
    """Launch Debian's ``/usr/bin/chromium`` via Playwright; the caller closes it.

    Uses Playwright's default temporary profile (``--user-data-dir`` in args is
    refused by Playwright). Skips the test if Chromium is missing (fails under CI).
    """
    executable = require_chromium()
    return playwright.chromium.launch(
        executable_path=executable,
        headless=headless,
        args=[*CHROMIUM_ARGS, *extra_args],
    )


def collect_console(page: Any) -> list[str]:
    """Attach listeners that record browser console messages and page errors."""
    messages: list[str] = []
    page.on("console", lambda msg: messages.append(f"console.{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: messages.append(f"pageerror: {err}"))
    return messages


def save_screenshot(page: Any, path: str | os.PathLike, *, copy_name: str | None = None) -> Path:
    """Screenshot *page* to *path* and copy it into ``<repo>/test-output/``.

    *copy_name* defaults to the file name of *path*. Returns the copy's path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=False)
    TEST_OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    dest = TEST_OUTPUT_DIR / (copy_name or path.name)
    shutil.copyfile(path, dest)
    return dest


@contextlib.contextmanager
def browser_page(playwright: Any, shot: str | os.PathLike, *, viewport: Mapping[str, int],
                 timeout_ms: int = 30_000) -> Iterator[Any]:
    """A Chromium page for one test: its console is collected (and printed when the test fails), a
    screenshot goes to *shot* and ``test-output/`` when the block ends (also, especially, on failure),
    and the browser is closed."""
    browser = chromium_browser(playwright)
    page, console = None, []
    try:
        page = browser.new_page(viewport=dict(viewport))
        page.set_default_timeout(timeout_ms)
        console = collect_console(page)
        yield page
    except BaseException:
        if console:
            sys.stderr.write("----- browser console -----\n" + "\n".join(console[-80:]) + "\n")
        raise
    finally:
        if page is not None:
            try:
                save_screenshot(page, shot)
            except Exception as err:  # noqa: BLE001
                sys.stderr.write(f"screenshot failed: {err!r}\n")
        browser.close()


# --------------------------------------------------------------------------- notebook


def _session_for(base_url: str, token: str, nb_path: str) -> dict | None:
    for sess in _api(base_url, token, "GET", "/api/sessions"):
        if sess.get("path") == nb_path:
            return sess
    return None


def _kernel(base_url: str, token: str, kernel_id: str) -> dict:
    return _api(base_url, token, "GET", f"/api/kernels/{kernel_id}")


def _count_code_cells(base_url: str, token: str, nb_path: str) -> int:
    """Non-empty code cells of the notebook as the server sees it (contents API)."""
    model = _api(
        base_url, token, "GET",
        f"/api/contents/{urllib.parse.quote(nb_path)}?type=notebook&content=1",
        timeout=30,
    )
    n = 0
    for cell in (model.get("content") or {}).get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        if src.strip():
            n += 1
    return n


_PROMPT_STATE_JS = r"""
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
      .map(p => (p.textContent || '').trim());
  return {prompts, sawRunning: !!window.__adainferSawRunning};
}
"""

_WATCH_RUNNING_JS = r"""
() => {
  window.__adainferSawRunning = false;
  if (window.__adainferObserver) window.__adainferObserver.disconnect();
  const check = () => {
    for (const p of document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')) {
      if ((p.textContent || '').includes('*')) { window.__adainferSawRunning = true; return; }
    }
  };
  const obs = new MutationObserver(check);
  obs.observe(document.body, {subtree: true, childList: true, characterData: true});
  window.__adainferObserver = obs;
}
"""

_ERROR_TEXT_JS = r"""
() => [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
  .map(e => e.innerText).join('\n---\n')
"""


def open_notebook_and_run_all(
    page: Any,
    base_url: str,
    token: str,
    nb_path: str,
    *,
    kernel_name: str = "python3",
    timeout: float = 120,
    raise_on_error: bool = True,
) -> dict:
    """Open *nb_path* (relative to the server root) in JupyterLab and run all cells.

    1. ``POST /api/sessions`` for the notebook (no "Select Kernel" dialog);
    2. open ``/lab/tree/<nb_path>`` and wait until the kernel has >= 1 websocket
       connection and is idle (the toolbar indicator is not trusted);
    3. Run menu -> ``runmenu:run-all``;
    4. wait until no prompt shows ``[*]``, every non-empty code cell shows ``[n]`` and
       the kernel reports idle (twice in a row).

    *timeout* bounds steps 2-4 together. The number of non-empty code cells is read
    through the contents API (empty cells never get a number). If execution stops
    early (an exception aborts Run All: idle, nothing queued, cells left unnumbered)
    and *raise_on_error* is true, raises ``AssertionError`` with the error output;
    otherwise returns with ``executed < code_cells``.
    Returns ``{"session_id", "kernel_id", "code_cells", "executed", "seconds"}``.
    """
    t_start = time.monotonic()
    deadline = t_start + timeout
    base_url = base_url.rstrip("/")
    nb_path = nb_path.replace(os.sep, "/").lstrip("/")

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"open_notebook_and_run_all({nb_path!r}) exceeded {timeout}s")
        return left

    # 1. Session + kernel first.
    session = _session_for(base_url, token, nb_path)
    if session is None:
        session = _api(
            base_url, token, "POST", "/api/sessions",
            {"path": nb_path, "type": "notebook", "name": nb_path,
             "kernel": {"name": kernel_name}},
            timeout=60,
        )
    kernel_id = session["kernel"]["id"]

    # 2. Open the notebook; wait for the browser's kernel connection.
    url = f"{base_url}/lab/tree/{urllib.parse.quote(nb_path)}?reset&token={token}"
    page.goto(url, wait_until="domcontentloaded", timeout=remaining() * 1000)
    page.locator(".jp-NotebookPanel .jp-Notebook").first.wait_for(
        state="visible", timeout=remaining() * 1000
    )
    while True:
        remaining()
        kernel = _kernel(base_url, token, kernel_id)
        if kernel.get("connections", 0) >= 1 and kernel.get("execution_state") == "idle":
            break
        _dismiss_kernel_dialog(page)
        page.wait_for_timeout(200)
    _dismiss_kernel_dialog(page)

    # 3. Run -> Run All Cells (exact command; a name match also hits
    #    "Restart Kernel and Run All Cells...").
    page.evaluate(_WATCH_RUNNING_JS)
    before = page.evaluate(_PROMPT_STATE_JS) or {"prompts": []}
    # Saved execution counts would look "done" already; then insist on seeing [*].
    stale_counts = any(re.fullmatch(r"\[\d+\]:?", p) for p in before["prompts"])
    _click_run_all(page, remaining)

    # 4. Wait for completion.
    expected = _count_code_cells(base_url, token, nb_path)
    idle_streak = 0
    executed = 0
    while True:
        try:
            remaining()
        except TimeoutError:
            state = page.evaluate(_PROMPT_STATE_JS)
            raise TimeoutError(
                f"Run All of {nb_path!r} did not finish within {timeout}s; prompts: "
                f"{state and state['prompts']}"
            ) from None
        state = page.evaluate(_PROMPT_STATE_JS) or {"prompts": [], "sawRunning": False}
        prompts = state["prompts"]
        running = any("*" in p for p in prompts)
        numbered = [p for p in prompts if re.fullmatch(r"\[\d+\]:?", p)]
        executed = len(numbered)
        kernel_idle = _kernel(base_url, token, kernel_id).get("execution_state") == "idle"
        # Run All has started once a prompt showed [*]; without saved counts, numbered
        # prompts can only come from this run.
        started = state["sawRunning"] or expected == 0 or not stale_counts
        if started and not running and kernel_idle:
            idle_streak += 1
        else:
            idle_streak = 0
        if idle_streak >= 2:
            target = expected
            if executed >= target:
                break
            # Idle, nothing queued, but cells left unexecuted: Run All was aborted.
            if idle_streak >= 4:
                if raise_on_error:
                    errors = page.evaluate(_ERROR_TEXT_JS)
                    raise AssertionError(
                        f"Run All of {nb_path!r} stopped after {executed}/{target} code "
                        f"cells; prompts {prompts}; error output:\n{_tail(errors, 6000)}"
                    )
                break
        page.wait_for_timeout(250)

    return {
        "session_id": session["id"],
        "kernel_id": kernel_id,
        "code_cells": expected,
        "executed": executed,
        "seconds": round(time.monotonic() - t_start, 2),
    }


def _dismiss_kernel_dialog(page: Any) -> None:
    """Accept a stray "Select Kernel" dialog (should not appear: session exists)."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.first.is_visible():
        accept = dialog.locator(".jp-Dialog-button.jp-mod-accept")
        if accept.count():
            accept.first.click()


def _click_run_all(page: Any, remaining) -> None:
    run_menu = page.locator(".lm-MenuBar-item").filter(
        has=page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^\s*Run\s*$"))
    )
    item = page.locator('.lm-Menu-item[data-command="runmenu:run-all"]')
    for attempt in range(10):
        remaining()
        if attempt:
            # The command is enabled only when the notebook is the current widget:
            # select its first cell (clicking a prompt is side-effect free).
            page.locator(
                ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .jp-InputArea-prompt"
            ).first.click(timeout=remaining() * 1000)
        run_menu.first.click(timeout=remaining() * 1000)
        item.first.wait_for(state="visible", timeout=remaining() * 1000)
        classes = item.first.get_attribute("class") or ""
        if "lm-mod-disabled" not in classes:
            item.first.click(timeout=remaining() * 1000)
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    raise RuntimeError("Run -> Run All Cells stayed disabled")
