"""Tests of backend.evaluate: the IMC mAA of registered camera centres, on synthetic scenes."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from backend.evaluate import (
    EvalResult,
    camera_centers,
    estimate_similarity,
    evaluate_files,
    mean_average_accuracy,
    read_poses_csv,
    read_thresholds,
    register_centers,
)

THRESHOLDS = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def pose_from_center(R: np.ndarray, C: np.ndarray):
    return R, -R @ C


def random_scene(n: int = 20, seed: int = 0) -> dict:
    """n world-to-camera poses with centres spread in a 10-unit cube."""
    rng = np.random.default_rng(seed)
    return {f"img_{i:03d}.jpg": pose_from_center(random_rotation(rng), rng.uniform(0, 10, 3)) for i in range(n)}


def transform_poses(poses: dict, s: float, Ra: np.ndarray, ta: np.ndarray) -> dict:
    """Poses of the same cameras in a frame where X_gt = s Ra X_pred + ta (camera frames rescaled by 1/s)."""
    out = {}
    for name, (R, t) in poses.items():
        out[name] = (R @ Ra, (R @ ta + t) / s)
    return out


def with_centers(poses: dict, centers: dict) -> dict:
    return {n: pose_from_center(poses[n][0], centers[n]) for n in poses}


def write_csv(path, poses: dict, header: str = "image_name", blank: set = frozenset()):
    fmt = lambda a: ";".join(repr(float(x)) for x in np.ravel(a))  # noqa: E731
    if header == "image_name":
        lines = ["image_name,rotation_matrix,translation_vector,calibration_matrix"]
        for n, (R, t) in poses.items():
            rs, ts = ("", "") if n in blank else (fmt(R), fmt(t))
            lines.append(f"{n},{rs},{ts},{fmt(np.eye(3))}")
    else:
        lines = ["image_path,dataset,scene,rotation_matrix,translation_vector"]
        for n, (R, t) in poses.items():
            rs, ts = ("nan;" * 8 + "nan", "nan;nan;nan") if n in blank else (fmt(R), fmt(t))
            lines.append(f"test/imc/scene1/{n},imc,scene1,{rs},{ts}")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- geometry


def test_camera_centers_and_similarity_recovery():
    rng = np.random.default_rng(1)
    gt = random_scene(10, seed=1)
    C = camera_centers(gt)
    for n, (R, t) in gt.items():
        np.testing.assert_allclose(R @ C[n] + t, 0, atol=1e-12)
    src = rng.uniform(-5, 5, (10, 3))
    Ra, s, ta = random_rotation(rng), 2.5, np.array([1.0, -2.0, 3.0])
    dst = s * src @ Ra.T + ta
    s2, R2, t2 = estimate_similarity(src, dst)
    assert s2 == pytest.approx(s)
    np.testing.assert_allclose(R2, Ra, atol=1e-10)
    np.testing.assert_allclose(t2, ta, atol=1e-10)
    # zero weights drop a corrupted pair
    bad = dst.copy()
    bad[0] += 100
    w = np.ones(10)
    w[0] = 0
    s3, R3, _ = estimate_similarity(src, bad, weights=w)
    assert s3 == pytest.approx(s)
    np.testing.assert_allclose(R3, Ra, atol=1e-10)
    with pytest.raises(ValueError):
        estimate_similarity(src[:2], dst[:2])
    with pytest.raises(ValueError):
        estimate_similarity(np.ones((5, 3)), dst[:5])  # coincident
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        estimate_similarity(line, dst[:5])  # collinear


def test_register_centers_ignores_outlier():
    rng = np.random.default_rng(2)
    gt = rng.uniform(0, 10, (20, 3))
    Ra = random_rotation(rng)
    pred = (gt - 1.0) @ Ra / 0.5  # gt = 0.5 * Ra @ pred + 1
    pred[3] += 50.0
    s, R, t, inl = register_centers(pred, gt, threshold=0.1)
    assert s == pytest.approx(0.5)
    np.testing.assert_allclose(R, Ra, atol=1e-9)
    np.testing.assert_allclose(t, 1.0, atol=1e-9)
    assert inl.sum() == 19 and not inl[3]


# ---------------------------------------------------------------- metric


def test_identical_poses_give_one():
    gt = random_scene(20)
    res = mean_average_accuracy(gt, gt, THRESHOLDS)
    assert isinstance(res, EvalResult)
    assert res.mAA == 1.0
    assert np.all(res.accuracies == 1.0)
    assert (res.n_gt, res.n_registered, res.n_missing) == (20, 20, 0)
    assert max(res.errors.values()) < 1e-9


def test_similarity_transformed_prediction_gives_one():
    rng = np.random.default_rng(3)
    gt = random_scene(20, seed=3)
    s, Ra, ta = 3.7, random_rotation(rng), np.array([12.0, -7.0, 30.0])
    # predicted world: X_gt = s Ra X_pred + ta  <=>  X_pred = Ra^T (X_gt - ta) / s
    pred = transform_poses(gt, s, Ra, ta)
    for n in gt:  # a world point projects to the same ray in both frames
        X_pred = np.array([1.0, 2.0, 3.0])
        (Rg, tg), (Rp, tp) = gt[n], pred[n]
        np.testing.assert_allclose(Rg @ (s * Ra @ X_pred + ta) + tg, s * (Rp @ X_pred + tp), atol=1e-9)
    gt_c, pred_c = camera_centers(gt), camera_centers(pred)
    for n in gt:
        np.testing.assert_allclose(pred_c[n], Ra.T @ (gt_c[n] - ta) / s, atol=1e-9)
        np.testing.assert_allclose(s * Ra @ pred_c[n] + ta, gt_c[n], atol=1e-9)
    res = mean_average_accuracy(gt, pred, THRESHOLDS)
    assert res.mAA == 1.0
    assert max(res.errors.values()) < 1e-8


def test_missing_and_unregistered_count_as_failures(tmp_path):
    gt = random_scene(20, seed=4)
    pred = {n: p for i, (n, p) in enumerate(gt.items()) if i not in (5, 11)}
    pred["extra_not_in_gt.jpg"] = gt["img_000.jpg"]  # ignored
    res = mean_average_accuracy(gt, pred, THRESHOLDS)
    np.testing.assert_array_equal(res.accuracies, np.full(6, 18 / 20))
    assert res.mAA == pytest.approx(0.9)
    assert (res.n_gt, res.n_registered, res.n_missing) == (20, 18, 2)
    assert res.errors["img_005.jpg"] == np.inf

    # one more image unregistered through empty pose fields in a CSV
    gt_csv = write_csv(tmp_path / "gt.csv", gt)
    pred_csv = write_csv(tmp_path / "pred.csv", {n: p for n, p in pred.items()}, blank={"img_007.jpg"})
    assert read_poses_csv(pred_csv)["img_007.jpg"] is None
    res2 = evaluate_files(gt_csv, pred_csv, THRESHOLDS)
    np.testing.assert_allclose(res2.accuracies, 17 / 20)
    assert res2.mAA == pytest.approx(0.85)
    assert (res2.n_registered, res2.n_missing) == (17, 3)


def test_noisy_centres_partial_accuracy():
    rng = np.random.default_rng(5)
    gt = random_scene(20, seed=5)
    noisy = {n: c + rng.normal(0, 0.3, 3) for n, c in camera_centers(gt).items()}
    res = mean_average_accuracy(gt, with_centers(gt, noisy), THRESHOLDS)
    assert 0.0 < res.mAA < 1.0
    assert np.all(np.diff(res.accuracies) >= 0)
    assert res.accuracies[0] < 0.5 and res.accuracies[-1] == 1.0


def test_gross_outlier_camera_is_ignored():
    gt = random_scene(20, seed=6)
    C = camera_centers(gt)
    C["img_010.jpg"] = C["img_010.jpg"] + np.array([50.0, 0.0, 0.0])
    res = mean_average_accuracy(gt, with_centers(gt, C), THRESHOLDS)
    np.testing.assert_allclose(res.accuracies, 19 / 20)
    assert res.errors["img_010.jpg"] > 40
    assert res.mAA == pytest.approx(0.95)


def test_fewer_than_three_registered_gives_zero():
    gt = random_scene(10, seed=7)
    names = list(gt)
    pred = {names[0]: gt[names[0]], names[1]: gt[names[1]], names[2]: None}
    res = mean_average_accuracy(gt, pred, THRESHOLDS)
    assert res.mAA == 0.0 and np.all(res.accuracies == 0)
    assert res.n_registered == 2 and all(e == np.inf for e in res.errors.values())


def test_result_serialisation():
    gt = random_scene(8, seed=8)
    pred = dict(gt)
    pred["img_000.jpg"] = None
    res = mean_average_accuracy(gt, pred, "0.1;0.5")
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["errors"]["img_000.jpg"] is None
    assert d["accuracies"] == [7 / 8, 7 / 8] and d["mAA"] == pytest.approx(7 / 8)
    table = res.table()
    assert "| threshold | accuracy |" in table and "mAA = 0.8750" in table


def test_fifty_cameras_is_fast():
    rng = np.random.default_rng(9)
    gt = random_scene(50, seed=9)
    noisy = {n: c + rng.normal(0, 0.05, 3) for n, c in camera_centers(gt).items()}
    pred = with_centers(gt, noisy)
    t0 = time.perf_counter()
    res = mean_average_accuracy(gt, pred, THRESHOLDS)
    elapsed = time.perf_counter() - t0
    assert elapsed < len(THRESHOLDS) * 0.5
    assert res.accuracies[-1] == 1.0
    again = mean_average_accuracy(gt, pred, THRESHOLDS)
    np.testing.assert_array_equal(res.accuracies, again.accuracies)  # deterministic


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("header", ["image_name", "image_path"])
def test_csv_round_trip(tmp_path, header):
    gt = random_scene(6, seed=10)
    path = write_csv(tmp_path / "poses.csv", gt, header=header, blank={"img_002.jpg"})
    back = read_poses_csv(path)
    assert set(back) == set(gt)
    assert back["img_002.jpg"] is None
    for n, p in back.items():
        if n != "img_002.jpg":
            R, t = p
            assert R.shape == (3, 3) and t.shape == (3,) and R.dtype == np.float64
            np.testing.assert_array_equal(R, gt[n][0])
            np.testing.assert_array_equal(t, gt[n][1])


def test_csv_other_headers_and_filters(tmp_path):
    path = tmp_path / "sub.csv"
    row = "1;0;0;0;1;0;0;0;1,0;0;1"
    path.write_text(
        "image,rotation_matrix,translation_vector\n"
        f"a.png,{row}\n"
        "\n"
        "b.png,,\n"
    )
    poses = read_poses_csv(path)
    assert poses["b.png"] is None and np.allclose(camera_centers(poses)["a.png"], [0, 0, -1])
    multi = tmp_path / "multi.csv"
    multi.write_text(
        "image_path,dataset,scene,rotation_matrix,translation_vector\n"
        f"d1/s1/x.png,d1,s1,{row}\n"
        f"d1/s2/x.png,d1,s2,{row}\n"
    )
    with pytest.raises(ValueError, match="already appeared on line 2"):
        read_poses_csv(multi)
    assert list(read_poses_csv(multi, scene="s2")) == ["x.png"]


@pytest.mark.parametrize(
    "bad_row, pattern",
    [
        ("c.png,1;0;0;0;1;0;0;0,0;0;1", r"bad\.csv:3: rotation_matrix has 8 numbers"),
        ("c.png,1;0;0;0;1;0;0;0;1,0;0", r"bad\.csv:3: translation_vector has 2 numbers"),
        ("c.png,1;0;0;0;1;0;0;0;1,0;zero;1", r"bad\.csv:3: translation_vector"),
        ("c.png,1;0;0;0;1;0;0;0;1", r"bad\.csv:3: 2 fields"),
    ],
)
def test_csv_malformed_row(tmp_path, bad_row, pattern):
    path = tmp_path / "bad.csv"
    path.write_text(f"image_name,rotation_matrix,translation_vector\na.png,1;0;0;0;1;0;0;0;1,0;0;1\n{bad_row}\n")
    with pytest.raises(ValueError, match=pattern):
        read_poses_csv(path)


def test_csv_missing_column(tmp_path):
    path = tmp_path / "nocol.csv"
    path.write_text("image_name,rotation_matrix\na.png,1;0;0;0;1;0;0;0;1\n")
    with pytest.raises(ValueError, match=r"nocol\.csv:1: .*translation_vector"):
        read_poses_csv(path)


def test_read_thresholds(tmp_path):
    f = tmp_path / "thresholds.txt"
    f.write_text("0.5;0.1\n0.2, 1.0\n# comment\n2.0\n")
    np.testing.assert_array_equal(read_thresholds(f), [0.1, 0.2, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(read_thresholds(str(f)), [0.1, 0.2, 0.5, 1.0, 2.0])
    out = read_thresholds("0.1;0.2,0.5")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.1, 0.2, 0.5])
    np.testing.assert_array_equal(read_thresholds([1.0, 0.05]), [0.05, 1.0])
    for bad in ("", "0.1;-0.2", [0.0], "0.1;abc", []):
        with pytest.raises(ValueError):
            read_thresholds(bad)
