"""The CLI on real scenes with the real ALIKED and LightGlue weights and real pycolmap.

Floors (the official IMC 2025 mAA) sit a little below what the default (balanced) preset reaches on this machine
(bench/RESULTS.md); church's two sides share no correct link (a symmetric tower), so it is mapped as two models and
the largest, one side, scores 0.385 officially. The benchmark (`python -m bench`) measures more and compares with
COLMAP-SIFT.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from conftest import evaluate, scene_dir

# scene: (minimum registered images (None = all), minimum mAA, extra CLI options)
FLOORS = {
    "temple_ring_middlebury": (None, 0.95, ()),
    "reichstag_imc2020": (None, 0.75, ()),
    # fox with the fast preset (1.000 in 29 s; balanced 1.000 in 533 s, measured by the bench): CI's time goes to the
    # scenes where the presets differ. The fold check, which fast leaves off, is on as in balanced
    "fox_instant_ngp": (None, 0.97, ("--preset", "fast", "--disambiguate", "auto")),
    # church: the fold check splits the folded model into its two sides; the largest holds 9 (one side and 00063)
    "church_imc2024": (8, 0.35, ()),
    # a symmetric object: a folded model scores about 0.6 (the fast preset: 0.596). Balanced takes 11 minutes here
    # (100 photos, 2048 keypoints): it runs in the nightly suite (SFM_NIGHTLY=1) and in `python -m bench`
    "lego_nerf_synthetic": (None, 0.80, ()),
}
NIGHTLY = {"lego_nerf_synthetic"}


@pytest.mark.parametrize(
    "scene",
    [
        pytest.param(
            s, marks=pytest.mark.skipif(os.environ.get("SFM_NIGHTLY") != "1", reason="nightly size: SFM_NIGHTLY=1")
        )
        if s in NIGHTLY
        else s
        for s in FLOORS
    ],
)
def test_scene_reconstructs_above_floor(reconstruct, scene):
    min_reg, min_maa, extra = FLOORS[scene]
    run, d, res = reconstruct(scene, *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    n_images = len([p for p in (d / "images").iterdir() if p.is_file()])
    record = json.loads((run / "run.json").read_text())
    registered = record["summary"]["registered_images"]
    assert registered >= (min_reg or n_images), f"{registered}/{n_images} registered"

    # poses.csv: one row per image, a user can read it, and it scores above the floor
    with open(run / "poses.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_images
    ev = evaluate(d / "gt.csv", run / "poses.csv", d / "thresholds.txt")
    print(f"{scene}: {registered}/{n_images} registered, mAA {ev['mAA']:.3f}, "
          f"{record['total_seconds']} s, stages " +
          ", ".join(f"{k} {v['seconds']}s/{v['peak_rss_mb']}MB" for k, v in record["stages"].items()))
    assert ev["mAA"] >= min_maa
    # the fold check splits church (test below) and no other scene
    fold = json.loads((run / "mapping.json").read_text())["fold"]
    assert fold["folded"] == (scene == "church_imc2024"), fold["best"]
    # the IMC 2024 variant scores the same
    ev24 = evaluate(d / "gt.csv", run / "poses_imc2024.csv", d / "thresholds.txt")
    assert abs(ev24["mAA"] - ev["mAA"]) < 1e-9


def test_outputs_open_in_their_tools(reconstruct):
    """points.ply opens in Open3D with colours; the COLMAP model (binary and text) opens in pycolmap."""
    import open3d as o3d
    import pycolmap

    run, d, res = reconstruct("temple_ring_middlebury")
    assert res.returncode == 0, res.stderr[-3000:]
    pcd = o3d.io.read_point_cloud(str(run / "points.ply"))
    rec = pycolmap.Reconstruction(run / "sparse" / "0")
    assert len(pcd.points) == rec.num_points3D() > 1000
    assert pcd.has_colors() and np.asarray(pcd.colors).std() > 0.01
    txt = pycolmap.Reconstruction(run / "sparse_txt")
    assert txt.num_reg_images() == rec.num_reg_images()
    record = json.loads((run / "run.json").read_text())
    for stage, s in record["stages"].items():
        assert s["status"] == "done" and s["peak_rss_mb"] > 100, stage  # a Python process with numpy loaded
    assert all(record["stages"][s]["seconds"] > 0.1 for s in ("images", "features", "matching", "mapping"))
    assert record["total_seconds"] == pytest.approx(sum(s["seconds"] for s in record["stages"].values()), abs=0.05)
    assert record["weights"]["aliked-n16"].startswith("5be87048")
    assert record["summary"]["retrieval_model"] in ("dinov2-small", "efficientnet-lite0")
    assert "Run folder" in res.stdout and "poses.csv" in res.stdout


def test_rerun_reuses_finished_stages(reconstruct):
    """A second run with the same inputs and config recomputes nothing and gives the same poses."""
    from conftest import run_cli

    run, d, res = reconstruct("temple_ring_middlebury")
    assert res.returncode == 0
    before = {p: (run / p).stat().st_mtime_ns for p in ["features.h5", "matches.h5", "database.db"]}
    poses = (run / "poses.csv").read_text()
    res2 = run_cli("reconstruct", str(d / "images"), "--out", str(run), "--quiet")
    assert res2.returncode == 0, res2.stderr
    after = {p: (run / p).stat().st_mtime_ns for p in before}
    assert before == after
    assert (run / "poses.csv").read_text() == poses


def test_implausible_cameras_are_deregistered(reconstruct):
    """On a real model (church: one camera per image): an image whose camera gets an implausible focal length, and
    one that loses its observations, are de-registered with the reason; the rest stay."""
    import pycolmap

    from backend.mapping.refine import deregister_implausible

    run, d, res = reconstruct("church_imc2024")
    assert res.returncode == 0, res.stderr[-3000:]
    rec = pycolmap.Reconstruction(run / "sparse" / "0")
    n0 = rec.num_reg_images()
    assert deregister_implausible(rec) == []  # the exported model holds no implausible image
    ids = sorted(rec.reg_image_ids())
    odd, blind = rec.images[ids[0]], rec.images[ids[1]]
    assert sum(rec.images[i].camera_id == odd.camera_id for i in ids) == 1  # its own camera
    rec.cameras[odd.camera_id].focal_length = 1.0  # 1 px on a 768 x 1024 photo
    for p2d in range(blind.num_points2D()):
        if blind.point2D(p2d).has_point3D():
            rec.delete_observation(blind.image_id, p2d)
    removed = {r["image"]: r["reason"] for r in deregister_implausible(rec)}
    assert set(removed) == {odd.name, blind.name}
    assert "focal length 1.0 px" in removed[odd.name] and "observes 0 3D points" in removed[blind.name]
    assert rec.num_reg_images() == n0 - 2


def test_runaway_focal_is_put_back(reconstruct):
    """On a real model (reichstag, internet photos, one camera per image): a camera whose focal length ran away (60x
    the image side, as BA did to 05466646_5360480312.jpg at 52,172 px) and whose pose drifted is put back at its
    prior focal length with the pose it had, and the final bundle adjustment keeps that focal length."""
    import pycolmap

    from backend.config import MappingConfig
    from backend.io.images import load_images_json
    from backend.mapping.refine import final_bundle_adjustment, rescue_runaway_focals

    run, d, res = reconstruct("reichstag_imc2020")
    assert res.returncode == 0, res.stderr[-3000:]
    images = {i["name"]: i for i in load_images_json(run)["images"]}
    rec = pycolmap.Reconstruction(run / "sparse" / "0")
    assert rescue_runaway_focals(rec, images) == []  # nothing to do on a sound model
    im = max((rec.images[i] for i in rec.reg_image_ids()), key=lambda im: im.num_points3D)
    before = im.cam_from_world()
    cam = rec.cameras[im.camera_id]
    cam.focal_length = 60.0 * max(cam.width, cam.height)
    drift = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, 0.05, 0.0])), np.array([0.3, 0.0, 0.0]))
    rec.frames[im.frame_id].set_cam_from_world(im.camera_id, drift * before)
    put_back = rescue_runaway_focals(rec, images)
    assert [r["image"] for r in put_back] == [im.name]
    assert rec.cameras[im.camera_id].mean_focal_length() == pytest.approx(images[im.name]["focal_px"])
    after = rec.images[im.image_id].cam_from_world()
    angle = np.degrees(after.rotation.angle_to(before.rotation))
    assert angle < 2.0  # the drift was 2.9 degrees; the prior focal is not the refined one, so not exactly 0
    final_bundle_adjustment(rec, MappingConfig(), constant_cameras=[put_back[0]["camera_id"]])
    assert rec.cameras[im.camera_id].mean_focal_length() == pytest.approx(images[im.name]["focal_px"])
    assert rec.images[im.image_id].has_pose and rec.compute_mean_reprojection_error() < 2.0


@pytest.mark.parametrize("scene,floor", [("temple_ring_middlebury", 0.95), ("reichstag_imc2020", 0.70)])
def test_global_mapper_reconstructs_the_scene(reconstruct, scene, floor):
    """``--mapper global`` (GLOMAP through pycolmap) maps every image of temple and of reichstag's internet photos
    (measured with the fast preset: 19/19 at mAA 1.000; 10/10 at 0.821-0.929 over runs) and the run records which
    mapper ran."""
    run, d, res = reconstruct(scene, "--preset", "fast", "--mapper", "global")
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["mapping"]["mapper"] == "global"
    assert record["summary"]["registered_images"] == len(list((d / "images").iterdir()))
    assert evaluate(d / "gt.csv", run / "poses.csv", d / "thresholds.txt")["mAA"] >= floor


def test_turned_photos_register_with_upright(tmp_path):
    """Temple with four photos turned (90 degrees either way, 180) and the ground truth turned with them: the fast
    preset (XFeat, not rotation-invariant) with ``--upright auto`` finds the four, registers all 19 and scores as on
    the untouched scene; without it the turned photos stay out (or land wrong)."""
    from PIL import Image

    from conftest import run_cli
    from test_upright import TURN

    d = scene_dir("temple_ring_middlebury")
    names = sorted(p.name for p in (d / "images").iterdir())
    turned = {names[2]: 1, names[7]: 3, names[11]: 2, names[15]: 1}
    (tmp_path / "images").mkdir()
    for n in names:
        im = Image.open(d / "images" / n)
        (im.transpose(TURN[turned[n]]) if n in turned else im).save(tmp_path / "images" / n)
    # camera frame turned with the image: a content turn of k quarter-turns counter-clockwise is Rz(k) applied to
    # the camera's x and y axes (R' = Rz R, t' = Rz t, so the camera centre stays); K is not in temple's gt.csv
    rz = {1: [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], 2: [[-1, 0, 0], [0, -1, 0], [0, 0, 1]],
          3: [[0, -1, 0], [1, 0, 0], [0, 0, 1]]}
    with open(d / "gt.csv") as f, open(tmp_path / "gt.csv", "w", newline="") as g:
        rows = list(csv.DictReader(f))
        wr = csv.DictWriter(g, fieldnames=list(rows[0]))
        wr.writeheader()
        for r in rows:
            if r["image_name"] in turned:
                Rz = np.array(rz[turned[r["image_name"]]], float)
                R = Rz @ np.array([float(x) for x in r["rotation_matrix"].split(";")]).reshape(3, 3)
                t = Rz @ np.array([float(x) for x in r["translation_vector"].split(";")])
                r = {**r, "rotation_matrix": ";".join(f"{x:.12g}" for x in R.ravel()),
                     "translation_vector": ";".join(f"{x:.12g}" for x in t)}
            wr.writerow(r)
    scores = {}
    for mode in ("auto", "off"):
        out = tmp_path / f"run_{mode}"
        res = run_cli("reconstruct", str(tmp_path / "images"), "--out", str(out), "--quiet", "--preset", "fast",
                      "--upright", mode)
        assert res.returncode == 0, res.stderr[-3000:]
        record = json.loads((out / "run.json").read_text())
        found = {i["name"]: i["upright_turns"] for i in json.loads((out / "images.json").read_text())["images"]}
        scores[mode] = (record["summary"]["registered_images"],
                        evaluate(tmp_path / "gt.csv", out / "poses.csv", d / "thresholds.txt")["mAA"], found)
    registered, maa, found = scores["auto"]
    assert found == {n: turned.get(n, 0) for n in names}
    assert registered == len(names) and maa >= 0.95
    print("upright auto:", scores["auto"][:2], "off:", scores["off"][:2])
    assert scores["off"][1] < maa


def test_mapping_time_bound_stops_a_stall_and_keeps_slow_progress(reconstruct, tmp_path):
    """On church's real database. The mapping time bound is a stall guard (issue 25: a deadline had cut 19 of 43
    photos of an internet collection): a pass that keeps registering photos runs past the bound and keeps them all;
    a pass with no new registration for the bound's seconds stops, returns what it has and says so. The pipeline's
    own run of church did not hit its bound (60 s, or 4 s per image above 15 images)."""
    import shutil
    import time

    from backend.config import MappingConfig
    from backend.mapping.mappers import MappingLog, incremental

    run, d, res = reconstruct("church_imc2024")
    assert res.returncode == 0, res.stderr[-3000:]
    mapping = json.loads((run / "mapping.json").read_text())
    assert mapping["time_bound_seconds"] == 64 and mapping["stopped_at_time_bound"] == []
    work = tmp_path / "run"
    work.mkdir()
    shutil.copy(run / "database.db", work / "database.db")
    (work / "images").symlink_to(run / "images")

    def run(bound: float, stall_at: int = -1, sleep: float = 0.0, stall: float = 0.0):
        """One pass (one thread: the same model every time); its report takes ``sleep`` s on every registration
        and ``stall`` s on the ``stall_at``-th. Returns (largest model, bound hits, the pass record, registration
        times in s)."""
        times, t0 = [], time.perf_counter()

        def report(stage, done, total, text):
            if text.startswith("registering image"):
                times.append(time.perf_counter() - t0)
                time.sleep(stall if len(times) == stall_at else sleep)

        log = MappingLog()
        cfg = MappingConfig(max_runtime_seconds=bound, min_model_size=3, num_threads=1)
        models = incremental(work, 16, cfg, report, log)
        return (max((m.num_reg_images() for m in models.values()), default=0), log.time_bound_hits,
                log.passes[-1], times)

    full, hit, npass, times = run(-1)
    assert full >= 12 and hit == [] and len(times) >= 8
    # a bound well above every step of COLMAP's own (the longest wait for a registration, and the work after the
    # last), so that only the slowed reports below can reach it
    steps = [b - a for a, b in zip([0.0] + times, times + [npass["seconds"]])]
    bound = int(3 * max(steps) + 5)
    size, hit, npass, _ = run(bound, sleep=bound / 6)
    assert npass["seconds"] > 2 * bound, (npass, steps)  # ran well past the bound ...
    assert hit == [] and not npass["stopped_by_bound"] and size == full, (npass, steps)  # ... and kept all
    size, hit, npass, _ = run(bound, stall_at=4, stall=bound + 3)
    assert npass["stopped_by_bound"] and hit and hit[0]["bound_seconds"] == bound and not hit[0]["at_ceiling"]
    assert 2 <= size < full


def test_shared_camera_pass_stops_early_where_the_focal_lengths_disagree(reconstruct):
    """Church's photos share one camera by their metadata, but not by their pixels: the shared-camera pass stops as
    soon as the photos' own focal lengths differ by more than 1.3x (at about 10 of 15 photos; the full pass spent
    15 s more before its end check threw it away), and one camera per image maps every photo. Temple's turntable
    shares its camera for real: that pass runs to the end and is kept."""
    run, _, res = reconstruct("church_imc2024")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((run / "mapping.json").read_text())
    cams, passes = m["cameras"], m["passes"]
    assert "focal lengths differ" in cams["shared_pass_stopped_early"] and not cams["metadata_groups_confirmed"]
    assert passes[0]["stopped_early"] and not passes[0]["stopped_by_bound"], passes
    assert passes[0]["registered"] < passes[1]["registered"] and passes[1]["registered"] >= 15, passes
    run, _, res = reconstruct("temple_ring_middlebury")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((run / "mapping.json").read_text())
    assert m["cameras"]["metadata_groups_confirmed"] and m["cameras"]["shared_groups"], m["cameras"]
    assert "shared_pass_stopped_early" not in m["cameras"] and "stopped_early" not in m["passes"][0]


def test_church_fold_is_split_into_two_correct_models(reconstruct):
    """Church's tower shows one clock face on two opposite sides: the mapper folds one side onto the other (7 of its
    15 cameras more than 3 units off). The fold check (backend/mapping/disambiguation.py) finds the two groups and
    maps them apart; each model, aligned to the ground truth on its own as the IMC metric does, has its cameras where
    they belong (measured: 8 of 9 and 6 of 6 within 0.5 units; the folded model had 8 of 15)."""
    import pycolmap

    from backend.evaluation.imc_metric import parse_threshold_text, read_pose_table, register_cameras
    from backend.io.export import model_poses
    from backend.views.runview import fold_note

    run, d, res = reconstruct("church_imc2024")
    assert res.returncode == 0, res.stderr[-3000:]
    fold = json.loads((run / "mapping.json").read_text())["fold"]
    assert fold["folded"] and fold["split_kept"] and fold["cut_pairs"] > 10
    gt = {r.image: (r.R, r.t) for r in read_pose_table(d / "gt.csv")}
    th = parse_threshold_text((d / "thresholds.txt").read_text())
    right = registered = 0
    sizes = []
    for m in sorted((run / "sparse").iterdir()):
        poses = model_poses(pycolmap.Reconstruction(m))
        names = sorted(poses)
        sizes.append(len(names))
        pred = np.array([-poses[n][0].T @ poses[n][1] for n in names])
        ref = np.array([-gt[n][0].T @ gt[n][1] for n in names])
        if len(names) >= 3:
            right += int(register_cameras(pred, ref, th).inliers[list(th).index(0.5)])
            registered += len(names)
    assert len(sizes) >= 2 and sorted(sizes)[-2] >= 5, sizes  # two real models, not one and a stray pair
    assert registered >= 14 and right >= registered - 1, (right, registered)
    note = fold_note(run)  # what the Reconstruction page says
    assert note and "two groups" in note


def test_final_adjustment_refines_principal_points_but_holds_narrow_views(reconstruct):
    """Reichstag and church map with one camera per photo. The final bundle adjustment refines the principal point of
    every such camera except the narrow-view ones (focal length above 1.5x the long side when the adjustment starts:
    church's tele photos, reichstag's narrowest), which keep the image centre; the Reconstruction page says so.
    (Measured: reichstag 0.893 -> 0.929 mAA, church unchanged; bench/NOTES.md.)"""
    import pycolmap

    from backend.views.runview import camera_summary

    for scene in ("reichstag_imc2020", "church_imc2024"):
        run, d, res = reconstruct(scene)
        assert res.returncode == 0, res.stderr[-3000:]
        moved = held = 0
        for m in sorted((run / "sparse").iterdir()):
            rec = pycolmap.Reconstruction(m)
            for im in rec.images.values():
                if not im.has_pose:
                    continue
                cam = rec.cameras[im.camera_id]
                off = np.hypot(cam.principal_point_x - cam.width / 2, cam.principal_point_y - cam.height / 2)
                if off < 1e-6:  # held whole: a narrow view (no focal length was rescued in these runs)
                    assert cam.focal_length > 1.5 * max(cam.width, cam.height), (scene, im.name, cam.focal_length)
                    held += 1
                else:
                    moved += off > 0.05
        assert moved >= 3 and held >= 1, (scene, moved, held)
        assert "not of the" in camera_summary(run), camera_summary(run)
