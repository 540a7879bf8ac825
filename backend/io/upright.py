"""Upright: which photos of a collection are turned by 90, 180 or 270 degrees against the others.

Learned matchers (LightGlue, LighterGlue) and the upright extractors are not rotation-invariant: a photo taken in
portrait next to landscape ones, or a scan turned on its side, gets few or no matches. This step finds, for every
photo, the quarter-turn that brings it in line with the majority of the collection; retrieval and feature
extraction then see the photo turned back, and the keypoints are mapped to the stored photo's pixels, so nothing
downstream (matching, COLMAP, exports, the pages) changes.

How (no learned weights): OpenCV SIFT (rotation-invariant, Lowe IJCV 2004) at :data:`SIDE` px, ratio-test matches
(Lowe's 0.8), a fundamental matrix by MAGSAC++ (OpenCV USAC); for every pair with enough inliers the circular mean of
the inliers' orientation differences gives the pair's relative in-plane rotation, rounded to a quarter-turn (kept
only within :data:`MAX_DEVIATION_DEG` of one). The quarter-turns of all photos are then solved on the pair graph:
a maximum spanning tree (weights: inliers x concentration of the orientation differences) propagates them, a few
rounds of weighted votes correct them, and each connected group is offset so that most of its photos are upright
(photos are mostly taken upright). A collection whose pairs turn by arbitrary angles (a camera orbiting an object
from above: nerf-synthetic lego, gum_scene2mesh) has no upright: when less than :data:`MIN_QUARTER_SHARE` of the
pair weight sits near a quarter-turn, nothing is turned. A turn is only kept when its vote is at least twice that of
"upright" and
:data:`MIN_VOTE`; every other photo stays as it is. This is the collection-wide vote that bench/NOTES.md
("Finding the upright rotation of turned photos") asked for; the same idea as the "rotation by matching" step of
IMC 2024 entries, without a learned orientation classifier.

Pairs: all pairs up to :data:`EXHAUSTIVE_UP_TO` photos, else each photo with its :data:`NEIGHBORS_BY_NAME`
neighbours in name order (consecutive frames) and :data:`RANDOM_PARTNERS` random others (seeded): at most
``NEIGHBORS_BY_NAME + RANDOM_PARTNERS`` pairs per photo, so the cost grows linearly (about 0.05 s per photo and
0.005 s per pair on 2 CPU cores).

Convention: ``turns`` k in {0, 1, 2, 3} is the number of quarter-turns *counter-clockwise* the photo's content
shows against the collection; :func:`turn_upright` turns it back (``k`` quarter-turns clockwise).
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from ..utils.graphs import maximum_spanning_forest_of_edges, tree_walk
from .decode import load_rgb

SIDE = 640  # px, long side the SIFT pass sees
NUM_FEATURES = 1024
RATIO = 0.8
MIN_INLIERS = 20
MAX_DEVIATION_DEG = 20.0
MIN_VOTE = 40.0  # inliers x concentration a turn needs (about two good pairs)
MIN_QUARTER_SHARE = 0.75  # of the pair weight within MAX_DEVIATION_DEG of a quarter-turn, or nothing is turned
EXHAUSTIVE_UP_TO = 60
NEIGHBORS_BY_NAME = 6
RANDOM_PARTNERS = 14


def turn_upright(image: np.ndarray, turns: int) -> np.ndarray:
    """The image turned back by ``turns`` quarter-turns clockwise (contiguous copy). ``image``: [H, W] or
    [H, W, C], any dtype; ``turns`` in {0, 1, 2, 3} (see the module docstring)."""
    return np.ascontiguousarray(np.rot90(image, -(int(turns) % 4)))


def keypoints_from_upright(kpts: np.ndarray, turns: int, size: tuple[int, int]) -> np.ndarray:
    """Map keypoints [N, 2] float (x, y), pixel centres at integers, found in ``turn_upright(image, turns)`` back
    to ``image``, whose size is ``size`` (W, H) px. Exact for pixel centres (a turn of the pixel grid)."""
    k = int(turns) % 4
    kpts = np.asarray(kpts, dtype=np.float32)
    if k == 0 or len(kpts) == 0:
        return kpts.copy()
    w, h = size
    x, y = kpts[:, 0], kpts[:, 1]
    # U = rot90(I, -k): k = 1 is a clockwise turn, U[y', x'] = I[H-1-x', y']
    if k == 1:
        out = np.stack([y, h - 1 - x], 1)
    elif k == 2:
        out = np.stack([w - 1 - x, h - 1 - y], 1)
    else:  # k == 3: a counter-clockwise turn, U[y', x'] = I[x', W-1-y']
        out = np.stack([w - 1 - y, x], 1)
    return out.astype(np.float32)


def orientations_from_upright(oris: np.ndarray, turns: int) -> np.ndarray:
    """Keypoint orientations [N] (radians, atan2(dy, dx) in pixel coordinates, y down) found in the turned-back
    image, in the stored image's frame."""
    return (np.asarray(oris, np.float32) - (int(turns) % 4) * np.float32(np.pi / 2)).astype(np.float32)


def _pairs(n: int, seed: int = 0) -> list[tuple[int, int]]:
    if n <= EXHAUSTIVE_UP_TO:
        return list(itertools.combinations(range(n), 2))
    rng = np.random.default_rng(seed)
    out = set()
    for i in range(n):
        for d in range(1, NEIGHBORS_BY_NAME + 1):
            if i + d < n:
                out.add((i, i + d))
        for j in rng.choice(n, size=min(RANDOM_PARTNERS, n - 1), replace=False):
            if j != i:
                out.add((min(i, j), max(i, j)))
    return sorted(out)


def _features(path: Path):
    import cv2

    img, sx, sy = load_rgb(path, SIDE)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    kp, desc = cv2.SIFT_create(nfeatures=NUM_FEATURES).detectAndCompute(gray, None)
    if desc is None or len(kp) < 8:
        return None
    return (np.array([k.pt for k in kp], np.float32), np.radians(np.array([k.angle for k in kp], np.float32)),
            desc)


def _relative_turn(fa, fb, matcher) -> tuple[int, float, float] | None:
    """(quarter-turns of b's content against a's, weight, degrees off the nearest quarter-turn) or None."""
    import cv2

    pa, oa, da = fa
    pb, ob, db = fb
    knn = matcher.knnMatch(da, db, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < MIN_INLIERS:
        return None
    ia = np.array([g.queryIdx for g in good])
    ib = np.array([g.trainIdx for g in good])
    try:
        F, mask = cv2.findFundamentalMat(pa[ia], pb[ib], cv2.USAC_MAGSAC, 3.0, 0.999, 2000)
    except cv2.error:  # degenerate sample sets
        return None
    if F is None or mask is None:
        return None
    inl = mask.ravel().astype(bool)
    if inl.sum() < MIN_INLIERS:
        return None
    d = ob[ib[inl]] - oa[ia[inl]]  # cv2 angles grow clockwise on screen: b turned CCW by q shows -q here
    s, c = np.sin(d).mean(), np.cos(d).mean()
    ang = np.degrees(np.arctan2(s, c)) % 360
    q = int(np.round(ang / 90)) % 4
    return (-q) % 4, float(inl.sum() * np.hypot(s, c)), float(abs(((ang - 90 * q) + 180) % 360 - 180))


def solve_turns(names: list[str], edges: list[tuple[str, str, int, float]]) -> dict[str, dict]:
    """Quarter-turns per photo from pairwise relative turns.

    Args:
        names: the photos.
        edges: ``(a, b, r, w)``: b's content is turned ``r`` quarter-turns counter-clockwise against a's, with
            weight ``w`` > 0.

    Returns ``{name: {"turns": k, "votes": [v0, v1, v2, v3]}}``: ``votes[j]`` is the weight of the pairs that
    agree with ``turns = j`` given the other photos' turns; ``turns`` is 0 unless its vote is at least twice
    that of 0 and at least :data:`MIN_VOTE`.
    """
    adj: dict[str, list] = defaultdict(list)
    index = {n: i for i, n in enumerate(names)}
    turn = {}
    for a, b, r, w in edges:
        adj[a].append((b, r % 4, w))
        adj[b].append((a, (-r) % 4, w))
        turn[index[a], index[b]], turn[index[b], index[a]] = r % 4, (-r) % 4
    # the strongest pairs decide first: turns propagate along the maximum spanning forest, from each part's
    # most connected photo (a graph of the pairs: memory linear in them, not N x N)
    forest = maximum_spanning_forest_of_edges(len(names), [(index[a], index[b]) for a, b, _, _ in edges],
                                              [w for _, _, _, w in edges])
    t: dict[str, int] = {}
    groups = []
    for root in sorted(names, key=lambda n: -sum(w for _, _, w in adj[n])):
        if root in t:
            continue
        t[root] = 0
        group = [root]
        for a, b in tree_walk(len(names), forest, index[root]):
            t[names[b]] = (t[names[a]] + turn[a, b]) % 4
            group.append(names[b])
        groups.append(group)

    def votes(n):
        v = np.zeros(4)
        for j, r, w in adj[n]:
            v[(t[j] - r) % 4] += w
        return v

    for _ in range(5):
        changed = False
        for n in names:
            if adj[n]:
                k = int(votes(n).argmax())
                changed |= k != t[n]
                t[n] = k
        if not changed:
            break
    for group in groups:
        off = int(np.bincount([t[n] for n in group], minlength=4).argmax())
        for n in group:
            t[n] = (t[n] - off) % 4
    out = {}
    for n in names:
        v = votes(n)
        k = t[n]
        if k and not (v[k] >= 2 * v[0] and v[k] >= MIN_VOTE):
            k = 0
        out[n] = {"turns": k, "votes": [round(float(x), 1) for x in v]}
    return out


def estimate_upright(paths: list[Path], progress: Callable[[int, int, str], None] | None = None,
                     cancel: threading.Event | None = None) -> dict[str, dict]:
    """Find the quarter-turn of every photo against the collection (see the module docstring).

    Args:
        paths: the photos (any format :func:`backend.io.images.load_rgb` reads); keys of the result are their
            file names.
        progress: ``progress(done, total, message)``, called per photo and per block of pairs.
        cancel: when set, stops with InterruptedError.

    Returns ``{name: {"turns": k, "votes": [4 floats], "quarter_share": s}}`` (see :func:`solve_turns`):
    ``quarter_share`` is the share of the verified pairs' weight whose relative turn is within
    :data:`MAX_DEVIATION_DEG` of a quarter-turn; below :data:`MIN_QUARTER_SHARE` (views that turn continuously, as
    a camera orbiting an object from above) every ``turns`` is 0.

    Raises:
        InterruptedError: ``cancel`` was set.
        OSError: a photo cannot be read.
    """
    import cv2

    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    pairs = _pairs(len(paths))
    total = len(paths) + len(pairs)
    feats = []
    for i, p in enumerate(paths):
        if cancel is not None and cancel.is_set():
            raise InterruptedError("cancelled")
        feats.append(_features(p))
        if progress:
            progress(i + 1, total, f"upright: {p.name}")
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    edges, off_quarter = [], []
    for k, (i, j) in enumerate(pairs):
        if cancel is not None and cancel.is_set():
            raise InterruptedError("cancelled")
        if feats[i] is not None and feats[j] is not None:
            r = _relative_turn(feats[i], feats[j], matcher)
            if r is not None:
                (edges if r[2] <= MAX_DEVIATION_DEG else off_quarter).append((names[i], names[j], *r[:2]))
        if progress and (k % 50 == 49 or k == len(pairs) - 1):
            progress(len(paths) + k + 1, total, "upright: pairs")
    on = sum(e[3] for e in edges)
    share = on / (on + sum(e[3] for e in off_quarter)) if edges else 0.0
    out = solve_turns(names, edges)
    if share < MIN_QUARTER_SHARE:
        # the views turn continuously (a camera orbiting an object: lego, gum): no quarter-turn is "the" upright one
        for v in out.values():
            v["turns"] = 0
    for v in out.values():
        v["quarter_share"] = round(share, 3)
    return out
