"""The app on a real loopback server and a real headless Chromium, shared by the browser tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(runs: Path, log_path: Path, **env_extra: str):
    """``streamlit run streamlit_app.py`` on a free loopback port with ``SFM_RUNS_DIR=runs`` (and ``env_extra``),
    waiting for its health check; yields the base URL and stops the server afterwards.

    Fails the test (with the end of the server log) when the app does not start within 60 s."""
    env = dict(os.environ, SFM_RUNS_DIR=str(runs), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **env_extra)
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
             "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail("the app did not start: " + Path(log_path).read_text()[-2000:])
            time.sleep(0.5)
        try:
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def chromium():
    """A headless Debian Chromium driven by Playwright (skips the test when chromium is not installed)."""
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (bash setup/setup.sh installs chromium)")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def settle(page, timeout: int = 60_000) -> None:
    """Wait until Streamlit has finished running the script (no 'Running' status widget), then a second more."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout)
    time.sleep(1.0)


def screenshot(page, path: Path, max_height: int = 6000) -> Path:
    """Full-height screenshot of the app's main area (Streamlit scrolls inside it, not the document) into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                      " return m ? m.scrollHeight : document.body.scrollHeight; }")
    page.set_viewport_size({"width": 1400, "height": int(min(max(h, 900), max_height))})
    time.sleep(0.8)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 900})
    return path
