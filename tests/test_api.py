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
            except urllib.error.HTTPError:  # a server with a token answers 401: it is up
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


def call(method: str, url: str, fields=None, files=None, token: str | None = None, timeout: float = 600,
         owner: str | None = None):
    """``(status, body bytes, headers)`` of one request (errors included, never raised); ``owner``: the
    ``X-Run-Owner`` secret to send."""
    data, headers = None, {}
    if owner:
        headers["X-Run-Owner"] = owner
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


def test_match_on_onnx_runtime_gives_the_torch_result(api):
    """``runtime=onnx``: LighterGlue exported to ONNX (on first use) and run by ONNX Runtime registers the pair as the
    torch matcher does (the ONNX graph runs all layers, torch stops early: close, not equal, counts); a matcher with
    no network is refused with what to choose instead, before any work."""
    base, _ = api
    d = scene_dir("temple_ring_middlebury")
    a, b = sorted((d / "images").iterdir())[:2]
    files = [("image0", a.name, a.read_bytes()), ("image1", b.name, b.read_bytes())]
    out = {}
    for rt in ("torch", "onnx"):
        status, body, _ = call("POST", f"{base}/v1/match", {"features": "xfeat", "matcher": "lighterglue",
                                                           "runtime": rt, "similarity": "false"}, files)
        assert status == 200, body
        out[rt] = json.loads(body)
        assert out[rt]["runtime"] == rt and out[rt]["same_place"], out[rt]
    assert 0.8 * out["torch"]["inliers"] <= out["onnx"]["inliers"] <= 1.25 * out["torch"]["inliers"], out
    assert out["onnx"]["model"] == out["torch"]["model"]
    status, body, _ = call("POST", f"{base}/v1/match", {"features": "sift", "matcher": "nn-ratio",
                                                       "runtime": "onnx"}, files)
    assert status == 400 and "choose runtime torch" in json.loads(body)["error"], body
    status, body, _ = call("POST", f"{base}/v1/match", {"runtime": "tensorrt"}, files)
    assert status == 422 and "runtime" in json.loads(body)["error"], body


def test_run_from_upload_to_scored_poses_then_delete(api, tmp_path):
    base, runs = api
    d = scene_dir("temple_ring_middlebury")
    photos = sorted((d / "images").iterdir())[:10]
    status, body, _ = call("POST", f"{base}/v1/runs", {"preset": "fast", "max_keypoints": "1024"},
                           [("files", p.name, p.read_bytes()) for p in photos]
                           + [("files", "readme.txt", b"not a photo")])
    assert status == 202, body
    created = json.loads(body)
    run_id = created["run_id"]
    assert json.loads((runs / run_id / "request.json").read_text())["config"]["features"]["max_keypoints"] == 1024
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
    # the model for nerfstudio, as a zip whose transforms.json frames are the registered photos, shipped beside it
    assert set(state["formats"]) == {"colmap-text", "nerfstudio", "undistorted"}
    status, ns, _ = call("GET", f"{base}{state['formats']['nerfstudio']}")
    assert status == 200, ns[:300]
    z = zipfile.ZipFile(io.BytesIO(ns))
    frames = json.loads(z.read("transforms.json"))["frames"]
    assert len(frames) >= 5 and all(f["file_path"] in z.namelist() for f in frames)
    status, body, _ = call("GET", f"{base}/v1/runs/{run_id}/formats/nerfstudio?model=7")
    assert status == 404 and "no model 7" in json.loads(body)["error"]
    status, body, _ = call("GET", f"{base}/v1/runs/{run_id}/formats/blender")
    assert status == 404 and "nerfstudio" in json.loads(body)["error"]
    status, body, _ = call("DELETE", f"{base}/v1/runs/{run_id}", owner=created["owner_secret"])
    assert status == 200 and not (runs / run_id).exists()
    status, body, _ = call("GET", f"{base}/v1/runs/{run_id}")
    assert status == 410 and "deleted" in json.loads(body)["error"]
    status, body, _ = call("GET", f"{base}/v1/runs/20260101-000000-000000000000")
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


def test_run_options_out_of_bounds_are_refused_before_any_work(api):
    """The form fields of POST /v1/runs come from the option table: a value out of its bounds or not among its
    choices is a 400 (or 422 for a wrong type) that says what is allowed, and no run folder is made."""
    base, runs = api
    before = set(p.name for p in runs.iterdir()) if runs.exists() else set()
    photos = sorted((scene_dir("temple_ring_middlebury") / "images").iterdir())[:2]
    files = [("files", p.name, p.read_bytes()) for p in photos]
    for fields, status_wanted, says in (({"resize": "10"}, 400, "at least 64"),
                                        ({"mapper": "magic"}, 400, "incremental"),
                                        ({"features": "xfeat", "matcher": "lightglue"}, 400, "lighterglue"),
                                        ({"max_keypoints": "many"}, 422, "max_keypoints")):
        status, body, _ = call("POST", f"{base}/v1/runs", {"preset": "fast", **fields}, files)
        assert status == status_wanted and says in json.loads(body)["error"], (fields, body)
    assert (set(p.name for p in runs.iterdir()) if runs.exists() else set()) == before


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
        for path in ("/openapi.json", "/docs"):  # the API's description needs the token too
            assert call("GET", f"{base}{path}")[0] == 401
            assert call("GET", f"{base}{path}", token=token)[0] == 200
        # no token: refused before the body is read, even a chunked one with no declared length
        sent, answer = _send_chunked(base, "/v1/runs", 600 * 2**20)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
        assert sent < 50 * 2**20, sent


def _start_run(base: str, owner: str | None = None, n: int = 3) -> dict:
    photos = sorted((scene_dir("temple_ring_middlebury") / "images").iterdir())[:n]
    status, body, _ = call("POST", f"{base}/v1/runs", {"preset": "fast"},
                           [("files", p.name, p.read_bytes()) for p in photos], owner=owner)
    assert status == 202, body
    return json.loads(body)


def test_runs_belong_to_their_owner(api):
    """Two API clients: neither lists, cancels nor deletes the other's run; the owner does; folders are private."""
    base, runs = api
    a = _start_run(base)  # client A gets a secret
    b_secret = "client-b-secret-0123456789abcdef"
    b = _start_run(base, owner=b_secret)  # client B brings its own
    assert b["owner_secret"] == b_secret and a["owner_secret"] != b_secret
    def listed(owner):
        return {r["run_id"] for r in json.loads(call("GET", f"{base}/v1/runs", owner=owner)[1])["runs"]}

    assert listed(None) == set()  # no secret, no runs: nobody enumerates the server
    assert a["run_id"] in listed(a["owner_secret"]) and b["run_id"] not in listed(a["owner_secret"])
    assert b["run_id"] in listed(b_secret) and a["run_id"] not in listed(b_secret)
    # B (or anyone without A's secret) cannot cancel or delete A's working run; it keeps working
    for owner in (b_secret, None):
        status, body, _ = call("DELETE", f"{base}/v1/runs/{a['run_id']}", owner=owner)
        assert status == 403 and "X-Run-Owner" in json.loads(body)["error"], body
    state = json.loads(call("GET", f"{base}/v1/runs/{a['run_id']}")[1])
    assert state["status"] in ("queued", "running", "done", "failed"), state  # not cancelled
    # reading needs the id only (a shared link works)
    assert call("GET", f"{base}/v1/runs/{a['run_id']}")[0] == 200
    # the folder and every file in it are private to the server's user
    d = runs / a["run_id"]
    assert (d.stat().st_mode & 0o777) == 0o700 and (runs.stat().st_mode & 0o077) == 0
    files = [p for p in d.rglob("*") if p.is_file()]
    assert files and all((p.stat().st_mode & 0o077) == 0 for p in files), \
        [(p.name, oct(p.stat().st_mode)) for p in files if p.stat().st_mode & 0o077]
    assert "owner_sha256" in (d / "owner.json").read_text() and a["owner_secret"] not in (d / "owner.json").read_text()
    # the owners delete their own runs (a working one is cancelled first)
    for r, owner in ((a["run_id"], a["owner_secret"]), (b["run_id"], b_secret)):
        status, body, _ = call("DELETE", f"{base}/v1/runs/{r}", owner=owner)
        assert status == 200, body
        assert not (runs / r).exists() and call("GET", f"{base}/v1/runs/{r}")[0] == 410
    assert listed(a["owner_secret"]) == set()


def _send_chunked(base: str, path: str, total: int, token: str | None = None) -> tuple[int, bytes]:
    """POST ``total`` bytes to ``path`` with ``Transfer-Encoding: chunked`` (no Content-Length), reading the answer
    while sending; returns ``(bytes sent before the server answered or closed, the answer)``."""
    import socket
    import threading
    from urllib.parse import urlparse

    u = urlparse(base)
    sock = socket.create_connection((u.hostname, u.port), timeout=60)
    head = (f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n")
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    sock.sendall((head + "\r\n").encode())
    got, ended = bytearray(), threading.Event()

    def read():
        try:
            while (d := sock.recv(65536)):
                got.extend(d)
        except OSError:
            pass
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    chunk = (b'--b\r\nContent-Disposition: form-data; name="image0"; filename="a.png"\r\n\r\n' + bytes(2**20))
    sent = 0
    try:
        while sent < total and not got and not ended.is_set():
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
    except OSError:
        pass
    ended.wait(30)
    sock.close()
    return sent, bytes(got)


def test_a_chunked_body_is_counted_and_cut_at_the_limit(api):
    """600 MB sent chunked (no Content-Length) to /v1/match: 413 once the body passes the endpoint's limit (two
    photos), long before all of it is read."""
    base, _ = api
    sent, answer = _send_chunked(base, "/v1/match", 600 * 2**20)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"two photos of at most 50 MB" in answer and b"500 photos" not in answer
    assert sent < 200 * 2**20, sent  # cut near the 101 MB limit, not after 600 MB


def test_framework_errors_are_json_with_what_to_do(api):
    base, _ = api
    for method, path, code in (("GET", "/nope", 404), ("PUT", "/v1/methods", 405)):
        status, body, _ = call(method, f"{base}{path}")
        out = json.loads(body)
        assert status == code and out["status"] == code and "/docs" in out["error"] and "detail" not in out
    req = urllib.request.Request(f"{base}/v1/match", data=b"garbage", method="POST",
                                 headers={"Content-Type": "multipart/form-data; boundary=zz"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    out = json.loads(e.value.read())
    assert e.value.code in (400, 422) and "error" in out and "detail" not in out, out


def test_docs_page_renders_offline(api, tmp_path):
    """/docs loads Swagger UI from the pinned package (the browser here reaches no CDN) and shows the endpoints."""
    from appserver import chromium, screenshot

    base, _ = api
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{base}/docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        text = page.inner_text("body")
        screenshot(page, tmp_path / "docs.png")
    assert "SfM Explorer API" in text and "/v1/runs" in text and "/v1/match" in text
