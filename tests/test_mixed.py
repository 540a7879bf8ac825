"""Mixed collections (the IMC 2025 task): the scene split rule on graphs, and real mixtures of the shared scenes with
outlier photos reconstructed end to end and scored with the official metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from backend.mapping.scenes import split_scenes
from bench.mixtures import build_mixture
from conftest import ALIKED_FAST, evaluate, run_cli

# ---- the rule, on small graphs ------------------------------------------------------------------------------------


def _clique(names, inliers=100):
    return {(a, b): inliers for i, a in enumerate(names) for b in names[i + 1:]}


def test_a_weak_pair_without_a_triangle_does_not_join_two_scenes():
    a, b = [f"a{i}" for i in range(5)], [f"b{i}" for i in range(4)]
    verified = {**_clique(a), **_clique(b), ("a0", "b0"): 25}
    sp = split_scenes(a + b + ["x"], verified)
    assert sp.groups == [a, b]
    assert sp.cut_pairs == [{"images": ["a0", "b0"], "inliers": 25}]
    assert sp.outliers == [{"image": "x", "reason": "no verified pair with any other photo"}]


def test_a_strong_or_triangulated_pair_joins():
    a, b = [f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)]
    strong = split_scenes(a + b, {**_clique(a), **_clique(b), ("a0", "b0"): 200})
    assert strong.groups == [sorted(a + b)]
    # two weak pairs from one photo to two photos of the other scene that are themselves a verified pair: a triangle
    tri = split_scenes(a + b, {**_clique(a), **_clique(b), ("a0", "b0"): 20, ("a0", "b1"): 20})
    assert tri.groups == [sorted(a + b)] and not tri.cut_pairs


def test_small_groups_are_outliers_with_their_reason_and_single_mode_keeps_everything():
    a = [f"a{i}" for i in range(4)]
    verified = {**_clique(a), ("p", "q"): 80, ("r", "a0"): 20}
    sp = split_scenes(a + ["p", "q", "r"], verified, min_scene_size=3)
    assert sp.groups == [a]
    reasons = {o["image"]: o["reason"] for o in sp.outliers}
    assert set(reasons) == {"p", "q", "r"}
    assert "a group of 2 photos" in reasons["p"] and "needs at least 3" in reasons["p"]
    assert "20 inliers" in reasons["r"] and "a0" in reasons["r"]
    assert split_scenes(a + ["p", "q", "r"], verified, min_scene_size=2).groups == [a, ["p", "q"]]
    single = split_scenes(a + ["p", "q", "r"], verified, mode="single")
    assert single.groups == [sorted(a + ["p", "q", "r"])] and not single.outliers
    with pytest.raises(ValueError, match="single"):
        split_scenes(a, verified, mode="clusters")
    with pytest.raises(ValueError, match="at least 2"):
        split_scenes(a, verified, min_scene_size=1)


def test_our_submission_writer_covers_the_imc2025_training_labels(tmp_path):
    """Every labelled image of the IMC 2025 training set, written by our writer: the competition's columns, one row
    per image, every image present, parsed by the metric's reader."""
    from backend.evaluation.imc_metric import read_pose_table
    from backend.io.export import SUBMISSION_COLUMNS, check_submission, write_submission_csv
    from conftest import DATA

    labels = _rows(DATA / "_imc2025_labels" / "train_labels.csv")
    expected, lines = {}, []
    for ds in sorted({r["dataset"] for r in labels}):
        items = [(r["image"], r["scene"], None) for r in labels if r["dataset"] == ds]
        expected[ds] = {i for i, _, _ in items}
        p = tmp_path / f"{ds}.csv"
        write_submission_csv(p, items, ds)
        lines += p.read_text().splitlines()[1:]
    sub = tmp_path / "submission.csv"
    sub.write_text(",".join(SUBMISSION_COLUMNS) + "\n" + "\n".join(lines) + "\n")
    assert check_submission(sub, expected) == []
    rows = read_pose_table(sub)
    assert len(rows) == len(labels) and all(r.R is None for r in rows)
    # a missing image and a broken rotation are caught
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "\n".join(sub.read_text().splitlines()[:-1]).replace("nan;nan;nan;nan;nan;nan;nan;nan;nan", "1;2", 1)
    )
    problems = check_submission(bad, expected)
    assert any("missing" in p for p in problems) and any("rotation_matrix" in p for p in problems)
    with pytest.raises(ValueError, match="comma"):
        write_submission_csv(tmp_path / "x.csv", [("a,b.jpg", "scene0", None)], "ds")


def test_the_official_thresholds_file_is_read_zeros_included():
    """IMC 2025's train_thresholds.csv gives imc2023_haiper 0;0;0.001;... (the two tightest are skipped)."""
    from backend.evaluation.imc_metric import parse_threshold_text, read_thresholds
    from conftest import DATA

    table = read_thresholds(DATA / "_imc2025_labels" / "train_thresholds.csv")
    assert list(table.by_scene[("imc2023_haiper", "bike")][:3]) == [0.0, 0.0, 0.001]
    with pytest.raises(ValueError, match="every threshold is 0"):
        parse_threshold_text("0;0", "box")


def test_bad_scene_options_are_refused_by_the_cli(tmp_path):
    (tmp_path / "images").mkdir()
    res = run_cli("reconstruct", str(tmp_path / "images"), "--out", str(tmp_path / "run"), "--min-scene-size", "1")
    assert res.returncode == 2 and "min scene size must be at least 2" in res.stderr


# ---- real mixtures --------------------------------------------------------------------------------------------------


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory):
    """temple (12) + fox (12) + a lego view, a noise image and a flat image, reconstructed with the fast preset."""
    root = tmp_path_factory.mktemp("mix2")
    mix = build_mixture("two_scenes", root / "data")
    # a byte-identical copy of a temple photo and a text file, as a real folder has them
    first_temple = mix.scenes["temple_ring_middlebury"][0]
    (mix.images / "zz_copy.png").write_bytes((mix.images / first_temple).read_bytes())
    (mix.images / "README.txt").write_text("holiday photos")
    run = root / "run"
    res = run_cli("reconstruct", str(mix.images), "--out", str(run), "--preset", "fast", "--dataset", mix.dataset,
                  "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    return mix, run, res


@pytest.mark.scenes
def test_two_scenes_and_outliers_are_found_and_scored(two_scenes):
    mix, run, res = two_scenes
    assert "scenes: 2" in res.stdout
    score = evaluate(mix.gt_csv, run / "submission.csv", mix.thresholds_csv)
    assert score["clusterness"] >= 0.95 and score["score"] >= 0.90, score
    sub = _rows(run / "submission.csv")
    assert list(sub[0]) == ["image_id", "dataset", "scene", "image", "rotation_matrix", "translation_vector"]
    gt = {r["image"]: r["scene"] for r in _rows(mix.gt_csv)}
    # every photo once (the copy too, in its twin's scene with its pose); the text file is no photo
    assert sorted(r["image"] for r in sub) == sorted([*gt, "zz_copy.png"])
    row = {r["image"]: r for r in sub}
    twin = row[mix.scenes["temple_ring_middlebury"][0]]
    assert (row["zz_copy.png"]["scene"], row["zz_copy.png"]["rotation_matrix"]) == \
        (twin["scene"], twin["rotation_matrix"])
    gt["zz_copy.png"] = gt[mix.scenes["temple_ring_middlebury"][0]]
    assert {r["dataset"] for r in sub} == {mix.dataset}
    marked = [r["image"] for r in sub if r["scene"] == "outliers"]
    assert sum(n in marked for n in mix.outliers) >= 0.9 * len(mix.outliers)
    # no image of one scene in another's model: every registered image of a cluster comes from one GT scene
    for cluster in {r["scene"] for r in sub} - {"outliers"}:
        registered = [r["image"] for r in sub if r["scene"] == cluster and "nan" not in r["rotation_matrix"]]
        assert registered and len({gt[n] for n in registered}) == 1, (cluster, registered)
    # per-scene outputs a user can open
    import pycolmap

    mapping = json.loads((run / "mapping.json").read_text())
    for k, sc in enumerate(mapping["scenes"]):
        d = run / "scenes" / str(k)
        poses = _rows(d / "poses.csv")
        assert sorted(p["image_name"] for p in poses) == sorted(sc["images"])
        assert (d / "points.ply").read_bytes().startswith(b"ply\n")
        rec = pycolmap.Reconstruction(run / "sparse" / str(sc["model"]))
        assert sorted(im.name for im in rec.images.values() if im.has_pose) == sorted(sc["registered"])
    from backend.io.export import check_submission

    assert check_submission(run / "submission.csv", {mix.dataset: set(gt)}) == []
    top = _rows(run / "poses.csv")
    assert {p["scene"] for p in top} == {"scene0", "scene1", "outliers"}


@pytest.mark.scenes
def test_single_scene_option_maps_everything_as_one(two_scenes, tmp_path):
    mix, run, _ = two_scenes
    import shutil

    one = tmp_path / "run"
    shutil.copytree(run, one)
    res = run_cli("reconstruct", str(mix.images), "--out", str(one), "--preset", "fast", "--dataset", mix.dataset,
                  "--single-scene", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads((one / "run.json").read_text())
    for s in ("features", "matching", "verification"):  # only the scenes and later stages rerun
        assert rec["stages"][s]["started"] == json.loads((run / "run.json").read_text())["stages"][s]["started"]
    sub = _rows(one / "submission.csv")
    assert {r["scene"] for r in sub} == {"scene0"}
    assert not (one / "scenes").exists()


@pytest.mark.scenes
def test_lookalike_objects_on_tables_stay_apart(tmp_path):
    """fox and gum: two small objects on tables filmed with phones; ALIKED + LightGlue at 640 px."""
    mix = build_mixture("lookalike", tmp_path / "data", parts=[
        ("fox_instant_ngp", 12), ("gum_scene2mesh", 12), ("once", "pairs_scannet1500_sample", 4), ("noise", 2)])
    run = tmp_path / "run"
    res = run_cli("reconstruct", str(mix.images), "--out", str(run), *ALIKED_FAST, "--dataset", mix.dataset,
                  "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    score = evaluate(mix.gt_csv, run / "submission.csv", mix.thresholds_csv)
    assert score["clusterness"] >= 0.95, score
    sub = _rows(run / "submission.csv")
    gt = {r["image"]: r["scene"] for r in _rows(mix.gt_csv)}
    for cluster in {r["scene"] for r in sub} - {"outliers"}:
        members = [r["image"] for r in sub if r["scene"] == cluster]
        assert len({gt[n] for n in members} - {"outliers"}) == 1, (cluster, members)
