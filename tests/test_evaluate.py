"""Tests of backend.evaluation.imc_metric: the official IMC 2025 metric against reference scores of the organisers' code
(../shared/data/_metric_fixtures), through the library and the CLI; the pose and threshold readers."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest

from backend.evaluation.imc_metric import (
    ThresholdTable,
    camera_centers,
    decode_text,
    evaluate_files,
    horn_similarity,
    kabsch_similarity,
    mean_average_accuracy,
    read_pose_table,
    read_poses_csv,
    read_thresholds,
)
from conftest import DATA, run_cli

FIXTURES = DATA / "_metric_fixtures"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.json").is_file()) if FIXTURES.is_dir() else []


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_scene(n: int = 20, seed: int = 0) -> dict:
    """n world-to-camera poses with centres spread in a 10-unit cube."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        R = random_rotation(rng)
        out[f"img_{i:03d}.jpg"] = (R, -R @ rng.uniform(0, 10, 3))
    return out


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


# ---------------------------------------------------------------- the official metric's reference scores


def _expected(case: str) -> dict:
    return json.loads((FIXTURES / case / "expected.json").read_text())


@pytest.mark.parametrize("case", CASES or ["(no fixtures found)"])  # missing fixtures fail, never skip
def test_reproduces_official_scores(case):
    d = FIXTURES / case
    exp = _expected(case)
    res = evaluate_files(d / "gt.csv", d / "pred.csv", d / "thresholds.csv")
    assert res.mAA == pytest.approx(exp["mAA"]["final"], abs=1e-6)
    assert res.clusterness == pytest.approx(exp["clusterness"]["final"], abs=1e-6)
    assert res.score == pytest.approx(exp["harmonic"]["final"], abs=1e-6)
    assert set(res.per_dataset) == set(exp["mAA"]["per_dataset"])
    for ds, got in res.per_dataset.items():
        assert got.mAA == pytest.approx(exp["mAA"]["per_dataset"][ds], abs=1e-6)
        assert got.clusterness == pytest.approx(exp["clusterness"]["per_dataset"][ds], abs=1e-6)
        assert got.score == pytest.approx(exp["harmonic"]["per_dataset"][ds], abs=1e-6)


@pytest.mark.parametrize("case", ["mixed__three_scenes_and_outliers", "church_imc2024__half_flipped",
                                  "fox_instant_ngp__noise2pct"])
def test_cli_json_reproduces_official_scores(case):
    d = FIXTURES / case
    exp = _expected(case)
    res = run_cli("evaluate", str(d / "gt.csv"), str(d / "pred.csv"), "--thresholds", str(d / "thresholds.csv"),
                  "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for ours, theirs in (("mAA", "mAA"), ("clusterness", "clusterness"), ("score", "harmonic")):
        assert out[ours] == pytest.approx(exp[theirs]["final"], abs=1e-6)
        for ds, v in exp[theirs]["per_dataset"].items():
            assert out["per_dataset"][ds][ours] == pytest.approx(v, abs=1e-6)


def test_mixed_dataset_matches_scenes_to_clusters():
    d = FIXTURES / "mixed__three_scenes_and_outliers"
    res = evaluate_files(d / "gt.csv", d / "pred.csv", d / "thresholds.csv")
    scenes = res.per_dataset["mix"].scenes
    assert set(scenes) == {"temple_ring_middlebury", "reichstag_imc2020", "church_imc2024"}  # outliers not scored
    assert len({s.cluster for s in scenes.values()}) == 3  # each scene found its own cluster
    temple = scenes["temple_ring_middlebury"]
    assert temple.n_shared == temple.n_gt == 19 and temple.cluster_size == 22  # 3 reichstag images in it


def _imc2025_from_poses(path: Path, dataset: str, scene: str, poses: dict, blank=frozenset()) -> Path:
    fmt = lambda a: ";".join(repr(float(x)) for x in np.ravel(a))  # noqa: E731
    lines = ["image_id,dataset,scene,image,rotation_matrix,translation_vector"]
    for k, (n, (R, t)) in enumerate(poses.items()):
        rs, ts = ("nan;" * 8 + "nan", "nan;nan;nan") if n in blank else (fmt(R), fmt(t))
        lines.append(f"{dataset}_{k},{dataset},{scene},{n},{rs},{ts}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_layouts_agree_through_the_cli(tmp_path):
    """The same prediction as our poses.csv, the IMC 2024 and the IMC 2025 layout gives the same score; thresholds
    as a list, a file of numbers and the IMC thresholds CSV agree too."""
    case = FIXTURES / "church_imc2024__noise2pct"
    exp = _expected(case.name)["mAA"]["final"]
    gt_rows = read_pose_table(case / "gt.csv")
    pred = read_poses_csv(case / "pred.csv")
    ours = write_csv(tmp_path / "poses.csv", pred)
    imc24 = write_csv(tmp_path / "imc24.csv", pred, header="image_path")
    imc25 = _imc2025_from_poses(tmp_path / "imc25.csv", "ds", "church_imc2024", pred)
    gt_plain = write_csv(tmp_path / "gt.csv", {r.image: (r.R, r.t) for r in gt_rows})
    (tmp_path / "th.txt").write_text("0.025;0.05;0.1\n0.2;0.5;1.0\n")
    runs = [(case / "gt.csv", imc25, str(case / "thresholds.csv")),
            (gt_plain, ours, "0.025;0.05;0.1;0.2;0.5;1.0"),
            (gt_plain, imc24, str(tmp_path / "th.txt")),
            (gt_plain, ours, str(case / "thresholds.csv"))]
    for gt, pr, th in runs:
        res = run_cli("evaluate", str(gt), str(pr), "--thresholds", th, "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["mAA"] == pytest.approx(exp, abs=1e-6), (gt.name, pr.name, th)


def test_cli_bad_thresholds_exit_2(tmp_path):
    case = FIXTURES / "church_imc2024__similarity"
    res = run_cli("evaluate", str(case / "gt.csv"), str(case / "pred.csv"), "--thresholds", "0.1;abc")
    assert res.returncode == 2 and "thresholds" in res.stderr and "Traceback" not in res.stderr


def test_unregistered_and_missing_images_are_failures():
    """Dropping images from a perfect prediction lowers the official mAA to (k - 3) / (n - 3), k kept of n."""
    gt = random_scene(20, seed=4)
    from backend.evaluation.imc_metric import mean_average_accuracy

    pred = {n: p for i, (n, p) in enumerate(gt.items()) if i not in (5, 11)}  # 2 missing
    pred["img_007.jpg"] = None  # 1 unregistered
    pred["extra_not_in_gt.jpg"] = gt["img_000.jpg"]  # ignored
    res = mean_average_accuracy(gt, pred, "0.05;0.1;0.2;0.5;1.0;2.0")
    assert res.mAA == pytest.approx((17 - 3) / (20 - 3))
    assert res.errors["img_005.jpg"] is None and res.errors["img_007.jpg"] is None


def test_horn_and_kabsch_recover_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(-5, 5, (10, 3))
    Ra, s, ta = random_rotation(rng), 2.5, np.array([1.0, -2.0, 3.0])
    dst = s * src @ Ra.T + ta
    s1, R1, t1 = horn_similarity(src[None, :3], dst[None, :3])
    s2, R2, t2 = kabsch_similarity(src, dst, np.ones((1, 10), bool))
    for sx, Rx, tx in ((s1[0], R1[0], t1[0]), (s2[0], R2[0], t2[0])):
        assert sx == pytest.approx(s)
        np.testing.assert_allclose(Rx, Ra, atol=1e-9)
        np.testing.assert_allclose(tx, ta, atol=1e-9)


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


def test_csv_other_headers_and_filters(tmp_path):  # noqa: D103
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
        f"d2/s2/x.png,d2,s2,{row}\n"
    )
    with pytest.raises(ValueError, match="occurs twice"):
        read_poses_csv(multi)
    assert list(read_poses_csv(multi, scene="s2")) == ["x.png"]
    multi.write_text(multi.read_text() + f"d1/s3/x.png,d1,s3,{row}\n")  # one image in two scenes of one dataset
    with pytest.raises(ValueError, match="multi.csv:4: image 'x.png' already appeared on line 2"):
        read_pose_table(multi)


@pytest.mark.parametrize(
    "bad_row, pattern",
    [
        ("c.png,1;0;0;0;1;0;0;0,0;0;1", r"bad\.csv:3: rotation_matrix has 8 numbers"),
        ("c.png,1;0;0;0;1;0;0;0;1,0;0", r"bad\.csv:3: translation_vector has 2 numbers"),
        ("c.png,1;0;0;0;1;0;0;0;1,0;zero;1", r"bad\.csv:3: translation_vector"),
        ("c.png,1;0;0;0;1;0;0;0;1", r"bad\.csv:3: 2 fields"),
        ("a.png,1;0;0;0;1;0;0;0;1,0;0;1", r"bad\.csv:3: image 'a.png' already appeared on line 2"),
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


def test_csv_huge_field_is_a_clear_error(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("image_name,rotation_matrix,translation_vector\na.png," + "1" * 200_000 + ",0;0;1\n")
    with pytest.raises(ValueError, match="the uploaded CSV: not a pose CSV"):
        read_poses_csv(path, label="the uploaded CSV")


def test_read_thresholds(tmp_path):
    f = tmp_path / "thresholds.txt"
    f.write_text("0.5;0.1\n0.2, 1.0\n# comment\n2.0\n")
    for spec in (f, str(f)):
        np.testing.assert_array_equal(read_thresholds(spec).default, [0.1, 0.2, 0.5, 1.0, 2.0])
    out = read_thresholds("0.1;0.2,0.5").default
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.1, 0.2, 0.5])
    np.testing.assert_array_equal(read_thresholds([1.0, 0.05]).default, [0.05, 1.0])
    c = tmp_path / "thresholds.csv"
    c.write_text("dataset,scene,thresholds\nd,a,0.1;0.2\nd,b,1;2\n")
    table = read_thresholds(c)
    assert isinstance(table, ThresholdTable)
    np.testing.assert_array_equal(table.get("d", "b"), [1.0, 2.0])
    with pytest.raises(ValueError, match="no thresholds for dataset 'd', scene 'z'"):
        table.get("d", "z")
    c.write_text("dataset,scene,thresholds\nd,a,0.1;0.2\nd,b,1;2;3\n")
    with pytest.raises(ValueError, match="different numbers of thresholds"):
        read_thresholds(c)
    for bad in ("", "0.1;-0.2", [0.0], "0.1;abc", [], "/no/such/file"):
        with pytest.raises(ValueError):
            read_thresholds(bad)


# ---------------------------------------------------------------- inputs refused before any work, with why


REAL_GT = sorted([*DATA.glob("*/gt.csv"), *FIXTURES.glob("*/gt.csv"), DATA / "_imc2025_labels" / "train_labels.csv",
                  Path(__file__).resolve().parent.parent / "samples" / "church_imc2024" / "gt.csv"])


@pytest.mark.parametrize("path", REAL_GT, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_ground_truth_passes_the_strict_reader(path):
    assert path.is_file(), path
    rows = read_pose_table(path, ground_truth=True)
    assert rows and all(r.R is not None for r in rows if r.scene != "outliers")


@pytest.mark.parametrize("rot, trans, says", [
    ("nan;" * 8 + "nan", "nan;nan;nan", "rotation_matrix 'nan;nan"),
    ("1;0;0;0;1;0;0;0;1", "inf;0;0", "translation_vector 'inf;0;0' is not 3 finite numbers"),
    ("1;0;0;0;1;0;0;0;1", "1e308;0;0", "translation_vector has a value of magnitude 1e+308"),
    ("1e308;0;0;0;1e308;0;0;0;1e308", "0;0;1", "rotation_matrix is not a rotation"),
    ("1;2;3;4;5;6;7;8;9", "0;0;1", "rotation_matrix is not a rotation"),
    ("", "", "rotation_matrix '' is not 9 finite numbers"),
])
def test_ground_truth_with_nan_inf_or_absurd_poses_is_refused_naming_the_line(tmp_path, rot, trans, says):
    gt = random_scene(8, seed=3)
    path = write_csv(tmp_path / "gt.csv", gt)
    lines = path.read_text().splitlines()
    name = lines[4].split(",")[0]
    lines[4] = f"{name},{rot},{trans},"
    path.write_text("\n".join(lines) + "\n")
    pred = write_csv(tmp_path / "pred.csv", gt)
    with pytest.raises(ValueError, match=r"gt\.csv:5: ") as e:
        evaluate_files(path, pred, "0.1;0.2;0.5;1")
    assert says in str(e.value)
    res = run_cli("evaluate", str(path), str(pred), "--thresholds", "0.1;0.2;0.5;1")
    assert res.returncode == 2 and "gt.csv:5: " in res.stderr and says in res.stderr and "Traceback" not in res.stderr
    assert name in read_poses_csv(path)  # the same file as a prediction reads: unregistered rows are allowed there


@pytest.mark.parametrize("thresholds", ["0.5", "0.1;0.5", [0.1, 0.5]])
def test_fewer_than_three_thresholds_are_refused_saying_why(tmp_path, thresholds):
    gt = random_scene(8, seed=5)
    with pytest.raises(ValueError, match=r"at least 3 needed: the official IMC 2025 mAA skips the 2 tightest"):
        mean_average_accuracy(gt, gt, thresholds)
    g = write_csv(tmp_path / "gt.csv", gt)
    th = thresholds if isinstance(thresholds, str) else ";".join(map(str, thresholds))
    res = run_cli("evaluate", str(g), str(g), "--thresholds", th)
    assert res.returncode == 2 and "at least 3" in res.stderr and "skips the 2 tightest" in res.stderr
    assert mean_average_accuracy(gt, gt, "0.1;0.2;0.5").mAA == pytest.approx(1.0)  # three are enough


def test_thresholds_csv_with_two_per_scene_is_refused(tmp_path):
    case = FIXTURES / "church_imc2024__similarity"
    th = tmp_path / "thresholds.csv"
    th.write_text("dataset,scene,thresholds\nd,church_imc2024,0.1;0.2\n")
    with pytest.raises(ValueError, match="thresholds of d/church_imc2024: 2 thresholds given, at least 3"):
        evaluate_files(case / "gt.csv", case / "pred.csv", th)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_thresholds_file_is_read_in_utf8_or_by_its_byte_order_mark(tmp_path, encoding):
    text = "0.025\n0.05\n0.1\n0.2\n0.5\n1.0\n"
    data = text.encode(encoding)
    if encoding in ("utf-16-le", "utf-16-be"):  # Notepad's "Unicode": the mark first
        data = ("\ufeff" + text).encode(encoding)
    assert decode_text(data) == text
    f = tmp_path / "thresholds.txt"
    f.write_bytes(data)
    np.testing.assert_array_equal(read_thresholds(f).default, [0.025, 0.05, 0.1, 0.2, 0.5, 1.0])
    case = FIXTURES / "church_imc2024__similarity"
    res = run_cli("evaluate", str(case / "gt.csv"), str(case / "pred.csv"), "--thresholds", str(f), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["mAA"] == pytest.approx(_expected(case.name)["mAA"]["final"], abs=1e-6)


@pytest.mark.parametrize("data", [b"\xff\xfe\x00\xd8", "0.1\n0.2\n".encode("utf-16-le"), b"\x89PNG\r\n\x1a\n\xff"])
def test_thresholds_file_that_is_not_text_says_how_to_save_it(tmp_path, data):
    with pytest.raises(ValueError, match="the upload is not readable text .* save it as plain UTF-8 text"):
        decode_text(data, "the upload")
    f = tmp_path / "th.txt"
    f.write_bytes(data)
    with pytest.raises(ValueError, match="th.txt is not readable text"):
        read_thresholds(f)


def _fake_run(root: Path, gt_text: str, run_id: str = "evfake") -> str:
    """A run whose exports are done (poses.csv of 8 photos) beside a scene folder holding ``gt_text`` as gt.csv."""
    scene, d = root / "scene", root / "runs" / run_id
    (scene / "images").mkdir(parents=True)
    d.mkdir(parents=True)
    poses = random_scene(8, seed=7)
    write_csv(d / "poses.csv", poses)
    (scene / "gt.csv").write_text(gt_text or (d / "poses.csv").read_text())
    (scene / "thresholds.txt").write_text("0.025;0.05;0.1;0.2;0.5;1.0\n")
    (d / "run.json").write_text(json.dumps({"status": "done", "images_dir": str(scene / "images"),
                                            "stages": {"exports": {"status": "done"}}}))
    (d / "images.json").write_text(json.dumps({"images": [{"name": n} for n in poses], "skipped": []}))
    return run_id


def _page(tmp_path, monkeypatch, run_id):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SFM_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app_pages" / "evaluate.py"),
                           default_timeout=120)
    at.session_state["run_id"] = run_id
    return at


def _errors(at) -> list[str]:
    return [html.unescape(str(e.value).replace("\\", "")) for e in at.error]


def test_evaluate_page_refuses_two_thresholds_and_a_nan_ground_truth(tmp_path, monkeypatch):
    at = _page(tmp_path, monkeypatch, _fake_run(tmp_path, ""))
    at.run()
    assert not at.exception and not at.error, _errors(at)
    assert {m.label: m.value for m in at.metric}["mAA"] == "1.000"
    at.text_input(key="eval_th_scene").input("0.1;0.2").run()
    assert any("at least 3 needed" in e and "skips the 2 tightest" in e for e in _errors(at)), _errors(at)
    assert not at.metric  # no silent "mAA 0.000"
    lines = (tmp_path / "scene" / "gt.csv").read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ",nan;nan;nan;nan;nan;nan;nan;nan;nan,nan;nan;nan,"
    (tmp_path / "scene" / "gt.csv").write_text("\n".join(lines) + "\n")
    at.text_input(key="eval_th_scene").input("0.1;0.2;0.5").run()
    assert any("scene/gt.csv:4: rotation_matrix" in e and "not 9 finite numbers" in e for e in _errors(at)), \
        _errors(at)
    assert not at.metric  # not "0 / 8 registered"
