"""The two-view lab: geometry and model selection on synthetic scenes, and the real CLI on real pairs with ground
truth (ScanNet sample pairs, temple), test-time rotation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backend.twoview.geometry import estimate_two_view, fundamental_from_pose
from backend.twoview.groundtruth import (PairGT, epipolar_distance, match_precision, pose_auc, pose_errors,
                                         read_pairs_file)
from conftest import DATA, run_cli, scene_dir

K = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])


def _rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(deg)
    S = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * S + (1 - np.cos(a)) * S @ S


def _project(X, R, t):
    x = (X @ R.T + t) @ K.T
    return x[:, :2] / x[:, 2:]


def _scene(kind: str, n: int = 300, seed: int = 0):
    """Matched pixels of a synthetic pair (0.5 px noise, 20 % outliers) and the true ``cam1_from_cam0``."""
    rng = np.random.default_rng(seed)
    if kind == "planar":
        X = np.c_[rng.uniform(-2, 2, (n, 2)), np.full(n, 6.0)]
    else:
        X = np.c_[rng.uniform(-2, 2, (n, 2)), rng.uniform(4, 9, n)]
    R = _rot([0.2, 1, 0.1], 12)
    t = np.zeros(3) if kind == "rotation" else np.array([-1.0, 0.1, 0.2])
    x0 = _project(X, np.eye(3), np.zeros(3)) + rng.normal(0, 0.5, (n, 2))
    x1 = _project(X, R, t) + rng.normal(0, 0.5, (n, 2))
    out = rng.random(n) < 0.2
    x1[out] = rng.uniform([0, 0], [640, 480], (out.sum(), 2))
    return x0, x1, R, t, ~out


@pytest.mark.parametrize("estimator", ["poselib", "opencv"])
def test_general_scene_gives_the_essential_matrix_and_the_true_pose(estimator):
    x0, x1, R, t, good = _scene("general")
    g = estimate_two_view(x0, x1, K, K, threshold_px=1.5, estimator=estimator)
    assert g.model == "E" and g.verdict == "general"
    r_err, t_err = pose_errors(g.R, g.t, PairGT(R, t, K, K))
    assert r_err < 0.5 and t_err < 3.0, (r_err, t_err)
    # the inliers are the true matches, nearly all of them and nearly nothing else
    assert (g.inliers & good).sum() >= 0.9 * good.sum() and (g.inliers & ~good).sum() <= 0.05 * (~good).sum()


@pytest.mark.parametrize("estimator", ["poselib", "opencv"])
def test_model_selection_tells_planar_from_rotation_only(estimator):
    x0, x1, *_ = _scene("planar")
    g = estimate_two_view(x0, x1, K, K, threshold_px=1.5, estimator=estimator)
    assert (g.model, g.verdict) == ("H", "planar"), g.to_dict()
    x0, x1, *_ = _scene("rotation")
    g = estimate_two_view(x0, x1, K, K, threshold_px=1.5, estimator=estimator)
    assert (g.model, g.verdict) == ("H", "rotation-only"), g.to_dict()
    # without intrinsics the two cannot be told apart, and a general scene gives F
    g = estimate_two_view(x0, x1, threshold_px=1.5, estimator=estimator)
    assert (g.model, g.verdict) == ("H", "planar or rotation-only")
    x0, x1, *_ = _scene("general")
    g = estimate_two_view(x0, x1, threshold_px=1.5, estimator=estimator)
    assert (g.model, g.verdict) == ("F", "general")


def test_too_few_matches_are_not_verified_and_bad_arguments_say_what_to_do():
    x0, x1, *_ = _scene("general", n=6)
    assert estimate_two_view(x0, x1, K, K).verdict == "not verified"
    with pytest.raises(ValueError, match="both images"):
        estimate_two_view(x0, x1, K, None)
    with pytest.raises(ValueError, match="estimator"):
        estimate_two_view(x0, x1, estimator="magic")


def test_precision_counts_matches_off_the_true_epipolar_line():
    x0, x1, R, t, good = _scene("general")
    gt = PairGT(R, t, K, K)
    p, correct = match_precision(x0, x1, gt, threshold_px=4.0)
    assert abs(p - good.mean()) < 0.03
    # the true matches lie within their noise (0.5 px per coordinate) of the true epipolar lines
    assert np.median(epipolar_distance(x0[good], x1[good], fundamental_from_pose(R, t, K, K))) < 1.5


def test_pose_auc_matches_hand_computed_areas():
    # errors 2 and 8 degrees and one failure: the recall curve (SuperGlue's, linear between the sorted errors)
    # rises from 0 at 0 deg to 1/3 at 2 deg and 2/3 at 8 deg, then stays
    auc5, auc10, auc20 = pose_auc([2.0, 8.0, float("inf")])
    ramp, middle = 2 * (1 / 3) / 2, 6 * (1 / 3 + 2 / 3) / 2
    assert auc5 == pytest.approx((ramp + 3 * (1 / 3)) / 5)
    assert auc10 == pytest.approx((ramp + middle + 2 * (2 / 3)) / 10)
    assert auc20 == pytest.approx((ramp + middle + 12 * (2 / 3)) / 20)


def _scannet_pair():
    d = DATA / "pairs_scannet1500_sample"
    if not (d / "pairs_with_gt.txt").is_file():
        pytest.fail(f"pairs_scannet1500_sample not found in {DATA}")
    (n0, n1), _ = next(iter(read_pairs_file(d / "pairs_with_gt.txt").items()))
    return d, n0, n1


@pytest.mark.scenes
def test_cli_twoview_scores_a_scannet_pair_against_its_ground_truth_both_ways():
    d, n0, n1 = _scannet_pair()
    for a, b in ((n0, n1), (n1, n0)):  # the pair file lists (n0, n1): the other order is the inverted pose
        res = run_cli("twoview", str(d / "images" / a), str(d / "images" / b), "--pairs-gt",
                      str(d / "pairs_with_gt.txt"), "--no-similarity", "--json", timeout=600)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["intrinsics"] == "ground truth" and out["model"] == "E"
        assert out["inliers"] >= 30 and out["same_place"]
        assert out["rotation_error_deg"] < 5 and out["translation_error_deg"] < 10, out
        assert 0 <= out["match_precision"] <= 1


@pytest.mark.scenes
def test_cli_twoview_temple_pair_precision_and_test_time_rotation(tmp_path):
    d = scene_dir("temple_ring_middlebury")
    names = sorted(p.name for p in (d / "images").iterdir())[:2]
    a, b = (d / "images" / n for n in names)
    res = run_cli("twoview", str(a), str(b), "--gt", str(d / "gt.csv"), "--json", timeout=600)
    assert res.returncode == 0, res.stderr
    plain = json.loads(res.stdout)
    assert plain["match_precision"] >= 0.9 and plain["rotation_error_deg"] < 2, plain
    assert plain["same_place"] and plain["similarity_percent"] is not None
    # image 1 turned a quarter counter-clockwise: LightGlue alone loses the pair, test-time rotation wins it back
    turned = tmp_path / names[1]
    Image.fromarray(np.rot90(np.array(Image.open(b).convert("RGB")), 1)).save(turned)
    res = run_cli("twoview", str(a), str(turned), "--tta", "--no-similarity", "--json", timeout=600)
    assert res.returncode == 0, res.stderr
    tta = json.loads(res.stdout)
    assert tta["tta"]["turn_degrees"] == 90, tta["tta"]
    assert tta["tta"]["inliers_per_turn"]["0"] < 0.5 * tta["inliers"]
    assert tta["inliers"] >= 0.7 * plain["inliers"]


def test_cli_twoview_bad_input_says_what_to_do(tmp_path):
    d = scene_dir("temple_ring_middlebury")
    a = sorted((d / "images").iterdir())[0]
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    res = run_cli("twoview", str(a), str(text), "--no-similarity")
    assert res.returncode == 2 and "image 1 (notes.jpg)" in res.stderr and "not an image" in res.stderr
    gt = tmp_path / "gt.csv"
    gt.write_text("image_name,rotation_matrix,translation_vector\nother.png,1;0;0;0;1;0;0;0;1,0;0;0\n")
    res = run_cli("twoview", str(a), str(a), "--gt", str(gt), "--no-similarity")
    assert res.returncode == 2 and "has no row for" in res.stderr
    res = run_cli("twoview", str(a), str(a), "--K0", "1,2,3", "--K1", "1,2,3,4", "--no-similarity")
    assert res.returncode == 2 and "fx,fy,cx,cy" in res.stderr
