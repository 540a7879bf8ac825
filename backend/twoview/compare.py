"""One pair matched by one method (features + matcher), verified by a fundamental matrix, for the Matches page's
side-by-side comparison of two methods (:func:`compare_pair`, once per method).

The features and matches stages run unchanged (:func:`~backend.features.extract.run_features`,
:func:`~backend.matchers.match.run_matching`) into files of their own, beside the run's:

- ``<run>/compare/<features>/features.h5``: the two images' features (layout of :mod:`backend.features.extract`);
- ``<run>/compare/<features>+<matcher>/matches.h5``: the pair's matches (layout of :mod:`backend.matchers.match`).

Both are content-keyed caches, so a second call with the same method and options reuses them; an entry whose
options changed (``resize``, ``max_keypoints``) is recomputed and overwritten. Folder names are registry names
only (:data:`backend.features.EXTRACTORS`, :data:`backend.matchers.MATCHERS`), never text from a user.

Verification: OpenCV's ``findFundamentalMat`` with USAC MAGSAC (Barath et al., CVPR 2020), confidence 0.999,
at most 10,000 iterations, threshold 1 px in the image the extractor saw (``resize`` long side), i.e. that times
the original / resized scale in original pixels. It needs no intrinsics, so any two photos can be compared; the
run's own verification (pycolmap, :mod:`backend.mapping`) may pick another model and keep other inliers.

Conventions: keypoints are (x, y) float32 in pixels of the image as stored in ``<run>/images``, pixel centres at
integers (as in ``features.h5``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..config import FeaturesConfig, MatchingConfig
from ..features import EXTRACTORS
from ..matchers import MATCHERS, check_combination

COMPARE_DIR = "compare"
GEOMETRY = "fundamental matrix, OpenCV MAGSAC"
THRESHOLD_PX = 1.0  # MAGSAC threshold, px of the resized image the extractor saw
CONFIDENCE = 0.999
MAX_ITERS = 10000


def compare_dirs(run_dir: Path, features: str, matcher: str) -> tuple[Path, Path]:
    """``(features folder, matches folder)`` of a comparison: ``<run>/compare/<features>`` and
    ``<run>/compare/<features>+<matcher>`` (not created here).

    Raises:
        ValueError: ``features`` is not in :data:`~backend.features.EXTRACTORS` or ``matcher`` not in
            :data:`~backend.matchers.MATCHERS` (checked before any path is built).
    """
    if features not in EXTRACTORS:
        raise ValueError(f"unknown features {features!r}; choose one of {', '.join(EXTRACTORS)}")
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of {', '.join(MATCHERS)}")
    root = Path(run_dir) / COMPARE_DIR
    return root / features, root / f"{features}+{matcher}"


def _check_image(run_dir: Path, name: str) -> None:
    """``name`` is a plain file name of an image in ``<run>/images`` (never a path)."""
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", "..") \
            or "\\" in name or not (Path(run_dir) / "images" / name).is_file():
        raise ValueError(f"no image {name!r} in this run")


def verify_fundamental(kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray,
                       threshold: float) -> np.ndarray:
    """bool [M]: the ``matches`` (int [M, 2] into ``kpts0`` [N0, 2] / ``kpts1`` [N1, 2]) consistent with one
    fundamental matrix (OpenCV USAC MAGSAC, ``threshold`` px, confidence :data:`CONFIDENCE`, at most
    :data:`MAX_ITERS` iterations). All False with fewer than 8 matches or when no model is found."""
    m = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if len(m) < 8:
        return np.zeros(len(m), bool)
    p0 = np.ascontiguousarray(np.asarray(kpts0, np.float64)[m[:, 0]])
    p1 = np.ascontiguousarray(np.asarray(kpts1, np.float64)[m[:, 1]])
    try:
        F, mask = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, float(threshold), CONFIDENCE, MAX_ITERS)
    except cv2.error:
        return np.zeros(len(m), bool)
    if F is None or mask is None:
        return np.zeros(len(m), bool)
    return mask.reshape(-1).astype(bool)


def _scale(image_size: np.ndarray, resize: int) -> float:
    """Original / resized long side (>= 1: the stage never upscales)."""
    long_side = float(max(image_size))
    return max(1.0, long_side / max(1, min(int(resize), long_side)))


def compare_pair(run_dir: Path, name0: str, name1: str, features: str, matcher: str, resize: int = 1024,
                 max_keypoints: int = 2048,
                 progress: Callable[[str, int, int, str], None] | None = None) -> dict:
    """Match the pair ``(name0, name1)`` of ``<run>/images`` with ``features`` + ``matcher`` and verify it.

    Extracts both images' features (``resize`` px long side, never upscaled; at most ``max_keypoints``; the
    method's default options) into ``<run>/compare/<features>/features.h5``, matches the pair into
    ``<run>/compare/<features>+<matcher>/matches.h5`` (both reused when unchanged, see the module doc) and verifies
    the matches with a fundamental matrix (:func:`verify_fundamental`).

    Args:
        progress: called in the calling thread as ``progress(step, done, total, detail)`` while it works: step
            ``"extraction"`` (``done`` of ``total`` = 2 images have features; ``detail`` the image just done, or
            "cached" for the first call, which counts the images found in the cache), then ``"matching"`` (0 or 1
            of 1 pair; ``detail`` as "a - b: M matches"), then ``"verification"`` (0 then 1 of 1; ``detail`` "K
            inliers" when done). Each step is announced with ``done`` = 0 before it starts. None (default): silent.

    Returns:
        ``{"features", "matcher", "keypoints0" float32 [N0, 2], "keypoints1" float32 [N1, 2],
        "matches" int32 [M, 2] (indices into keypoints0 / keypoints1), "scores" float32 [M] (the matcher's
        confidence), "inliers" bool [M] (verified), "counts": {"keypoints0", "keypoints1", "matches", "inliers"},
        "seconds": {"extraction", "matching", "verification"}`` (wall time of each step with
        ``time.perf_counter``; extraction and matching include loading the model and are small when cached),
        ``"reused": {"features", "matches"}`` (bool: nothing was computed), ``"geometry"`` (str, the two-view model
        and method), ``"threshold_px"`` (float, in original pixels)}``.

    Raises:
        ValueError: unknown features or matcher, a combination that cannot work (from
            :func:`~backend.matchers.check_combination`, naming the ones that can), a name that is not an image
            of the run, or the same image twice.
        MissingWeightsError: the method's weights are missing or fail their check.
        OSError: an image cannot be read.
    """
    from ..features.extract import read_features, run_features
    from ..matchers.match import read_matches, run_matching

    feat_dir, match_dir = compare_dirs(run_dir, features, matcher)
    check_combination(features, matcher)
    run_dir = Path(run_dir)
    for n in (name0, name1):
        _check_image(run_dir, n)
    if name0 == name1:
        raise ValueError("choose two different images")
    feat_dir.mkdir(parents=True, exist_ok=True)
    match_dir.mkdir(parents=True, exist_ok=True)
    feats_path, matches_path = feat_dir / "features.h5", match_dir / "matches.h5"

    def say(step: str, done: int, total: int, detail: str = "") -> None:
        if progress is not None:
            progress(step, int(done), int(total), str(detail))

    t0 = time.perf_counter()
    say("extraction", 0, 2)
    fcounts = run_features(run_dir, [name0, name1], FeaturesConfig(name=features, resize=int(resize),
                                                                  max_keypoints=int(max_keypoints)),
                           progress=lambda d, t, msg: say("extraction", d, t, msg), out_path=feats_path)
    t1 = time.perf_counter()
    say("matching", 0, 1)
    mcounts = run_matching(run_dir, [(name0, name1)], MatchingConfig(name=matcher), features_path=feats_path,
                           progress=lambda d, t, msg: say("matching", d, t, msg), out_path=matches_path)
    t2 = time.perf_counter()
    say("verification", 0, 1)
    f0, f1 = read_features(feats_path, name0), read_features(feats_path, name1)
    m, scores = read_matches(matches_path, name0, name1)
    m = np.asarray(m, dtype=np.int32).reshape(-1, 2)
    threshold = THRESHOLD_PX * max(_scale(f0["image_size"], resize), _scale(f1["image_size"], resize))
    t3 = time.perf_counter()
    inliers = verify_fundamental(f0["keypoints"], f1["keypoints"], m, threshold)
    t4 = time.perf_counter()
    say("verification", 1, 1, f"{int(inliers.sum())} inliers")
    return {
        "features": features,
        "matcher": matcher,
        "keypoints0": np.asarray(f0["keypoints"], np.float32),
        "keypoints1": np.asarray(f1["keypoints"], np.float32),
        "matches": m,
        "scores": np.asarray(scores, np.float32).reshape(-1),
        "inliers": inliers,
        "counts": {"keypoints0": int(len(f0["keypoints"])), "keypoints1": int(len(f1["keypoints"])),
                   "matches": int(len(m)), "inliers": int(inliers.sum())},
        "seconds": {"extraction": t1 - t0, "matching": t2 - t1, "verification": t4 - t3},
        "reused": {"features": fcounts["computed"] == 0, "matches": mcounts["computed"] == 0},
        "geometry": GEOMETRY,
        "threshold_px": float(threshold),
    }
