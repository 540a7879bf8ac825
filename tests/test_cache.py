"""Caches that never serve stale results, and resumes after a SIGKILL.

On a real scene (4 temple photos, the fast preset with ALIKED + LightGlue at 256 keypoints, real weights and pycolmap,
the CLI in a
subprocess): every upstream change (keypoint budget, resize, background, a photo replaced by another of the same
name, size and modification time, ``--force``) recomputes everything downstream of it, and every match index in
``matches.h5`` is valid for the current ``features.h5``. A run killed with SIGKILL in the features or matching
stage, or inside an HDF5 write, resumes to the result of an uninterrupted run and leaves no incomplete entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from backend.features.extract import FEATURE_DATASETS
from backend.io.h5cache import content_key, incomplete_entries, open_cache, write_entry, writing
from backend.matchers.match import MATCH_DATASETS
from conftest import REPO, run_cli, scene_dir

SCENE = "temple_ring_middlebury"
NAMES = ["templeR0013.png", "templeR0014.png", "templeR0015.png", "templeR0016.png"]
SPARE = "templeR0017.png"  # replaces templeR0016.png (same size after padding, same mtime)
# ALIKED + LightGlue (about 1 s per image here), not the fast preset's XFeat (0.05 s per image): the kill tests need a
# features stage that lasts long enough to be killed inside it
BASE = ("--preset", "fast", "--features", "aliked-n16", "--matcher", "lightglue", "--max-keypoints", "256", "--quiet")
DOWNSTREAM = ["features", "matching", "verification", "scenes", "mapping", "exports"]


# ---- helpers ---------------------------------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _copy_images(dst: Path) -> Path:
    src = scene_dir(SCENE) / "images"
    dst.mkdir(parents=True)
    for n in NAMES:
        shutil.copy2(src / n, dst / n)
    return dst


def _reconstruct(images: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    res = run_cli("reconstruct", str(images), "--out", str(run), *BASE, *extra, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _popen(images: Path, run: Path, *extra: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("SFM_FAULT_INJECT", None)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "backend", "reconstruct", str(images), "--out", str(run), *BASE,
                             *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _record(run: Path) -> dict:
    try:
        return json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _state(run: Path) -> dict:
    """What the run folder holds: stage records, feature and match entries (read independently of the backend)."""
    feats, matches = {}, {}
    with h5py.File(run / "features.h5", "r") as f:
        for n, g in f.items():
            feats[n] = {"key": g.attrs.get("key"), "sha": g.attrs.get("image_sha256"), "kp": g["keypoints"][()],
                        "desc": g["descriptors"][()], "resized": tuple(int(v) for v in g.attrs["resized_size"])}
    with h5py.File(run / "matches.h5", "r") as f:
        for a, ga in f.items():
            for b, g in ga.items():
                matches[(a, b)] = {"key": g.attrs.get("key"), "m": g["matches"][()]}
    rec = _record(run)
    return {"stages": {s: (v.get("hash"), v.get("started"), v.get("status")) for s, v in rec["stages"].items()},
            "summary": rec["summary"], "feats": feats, "matches": matches}


def _pairs(run: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()[:2]) for line in (run / "pairs.txt").read_text().splitlines() if line.strip()]


def _assert_consistent(run: Path, images: Path) -> dict:
    """The run finished, its features come from the current photos, every match and inlier index is valid for the
    current keypoints, and no HDF5 entry is incomplete. Returns :func:`_state`."""
    st = _state(run)
    assert all(s[2] == "done" for s in st["stages"].values()), st["stages"]
    names = [i["name"] for i in json.loads((run / "images.json").read_text())["images"]]
    assert sorted(names) == sorted(NAMES)
    n_kp = {}
    for n in names:
        e = st["feats"][n]
        assert e["sha"] == _sha(run / "images" / n) == _sha(images / n), f"{n}: features of another image"
        assert e["key"], n
        n_kp[n] = len(e["kp"])
        assert e["kp"].shape == (n_kp[n], 2) and e["desc"].shape[0] == n_kp[n]
    pairs = _pairs(run)
    assert len(pairs) == len(names) * (len(names) - 1) // 2
    for a, b in pairs:
        m = st["matches"][(a, b)]["m"]
        assert m.dtype == np.int32 and m.ndim == 2 and m.shape[1] == 2
        assert (m >= 0).all(), (a, b)
        assert (m[:, 0] < n_kp[a]).all() and (m[:, 1] < n_kp[b]).all(), f"{a}/{b}: match index beyond the keypoints"
    with h5py.File(run / "two_view.h5", "r") as f:
        for a, b in pairs:
            if f"{a}/{b}" in f:
                inl = f[f"{a}/{b}/inliers"][()].reshape(-1, 2)
                assert (inl[:, 0] < n_kp[a]).all() and (inl[:, 1] < n_kp[b]).all(), f"{a}/{b}: stale inliers"
    assert incomplete_entries(run / "features.h5", 1, FEATURE_DATASETS) == []
    assert incomplete_entries(run / "matches.h5", 2, MATCH_DATASETS) == []
    return st


def _tamper(run: Path, name: str, pair: tuple[str, str]) -> None:
    """Overwrite one feature entry's keypoints and one pair's matches in place, keeping their keys: a result
    that is served from the cache would still show it."""
    with h5py.File(run / "features.h5", "a") as f:
        ds = f[name]["keypoints"]
        ds[...] = -7.0
    with h5py.File(run / "matches.h5", "a") as f:
        ds = f[f"{pair[0]}/{pair[1]}"]["matches"]
        ds[...] = 0


def _assert_untampered(st: dict, name: str, pair: tuple[str, str]) -> None:
    assert not (st["feats"][name]["kp"] == -7.0).all(), f"{name}: stale features served from the cache"
    m = st["matches"][pair]["m"]
    assert len(m) == 0 or not (m == 0).all(), f"{pair}: stale matches served from the cache"


def _assert_rerun(prev: dict, now: dict, stages: list[str], new_hash: bool = True) -> None:
    for s in stages:
        assert now["stages"][s][1] > prev["stages"][s][1], f"{s} was not rerun"
        if new_hash:
            assert now["stages"][s][0] != prev["stages"][s][0], f"{s} kept its hash"


def _assert_reused(prev: dict, now: dict, stages: list[str]) -> None:
    for s in stages:
        assert now["stages"][s][:2] == prev["stages"][s][:2], f"{s} was rerun"


def _same_result(st: dict, ref: dict) -> None:
    assert sorted(st["feats"]) == sorted(ref["feats"])
    for n, e in ref["feats"].items():
        assert np.array_equal(st["feats"][n]["kp"], e["kp"]), f"{n}: other keypoints than the uninterrupted run"
        assert np.array_equal(st["feats"][n]["desc"], e["desc"]), n
    for p in ref["matches"]:
        assert np.array_equal(st["matches"][p]["m"], ref["matches"][p]["m"]), f"{p}: other matches"
    assert st["summary"]["registered_images"] == ref["summary"]["registered_images"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run: (images folder, run folder, its state)."""
    d = tmp_path_factory.mktemp("cache_ref")
    images = _copy_images(d / "images")
    run = d / "run"
    t0 = time.perf_counter()
    _reconstruct(images, run)
    st = _assert_consistent(run, images)
    assert st["summary"]["registered_images"] == len(NAMES), st["summary"]
    print(f"reference run: {time.perf_counter() - t0:.1f} s")
    return images, run, st


def _copy_reference(reference, tmp_path: Path) -> tuple[Path, Path]:
    images, run, _ = reference
    shutil.copytree(images, tmp_path / "images", copy_function=shutil.copy2)
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "images", tmp_path / "run"


# ---- upstream changes recompute everything downstream ----------------------------------------------------------

@pytest.mark.scenes
def test_every_upstream_change_recomputes_downstream(reference, tmp_path):
    images, run = _copy_reference(reference, tmp_path)
    prev = reference[2]
    victim, vpair = NAMES[1], (NAMES[0], NAMES[1])

    # 1. the keypoint budget: features and everything after them; matches index the new (fewer) keypoints
    _tamper(run, victim, vpair)
    _reconstruct(images, run, "--max-keypoints", "192")
    st = _assert_consistent(run, images)
    _assert_reused(prev, st, ["images", "retrieval"])
    _assert_rerun(prev, st, DOWNSTREAM)
    _assert_untampered(st, victim, vpair)
    assert all(len(e["kp"]) <= 192 for e in st["feats"].values())
    assert all(st["feats"][n]["key"] != prev["feats"][n]["key"] for n in NAMES)
    assert all(st["matches"][p]["key"] != prev["matches"][p]["key"] for p in prev["matches"])
    prev = st

    # 2. the resize: the network sees a smaller image; new keypoints, new matches
    _tamper(run, victim, vpair)
    _reconstruct(images, run, "--max-keypoints", "192", "--resize", "480")
    st = _assert_consistent(run, images)
    _assert_reused(prev, st, ["images", "retrieval"])
    _assert_rerun(prev, st, DOWNSTREAM)
    _assert_untampered(st, victim, vpair)
    assert all(max(st["feats"][n]["resized"]) == 480 for n in NAMES)
    assert all(not np.array_equal(st["feats"][n]["kp"], prev["feats"][n]["kp"]) for n in NAMES)
    assert all(st["matches"][p]["key"] != prev["matches"][p]["key"] for p in prev["matches"])
    prev = st

    # 3. the background (a decode option): images and everything after them
    _tamper(run, victim, vpair)
    _reconstruct(images, run, "--max-keypoints", "192", "--resize", "480", "--background", "black")
    st = _assert_consistent(run, images)
    _assert_rerun(prev, st, ["images", "retrieval", *DOWNSTREAM])
    _assert_untampered(st, victim, vpair)
    assert all(st["feats"][n]["key"] != prev["feats"][n]["key"] for n in NAMES)
    assert all(st["matches"][p]["key"] != prev["matches"][p]["key"] for p in prev["matches"])
    prev = st

    # 4. a photo replaced by another one under the same name, with the same size and modification time
    target = images / NAMES[3]
    old = target.stat()
    data = (scene_dir(SCENE) / "images" / SPARE).read_bytes()
    assert len(data) < old.st_size
    target.write_bytes(data + bytes(old.st_size - len(data)))  # PNG readers ignore bytes after IEND
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    new = target.stat()
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    # (the other images' entries are rightly reused: only the replaced image and its pairs must be recomputed)
    _tamper(run, NAMES[3], (NAMES[0], NAMES[3]))
    _reconstruct(images, run, "--max-keypoints", "192", "--resize", "480", "--background", "black")
    st = _assert_consistent(run, images)  # also: the features of NAMES[3] are those of the new bytes
    _assert_rerun(prev, st, ["images", "retrieval", *DOWNSTREAM])
    _assert_untampered(st, NAMES[3], (NAMES[0], NAMES[3]))
    assert all(st["feats"][n]["key"] == prev["feats"][n]["key"] for n in NAMES[:3])
    assert st["feats"][NAMES[3]]["key"] != prev["feats"][NAMES[3]]["key"]
    assert not np.array_equal(st["feats"][NAMES[3]]["kp"], prev["feats"][NAMES[3]]["kp"])
    for p in prev["matches"]:
        if NAMES[3] in p:
            assert st["matches"][p]["key"] != prev["matches"][p]["key"], p
    prev = st

    # 5. --force: same inputs and config, so the same hashes, but every stage and every cached entry is recomputed
    _tamper(run, victim, vpair)
    _reconstruct(images, run, "--max-keypoints", "192", "--resize", "480", "--background", "black", "--force")
    st = _assert_consistent(run, images)
    _assert_rerun(prev, st, ["images", "retrieval", *DOWNSTREAM], new_hash=False)
    assert all(st["stages"][s][0] == prev["stages"][s][0] for s in st["stages"])
    _assert_untampered(st, victim, vpair)
    assert np.array_equal(st["feats"][victim]["kp"], prev["feats"][victim]["kp"])  # recomputed, not just kept
    assert np.array_equal(st["matches"][vpair]["m"], prev["matches"][vpair]["m"])


# ---- SIGKILL and resume ----------------------------------------------------------------------------------------

@pytest.mark.scenes
def test_sigkill_in_features_stage_resumes_to_the_same_result(reference, tmp_path):
    images = _copy_images(tmp_path / "images")
    run = tmp_path / "run"
    proc = _popen(images, run)
    try:
        deadline = time.monotonic() + 300
        while _record(run).get("stages", {}).get("features", {}).get("status") != "running":
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the features stage never started"
            time.sleep(0.02)
        time.sleep(1.5)  # ~1 s per image on 2 cores: inside the features stage, between or inside writes
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed = _record(run)["stages"]
    assert killed.get("matching", {}).get("status") != "done", "the kill came too late to test a resume"
    print("killed in:", {s: v.get("status") for s, v in killed.items()},
          "features.h5 incomplete:", incomplete_entries(run / "features.h5", 1, FEATURE_DATASETS)
          if (run / "features.h5").exists() else "no file")
    _reconstruct(images, run)
    _same_result(_assert_consistent(run, images), reference[2])


@pytest.mark.scenes
def test_sigkill_inside_h5_writes_leaves_no_incomplete_entry(reference, tmp_path):
    """Killed (SIGKILL, by the fault hook) after an entry's datasets are on disk but before its key: first in
    features.h5, then, resumed, in matches.h5; the next resume recomputes exactly those entries."""
    images = _copy_images(tmp_path / "images")
    run = tmp_path / "run"
    for spec, stage in (("features.h5:2", "features"), ("matches.h5:3", "matching")):
        proc = _popen(images, run, env_extra={"SFM_FAULT_INJECT": f"kill-in-h5-write:{spec}"})
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, err[-3000:]
        assert _record(run)["stages"][stage]["status"] == "running"
        h5, depth, required = (("features.h5", 1, FEATURE_DATASETS) if stage == "features"
                               else ("matches.h5", 2, MATCH_DATASETS))
        left = incomplete_entries(run / h5, depth, required)
        assert "<pending>" in left and len(left) >= 2, left  # the half-written entry is on disk
    _reconstruct(images, run)
    _same_result(_assert_consistent(run, images), reference[2])


@pytest.mark.scenes
def test_unreadable_h5_after_a_kill_is_recomputed(reference, tmp_path):
    """A matches.h5 that a kill during a metadata flush left unreadable: the resume deletes it (saying so) and
    recomputes the matches instead of crashing."""
    images, run = _copy_reference(reference, tmp_path)
    p = run / "matches.h5"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    rec = _record(run)
    rec["stages"]["matching"]["status"] = "running"  # what a kill in the matching stage leaves
    for later in ["verification", "scenes", "mapping", "exports"]:
        rec["stages"].pop(later)
    (run / "run.json").write_text(json.dumps(rec))
    res = _reconstruct(images, run)
    assert "matches.h5 is unreadable" in res.stderr
    st = _assert_consistent(run, images)
    _assert_reused(reference[2], st, ["images", "retrieval", "features"])
    _same_result(st, reference[2])


# ---- h5cache on its own (no scene) -----------------------------------------------------------------------------

def _entry(f, name, n, key):
    write_entry(f, name, {"matches": np.zeros((n, 2), np.int32), "scores": np.ones(n, np.float16)}, {}, key)


def test_open_cache_drops_pending_and_keyless_entries(tmp_path):
    p = tmp_path / "m.h5"
    with writing(p, ["a/b", "a/c"]) as f:
        _entry(f, "a/b", 3, content_key("ab"))
        _entry(f, "a/c", 2, content_key("ac"))
    with h5py.File(p, "a") as f:  # what a killed writer leaves: a pending list, a group without key, a short one
        f.attrs["pending"] = json.dumps(["b/c"])
        _entry(f, "b/c", 4, content_key("bc"))
        g = f.create_group("c/d")
        g.create_dataset("matches", data=np.zeros((5, 2), np.int32))
        g = f.create_group("c/e")
        g.create_dataset("matches", data=np.zeros((5, 2), np.int32))
        g.create_dataset("scores", data=np.zeros(4, np.float16))
        g.attrs["key"] = "x"
    assert sorted(incomplete_entries(p, 2, MATCH_DATASETS)) == ["<pending>", "c/d", "c/e"]
    assert open_cache(p, 2, MATCH_DATASETS) == {"a/b": content_key("ab"), "a/c": content_key("ac")}
    assert incomplete_entries(p, 2, MATCH_DATASETS) == []
    with h5py.File(p, "r") as f:
        assert sorted(f) == ["a"] and "pending" not in f.attrs


def test_writing_deletes_keyless_entries_on_an_exception(tmp_path):
    p = tmp_path / "f.h5"
    with pytest.raises(RuntimeError):
        with writing(p, ["x"]) as f:
            f.create_group("x").create_dataset("keypoints", data=np.zeros((2, 2), np.float32))
            raise RuntimeError("boom")
    with h5py.File(p, "r") as f:
        assert "x" not in f and "pending" not in f.attrs


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_open_cache_replaces_an_unreadable_file(tmp_path, caplog, damage):
    p = tmp_path / "features.h5"
    with writing(p, ["a"]) as f:
        write_entry(f, "a", {k: np.zeros((3, 2), np.float32) for k in FEATURE_DATASETS}, {}, "k")
    data = p.read_bytes()
    p.write_bytes(b"not hdf5 " * 100 if damage == "garbage" else data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="backend.io.h5cache"):
        assert open_cache(p, 1, FEATURE_DATASETS) == {}
    assert "unreadable" in caplog.text
    with h5py.File(p, "r") as f:  # a fresh, valid file
        assert list(f) == []


def test_thumbnail_follows_a_replaced_image_with_the_same_mtime(tmp_path):
    from PIL import Image

    from backend.views import runview

    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "images.json").write_text(json.dumps({"images": [{"name": "a.png"}], "skipped": []}))
    src = run / "images" / "a.png"
    Image.new("RGB", (64, 48), (250, 0, 0)).save(src)
    first = runview.thumbnail_path(run, "a.png")
    old = src.stat()
    Image.new("RGB", (64, 48), (0, 0, 250)).save(src)
    os.utime(src, ns=(old.st_atime_ns, old.st_mtime_ns))
    second = runview.thumbnail_path(run, "a.png")
    with Image.open(second) as im:
        r, g, b = im.convert("RGB").getpixel((32, 24))
    assert b > 200 and r < 50, "the thumbnail shows the replaced image"
    assert second != first and not first.exists()  # the old version's thumbnail is gone
