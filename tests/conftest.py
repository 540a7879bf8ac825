"""Shared fixtures: real scenes from ../shared/data, real weights, the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SFM_DATA_DIR", REPO.parent / "shared" / "data"))
SAMPLE = REPO / "samples" / "church_imc2024"


def scene_dir(name: str) -> Path:
    """Folder of a real scene; the bundled sample for church, else ../shared/data/<name>."""
    if name == "church_imc2024" and SAMPLE.is_dir():
        return SAMPLE
    d = DATA / name
    if not (d / "images").is_dir():
        pytest.fail(f"scene {name} not found in {DATA} (set SFM_DATA_DIR to the folder holding the scenes)")
    return d


# The fast preset's pairs and mapping with ALIKED + LightGlue at 1024 keypoints and 640 px (the fast preset before it
# moved to XFeat): tests that need a handful of internet photos to reconstruct reliably use it. XFeat + the ratio
# test finds no initial pair among the first four reichstag photos (every pair under 100 inliers).
ALIKED_FAST = ("--preset", "fast", "--features", "aliked-n16", "--matcher", "lightglue", "--resize", "640",
               "--max-keypoints", "1024")


def run_cli(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess:
    """``python -m backend ARGS`` in a subprocess from the repo root; output captured as text. A ``reconstruct``
    maps with one thread unless the test names ``--mapping-threads``: multithreaded bundle adjustment is not
    bit-reproducible, and a photo at the edge of registration went either way between identical runs (church's fold
    split, reichstag with XFeat), so a test's floor would hold only most of the time."""
    if args and args[0] == "reconstruct" and "--mapping-threads" not in args:
        args = (*args, "--mapping-threads", "1")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def evaluate(gt: Path, pred: Path, thresholds: Path) -> dict:
    """mAA of a prediction through the CLI's ``evaluate --json``."""
    res = run_cli("evaluate", str(gt), str(pred), "--thresholds", str(thresholds), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="session")
def reconstruct(tmp_path_factory):
    """Reconstruct a scene once per session with the CLI; returns (run_dir, scene_dir, completed process)."""
    cache: dict[tuple, tuple] = {}

    def _run(scene: str, *extra: str):
        key = (scene, extra)
        if key not in cache:
            d = scene_dir(scene)
            out = tmp_path_factory.mktemp(scene) / "run"
            res = run_cli("reconstruct", str(d / "images"), "--out", str(out), "--quiet", *extra)
            cache[key] = (out, d, res)
        return cache[key]

    return _run


@pytest.fixture(scope="session")
def church_run(reconstruct):
    """The church sample (the bundled scene) reconstructed once per session with the default preset: its run
    folder. Tests that write into it keep to their own sub-folder (``dense/``, ``exports/``)."""
    run_dir, _, res = reconstruct("church_imc2024")
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


SLOW_FIXTURES = {"reconstruct", "church_run", "finished_run", "server", "browser"}
SLOW_FILES = {"test_scenes.py", "test_browser.py", "test_browser_holes.py", "test_cache.py"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that reconstructs a scene, drives the browser or serves the app as ``scenes``, so that
    ``pytest -m "not scenes"`` is a quick suite (CI runs everything)."""
    for item in items:
        if Path(str(item.fspath)).name in SLOW_FILES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.scenes)
