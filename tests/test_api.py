"""The HTTP API on a real loopback server (``python -m backend serve`` in a subprocess): two-view matching,
a reconstruction run from upload to poses scored against the ground truth, delete, errors as JSON, and the
bearer token off loopback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest

from appserver import free_port
from conftest import REPO, evaluate, scene_dir

pytestmark = pytest.mark.scenes


@contextlib.contextmanager
def serve_api(runs: Path, log_path: Path, host: str = "127.0.0.1", *extra: str):
    """``python -m backend serve`` on a free port; yields ``(base URL, process log path)``."""
    env = dict(os.environ, SFM_RUNS_DIR=str(runs), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--host", host, "--port", str(port),
                                 *extra], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/openapi.json", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail("the API did not start: " + Path(log_path).read_text()[-2000:])
            time.sleep(0.3)
        try:
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for field, name, data in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def call(method: str, url: str, fields=None, files=None, token: str | None = None, timeout: float = 600):
    """``(status, body bytes, headers)`` of one request (errors included, never raised)."""
    data, headers = None, {}
    if files is not None or fields is not None:
        data, ctype = _multipart(fields or {}, files or [])
        headers["Content-Type"] = ctype
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    with serve_api(d / "runs", d / "api.log") as base:
        yield base, d / "runs"


def test_match_two_photos_and_errors_are_json_with_what_to_do(api):
    base, _ = api
    d = scene_dir("temple_ring_middlebury")
    a, b = sorted((d / "images").iterdir())[:2]
    status, body, _ = call("POST", f"{base}/v1/match", {"features": "aliked-n16", "matcher": "lightglue"},
                           [("image0", a.name, a.read_bytes()), ("image1", b.name, b.read_bytes())])
    assert status == 200, body
    out = json.loads(body)
    assert out["inliers"] >= 100 and out["matches"] >= out["inliers"] and out["same_place"]
    assert out["model"] in ("F", "H") and out["similarity_percent"] > 0 and out["image0"] == a.name
    status, body, _ = call("POST", f"{base}/v1/match", {},
                           [("image0", "notes.txt", b"hello"), ("image1", b.name, b.read_bytes())])
    assert status == 400 and "image0 (notes.txt) is not a usable photo" in json.loads(body)["error"]
    status, body, _ = call("POST", f"{base}/v1/match", {"features": "orb", "matcher": "lightglue"},
                           [("image0", a.name, a.read_bytes()), ("image1", b.name, b.read_bytes())])
    assert status == 400 and "lightglue" in json.loads(body)["error"].lower()
    status, body, _ = call("POST", f"{base}/v1/match", {}, [("image0", a.name, a.read_bytes())])
    assert status == 422 and "image1" in json.loads(body)["error"]


def test_run_from_upload_to_scored_poses_then_delete(api, tmp_path):
    base, runs = api
    d = scene_dir("temple_ring_middlebury")
    photos = sorted((d / "images").iterdir())[:10]
    status, body, _ = call("POST", f"{base}/v1/runs", {"preset": "fast"},
                           [("files", p.name, p.read_bytes()) for p in photos]
                           + [("files", "readme.txt", b"not a photo")])
    assert status == 202, body
    created = json.loads(body)
    run_id = created["run_id"]
    assert len(created["saved"]) == 10 and created["skipped"][0]["name"] == "readme.txt"
    deadline = time.time() + 600
    while True:
        status, body, _ = call("GET", f"{base}/v1/runs/{run_id}")
        assert status == 200, body
        state = json.loads(body)
        if state["status"] in ("done", "failed", "cancelled") or time.time() > deadline:
            break
        time.sleep(2)
    assert state["status"] == "done", state
    assert state["stages"]["mapping"]["status"] == "done" and "poses.csv" in state["exports"]
    status, poses, _ = call("GET", f"{base}{state['exports']['poses.csv']}")
    assert status == 200
    (tmp_path / "poses.csv").write_bytes(poses)
    names = {p.name for p in photos}
    gt_lines = (d / "gt.csv").read_text().splitlines()
    (tmp_path / "gt.csv").write_text("\n".join([gt_lines[0]] + [x for x in gt_lines[1:]
                                                               if x.split(",")[0] in names]) + "\n")
    score = evaluate(tmp_path / "gt.csv", tmp_path / "poses.csv", d / "thresholds.txt")
    assert score["mAA"] >= 0.9, score
    status, model, _ = call("GET", f"{base}/v1/runs/{run_id}/model.zip")
    assert status == 200 and {"cameras.bin", "images.bin", "points3D.bin"} <= {
        Path(n).name for n in zipfile.ZipFile(io.BytesIO(model)).namelist()}
    status, body, _ = call("GET", f"{base}/v1/runs/{run_id}/..%2F..%2Fetc%2Fpasswd")
    assert status == 404
    status, body, _ = call("DELETE", f"{base}/v1/runs/{run_id}")
    assert status == 200 and not (runs / run_id).exists()
    status, body, _ = call("GET", f"{base}/v1/runs/{run_id}")
    assert status == 404 and "GET /v1/runs" in json.loads(body)["error"]


def test_a_request_larger_than_a_runs_upload_limit_is_refused_before_its_body(api):
    import http.client
    from urllib.parse import urlparse

    base, _ = api
    u = urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/v1/runs")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(10**12))  # a terabyte announced, nothing sent
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "larger than" in json.loads(r.read())["error"]
    conn.close()


def test_run_needs_two_photos(api):
    base, runs = api
    before = set(p.name for p in runs.iterdir()) if runs.exists() else set()
    status, body, _ = call("POST", f"{base}/v1/runs", {"preset": "fast"}, [("files", "a.txt", b"x")])
    assert status == 400 and "at least two" in json.loads(body)["error"]
    assert (set(p.name for p in runs.iterdir()) if runs.exists() else set()) == before  # nothing left behind


def test_off_loopback_a_token_is_generated_and_required(tmp_path):
    log = tmp_path / "api.log"
    with serve_api(tmp_path / "runs", log, "0.0.0.0") as base:
        token = re.search(r"API token .*: (\S+)", log.read_text()).group(1)
        status, body, headers = call("GET", f"{base}/v1/methods")
        assert status == 401 and "Bearer" in json.loads(body)["error"]
        status, body, _ = call("GET", f"{base}/v1/methods", token="wrong")
        assert status == 401
        status, body, _ = call("GET", f"{base}/v1/methods", token=token)
        assert status == 200 and "lightglue" in json.loads(body)["features"]["aliked-n16"]
