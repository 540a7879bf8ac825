"""LightGlue and LighterGlue on the CPU with cross-attention through ``scaled_dot_product_attention`` (the
``cpu_attention="sdpa"`` default, issue 25) give the matches of kornia's own einsum path on real photo pairs: the same
index pairs, scores equal to float32 rounding (stated tolerance: 1e-3, measured about 6e-5), except a match whose
score sits at the filter threshold, which rounding can put on either side (one of 1,330 on a temple pair). Real
weights, real
photos of the bundled church sample and of temple. Also: the per-pair adaptive depth and width the matching stage
records."""

from __future__ import annotations

import pytest
import torch

from backend.config import FeaturesConfig
from backend.features import load_extractor
from backend.features.extract import extract_for_matching, method_options
from backend.matchers import load_matcher
from conftest import REPO, scene_dir

SCORE_TOL = 1e-3
CPU = torch.device("cpu")
CHURCH = REPO / "samples" / "church_imc2024" / "images"


def _features(paths, extractor: str) -> list[dict]:
    cfg = FeaturesConfig(name=extractor, resize=1024, max_keypoints=2048)
    model = load_extractor(extractor, CPU, **method_options(cfg))
    return [extract_for_matching(model, cfg, p) for p in paths]


def _same_matches(a, b, threshold: float) -> None:
    """The same matches: scores within :data:`SCORE_TOL`; a match found by one path only must sit at the
    matcher's filter threshold (its score within :data:`SCORE_TOL` of it: rounding decided it), and such matches
    are at most 0.2 % of all."""
    (ma, sa), (mb, sb) = a, b
    da = {tuple(x): s for x, s in zip(ma.tolist(), sa)}
    db = {tuple(x): s for x, s in zip(mb.tolist(), sb)}
    common = set(da) & set(db)
    assert max((abs(da[k] - db[k]) for k in common), default=0.0) < SCORE_TOL
    only = [(k, da.get(k, db.get(k))) for k in set(da) ^ set(db)]
    assert len(only) <= max(1, 0.002 * len(common)), (len(da), len(db), only[:5])
    assert all(abs(s - threshold) < SCORE_TOL for _, s in only), only


@pytest.mark.parametrize("extractor,matcher,photos", [
    ("aliked-n16", "lightglue", [CHURCH / n for n in ("00006.png", "00013.png", "00021.png", "00069.png")]),
    ("xfeat", "lighterglue", None),
])
def test_sdpa_cross_attention_gives_kornias_matches(extractor, matcher, photos):
    if photos is None:
        photos = sorted((scene_dir("temple_ring_middlebury") / "images").iterdir())[:4]
    feats = _features(photos, extractor)
    kornia = load_matcher(matcher, extractor, CPU, cpu_attention="kornia")
    sdpa = load_matcher(matcher, extractor, CPU, cpu_attention="sdpa")
    n_layers = sdpa.model.conf.n_layers
    matched = 0
    for i, j in ((0, 1), (0, 2), (0, 3), (1, 3)):
        a = kornia.match(feats[i], feats[j])
        b = sdpa.match(feats[i], feats[j])
        _same_matches(a, b, sdpa.conf["filter_threshold"])
        matched += len(b[0])
        st = sdpa.last_stats
        assert 1 <= st["layers"] <= n_layers and 0.0 <= st["pruned"] < 1.0, st
    assert matched > 100  # real pairs that match, not empty ones
    with pytest.raises(ValueError, match="cpu_attention"):
        load_matcher(matcher, extractor, CPU, cpu_attention="fast")


def test_matcher_options_from_the_command_line_are_checked(tmp_path):
    """``--matcher-option`` names an option of the matcher's ``default_conf``; a typo is refused before any work."""
    import subprocess
    import sys

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(CHURCH), "--out", str(out),
                        "--matcher-option", "cpu_attentio=kornia"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "lightglue has no option cpu_attentio" in r.stderr and "cpu_attention" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("option, message", [
    ("ba_global_ratoi=1.4", "the mapping config has no field ba_global_ratoi"),
    ("min_model_size=2.5", "min_model_size=2.5: give a whole number"),
    ("ba_global_ratio=nan", "give a finite number"),
    ("ba_ignore_redundant_points=yes", "give true or false"),
    ("mapper=glob", "choose one of incremental, global, hierarchical"),
])
def test_mapping_options_from_the_command_line_are_checked(tmp_path, option, message):
    """``--mapping-option`` names a field of ``MappingConfig`` and gives it a value of its type (a whole number for
    an integer field, one of the choices for a named mode); anything else is refused before any work, with what to
    give instead. A valid one reaches the config."""
    import argparse
    import subprocess
    import sys

    from backend.cli import config_from_args

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(CHURCH), "--out", str(out),
                        "--mapping-option", option], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert not out.exists()
    args = argparse.Namespace(preset="balanced", matcher_option=[],
                              mapping_option=["min_model_size=4", "ba_global_ratio=1.4",
                                              "ba_ignore_redundant_points=true", "mapper=global"],
                              verification_option=["ransac_max_error=2", "random_seed=7"])
    cfg = config_from_args(args)
    m = cfg.mapping
    assert (m.min_model_size, m.ba_global_ratio, m.ba_ignore_redundant_points, m.mapper) == (4, 1.4, True, "global")
    assert isinstance(m.min_model_size, int) and isinstance(m.ba_global_ratio, float)
    assert (cfg.verification.ransac_max_error, cfg.verification.random_seed) == (2.0, 7)
