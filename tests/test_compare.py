"""The Matches page's comparison backend (:mod:`backend.twoview.compare`): one real pair (two Middlebury temple
views) matched by two methods, verified with OpenCV, cached per method; impossible combinations and names that
are not registry names or images of the run are refused before any path is built."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import DATA

from backend.twoview.compare import compare_pair

PAIR = ("templeR0013.png", "templeR0014.png")
SMALL = {"resize": 640, "max_keypoints": 1024}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    src = DATA / "temple_ring_middlebury" / "images"
    if not all((src / n).is_file() for n in PAIR):
        pytest.fail(f"temple images not found in {src} (set SFM_DATA_DIR to the folder holding the scenes)")
    d = tmp_path_factory.mktemp("compare_run")
    (d / "images").mkdir()
    for n in PAIR:
        shutil.copy(src / n, d / "images" / n)
    return d


def _keys(path: Path, entries: list[str]) -> dict[str, str]:
    with h5py.File(path, "r") as f:
        return {e: str(f[e].attrs["key"]) for e in entries}


@pytest.mark.parametrize("features", ["sift", "xfeat"])
def test_compare_pair_verifies_and_reuses_its_cache(run_dir, features):
    a, b = PAIR
    res = compare_pair(run_dir, a, b, features, "nn-ratio", **SMALL)
    c = res["counts"]
    assert c["inliers"] >= 50, c
    assert c["inliers"] <= c["matches"] <= min(c["keypoints0"], c["keypoints1"]) <= SMALL["max_keypoints"]
    m, inl = res["matches"], res["inliers"]
    assert m.dtype == np.int32 and m.shape == (c["matches"], 2)
    assert inl.dtype == bool and inl.shape == (c["matches"],) and int(inl.sum()) == c["inliers"]
    assert res["scores"].shape == (c["matches"],)
    assert res["keypoints0"].dtype == np.float32 and res["keypoints0"].shape == (c["keypoints0"], 2)
    assert (m[:, 0] < c["keypoints0"]).all() and (m[:, 1] < c["keypoints1"]).all()
    assert set(res["seconds"]) == {"extraction", "matching", "verification"}
    assert res["threshold_px"] == pytest.approx(1.0)  # 640 x 480 images at resize 640: no scaling

    feats = run_dir / "compare" / features / "features.h5"
    matches = run_dir / "compare" / f"{features}+nn-ratio" / "matches.h5"
    before = _keys(feats, [a, b]), _keys(matches, [f"{a}/{b}"])
    again = compare_pair(run_dir, a, b, features, "nn-ratio", **SMALL)
    assert again["reused"] == {"features": True, "matches": True}
    assert (_keys(feats, [a, b]), _keys(matches, [f"{a}/{b}"])) == before
    assert np.array_equal(again["matches"], m) and np.array_equal(again["inliers"], inl)
    if not res["reused"]["features"]:
        assert again["seconds"]["extraction"] < res["seconds"]["extraction"]


def test_impossible_combination_names_what_works(run_dir):
    with pytest.raises(ValueError, match="nn-ratio"):
        compare_pair(run_dir, *PAIR, "orb", "lightglue", **SMALL)
    assert not (run_dir / "compare" / "orb").exists()


@pytest.mark.parametrize("features,matcher", [("../x", "nn-ratio"), ("sift", "../../y"), ("SIFT", "nn-ratio")])
def test_unregistered_names_are_refused_before_any_path(run_dir, features, matcher):
    with pytest.raises(ValueError, match="unknown"):
        compare_pair(run_dir, *PAIR, features, matcher, **SMALL)
    assert not any("x" == p.name or "y" in p.name for p in run_dir.rglob("*"))


@pytest.mark.parametrize("name", ["../images/templeR0013.png", "missing.png", "."])
def test_names_that_are_not_images_of_the_run_are_refused(run_dir, name):
    with pytest.raises(ValueError, match="no image"):
        compare_pair(run_dir, name, PAIR[1], "sift", "nn-ratio", **SMALL)


# ---- the page -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def matched_runs_root(tmp_path_factory) -> Path:
    """A runs folder holding ``temple2``: the two temple views run up to the matching stage (SIFT, no mapping)."""
    from backend.config import get_preset
    from backend.options import apply_overrides
    from backend.pipeline import Pipeline, RunOptions

    src = tmp_path_factory.mktemp("temple2_src")
    for n in PAIR:
        shutil.copy(DATA / "temple_ring_middlebury" / "images" / n, src / n)
    root = tmp_path_factory.mktemp("runs")
    cfg = apply_overrides(get_preset("fast"), features="sift", retrieval_model="efficientnet-lite0")
    Pipeline(RunOptions(images_dir=src, run_dir=root / "temple2"), cfg).run(until="matching")
    return root


def test_matches_page_compares_two_methods(matched_runs_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import REPO

    monkeypatch.setenv("SFM_RUNS_DIR", str(matched_runs_root))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.query_params["run"] = "temple2"
    at.run()
    at.switch_page("app_pages/matches.py").run()
    assert at.selectbox(key="cmp_feat_left").value == "sift"  # the run's own method
    assert at.selectbox(key="cmp_match_left_sift").value == "nn-ratio"
    assert at.selectbox(key="cmp_feat_right").value == "sift"
    at.selectbox(key="cmp_feat_right").set_value("xfeat").run()
    assert at.selectbox(key="cmp_match_right_xfeat").options == ["lighterglue", "nn-ratio", "adalam"]
    at.selectbox(key="cmp_match_right_xfeat").set_value("nn-ratio").run()
    n_images = len(at.get("image"))
    at.button(key="cmp_go").click().run()
    assert not at.exception and not at.error
    captions = " ".join(c.caption for e in at.get("image") for c in e.proto.imgs)
    assert len(at.get("image")) == n_images + 2
    for method in ("sift + nn", "xfeat + nn"):
        assert method in captions.replace("\\", "")
    assert "inliers (two-view: fundamental matrix, OpenCV MAGSAC)" in captions
    at.select_slider(key="match_lines").set_value(100).run()  # a rerun keeps the results
    assert len(at.get("image")) == n_images + 2 and not at.error


def test_matches_page_shows_a_comparison_error_as_a_message(matched_runs_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import backend.twoview.compare as compare
    from conftest import REPO

    def fail(*a, **kw):
        raise RuntimeError("weights missing at /srv/weights/x.pth\nsecond line")

    monkeypatch.setattr(compare, "compare_pair", fail)
    monkeypatch.setenv("SFM_RUNS_DIR", str(matched_runs_root))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.query_params["run"] = "temple2"
    at.run()
    at.switch_page("app_pages/matches.py").run()
    at.button(key="cmp_go").click().run()
    assert not at.exception
    errors = [str(e.value).replace("\\", "") for e in at.error]
    assert len(errors) == 2 and all("could not match this pair" in e and "x.pth" in e for e in errors)
    assert not any("/srv" in e or "second line" in e or "Traceback" in e for e in errors)
