"""Nothing is left in the system temp folder (issue 24, item 3): a CLI run with SIFT, ``POST /v1/match`` with SIFT,
and the Two-view page (uploads in a private per-session folder inside the runs root, removed with the session).

Each path runs in its own process with ``TMPDIR`` set to a fresh folder (Python's ``tempfile`` and COLMAP's glog
both use it), so "no new file" is checked on a folder nobody else writes to. glog opens its log file at the first
line of a process: a check in the test process itself could miss it, a fresh process cannot.
(The mapping child's glog files, with ALIKED on four Reichstag photos, are checked by
``test_bad_input.py::test_a_run_leaves_no_files_in_the_temp_folder``.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE

PHOTOS = sorted((SAMPLE / "images").iterdir())[:4]


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture
def systmp(tmp_path) -> Path:
    d = tmp_path / "systmp"
    d.mkdir()
    return d


@pytest.mark.scenes  # a small reconstruction
def test_cli_run_with_sift_leaves_nothing_in_the_temp_folder(tmp_path, systmp):
    images = tmp_path / "images"
    images.mkdir()
    for p in PHOTOS:
        shutil.copy(p, images / p.name)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TMPDIR=str(systmp))
    res = subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(images), "--out", str(tmp_path / "run"),
                          "--preset", "fast", "--features", "sift", "--mapping-threads", "1", "--quiet"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["features"]["name"] == "sift"
    assert _listing(systmp) == []  # SIFT's glog file (.<host>.<user>.log.INFO.*) used to land here


@pytest.mark.scenes  # serves the API
def test_api_match_with_sift_leaves_nothing_in_the_temp_folder(tmp_path, systmp, monkeypatch):
    from test_api import call, serve_api

    monkeypatch.setenv("TMPDIR", str(systmp))  # serve_api passes os.environ to the server
    a, b = PHOTOS[:2]
    with serve_api(tmp_path / "runs", tmp_path / "api.log") as base:
        status, body, _ = call("POST", f"{base}/v1/match", {"features": "sift", "matcher": "nn-ratio"},
                               [("image0", a.name, a.read_bytes()), ("image1", b.name, b.read_bytes())])
        assert status == 200, body
        assert json.loads(body)["features"] == "sift"
        assert _listing(systmp) == []


# The Two-view page through Streamlit's AppTest, in a child process (its own TMPDIR and glog): upload a pair, match
# (the page's defaults: ALIKED + LightGlue beside SIFT + ratio test), upload another pair, end the session.
_PAGE_SCRIPT = r"""
import gc, json, os, stat, sys
from pathlib import Path
from streamlit.testing.v1 import AppTest

photos = [Path(p) for p in sys.argv[1:5]]
out = {}
at = AppTest.from_file("streamlit_app.py", default_timeout=600)
at.run()
at.switch_page("app_pages/twoview.py").run()
assert not at.exception, at.exception


def upload(a, b):
    at.file_uploader(key="tv_up0").set_value((a.name, a.read_bytes(), "image/png"))
    at.file_uploader(key="tv_up1").set_value((b.name, b.read_bytes(), "image/png"))
    at.run()
    at.select_slider(key="tv_resize").set_value(640)
    at.select_slider(key="tv_kp").set_value(1024).run()
    at.button(key="tv_go").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at.session_state["tv_scratch"].path


first = upload(photos[0], photos[1])
out["first"] = str(first)
out["first_files"] = sorted(str(p.relative_to(first)) for p in first.rglob("*"))
out["first_mode"] = oct(stat.S_IMODE(first.stat().st_mode))
out["sessions_mode"] = oct(stat.S_IMODE(first.parent.stat().st_mode))
out["metrics"] = {m.label: str(m.value) for m in at.metric}
out["images"] = len(at.get("image"))
second = upload(photos[2], photos[3])
out["second"] = str(second)
out["first_exists_after_new_pair"] = first.exists()
out["second_exists"] = second.exists()
del at  # the session ends: its state, and the folder object in it, are collected
gc.collect()
out["second_exists_after_session"] = second.exists()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.scenes  # matches two pairs with two methods
def test_twoview_page_keeps_uploads_in_a_private_session_folder_and_leaves_nothing(tmp_path, systmp):
    runs = tmp_path / "runs"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TMPDIR=str(systmp), SFM_RUNS_DIR=str(runs))
    res = subprocess.run([sys.executable, "-c", _PAGE_SCRIPT, *map(str, PHOTOS)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    first = Path(out["first"])
    assert first.parent == runs / ".sessions" and first.name.startswith("twoview-")
    assert out["first_mode"] == "0o700" and out["sessions_mode"] == "0o700"
    assert {"upload0", "upload1", "images/image0.jpg", "images/image1.jpg"} <= set(out["first_files"])
    assert int(out["metrics"]["Verified inliers (stronger evidence)"]) > 0 and out["images"] >= 2
    assert not out["first_exists_after_new_pair"] and out["second_exists"]  # a new pair: the old folder went
    assert not out["second_exists_after_session"]  # the session ended: its folder went
    assert _listing(systmp) == [], "files left in the system temp folder"
    assert _listing(runs / ".sessions") == []


def test_stale_session_folders_are_removed_and_fresh_ones_kept(tmp_path, monkeypatch):
    from backend.io import sessions

    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path / "runs"))
    live = sessions.SessionFolder("twoview-")
    old = sessions.SessionFolder("twoview-")
    (old.path / "upload0").write_bytes(b"photo")
    assert live.path.parent == tmp_path / "runs" / ".sessions" and oct(live.path.stat().st_mode & 0o777) == "0o700"
    past = time.time() - sessions.MAX_AGE_S - 60
    os.utime(old.path, (past, past))
    assert sessions.remove_stale() == [old.path.name]
    assert live.path.is_dir() and not old.path.exists()
    old.touch()  # a removed folder: nothing to touch, no error
    assert not old.alive and live.alive
    path = live.path
    del live  # collected: the folder goes (the Streamlit session ended)
    assert not path.exists()
