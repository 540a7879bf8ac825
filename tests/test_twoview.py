"""The two-view lab: geometry and model selection on synthetic scenes, and the real CLI on real pairs with ground
truth (ScanNet sample pairs, temple), test-time rotation, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.twoview.geometry import estimate_two_view, fundamental_from_pose
from backend.twoview.groundtruth import (PairGT, epipolar_distance, match_precision, parse_intrinsics, parse_typed_gt,
                                         pose_auc, pose_errors, read_gt_csv, read_pairs_file)
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


# ---------------------------------------------------------------- ground truth checked before any matching


GOOD_K, GOOD_R, GOOD_T = "800,800,500,300", "1,0,0,0,1,0,0,0,1", "1,0,0"


@pytest.mark.parametrize("field, value, says", [
    ("r", ",".join(["nan"] * 9), "R needs 9 finite numbers"),
    ("r", ",".join(["1e308"] * 9), "R is not a rotation matrix"),
    ("r", "1,2,3,4,5,6,7,8,9", "R is not a rotation matrix"),
    ("r", "1,0,0,0,1,0,0,0", "R: type 9 numbers"),
    ("t", "inf,0,0", "t needs 3 finite numbers"),
    ("t", "1e308,0,0", "t needs 3 finite numbers"),
    ("k0", "0,0,0,0", "K0: the focal lengths fx, fy must be positive"),
    ("k1", "-800,800,500,300", "K1: the focal lengths fx, fy must be positive"),
    ("k0", "1e308,1e308,1e308,1e308", "K0: values above 1e+06 px"),
    ("k1", "800,800,nan,300", "K1 needs finite numbers"),
    ("k0", "800,800,500", "K0 (fx,fy,cx,cy): type 4 or 9 numbers"),
])
def test_typed_ground_truth_is_refused_with_what_to_type(field, value, says):
    typed = {"k0": GOOD_K, "k1": GOOD_K, "r": GOOD_R, "t": GOOD_T, field: value}
    with pytest.raises(ValueError) as e:
        parse_typed_gt(typed["k0"], typed["k1"], typed["r"], typed["t"])
    assert says in str(e.value)
    assert "e.g." in str(e.value)  # an example of what to type instead


def test_typed_ground_truth_accepts_a_pose_and_both_forms_of_K():
    gt = parse_typed_gt("800 800 500 300", "800,0,500, 0,800,300, 0,0,1", "0.707,-0.707,0, 0.707,0.707,0, 0,0,1",
                        "1;0;0")
    assert gt.R.shape == (3, 3) and gt.R.dtype == np.float64 and gt.t.shape == (3,) and gt.source == "typed in"
    np.testing.assert_array_equal(gt.K0, gt.K1)
    assert parse_intrinsics("800,810,500,300")[1, 1] == 810


def test_ground_truth_files_are_checked_naming_the_line(tmp_path):
    eye = ";".join("1 0 0 0 1 0 0 0 1".split())
    k = "800;0;320;0;800;240;0;0;1"
    csv_ = tmp_path / "gt.csv"
    for bad, says in ((f"b.png,{eye},0;0;1,0;0;0;0;0;0;0;0;1", "gt.csv:3: calibration_matrix: the focal lengths"),
                      (f"b.png,{eye},0;0;1,1e308;0;0;0;1e308;0;0;0;1", "gt.csv:3: calibration_matrix: values above"),
                      (f"b.png,1;2;3;4;5;6;7;8;9,0;0;1,{k}", "gt.csv:3: rotation_matrix is not a rotation"),
                      (f"b.png,{eye},1e308;0;1,{k}", "gt.csv:3: translation_vector has a value of magnitude")):
        csv_.write_text(f"image_name,rotation_matrix,translation_vector,calibration_matrix\na.png,{eye},0;0;0,{k}\n"
                        f"{bad}\n")
        with pytest.raises(ValueError, match=re.escape(says)):
            read_gt_csv(csv_)
    pairs = tmp_path / "pairs.txt"
    T = " ".join(map(str, np.eye(4).ravel()))
    K9 = " ".join(k.split(";"))
    pairs.write_text(f"a.png b.png 0 0 {K9} {K9} {T}\nc.png d.png 0 0 {' '.join(['0'] * 9)} {K9} {T}\n")
    with pytest.raises(ValueError, match=r"pairs\.txt line 2: K0: the focal lengths"):
        read_pairs_file(pairs)
    pairs.write_text(f"a.png b.png 0 0 {K9} {K9} {T.replace('1.0', 'nan', 1)}\n")
    with pytest.raises(ValueError, match=r"pairs\.txt line 1: R needs 9 finite numbers"):
        read_pairs_file(pairs)


def _twoview_args(*argv):
    from backend.cli import build_parser

    return build_parser().parse_args(["twoview", *argv])


def test_cli_twoview_refuses_bad_intrinsics_and_ground_truth_before_matching(tmp_path, monkeypatch, capsys):
    """The checks run before any photo is read or matched: the matcher is never called."""
    import backend.twoview.pair as pair

    def never(*a, **k):
        raise AssertionError("matching started despite bad input")

    monkeypatch.setattr(pair, "match_pair", never)
    monkeypatch.setattr(pair, "match_prepared", never)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for p in (a, b):
        Image.new("RGB", (64, 48)).save(p)
    gt = tmp_path / "gt.csv"
    gt.write_text("image_name,rotation_matrix,translation_vector,calibration_matrix\n"
                  "a.png,1;0;0;0;1;0;0;0;1,0;0;0,0;0;0;0;0;0;0;0;1\nb.png,1;0;0;0;1;0;0;0;1,1;0;0,\n")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.png b.png 0 0 " + " ".join(["nan"] * 34) + "\n")
    for argv, says in (((str(a), str(b), "--K0", "0,0,0,0", "--K1", GOOD_K), "--K0: the focal lengths"),
                       ((str(a), str(b), "--K0", GOOD_K, "--K1", "1e308,1e308,1e308,1e308"), "--K1: values above"),
                       ((str(a), str(b), "--gt", str(gt)), "gt.csv:2: calibration_matrix: the focal lengths"),
                       ((str(a), str(b), "--pairs-gt", str(pairs)), "pairs.txt line 1: R needs 9 finite")):
        args = _twoview_args(*argv)
        assert args.func(args) == 2
        err = capsys.readouterr().err
        assert says in err and "e.g." in err, err


def _fake_run(root, run_id: str = "tvfake"):
    """A run folder whose images stage is done, with two small photos (enough for the Two-view page's inputs)."""
    d = root / run_id
    (d / "images").mkdir(parents=True)
    for n, c in (("a.jpg", (200, 30, 30)), ("b.jpg", (30, 200, 30))):
        Image.new("RGB", (64, 48), c).save(d / "images" / n)
    (d / "run.json").write_text(json.dumps({"status": "done", "stages": {"images": {"status": "done"}}}))
    (d / "images.json").write_text(json.dumps({"images": [{"name": "a.jpg"}, {"name": "b.jpg"}], "skipped": []}))
    return run_id


@pytest.mark.parametrize("field, value, says", [
    ("tv_r", ",".join(["nan"] * 9), "R needs 9 finite numbers"),
    ("tv_t", "inf,0,0", "t needs 3 finite numbers"),
    ("tv_k0", "0,0,0,0", "the focal lengths fx, fy must be positive"),
    ("tv_k1", "1e308,1e308,1e308,1e308", "values above"),
])
def test_twoview_page_refuses_typed_ground_truth_as_it_is_typed(tmp_path, monkeypatch, field, value, says):
    """The page says what is wrong with the typed ground truth as soon as it is typed, without matching (the matcher
    is never called), and Match then works without ground truth."""
    from streamlit.testing.v1 import AppTest

    import backend.twoview.pair as pair

    calls = []
    monkeypatch.setattr(pair, "match_prepared", lambda *a, **k: calls.append("match"))
    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app_pages" / "twoview.py"),
                           default_timeout=120)
    at.session_state["run_id"] = _fake_run(tmp_path)
    at.run()
    at.radio(key="tv_gt_kind").set_value("Type K, R, t").run()
    typed = {"tv_k0": GOOD_K, "tv_k1": GOOD_K, "tv_r": GOOD_R, "tv_t": GOOD_T, field: value}
    for k, v in typed.items():
        at.text_input(key=k).input(v)
    at.run()
    assert not at.exception, at.exception
    errors = [str(e.value).replace("\\", "").replace("\u2060", "") for e in at.error]
    assert any("Ground truth not used" in e and says in e and "e.g." in e for e in errors), errors
    assert calls == []
    assert not any("precision" in n.label.lower() for n in at.number_input)  # no ground truth, no precision box


@pytest.mark.scenes
def test_twoview_page_matches_on_onnx_runtime(tmp_path, monkeypatch):
    """The Two-view page offers the matcher's runtime for learned matchers only; with ONNX Runtime picked, Match
    verifies two temple photos and the result says which runtime matched them."""
    import shutil

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path))
    d = tmp_path / "tvonnx"
    (d / "images").mkdir(parents=True)
    names = sorted(p.name for p in (scene_dir("temple_ring_middlebury") / "images").iterdir())[:2]
    for n in names:
        shutil.copy(scene_dir("temple_ring_middlebury") / "images" / n, d / "images" / n)
    (d / "run.json").write_text(json.dumps({"status": "done", "stages": {"images": {"status": "done"}}}))
    (d / "images.json").write_text(json.dumps({"images": [{"name": n} for n in names], "skipped": []}))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app_pages" / "twoview.py"),
                           default_timeout=600)
    at.session_state["run_id"] = "tvonnx"
    at.run()
    at.checkbox(key="tv_two").uncheck().run()
    at.selectbox(key="tv_feat0").set_value("sift").run()
    assert not any(r.key == "tv_rt0" for r in at.radio)  # no runtime to choose for SIFT's nearest neighbours ...
    at.selectbox(key="tv_feat0").set_value("xfeat").run()
    at.radio(key="tv_rt0").set_value("onnx").run()  # ... one for XFeat + LighterGlue
    at.button(key="tv_go").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    shown = re.findall(r'caption: "([^"]*)"', " ".join(str(e.proto) for e in at.main))  # the matches picture's
    got = [c for c in shown if c.startswith("xfeat + lighterglue on ONNX Runtime:")]
    assert got and int(re.search(r"(\d+) inliers", got[0]).group(1)) >= 100, shown
