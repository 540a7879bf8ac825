"""LightGlue and LighterGlue over a batch of pairs (``batch_size`` > 1, issue 25's GPU path, proven here on the
CPU): each pair of a padded batch gets the matches it gets on its own at full depth and width (the batch runs every
layer on every point), up to a match at the filter threshold; and the matching stage written with batches holds the
same matches per pair as one written pair by pair. Real weights, real photos (the bundled church sample, temple)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from backend.config import FeaturesConfig, MatchingConfig
from backend.features.extract import run_features
from backend.matchers import load_matcher
from backend.matchers.match import read_matches, run_matching
from conftest import scene_dir
from test_lightglue_attention import CHURCH, _features, _same_matches

CPU = torch.device("cpu")
FULL = {"depth_confidence": -1.0, "width_confidence": -1.0}


def _shorter(f: dict, n: int) -> dict:
    """The image's strongest ``n`` keypoints only (ALIKED keeps them in score order), so a batch needs padding."""
    return {**f, **{k: f[k][:n] for k in ("keypoints", "descriptors", "scores")}}


def test_a_padded_batch_gives_each_pair_its_own_matches():
    photos = [CHURCH / n for n in ("00006.png", "00013.png", "00021.png", "00069.png")]
    feats = _features(photos, "aliked-n16")
    feats[2] = _shorter(feats[2], 1500)
    empty = _shorter(feats[3], 0)
    assert len({len(f["keypoints"]) for f in feats}) > 1  # padding is exercised
    single = load_matcher("lightglue", "aliked-n16", CPU, **FULL)
    batch = load_matcher("lightglue", "aliked-n16", CPU, **FULL, batch_size=5)
    pairs = [(feats[0], feats[1]), (feats[0], feats[2]), (feats[2], feats[3]), (feats[1], empty), (feats[1], feats[3])]
    got = batch.match_batch(pairs)
    assert len(got) == len(pairs)
    assert len(got[3][0]) == 0 and got[3][0].dtype == np.int32 and got[3][1].dtype == np.float32
    matched = 0
    for (f0, f1), b in zip(pairs, got):
        a = single.match(f0, f1)
        _same_matches(a, b, single.conf["filter_threshold"])
        matched += len(b[0])
    assert matched > 300  # real pairs that match
    # the batch's own diagnostics: every layer ran, nothing pruned
    assert batch.last_stats == {"layers": batch.model.conf.n_layers, "pruned": 0.0}
    for bad in (0, 1.5, True, 1000):
        with pytest.raises(ValueError, match="batch_size"):
            load_matcher("lightglue", "aliked-n16", CPU, batch_size=bad)


def test_matching_stage_in_batches_writes_the_pairwise_matches(tmp_path):
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    for p in sorted((scene_dir("temple_ring_middlebury") / "images").iterdir())[:5]:
        shutil.copy(p, run / "images" / p.name)
    names = sorted(p.name for p in (run / "images").iterdir())
    run_features(run, names, FeaturesConfig(name="xfeat", resize=640, max_keypoints=1024))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]  # 10 pairs: batches of 4, 4 and 2
    one = MatchingConfig(name="lighterglue", depth_confidence=-1, width_confidence=-1)
    four = MatchingConfig(name="lighterglue", depth_confidence=-1, width_confidence=-1, options={"batch_size": 4})
    run_matching(run, pairs, one, out_path=run / "one.h5")
    counts = run_matching(run, pairs, four, out_path=run / "four.h5")
    assert counts["computed"] == len(pairs) and counts["matches_mean"] > 100
    for p in pairs:
        _same_matches(read_matches(run / "one.h5", *p), read_matches(run / "four.h5", *p), 0.1)
    with h5py.File(run / "four.h5") as f:
        attrs = f[f"{pairs[0][0]}/{pairs[0][1]}"].attrs
        assert attrs["layers"] == 6 and attrs["seconds"] > 0
    # batch_size is one of the matcher's options, so it is part of the matches' key: a batched run recomputes
    assert run_matching(run, pairs, four, out_path=run / "one.h5")["computed"] == len(pairs)
