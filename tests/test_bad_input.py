"""Bad input: unreadable files are skipped and reported, too few images fail with a clear message."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ALIKED_FAST, run_cli, scene_dir


def test_corrupt_files_are_skipped_and_reported(tmp_path):
    src = scene_dir("reichstag_imc2020") / "images"
    images = tmp_path / "images"
    images.mkdir()
    good = sorted(src.iterdir())[:6]
    for p in good:
        shutil.copy(p, images / p.name)
    data = good[0].read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (images / "notes.jpg").write_text("this is a text file, not a photo\n")
    (images / "empty.jpg").write_bytes(b"")
    (images / "readme.txt").write_text("not an image")
    out = tmp_path / "run"
    res = run_cli("reconstruct", str(images), "--out", str(out), "--preset", "fast", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    skipped = record["stages"]["images"]["counts"]["skipped_files"]
    reasons = {s.split(":")[0]: s for s in skipped}
    assert set(reasons) == {"truncated.jpg", "notes.jpg", "empty.jpg", "readme.txt"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["notes.jpg"]
    assert "corrupt" in reasons["truncated.jpg"] or "truncated" in reasons["truncated.jpg"].split(":", 1)[1]
    for name in reasons:
        assert f"skipped {name}" in res.stdout
    assert record["summary"]["images"] == len(good)
    assert record["summary"]["registered_images"] >= 4
    rows = (out / "poses.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == sorted(p.name for p in good)


def test_single_image_fails_clearly(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    p = sorted((scene_dir("reichstag_imc2020") / "images").iterdir())[0]
    shutil.copy(p, images / p.name)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    res = run_cli("reconstruct", str(images), "--out", str(tmp_path / "run"), "--quiet")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert err[0].startswith("error: images failed:") and "at least 2" in err[0] and "broken.png" in err[0], err
    assert err[1].startswith("what to do: Upload at least two") and "InputError" in err[2] and len(err) == 3, err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["stages"]["images"]["status"] == "failed"
    assert record["stages"]["images"]["error_type"] == "InputError"
    assert "Traceback" in (tmp_path / "run" / "run.log").read_text()  # the details stay in the run folder


def test_nothing_maps_still_leaves_a_complete_submission(tmp_path):
    """Three photos of three different scenes share no verified pair: the run fails with a message that says what to
    try, and submission.csv and poses.csv still list every photo, unregistered, so that an IMC submission over many
    collections stays complete."""
    import csv

    images = tmp_path / "images"
    images.mkdir()
    for scene in ("temple_ring_middlebury", "fox_instant_ngp", "reichstag_imc2020"):
        p = sorted((scene_dir(scene) / "images").iterdir())[0]
        shutil.copy(p, images / p.name)
    out = tmp_path / "run"
    res = run_cli("reconstruct", str(images), "--out", str(out), "--preset", "fast", "--quiet")
    assert res.returncode != 0
    assert "nothing was reconstructed" in res.stderr and "more overlap" in res.stderr, res.stderr[-2000:]
    assert "submission.csv" in res.stderr
    with open(out / "submission.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["image"] for r in rows) == sorted(p.name for p in images.iterdir())
    assert all("nan" in r["rotation_matrix"].lower() for r in rows), rows
    with open(out / "poses.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    record = json.loads((out / "run.json").read_text())
    assert record["stages"]["features"]["status"] == "done"  # nothing already done is lost


def test_missing_folder_and_bad_preset(tmp_path):
    res = run_cli("reconstruct", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "not a folder" in res.stderr
    res = run_cli("reconstruct", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "turbo")
    assert res.returncode == 2 and "unknown preset" in res.stderr


def test_pycolmap_abort_is_reported_and_earlier_stages_kept(tmp_path):
    """A SIGABRT in the mapping child fails the run with a one-line reason; a rerun resumes after the failure."""
    import os

    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((scene_dir("reichstag_imc2020") / "images").iterdir())[:4]:
        shutil.copy(p, images / p.name)
    out = tmp_path / "run"
    os.environ["SFM_FAULT_INJECT"] = "abort-mapping"
    try:
        res = run_cli("reconstruct", str(images), "--out", str(out), *ALIKED_FAST, "--quiet")
    finally:
        del os.environ["SFM_FAULT_INJECT"]
    assert res.returncode == 1
    assert "mapping failed: pycolmap crashed (signal 6)" in res.stderr
    record = json.loads((out / "run.json").read_text())
    assert [record["stages"][s]["status"] for s in ["features", "matching", "verification", "mapping"]] == \
        ["done", "done", "done", "failed"]
    features_mtime = (out / "features.h5").stat().st_mtime_ns
    res = run_cli("reconstruct", str(images), "--out", str(out), *ALIKED_FAST, "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "features.h5").stat().st_mtime_ns == features_mtime
    assert json.loads((out / "run.json").read_text())["summary"]["registered_images"] >= 3


@pytest.mark.scenes
def test_a_run_leaves_no_files_in_the_temp_folder(tmp_path):
    """COLMAP's glog used to write ``.<host>.<user>.log.INFO.<date>.<pid>`` into the system temp folder on every
    mapping step; its lines now stay in the run's mapping.log. Also: phone formats (an MPO, a HEIC) and a
    byte-identical copy in a real run."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from conftest import REPO

    pytest.importorskip("pillow_heif").register_heif_opener()
    images = tmp_path / "images"
    images.mkdir()
    names = ["05534141_6340060522.jpg", "05791347_12791964625.jpg", "05866831_3427466899.jpg",
             "05936329_2458217347.jpg"]
    src = scene_dir("reichstag_imc2020") / "images"
    shutil.copy(src / names[0], images / names[0])
    shutil.copy(src / names[1], images / names[1])
    with Image.open(src / names[2]) as im:  # a dual-frame JPEG (Pillow: MPO), frame 2 a small "gain map"
        im.save(images / names[2], format="MPO", save_all=True, append_images=[im.resize((64, 48))], quality=95)
    with Image.open(src / names[3]) as im:
        im.save(images / "05936329_2458217347.HEIC", format="HEIF", quality=90)
    shutil.copy(src / names[0], images / "copy_of_the_first.jpg")
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    # SFM_COLMAP_VERBOSE: COLMAP's INFO lines too (by default only its errors reach mapping.log)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TMPDIR=str(systmp), SFM_COLMAP_VERBOSE="1")
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(images), "--out", str(out),
                          *ALIKED_FAST, "--quiet"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(os.listdir(systmp)) == []
    log = (out / "mapping.log").read_text()
    assert "incremental_pipeline.cc" in log and "Registering image" in log  # glog's lines are kept, in the run folder
    record = json.loads((out / "run.json").read_text())
    assert record["summary"]["images"] == 4 and record["summary"]["registered_images"] == 4
    assert record["stages"]["images"]["counts"]["skipped_files"] == [
        f"copy_of_the_first.jpg: identical to {names[0]} (the same photo twice: only {names[0]} is used)"]
    rows = (out / "poses.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == sorted(names)  # the HEIC is stored (and posed) as .jpg


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_mapping_threads_setting_is_refused_at_server_start(value, monkeypatch):
    """``$SFM_MAPPING_THREADS`` that every run would refuse stops ``serve`` before it listens, saying what to set;
    a good one reaches the runs' config."""
    import subprocess
    import sys

    from backend import jobs
    from conftest import REPO

    env = {**__import__("os").environ, "SFM_MAPPING_THREADS": value}
    r = subprocess.run([sys.executable, "-m", "backend", "serve", "--port", "1"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "SFM_MAPPING_THREADS" in r.stderr and "at least 1" in r.stderr, r.stderr
    monkeypatch.setenv("SFM_MAPPING_THREADS", "1")
    assert jobs.build_config("balanced").mapping.num_threads == 1
    monkeypatch.delenv("SFM_MAPPING_THREADS")
    assert jobs.build_config("balanced").mapping.num_threads == -1
