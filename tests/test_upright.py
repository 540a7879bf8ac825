"""Upright (``--upright auto``, :mod:`backend.io.upright`): turned photos are found on real photos, and the
keypoints of a photo extracted turned back land on the stored photo's pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import scene_dir

from backend.io.upright import estimate_upright, keypoints_from_upright, solve_turns, turn_upright

# PIL transposes that turn a photo's content k quarter-turns counter-clockwise
TURN = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_keypoints_found_turned_back_land_on_the_stored_pixel(k):
    img = np.zeros((5, 7), np.uint8)
    img[1, 5] = 255  # (x, y) = (5, 1) in a 7 x 5 image
    y, x = np.argwhere(turn_upright(img, k) == 255)[0]
    assert keypoints_from_upright(np.array([[x, y]], np.float32), k, (7, 5)).tolist() == [[5.0, 1.0]]


def test_turns_follow_the_strongest_pairs_and_the_majority_stays_upright():
    # a, b, c upright; d turned once (CCW): pairs say d is +1 against a, b and c; one weak wrong pair says c is +2
    edges = [("a", "b", 0, 300.0), ("b", "c", 0, 200.0), ("a", "d", 1, 150.0), ("b", "d", 1, 120.0),
             ("c", "d", 1, 90.0), ("a", "c", 2, 10.0)]
    res = solve_turns(["a", "b", "c", "d", "e"], edges)
    assert {n: r["turns"] for n, r in res.items()} == {"a": 0, "b": 0, "c": 0, "d": 1, "e": 0}


def test_turned_photos_of_a_real_scene_are_found(tmp_path):
    """Eight temple photos, three of them turned (90 degrees either way and 180): the three are found with their
    turns and the five others stay upright."""
    src = scene_dir("temple_ring_middlebury") / "images"
    names = sorted(p.name for p in src.iterdir())[:8]
    turned = {names[1]: 1, names[4]: 3, names[6]: 2}
    for n in names:
        im = Image.open(src / n)
        (im.transpose(TURN[turned[n]]) if n in turned else im).save(tmp_path / n)
    res = estimate_upright([tmp_path / n for n in names])
    assert {n: r["turns"] for n, r in res.items()} == {n: turned.get(n, 0) for n in names}
