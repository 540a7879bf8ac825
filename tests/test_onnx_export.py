"""``python -m backend export-onnx``: LighterGlue for XFeat exported with our weights gives, under onnxruntime, the
matches of the torch model at full depth (``depth_confidence=-1, width_confidence=-1``) on real temple pairs, runs
in a process that never imports torch, and its manifest names the file's sha256; matchers with no network are
refused."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from backend.matchers import load_matcher
from backend.onnx_export import OnnxMatcher
from conftest import REPO, scene_dir
from test_lightglue_attention import _features, _same_matches

pytestmark = pytest.mark.scenes  # an export takes about a minute on 2 cores
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    r = subprocess.run([sys.executable, "-m", "backend", "export-onnx", str(out), "--features", "xfeat",
                        "--matcher", "lighterglue"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not exported" in r.stdout  # says why the extractor is not
    return out


def test_onnx_lighterglue_gives_the_torch_matches(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    path = exported / manifest["model"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"]
    assert set(manifest["inputs"]) == {"kpts0", "kpts1", "desc0", "desc1", "size0", "size1"}
    photos = sorted((scene_dir("temple_ring_middlebury") / "images").iterdir())[:4]
    feats = _features(photos, "xfeat")
    full = load_matcher("lighterglue", "xfeat", torch.device("cpu"), depth_confidence=-1, width_confidence=-1)
    onnx = OnnxMatcher(path)
    total = 0
    for i, j in ((0, 1), (0, 2), (1, 3)):
        ref = full.match(feats[i], feats[j])
        got = onnx.match(feats[i], feats[j])
        _same_matches(ref, got, manifest["filter_threshold"])
        total += len(got[0])
    assert total > 300


def test_onnx_file_runs_with_onnxruntime_alone(exported):
    """A process with numpy and onnxruntime only (torch is never imported) matches a pair from saved features."""
    photos = sorted((scene_dir("temple_ring_middlebury") / "images").iterdir())[:2]
    f0, f1 = _features(photos, "xfeat")
    np.savez(exported / "pair.npz", k0=f0["keypoints"], k1=f1["keypoints"], d0=f0["descriptors"],
             d1=f1["descriptors"], s0=f0["image_size"], s1=f1["image_size"])
    code = f"""
import sys, json, numpy as np, onnxruntime as ort
m = json.load(open({str(exported / 'manifest.json')!r}))
p = np.load({str(exported / 'pair.npz')!r})
s = ort.InferenceSession({str(exported)!r} + "/" + m["model"], providers=["CPUExecutionProvider"])
m0, sc = s.run(None, dict(kpts0=p["k0"][None].astype("float32"), kpts1=p["k1"][None].astype("float32"),
    desc0=p["d0"][None].astype("float32"), desc1=p["d1"][None].astype("float32"),
    size0=p["s0"][None].astype("float32"), size1=p["s1"][None].astype("float32")))
assert "torch" not in sys.modules
print(int((m0 >= 0).sum()))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip()) > 100


def test_a_matcher_without_a_network_is_refused(tmp_path):
    r = subprocess.run([sys.executable, "-m", "backend", "export-onnx", str(tmp_path / "x"), "--features", "sift",
                        "--matcher", "lightglue"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "cannot match" in r.stderr
