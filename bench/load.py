"""``python -m bench.load``: a bounded load test of a shared server on loopback. The app (Streamlit) and the HTTP API
run as two server processes over one runs folder, as on the EC2 server; several people use them at once for a fixed
number of rounds. An API user uploads photos, waits for the run, checks its poses, lists and deletes it (and tries
to delete another user's run, which must be refused). An app user, in a headless Chromium of their own, uploads the
photos, starts the run, waits for it, opens the Images, Scenes and Reconstruction pages, then deletes the run.

    python -m bench.load [--rounds 2] [--api-users 2] [--app-users 2] [--out bench/out/load.json]

Every user has photos of their own (different images of one scene), so a run that got another user's photos shows.
Reported: errors (none expected), runs per user and whether each registered every photo, the slowest page load
(from a navigation to the page having finished running) and the peak resident memory of each server's process tree
(pycolmap's mapping child included), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SFM_DATA_DIR", REPO.parent / "shared" / "data"))
SCENE = "temple_ring_middlebury"
PHOTOS_PER_USER = 4
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    raise RuntimeError(f"server did not start ({url}): {log.read_text()[-1500:]}")


@contextlib.contextmanager
def servers(work: Path):
    """The app and the API on free loopback ports over ``work/runs``; yields ``(app URL, API URL, [procs])``."""
    env = dict(os.environ, SFM_RUNS_DIR=str(work / "runs"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               TMPDIR=str(work / "tmp"))
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    app_port, api_port = _free_port(), _free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
             "--server.port", str(app_port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=open(work / "app.log", "w"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", str(api_port)], cwd=REPO,
                                      env=env, stdout=open(work / "api.log", "w"), stderr=subprocess.STDOUT))
        app, api = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{api_port}"
        _wait_up(f"{app}/_stcore/health", procs[0], work / "app.log")
        _wait_up(f"{api}/v1/methods", procs[1], work / "api.log")
        yield app, api, procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


class PeakMemory(threading.Thread):
    """Samples the resident memory of each process tree every 0.2 s; ``peaks_mb[i]`` is the largest sum seen."""

    def __init__(self, pids: list[int]):
        super().__init__(daemon=True)
        self.pids, self.peaks_mb = pids, [0.0] * len(pids)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for i, pid in enumerate(self.pids):
                try:
                    root = psutil.Process(pid)
                    rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                except psutil.Error:
                    continue
                self.peaks_mb[i] = max(self.peaks_mb[i], rss / 2**20)


def _http(method: str, url: str, files: list[tuple[str, str, bytes]] | None = None, fields: dict | None = None,
          owner: str | None = None) -> tuple[int, bytes]:
    headers, data = {}, None
    if files is not None or fields is not None:
        boundary = uuid.uuid4().hex
        out = io.BytesIO()
        for k, v in (fields or {}).items():
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        for field, name, payload in files or []:
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                      "Content-Type: application/octet-stream\r\n\r\n".encode() + payload + b"\r\n")
        out.write(f"--{boundary}--\r\n".encode())
        data, headers["Content-Type"] = out.getvalue(), f"multipart/form-data; boundary={boundary}"
    if owner:
        headers["X-Run-Owner"] = owner
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers),
                                    timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Shared:
    """What the users report, guarded by a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.runs: list[dict] = []
        self.pages: list[dict] = []
        self.api_runs: dict[str, str] = {}  # run id -> owner secret, for the cross-user delete check

    def error(self, who: str, what: str) -> None:
        with self.lock:
            self.errors.append(f"{who}: {what}")


def _poses_names(text: str) -> dict[str, bool]:
    """Image name -> registered, from our ``poses.csv``."""
    out = {}
    for line in text.splitlines()[1:]:
        parts = line.split(",")
        out[parts[0]] = bool(parts[1].strip()) and "nan" not in parts[1].lower()
    return out


def api_user(k: int, api: str, photos: list[Path], rounds: int, shared: Shared) -> None:
    who = f"api-user-{k}"
    secret = f"load-test-owner-{k}-{uuid.uuid4().hex}"
    for r in range(rounds):
        t0 = time.time()
        status, body = _http("POST", f"{api}/v1/runs", [("files", p.name, p.read_bytes()) for p in photos],
                             {"preset": "fast"}, owner=secret)
        if status != 202:
            shared.error(who, f"POST /v1/runs answered {status}: {body[:200]!r}")
            continue
        run_id = json.loads(body)["run_id"]
        with shared.lock:
            shared.api_runs[run_id] = secret
        deadline = time.time() + RUN_TIMEOUT_S
        state = {}
        while time.time() < deadline:
            status, body = _http("GET", f"{api}/v1/runs/{run_id}")
            state = json.loads(body) if status == 200 else {}
            if status != 200:
                shared.error(who, f"GET /v1/runs/{run_id} answered {status}")
                break
            if state["status"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.5)
        status, body = _http("GET", f"{api}/v1/runs/{run_id}/poses.csv")
        names = _poses_names(body.decode()) if status == 200 else {}
        listed = {x["run_id"] for x in json.loads(_http("GET", f"{api}/v1/runs", owner=secret)[1])["runs"]}
        with shared.lock:  # someone else's run: deleting it must be refused
            others = [rid for rid, s in shared.api_runs.items() if s != secret]
        for rid in others[:1]:
            code, _ = _http("DELETE", f"{api}/v1/runs/{rid}", owner=secret)
            if code not in (403, 404, 410):
                shared.error(who, f"deleting another user's run {rid} answered {code}")
        if listed - {rid for rid, s in shared.api_runs.items() if s == secret}:
            shared.error(who, f"GET /v1/runs listed runs of others: {sorted(listed)}")
        code, body = _http("DELETE", f"{api}/v1/runs/{run_id}", owner=secret)
        if code != 200:
            shared.error(who, f"deleting its own run answered {code}: {body[:200]!r}")
        with shared.lock:
            shared.runs.append({"user": who, "round": r, "run_id": run_id, "status": state.get("status"),
                                "names": sorted(names), "registered": sum(names.values()),
                                "seconds": round(time.time() - t0, 1)})


def app_user(k: int, app: str, photos: list[Path], rounds: int, shared: Shared, runs_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    who = f"app-user-{k}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1400, "height": 900})
        page = ctx.new_page()
        page.set_default_timeout(120_000)

        def settled(what: str, t0: float) -> None:
            page.wait_for_function(
                "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
                " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")
            with shared.lock:
                shared.pages.append({"user": who, "page": what, "seconds": round(time.time() - t0, 2)})

        try:
            for r in range(rounds):
                t_run = time.time()
                t0 = time.time()
                page.goto(app)
                page.get_by_role("heading", name="SfM Explorer").wait_for()
                settled("home", t0)
                page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(p) for p in photos])
                page.wait_for_function(
                    f"document.querySelectorAll('[data-testid=\"stFileChip\"]').length == {len(photos)}")
                page.wait_for_function("!document.querySelector('[data-testid=\"stFileChipIconSpinner\"]')")
                page.locator('[data-testid="stRadio"]').filter(has_text="Preset").get_by_text(
                    "fast", exact=True).click()
                settled("home (options)", time.time())
                page.get_by_role("button", name="Start run").click()
                page.wait_for_url(re.compile(r".*[?&]run=[A-Za-z0-9_-]+"), timeout=120_000)
                run_id = re.search(r"run=([A-Za-z0-9_-]+)", page.url).group(1)
                page.get_by_text(re.compile(r"Status: (finished|failed|cancelled)")).first.wait_for(
                    timeout=RUN_TIMEOUT_S * 1000)
                status = "done" if page.get_by_text("Status: finished").count() else "failed"
                for title in ("Images", "Scenes", "Reconstruction"):
                    t0 = time.time()
                    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
                    page.get_by_role("heading", name=title, exact=True).wait_for()
                    settled(title.lower(), t0)
                    if page.locator('[data-testid="stException"]').count():
                        shared.error(who, f"a stack trace on {title}")
                t0 = time.time()
                page.locator('[data-testid="stSidebarNav"]').get_by_text("Home", exact=True).click()
                page.get_by_text("Delete this run", exact=True).click()
                page.get_by_text("Yes, delete this run").click()
                settled("home", t0)
                names = {}
                poses = runs_dir / run_id / "poses.csv"
                if poses.is_file():
                    names = _poses_names(poses.read_text())
                page.get_by_role("button", name="Delete run").click()
                page.get_by_text(f"Run {run_id} was deleted.").wait_for()
                if (runs_dir / run_id).exists():
                    shared.error(who, f"run {run_id} still on disk after Delete")
                with shared.lock:
                    shared.runs.append({"user": who, "round": r, "run_id": run_id, "status": status,
                                        "names": sorted(names), "registered": sum(names.values()),
                                        "seconds": round(time.time() - t_run, 1)})
        except Exception as e:  # noqa: BLE001 - reported, the other users go on
            shared.error(who, f"{type(e).__name__}: {str(e)[:300]}")
        finally:
            browser.close()


def load_test(work: Path, rounds: int = 2, api_users: int = 2, app_users: int = 2) -> dict:
    """Run the load scenario in ``work`` (created; holds the runs, logs and the servers' temp folder) and return
    ``{"errors", "runs", "pages", "peak_mb": {"app", "api"}, "slowest_page_s", "wall_s", ...}``.

    Raises:
        RuntimeError: a server did not start, or the scene's photos are missing.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    images = sorted((DATA / SCENE / "images").iterdir())
    users = api_users + app_users
    if len(images) < users * PHOTOS_PER_USER:
        raise RuntimeError(f"{SCENE} has {len(images)} photos; {users} users need {users * PHOTOS_PER_USER}")
    subsets = [images[i * PHOTOS_PER_USER:(i + 1) * PHOTOS_PER_USER] for i in range(users)]
    shared = Shared()
    t0 = time.time()
    with servers(work) as (app, api, procs):
        mem = PeakMemory([p.pid for p in procs])
        mem.start()
        threads = [threading.Thread(target=api_user, args=(k, api, subsets[k], rounds, shared))
                   for k in range(api_users)]
        threads += [threading.Thread(target=app_user, args=(k, app, subsets[api_users + k], rounds, shared,
                                                            work / "runs")) for k in range(app_users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        mem.stop.set()
        mem.join()
    for run in shared.runs:  # no run mixed: each run holds exactly its user's photos
        k = int(run["user"].rsplit("-", 1)[1]) + (api_users if run["user"].startswith("app") else 0)
        if run["names"] != sorted(p.name for p in subsets[k]):
            shared.errors.append(f"{run['user']} run {run['run_id']} holds {run['names']}")
    left = sorted(p.name for p in (work / "runs").iterdir() if not p.name.startswith(".")) \
        if (work / "runs").is_dir() else []
    return {"users": {"api": api_users, "app": app_users}, "rounds": rounds, "photos_per_user": PHOTOS_PER_USER,
            "scene": SCENE, "errors": shared.errors, "runs": shared.runs, "runs_left_on_disk": left,
            "pages": shared.pages, "slowest_page_s": max((p["seconds"] for p in shared.pages), default=None),
            "peak_mb": {"app": round(mem.peaks_mb[0]), "api": round(mem.peaks_mb[1])},
            "temp_files_left": sorted(str(p.relative_to(work / "tmp")) for p in (work / "tmp").rglob("*")),
            "wall_s": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--api-users", type=int, default=2)
    ap.add_argument("--app-users", type=int, default=2)
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "load-work")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "load.json")
    a = ap.parse_args(argv)
    import shutil

    shutil.rmtree(a.work, ignore_errors=True)
    res = load_test(a.work, a.rounds, a.api_users, a.app_users)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(f"{res['users']['api']} API + {res['users']['app']} app users x {res['rounds']} rounds: "
          f"{len(res['runs'])} runs, {len(res['errors'])} errors, slowest page {res['slowest_page_s']} s, "
          f"peak app {res['peak_mb']['app']} MB, API {res['peak_mb']['api']} MB, wall {res['wall_s']} s")
    for e in res["errors"]:
        print("  error:", e)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
