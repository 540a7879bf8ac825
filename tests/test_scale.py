"""Scale (issue 14): the hierarchical mapper on a video prefix, sequential pairs end to end, and the 492-frame gum run
(nightly size: it runs when SFM_NIGHTLY=1; `python -m bench.scale` measures it with the scaling table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, evaluate, run_cli, scene_dir

pytestmark = pytest.mark.scenes


def _video_prefix(tmp_path: Path, n: int | None) -> tuple[Path, Path]:
    """The first ``n`` gum frames (all with None) as symlinks, and the GT of those frames (the bench's subsets)."""
    scene_dir("gum_scene2mesh")  # fails with a clear message when the scene is missing
    from bench.scale import subset

    return subset(n, tmp_path)


def test_hierarchical_mapper_maps_clusters_and_merges_them(tmp_path):
    images, gt = _video_prefix(tmp_path, 60)
    out = tmp_path / "run"
    res = run_cli("reconstruct", str(images), "--out", str(out), "--preset", "fast", "--sequential", "auto",
                  "--mapper", "hierarchical", "--leaf-max-images", "25", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads((out / "run.json").read_text())
    assert rec["config"]["mapping"]["mapper"] == "hierarchical"
    assert rec["stages"]["retrieval"]["counts"]["sequential_pairs"] > 0
    # three or more clusters of <= 25 frames, merged back into one model of (nearly) every frame
    assert rec["summary"]["registered_images"] >= 57, rec["summary"]
    thresholds = scene_dir("gum_scene2mesh") / "thresholds.txt"
    assert evaluate(gt, out / "poses.csv", thresholds)["mAA"] >= 0.9


@pytest.mark.skipif(os.environ.get("SFM_NIGHTLY") != "1", reason="nightly size (about 9 min here): SFM_NIGHTLY=1")
def test_gum_492_frames_all_registered_in_bounded_memory(tmp_path):
    images, gt = _video_prefix(tmp_path, None)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "backend", "reconstruct", str(images), "--out", str(out), "--preset", "fast",
           "--sequential", "auto", "--quiet"]
    p = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    proc, peak = psutil.Process(p.pid), 0
    while p.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.2)
    assert p.returncode == 0
    rec = json.loads((out / "run.json").read_text())
    assert rec["summary"]["registered_images"] == 492
    assert evaluate(gt, out / "poses.csv", scene_dir("gum_scene2mesh") / "thresholds.txt")["mAA"] >= 0.95
    assert peak < 6 * 2**30, f"peak memory {peak / 2**30:.1f} GB"
