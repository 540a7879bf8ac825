"""Faults on a real loopback API server (``python -m backend serve`` in a subprocess): the server killed with SIGKILL
in the middle of a run and started again resumes the run by itself to the same result as a run that was never
stopped; a run folder on a full disk (a small tmpfs this test mounts) fails with a message that says what to do,
keeps what was finished, and resumes to a finished run once there is space."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from appserver import free_port
from conftest import REPO, scene_dir
from test_api import call

from backend.views import runview

pytestmark = pytest.mark.scenes
PHOTOS = ["05534141_6340060522.jpg", "05791347_12791964625.jpg", "05866831_3427466899.jpg",
          "05936329_2458217347.jpg"]  # four Reichstag photos that map with the fast preset


class Server:
    """``python -m backend serve`` on a free port, that a test can kill with SIGKILL and start again."""

    def __init__(self, runs: Path, log: Path, env: dict[str, str] | None = None):
        self.runs, self.log, self.port, self.proc, self.env = runs, log, free_port(), None, env or {}
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        env = dict(os.environ, SFM_RUNS_DIR=str(self.runs), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", str(self.port)], cwd=REPO,
                                     env=env, stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.base}/v1/methods", timeout=2):
                    return self
            except (OSError, urllib.error.HTTPError):
                if self.proc.poll() is not None:
                    break
                time.sleep(0.3)
        pytest.fail("the API did not start: " + self.log.read_text()[-2000:])

    def kill(self) -> None:
        """SIGKILL the server and everything it started (its mapping child too): a crash, not a shutdown."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def _post_run(base: str, photos: list[Path], preset: str = "fast") -> dict:
    status, body, _ = call("POST", f"{base}/v1/runs", {"preset": preset},
                           [("files", p.name, p.read_bytes()) for p in photos])
    assert status == 202, body
    return json.loads(body)


def _wait(base: str, run_id: str, statuses=("done", "failed", "cancelled"), timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body, _ = call("GET", f"{base}/v1/runs/{run_id}")
        assert status == 200, body
        state = json.loads(body)
        if state["status"] in statuses:
            return state
        time.sleep(0.5)
    pytest.fail(f"run {run_id} did not reach {statuses}: {state}")


def _poses(base: str, run_id: str) -> dict[str, np.ndarray]:
    status, body, _ = call("GET", f"{base}/v1/runs/{run_id}/poses.csv")
    assert status == 200, body
    out = {}
    for line in body.decode().splitlines()[1:]:
        name, rot = line.split(",")[0], line.split(",")[1]
        if rot.strip() and "nan" not in rot.lower():
            out[name] = np.array([float(x) for x in rot.split(";")]).reshape(3, 3)
    return out


def _relative_rotation_gap_deg(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest difference (degrees) between the relative rotations ``R_i R_j^T`` of two models (gauge-free)."""
    names = sorted(a)
    worst = 0.0
    for i in names:
        for j in names:
            d = (a[i] @ a[j].T) @ (b[i] @ b[j].T).T
            worst = max(worst, np.degrees(np.arccos(np.clip((np.trace(d) - 1) / 2, -1, 1))))
    return worst


def test_sigkill_mid_run_then_restart_resumes_to_the_same_result(tmp_path):
    photos = [scene_dir("temple_ring_middlebury") / "images" / n
              for n in sorted(os.listdir(scene_dir("temple_ring_middlebury") / "images"))[:8]]
    server = Server(tmp_path / "runs", tmp_path / "api.log", {"SFM_MAPPING_THREADS": "1"}).start()
    try:
        # the reference: the same photos and preset, never stopped (balanced: long enough to be stopped midway)
        ref = _post_run(server.base, photos, "balanced")
        ref_state = _wait(server.base, ref["run_id"])
        assert ref_state["status"] == "done", ref_state
        run = _post_run(server.base, photos, "balanced")
        progress = tmp_path / "runs" / run["run_id"] / "progress.json"
        deadline = time.time() + 300
        while time.time() < deadline:  # stop it in the middle of matching (features done, mapping not started)
            with contextlib.suppress(OSError, ValueError):
                stages = json.loads(progress.read_text())["stages"]
                if (stages.get("matching") or {}).get("done", 0) >= 2:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the run never reached matching")
        server.kill()
        assert server.proc.returncode == -signal.SIGKILL
        server.start()  # the new server resumes the interrupted run by itself
        assert f"resumed 1 interrupted run(s): {run['run_id']}" in (tmp_path / "api.log").read_text()
        state = _wait(server.base, run["run_id"])
        assert state["status"] == "done", state
        assert state["stages"]["features"]["status"] == "done"
        # the stages before mapping are reproducible: the same keypoints, matches and inliers as never stopped
        d_ref, d_run = tmp_path / "runs" / ref["run_id"], tmp_path / "runs" / run["run_id"]
        names = [i["name"] for i in runview.images_info(d_ref)["images"]]
        for n in names:
            np.testing.assert_array_equal(runview.features(d_ref, n)[0], runview.features(d_run, n)[0])
        pairs = runview.pairs(d_ref)
        assert [p[:2] for p in pairs] == [p[:2] for p in runview.pairs(d_run)] and pairs
        for n0, n1, _ in pairs:
            np.testing.assert_array_equal(runview.matches(d_ref, n0, n1)[0], runview.matches(d_run, n0, n1)[0])
            ia, ib = runview.inliers(d_ref, n0, n1)[0], runview.inliers(d_run, n0, n1)[0]
            assert (ia is None) == (ib is None) and (ia is None or np.array_equal(ia, ib)), (n0, n1)
        # the server maps with one thread ($SFM_MAPPING_THREADS=1): the same model (with all cores two runs of these
        # 8 photos differed by up to 4.4 degrees in one relative rotation)
        a, b = _poses(server.base, ref["run_id"]), _poses(server.base, run["run_id"])
        assert set(a) == set(b) and len(a) >= 7, (sorted(a), sorted(b))  # the same photos registered
        assert _relative_rotation_gap_deg(a, b) < 0.01
        assert ref_state["summary"]["registered_images"] == state["summary"]["registered_images"]
    finally:
        server.stop()


@pytest.fixture()
def small_disk(tmp_path):
    """A 4 MB tmpfs mounted for this test (root only); yields its path and a function that grows it."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()[:120]}); run as root to test a full disk")

    def grow(mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(mnt)], check=True)

    try:
        yield mnt, grow
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_gives_a_clear_error_keeps_the_run_and_resumes(small_disk, tmp_path):
    mnt, grow = small_disk
    server = Server(mnt / "runs", tmp_path / "api.log").start()
    try:
        photos = [scene_dir("reichstag_imc2020") / "images" / n for n in PHOTOS]
        run = _post_run(server.base, photos)
        state = _wait(server.base, run["run_id"])
        assert state["status"] == "failed", state
        assert "disk is full" in state["error"] and "Resume" in state["error"], state["error"]
        run_dir = mnt / "runs" / run["run_id"]
        record = json.loads((run_dir / "run.json").read_text())  # still whole JSON, not cut by the full disk
        assert record["stages"]["images"]["status"] == "done"
        assert not list(run_dir.glob(".*.tmp")), list(run_dir.glob(".*.tmp"))  # no half-written files left
        # space again: the owner resumes, the finished stages are kept, the run finishes
        grow(64)
        status, body, _ = call("POST", f"{server.base}/v1/runs/{run['run_id']}/resume", {},
                               owner=run["owner_secret"])
        assert status == 202, body
        state = _wait(server.base, run["run_id"])
        assert state["status"] == "done", state
        assert state["summary"]["registered_images"] == 4
        assert state["stages"]["images"]["seconds"] == record["stages"]["images"]["seconds"]  # not recomputed
    finally:
        server.stop()
