"""Decode memory stays bounded on every upload path (issue 24, item 2).

Each path runs in a fresh process (``python -m bench.memory child``, see :mod:`bench.memory`), whose peak resident
set is the kernel's high-water mark (``ru_maxrss``; ``VmHWM`` of the API server) and is compared with its RSS just
before the photo. The photos are all-zero PNGs written row by row (a 149 MP 16-bit RGBA PNG is 1.2 MB on disk).

Bounds (bench/NOTES.md, "Peak memory per upload path", has the measured table; README "Limits" states them):

- a PNG whose decode would exceed ``MAX_DECODE_BYTES`` (300 MB of samples) is refused from its header with what to
  do, and costs less than :data:`REFUSED_MB` (nothing of it is decoded);
- the largest PNG accepted (10000 x 10000 8-bit RGB, 300 MB of samples) costs less than :data:`ACCEPTED_MB` while it
  is read (Pillow's 4 bytes per pixel plus the half-size copy: 490 MB measured), and less than :data:`KEPT_MB` once
  the path has returned (the memory is handed back to the OS).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from bench.memory import measure_api, measure_in_child, write_blank_png
from conftest import REPO

REFUSED_MB = 60  # the refused file's path (a 1600 x 1200 companion photo decoded beside it)
ACCEPTED_MB = 600  # the largest accepted PNG read, over the RSS before it
KEPT_MB = 100  # RSS growth left once the path has returned
SIFT = "sift:nn-ratio"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("memory_photos")
    t = time.perf_counter()
    out = {"rgba16": write_blank_png(d / "rgba16.png", 12_200, 12_200, 16, "RGBA"),
           "rgb8_144mp": write_blank_png(d / "rgb8_144mp.png", 12_000, 12_000, 8, "RGB"),
           "rgb8_100mp": write_blank_png(d / "rgb8_100mp.png", 10_000, 10_000, 8, "RGB")}
    assert time.perf_counter() - t < 60
    src = sorted((REPO / "samples" / "church_imc2024" / "images").iterdir())[0]
    with Image.open(src) as im:  # a 1600 x 1200 photo beside each (a real one: the two-view path matches it)
        im.convert("RGB").resize((1200, 1600)).save(d / "companion.jpg", quality=90)
    out["companion"] = d / "companion.jpg"
    assert out["rgba16"].stat().st_size < 1_300_000 and out["rgb8_144mp"].stat().st_size < 500_000
    return out


def _grown(r: dict) -> float:
    return r["peak_mb"] - r["base_mb"]


@pytest.mark.parametrize("name, fix", [
    ("rgba16", "image is 12200x12200 px, 16-bit RGBA: decoding it takes 1191 MB, above the 300 MB limit per photo: "
               "save it as 8-bit RGB without transparency at up to 10000 px on the long side or downscale it to "
               "6100 px on the long side, and add it again"),
    ("rgb8_144mp", "image is 12000x12000 px, 8-bit RGB: decoding it takes 432 MB, above the 300 MB limit per photo: "
                   "downscale it to 10000 px on the long side, and add it again")])
def test_images_stage_refuses_a_decode_above_the_byte_cap_before_decoding(photos, name, fix):
    r = measure_in_child("images", photos[name], photos["companion"])
    assert f"{photos[name].name}: {fix}" in r["outcome"], r["outcome"]
    assert _grown(r) < REFUSED_MB, r


def test_header_check_at_upload_gives_the_same_reason(photos):
    from backend.io.images import header_problem

    with open(photos["rgba16"], "rb") as f:
        reason = header_problem(f)
        assert f.tell() == 0
    assert reason.startswith("image is 12200x12200 px, 16-bit RGBA: decoding it takes 1191 MB")
    assert header_problem(photos["rgb8_100mp"]) == ""  # at the cap: accepted


def test_images_stage_reads_the_largest_accepted_png_within_the_bound(photos):
    r = measure_in_child("images", photos["rgb8_100mp"], photos["companion"])
    assert "rgb8_100mp.png: 5000x5000" in r["outcome"], r["outcome"]  # stored at half size
    assert _grown(r) < ACCEPTED_MB, r
    assert r["after_mb"] - r["base_mb"] < KEPT_MB, r


@pytest.mark.scenes  # loads the matchers
def test_twoview_prepare_and_match_stay_within_the_bound(photos):
    """prepare_image + match_prepared (SIFT) after a warm-up match, as the Two-view page and /v1/match do."""
    r = measure_in_child("twoview", photos["rgb8_100mp"], photos["companion"], methods=SIFT, similarity=False)
    assert "inliers" in r["outcome"], r["outcome"]
    assert _grown(r) < ACCEPTED_MB, r
    assert r["after_mb"] - r["base_mb"] < KEPT_MB, r
    r = measure_in_child("twoview", photos["rgba16"], photos["companion"], methods=SIFT, similarity=False)
    assert r["outcome"].startswith("refused: image is 12200x12200 px, 16-bit RGBA"), r["outcome"]
    assert _grown(r) < REFUSED_MB, r


@pytest.mark.scenes  # serves the API
def test_api_match_refuses_the_16bit_png_with_what_to_do_and_reads_the_largest_within_the_bound(photos):
    """POST /v1/match on a loopback server, after a warm-up match (SIFT, no similarity: the decode is measured)."""
    fields = {"features": "sift", "matcher": "nn-ratio", "similarity": "false"}
    r = measure_api([("rgba16", photos["rgba16"]), ("rgb8_100mp", photos["rgb8_100mp"])], photos["companion"],
                    fields)
    refused, accepted = r["rgba16"], r["rgb8_100mp"]
    assert refused["outcome"].startswith("400 image0 (rgba16.png) is not a usable photo: image is 12200x12200 px, "
                                         "16-bit RGBA: decoding it takes 1191 MB"), refused
    assert "downscale it to 6100 px on the long side" in refused["outcome"]
    assert _grown(refused) < REFUSED_MB, refused
    assert accepted["outcome"].startswith("200"), accepted
    assert _grown(accepted) < ACCEPTED_MB, accepted
    assert accepted["after_mb"] - accepted["base_mb"] < KEPT_MB, accepted
