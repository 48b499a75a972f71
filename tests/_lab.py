"""A throwaway JupyterLab server and a headless Chromium page, for the real-browser test.

The server listens on loopback with a random port and token, keeps its runtime and config
files in a temporary folder, and serves a copy of the notebooks (so autosave never writes
outputs into the repository). Both context managers shut down what they started, even when
the test fails: the server's whole process group (kernels and their subprocesses included).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# As in this project's machine notes: no GPU, no sandbox as root, and no background
# connections, which a closed network refuses many at a time.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@dataclass
class LabServer:
    """A running JupyterLab: where it is, its token, and its log file."""

    url: str
    token: str
    root: Path
    log: Path
    process: subprocess.Popen = field(repr=False)

    def lab_url(self, notebook: str) -> str:
        """The notebook alone in a fresh layout (``reset``: no tabs restored from earlier pages)."""
        return f"{self.url}/lab/tree/{notebook}?reset&token={self.token}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def lab_server(root: Path, workdir: Path, timeout: float = 120) -> Iterator[LabServer]:
    """Start ``jupyter lab`` on ``root``; stop it and every process it started on exit."""
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ,
               JUPYTER_RUNTIME_DIR=str(workdir / "runtime"), JUPYTER_CONFIG_DIR=str(workdir / "config"),
               IPYTHONDIR=str(workdir / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    labconfig = workdir / "config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)  # no "get Jupyter news?" toast over the page
    (labconfig / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    log = workdir / "jupyter-lab.log"
    jupyter = Path(sys.executable).with_name("jupyter")
    command = [str(jupyter), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
               f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
               "--ServerApp.terminals_enabled=False", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, log, process)
    try:
        _wait_until_up(server, timeout)
        yield server
    finally:
        _stop(process)


def _wait_until_up(server: LabServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/api/status?token={server.token}", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server (it shuts its kernels down), then SIGKILL whatever it started and left."""
    import psutil

    try:
        started = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    for child in started:  # kernels run in sessions of their own, out of the server's group
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(started, timeout=10)


def require_chromium() -> None:
    """Skip the calling test where Chromium is missing; in CI (``CI=true``) fail it instead."""
    reason = chromium_missing_reason()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def chromium_missing_reason() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium; .ci/run does)"
    return None


@contextlib.contextmanager
def chromium_browser(artifacts: Path) -> Iterator:
    """Headless Debian Chromium driven by Playwright (its own browser download is never used)."""
    from playwright.sync_api import sync_playwright

    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # Playwright gives each launch a new, empty user-data-dir of its own.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def new_page(browser) -> Iterator:
    """A fresh tab that records dialogs in ``page.dialogs`` and is closed on exit.

    A tab per notebook: navigating away from a JupyterLab tab with a modified notebook raises
    its "leave site?" (beforeunload) dialog, and dismissing that aborts the navigation.
    """
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.dialogs = []

    def on_dialog(dialog) -> None:
        page.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        yield page
    finally:
        page.close(run_before_unload=False)
