"""The extractor / matcher family behind one contract: every registered method on real photos with its real
weights (quick), the refusals of combinations that cannot work, the border mask, and (marked ``scenes``) every
extractor with its own matcher end to end on temple and reichstag with floors on the official mAA."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from backend.config import FeaturesConfig, MatchingConfig, get_preset
from backend.options import apply_overrides
from backend.features import EXTRACTORS, extractor_class
from backend.features.extract import read_features, run_features
from backend.matchers import check_combination, matchers_for
from backend.matchers.match import read_matches, run_matching
from conftest import DATA, evaluate, run_cli

TEMPLE = DATA / "temple_ring_middlebury" / "images"
PAIR = ["templeR0013.png", "templeR0014.png"]


@pytest.fixture(scope="module")
def temple_pair(tmp_path_factory):
    run = tmp_path_factory.mktemp("pair")
    (run / "images").mkdir()
    for n in PAIR:
        shutil.copy(TEMPLE / n, run / "images" / n)
    return run


@pytest.mark.parametrize("name", list(EXTRACTORS))
def test_every_extractor_writes_the_contract_and_matches(temple_pair, name, tmp_path):
    """Keypoints inside the image in original pixels, scores sorted, descriptors of the declared kind, and every
    matcher that accepts the features finds most of its matches on two neighbouring temple views."""
    feats = tmp_path / "features.h5"
    counts = run_features(temple_pair, PAIR, FeaturesConfig(name=name, resize=640, max_keypoints=1024),
                          out_path=feats)
    assert counts["computed"] == 2 and counts["extractor"] == name
    kind = extractor_class(name).descriptor_kind
    for n in PAIR:
        f = read_features(feats, n)
        w, h = f["image_size"]
        kp = f["keypoints"]
        assert 100 <= len(kp) <= 1024, len(kp)
        assert kp.dtype == np.float32 and kp.shape[1] == 2
        assert (kp >= -0.5).all() and (kp[:, 0] <= w - 0.5).all() and (kp[:, 1] <= h - 0.5).all()
        assert (np.diff(f["scores"]) <= 0).all()
        assert f["descriptor_kind"] == kind
        assert f["descriptors"].dtype == (np.uint8 if kind == "binary" else np.float32)
        assert len(f["descriptors"]) == len(kp)
    for matcher in matchers_for(name):
        out = tmp_path / f"{matcher}.h5"
        res = run_matching(temple_pair, [tuple(PAIR)], MatchingConfig(name=matcher), features_path=feats,
                           out_path=out)
        m, s = read_matches(out, *PAIR)
        assert res["matcher"] == matcher and len(m) >= 50, (matcher, len(m))
        assert len(np.unique(m[:, 0])) == len(m) and len(np.unique(m[:, 1])) == len(m)  # one-to-one
        assert ((s >= 0) & (s <= 1)).all()
        # the matched keypoints move consistently: temple views 13/14 are a small turn apart, so the median
        # displacement is far below the image size and most matches agree with it
        k0 = read_features(feats, PAIR[0])["keypoints"][m[:, 0]]
        k1 = read_features(feats, PAIR[1])["keypoints"][m[:, 1]]
        d = k1 - k0
        agree = np.linalg.norm(d - np.median(d, 0), axis=1) < 40
        assert agree.mean() > 0.6, (matcher, agree.mean())


def test_sift_keypoints_use_pixel_centres_at_integers(tmp_path):
    """A bright disc centred on pixel (100, 80) is detected at (100, 80), not COLMAP's (100.5, 80.5)."""
    from PIL import Image, ImageDraw

    (tmp_path / "images").mkdir()
    img = Image.new("RGB", (200, 160))
    ImageDraw.Draw(img).ellipse([94, 74, 106, 86], fill=(255, 255, 255))
    img.save(tmp_path / "images" / "disc.png")
    run_features(tmp_path, ["disc.png"], FeaturesConfig(name="sift", resize=200))
    kp = read_features(tmp_path / "features.h5", "disc.png")["keypoints"]
    assert len(kp) >= 1
    assert np.abs(kp[0] - [100, 80]).max() < 0.25, kp[0]


def test_border_mask_drops_keypoints_near_the_edge(temple_pair, tmp_path):
    cfg = FeaturesConfig(name="orb", resize=640, max_keypoints=2000, border=60)
    run_features(temple_pair, PAIR[:1], cfg, out_path=tmp_path / "b.h5")
    f = read_features(tmp_path / "b.h5", PAIR[0])
    w, h = f["image_size"]
    kp = f["keypoints"]
    assert len(kp) > 50
    assert (kp >= 60).all() and (kp[:, 0] <= w - 61).all() and (kp[:, 1] <= h - 61).all()


def test_combinations_that_cannot_work_are_refused_with_the_ones_that_can():
    with pytest.raises(ValueError, match="nn-ratio"):
        check_combination("sift", "lightglue")
    with pytest.raises(ValueError, match="aliked-t16"):
        check_combination("aliked-t16", "lightglue")  # 64-d descriptors; LightGlue's ALIKED weights take 128
    with pytest.raises(ValueError, match="xfeat"):
        check_combination("orb", "lighterglue")
    with pytest.raises(ValueError, match="choose one of"):
        check_combination("superpoint", "lightglue")
    assert set(matchers_for("xfeat")) == {"lighterglue", "nn-ratio", "adalam"}
    assert all({"nn-ratio", "adalam"} <= set(matchers_for(e)) for e in EXTRACTORS)
    # naming only the features picks their own matcher when the preset's cannot match them
    cfg = apply_overrides(get_preset("balanced"), features="akaze")
    assert (cfg.features.name, cfg.matching.name) == ("akaze", "nn-ratio")
    with pytest.raises(ValueError, match="lightglue"):
        apply_overrides(get_preset("balanced"), features="xfeat", matcher="lightglue")


def test_cli_refuses_a_combination_before_doing_any_work(tmp_path):
    out = tmp_path / "run"
    res = run_cli("reconstruct", str(TEMPLE), "--out", str(out), "--features", "orb", "--matcher", "lightglue")
    assert res.returncode == 2
    assert "nn-ratio" in res.stderr and "Traceback" not in res.stderr
    assert not (out / "features.h5").exists()


# ---- end to end: every extractor and matcher on temple and reichstag ----------------------------------------------
# The fast preset's pairs and mapping with each method at 1024 keypoints and 640 px (the bench's per-method rows,
# bench/RESULTS.md), ORB and AKAZE at 4096 keypoints and 1024 px (at 1024 / 640 ORB registered 10 of 19 temple
# views, AKAZE 2 of 10 reichstag photos). Floors:
# registered images and the official mAA a little below what each reached there. Classical methods sit lower on
# reichstag (internet photos); ORB stays below COLMAP-SIFT's 0.984 on temple (0.906 measured).
SMALL = ("--resize", "640", "--max-keypoints", "1024")
METHOD_RUNS = [
    # (features, matcher, extra CLI options, temple (min registered, floor), reichstag (min registered, floor))
    ("aliked-n16", "lightglue", SMALL, (19, 0.95), (10, 0.80)),      # measured 1.000 / 0.929
    ("aliked-n16rot", "lightglue", SMALL, (19, 0.95), (10, 0.80)),   # 1.000 / 0.929
    ("aliked-n32", "lightglue", SMALL, (19, 0.95), (10, 0.80)),      # 1.000 / 0.929
    ("aliked-t16", "nn-ratio", SMALL, (19, 0.95), (10, 0.75)),       # 1.000 / 0.893
    ("disk", "lightglue", SMALL, (19, 0.95), (10, 0.70)),            # 1.000 / 0.857
    ("xfeat", "lighterglue", SMALL, (19, 0.95), (10, 0.70)),         # 1.000 / 0.821
    # reichstag: 9/10 (mAA 0.750) before rescue_runaway_focals put back 05466646_5360480312.jpg, whose focal length
    # BA had driven to 52,000-66,000 px. On identical matches (features.h5, matches.h5, two_view.h5 byte-equal) the
    # mapper still registers that photo in some runs (then rescued: 10/10, 0.857) and not in others (9/10, 0.750;
    # a CI run of stop 23): multithreaded mapping is not bit-reproducible, so the floor allows either
    ("xfeat", "nn-ratio", SMALL, (19, 0.95), (9, 0.70)),             # 1.000 / 0.857 (0.750 with 9)
    ("sift", "nn-ratio", SMALL, (19, 0.95), (10, 0.40)),             # 1.000 / 0.571
    ("orb", "nn-ratio", ("--resize", "1024", "--max-keypoints", "4096"), (18, 0.75), (9, 0.15)),  # 0.906 / 0.321
    # AKAZE: at 1024 / 640 it registered 2 of 10 reichstag photos; at 4096 / 1024 px 1.000 / 0.464
    ("akaze", "nn-ratio", ("--resize", "1024", "--max-keypoints", "4096"), (18, 0.85), (9, 0.25)),
]


@pytest.mark.scenes
@pytest.mark.parametrize("scene", ["temple_ring_middlebury", "reichstag_imc2020"])
@pytest.mark.parametrize("name,matcher,extra,temple,reichstag", METHOD_RUNS,
                         ids=[f"{r[0]}+{r[1]}" for r in METHOD_RUNS])
def test_every_method_reconstructs_the_scene(reconstruct, name, matcher, extra, temple, reichstag, scene):
    run, d, res = reconstruct(scene, "--preset", "fast", "--features", name, "--matcher", matcher, *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert (record["config"]["features"]["name"], record["config"]["matching"]["name"]) == (name, matcher)
    min_reg, floor = temple if scene.startswith("temple") else reichstag
    registered = record["summary"]["registered_images"]
    ev = evaluate(d / "gt.csv", run / "poses.csv", d / "thresholds.txt")
    print(f"{scene} {name}+{matcher}: {registered} registered, mAA {ev['mAA']:.3f}, {record['total_seconds']} s")
    assert registered >= min_reg
    assert ev["mAA"] >= floor


def test_the_architecture_docs_example_extractor_runs_through_features_and_matching(temple_pair, tmp_path, monkeypatch):
    """The "Adding an extractor" example of docs/architecture.md, loaded as a module of ``backend.features`` plus its
    one registry entry, runs through the real features and matching stages."""
    import re
    import sys
    import types

    import backend.features as features_pkg
    from conftest import REPO

    text = (REPO / "docs" / "architecture.md").read_text()
    section = text[text.index("## Adding an extractor"):]
    code, entry = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:2]
    mod = types.ModuleType("backend.features.gftt_orb")
    mod.__package__ = "backend.features"
    exec(compile(code, "docs/architecture.md", "exec"), mod.__dict__)
    monkeypatch.setitem(sys.modules, "backend.features.gftt_orb", mod)
    name, spec = re.match(r'\s*"([\w-]+)": (\(.*\)),', entry).groups()
    monkeypatch.setitem(features_pkg.EXTRACTORS, name, eval(spec))
    feats = tmp_path / "f.h5"
    run_features(temple_pair, PAIR, FeaturesConfig(name=name, resize=640, max_keypoints=1024), out_path=feats)
    assert read_features(feats, PAIR[0])["descriptor_kind"] == "binary"
    assert matchers_for(name) == ["nn-ratio", "adalam"]
    out = tmp_path / "m.h5"
    run_matching(temple_pair, [tuple(PAIR)], MatchingConfig(name="nn-ratio"), features_path=feats, out_path=out)
    assert len(read_matches(out, *PAIR)[0]) >= 50
