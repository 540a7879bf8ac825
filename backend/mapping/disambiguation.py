"""Folded models: find the two groups of cameras that a symmetric or repeated structure has put on top of each other.

A building with the same facade on two sides (church's tower has one clock face on two opposite sides) gives verified
pairs that are geometrically consistent but wrong: the mapper then places the cameras of one side onto the other and
the model is "folded". Each side still sees structure of its own (the houses behind it, the street): in a folded model
the 3D points that only one group of cameras observes project into the other group's photos exactly where those
photos observe different 3D points of their own. This is the conflicting-observation test of Heinly, Dunn & Frahm
("Correcting for Duplicate Scene Structure in Sparse 3D Reconstruction", ECCV 2014), here on a pycolmap model:

1. the camera graph of the model (edge weight: 3D points two images both observe) and its maximum spanning tree;
2. every tree edge cut gives a candidate split into groups G1, G2; points observed only by G1 (or only by G2) are the
   groups' *unique* points, points observed by both the *shared* (possibly duplicate) structure;
3. for every co-visible pair (i in G1, j in G2): the unique points of i's group that i observes and that project into
   j (in front of it, inside the frame) are *expected*; those that land within ``radius`` px of an observation of a
   point unique to j's group are *conflicting*, and the same from j into i;
4. a split's conflict = conflicting / expected over all its co-visible pairs across it. Unmatched neighbours are
   common in any model (dense keypoints, wide baselines), so the same is measured inside the groups (points of one
   photo that the other does not observe, landing on points that only the other observes); the *excess* is the
   conflict across minus the conflict inside. A correct model has none (fox, temple, lego, reichstag, gum: -0.4 to
   0.03); church's folded model 0.16. The split with the highest excess is reported; at ``min_excess`` it is a fold.

The mapping stage then drops the verified pairs between the two groups and maps again, which gives two correct models
instead of one folded one (:func:`backend.mapping.unfold.unfold`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..utils.graphs import maximum_spanning_forest, reachable

MIN_EXCESS = 0.08  # conflict across a split minus conflict inside its groups that makes a fold (bench/NOTES.md)
MIN_EXPECTED = 50  # at least this many expected unique points over the split's pairs, else no evidence either way
MIN_GROUP = 3  # each group of a split holds at least this many registered images
RADIUS = 0.05  # a projected point lands on an observation within this share of the image's longer side
MAX_POINTS = 500  # observations per image projected into the others
MAX_ROUNDS = 5  # passes of the image-by-image refinement of the best split
MIN_SHARED = 10  # a pair of images is co-visible when they observe at least this many 3D points in common


@dataclass
class SplitScore:
    """One candidate split of a model's registered images (names) and its conflict."""

    group0: list[str]
    group1: list[str]
    conflict: float  # conflicting / expected, 0..1
    expected: int  # unique points that project into a photo of the other group
    conflicting: int  # of those, the ones that land on the other group's own unique points
    pairs: int  # co-visible pairs across the split
    within: float = 0.0  # the same for pairs inside a group (points of one photo not observed by the other)

    @property
    def excess(self) -> float:
        """Conflict across the split above the conflict inside its groups."""
        return self.conflict - self.within

    def to_dict(self) -> dict:
        return {"group0": self.group0, "group1": self.group1, "conflict": round(self.conflict, 3),
                "within": round(self.within, 3), "excess": round(self.excess, 3),
                "expected": self.expected, "conflicting": self.conflicting, "pairs": self.pairs}


@dataclass
class FoldReport:
    """The result of :func:`find_fold`: the best split, whether it is a fold, and the candidates tried."""

    best: SplitScore | None
    folded: bool
    candidates: list[SplitScore] = field(default_factory=list)
    min_excess: float = MIN_EXCESS

    def to_dict(self) -> dict:
        return {"folded": self.folded, "min_excess": self.min_excess,
                "best": self.best.to_dict() if self.best else None,
                "candidates": len(self.candidates)}


def _model_arrays(rec):
    """Per registered image: name, observed point ids int64 [M], their pixels float64 [M, 2]; the points' xyz
    float64 [P, 3] by dense index, and the observers as a bool matrix [P, N]."""
    ids = sorted(int(i) for i in rec.reg_image_ids())
    names = [rec.images[i].name for i in ids]
    pid_list = sorted(int(p) for p in rec.points3D)
    dense = {p: k for k, p in enumerate(pid_list)}
    xyz = np.array([rec.points3D[p].xyz for p in pid_list], dtype=np.float64).reshape(-1, 3)
    obs_pid, obs_xy = [], []
    V = np.zeros((len(pid_list), len(ids)), dtype=bool)
    for col, iid in enumerate(ids):
        im = rec.images[iid]
        pts, xy = [], []
        for p2 in im.points2D:
            if p2.has_point3D():
                pts.append(dense[int(p2.point3D_id)])
                xy.append(p2.xy)
        pts = np.asarray(pts, dtype=np.int64)
        V[pts, col] = True
        obs_pid.append(pts)
        obs_xy.append(np.asarray(xy, dtype=np.float64).reshape(-1, 2))
    return ids, names, xyz, V, obs_pid, obs_xy


def _project(rec, image_id: int, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels float64 [M, 2] of world points ``xyz`` [M, 3] in an image, and a bool [M] mask of those in front of
    the camera and inside its frame."""
    im = rec.images[image_id]
    cam = rec.cameras[im.camera_id]
    pose = im.cam_from_world()
    R = np.asarray(pose.rotation.matrix())
    Xc = xyz @ R.T + np.asarray(pose.translation)
    front = Xc[:, 2] > 1e-6
    uv = np.full((len(xyz), 2), -1.0)
    if front.any():
        uv[front] = np.asarray(cam.img_from_cam(Xc[front], check_cheirality=False)).reshape(-1, 2)
    inside = front & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] < cam.height)
    return uv, inside


def find_fold(rec, radius: float = RADIUS, min_excess: float = MIN_EXCESS, min_group: int = MIN_GROUP,
              min_shared: int = MIN_SHARED, min_expected: int = MIN_EXPECTED, max_points: int = MAX_POINTS
              ) -> FoldReport:
    """Find the split of a model's registered images into two groups whose own structure conflicts most, and say
    whether it is a fold (after Heinly et al., ECCV 2014; see the module docstring for the score).

    Args:
        rec: a ``pycolmap.Reconstruction`` (read only).
        radius: a projected point "lands on" an observation within this share of the image's longer side.
        min_excess: a split whose conflict across exceeds the conflict inside its groups by this much is a fold.
        min_group: smallest group of a candidate split (registered images).
        min_shared: two images are co-visible (their pair is scored) when they observe this many common 3D points.
        min_expected: a split with fewer expected unique points over its pairs is not scored.
        max_points: observations per image projected into the others (a seeded sample; bounds the cost).

    Returns:
        :class:`FoldReport` with the best split (names of each group), ``folded``, and every candidate scored.
    """
    ids, names, xyz, V, obs_pid, obs_xy = _model_arrays(rec)
    n = len(ids)
    if n < 2 * min_group or len(xyz) == 0:
        return FoldReport(None, False, [], min_excess)
    Vf = V.astype(np.float32)
    shared = Vf.T @ Vf  # [N, N] common points
    np.fill_diagonal(shared, 0)
    covis = np.argwhere(np.triu(shared >= min_shared, 1))

    # per ordered co-visible pair (i, j): i's points (a seeded sample) that project into j, and the points j observes
    # within the radius of each; flattened over all pairs
    rng = np.random.default_rng(0)
    sample = [p if len(p) <= max_points else np.sort(rng.choice(p, max_points, replace=False)) for p in obs_pid]
    pi, pj, pts_all, pair_of, nsrc, ndst = [], [], [], [], [], []
    offset = 0
    for a, b in covis:
        for i, j in ((a, b), (b, a)):
            pts = sample[i]
            uv, inside = _project(rec, ids[j], xyz[pts])
            pts, uv = pts[inside], uv[inside]
            unseen = ~V[pts, j]  # only points j does not observe can count (see _Projections)
            pts, uv = pts[unseen], uv[unseen]
            if not len(obs_xy[j]) or not len(pts):
                continue
            cam = rec.cameras[rec.images[ids[j]].camera_id]
            src, dst = _within(uv, obs_xy[j], radius * max(cam.width, cam.height))
            other = ~V[obs_pid[j][dst], i]  # and only landing on points i does not observe
            src, dst = src[other], dst[other]
            e = len(pi)
            pi.append(i)
            pj.append(j)
            pts_all.append(pts)
            pair_of.append(np.full(len(pts), e, dtype=np.int64))
            nsrc.append(src + offset)
            ndst.append(obs_pid[j][dst])
            offset += len(pts)
    if not pi:
        return FoldReport(None, False, [], min_excess)
    flat = _Projections(np.asarray(pi), np.asarray(pj), np.concatenate(pts_all), np.concatenate(pair_of),
                        np.concatenate(nsrc), np.concatenate(ndst), V)

    # candidate splits: cut one edge of the maximum spanning tree of the camera graph
    edges = maximum_spanning_forest(shared)
    candidates: list[SplitScore] = []
    seen = set()
    for k in range(len(edges)):
        g1 = reachable(n, edges[:k] + edges[k + 1:], edges[k][0])  # the side of edge k's first end, cut
        if min(g1.sum(), (~g1).sum()) < min_group:
            continue
        key = tuple(np.flatnonzero(g1 if g1[0] else ~g1))
        if key in seen:
            continue
        seen.add(key)
        candidates.append(flat.score(g1, names))
    # and the best split refined by moving single images across while the excess rises
    scored = [c for c in candidates if c.expected >= min_expected]
    best = max(scored, key=lambda c: c.excess) if scored else None
    if best is not None:
        g1 = np.array([nm in set(best.group0) for nm in names])
        improved, rounds = True, 0
        while improved and rounds < MAX_ROUNDS:
            improved, rounds = False, rounds + 1
            for m in range(n):
                g = g1.copy()
                g[m] = ~g[m]
                if min(g.sum(), (~g).sum()) < min_group:
                    continue
                s = flat.score(g, names)
                if s.expected >= min_expected and s.excess > best.excess + 1e-6:
                    best, g1, improved = s, g, True
    folded = best is not None and best.excess >= min_excess
    return FoldReport(best, folded, candidates, min_excess)


class _Projections:
    """The projections of :func:`find_fold`, flattened: ordered pair ``e`` = (pi[e], pj[e]); projected point ``k``
    is 3D point ``pts[k]`` of pair ``pair[k]``; neighbour ``m`` says projected point ``nsrc[m]`` lands near an
    observation of 3D point ``ndst[m]`` in the pair's second image."""

    def __init__(self, pi, pj, pts, pair, nsrc, ndst, V):
        # :func:`find_fold` keeps only the projected points the pair's second photo does not observe and the
        # neighbours the first photo does not observe: across a split a point j observes is not unique to i's group
        # (nor one i observes to j's), and inside a group the test asks for exactly these. So :meth:`score`, run for
        # every candidate split and refinement step, counts on those alone (the same counts as on all of them).
        self.pi, self.pj, self.pts, self.pair, self.nsrc, self.ndst, self.V = pi, pj, pts, pair, nsrc, ndst, V
        self.Vf = V.astype(np.float32)
        self.n_obs = self.Vf.sum(1)
        # inside a group every kept neighbour counts, whatever the split: a point lands on one or not
        self.lands = np.bincount(self.nsrc, minlength=len(self.pts)) > 0

    def score(self, g1: np.ndarray, names: list[str]) -> SplitScore:
        """Conflict of the split ``g1`` (bool [N], True = group 0)."""
        c0 = self.Vf @ g1.astype(np.float32)  # observers of each point in group 0
        in0, in1 = c0 > 0, (self.n_obs - c0) > 0
        uniq0, uniq1 = in0 & ~in1, in1 & ~in0
        cross_e = g1[self.pi] != g1[self.pj]
        cross = cross_e[self.pair]  # per projected point
        gi0 = g1[self.pi][self.pair]  # the projecting image is in group 0
        mine_cross = cross & np.where(gi0, uniq0[self.pts], uniq1[self.pts])
        theirs_cross = np.where(gi0[self.nsrc], uniq1[self.ndst], uniq0[self.ndst])
        hit_c = np.zeros(len(self.pts), dtype=bool)
        hit_c[self.nsrc[mine_cross[self.nsrc] & theirs_cross]] = True
        mine_within = ~cross  # (every point kept is one the other photo does not observe, see __init__)
        hit_w = mine_within & self.lands
        expected, conflicting = int(mine_cross.sum()), int(hit_c.sum())
        w_exp, w_hit = int(mine_within.sum()), int(hit_w.sum())
        pairs = {(min(a, b), max(a, b)) for a, b, c in zip(self.pi.tolist(), self.pj.tolist(), cross_e.tolist()) if c}
        return SplitScore(
            group0=[nm for nm, g in zip(names, g1) if g], group1=[nm for nm, g in zip(names, g1) if not g],
            conflict=conflicting / expected if expected else 0.0, expected=expected, conflicting=conflicting,
            pairs=len(pairs), within=w_hit / w_exp if w_exp else 0.0)


def _within(uv: np.ndarray, xy: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """All (index into ``uv`` [M, 2], index into ``xy`` [K, 2]) pairs closer than ``r`` px, as two int64 arrays
    (a grid of r-sized cells: only the 3 x 3 cells around each query are compared)."""
    cell = np.floor(xy / r).astype(np.int64)
    key = cell[:, 0] * 1_000_003 + cell[:, 1]
    order = np.argsort(key, kind="stable")
    skey = key[order]
    q = np.floor(uv / r).astype(np.int64)
    src, dst = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            k = (q[:, 0] + dx) * 1_000_003 + (q[:, 1] + dy)
            lo = np.searchsorted(skey, k, "left")
            hi = np.searchsorted(skey, k, "right")
            cnt = hi - lo
            if not cnt.any():
                continue
            s_idx = np.repeat(np.arange(len(uv)), cnt)
            offs = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            d_idx = order[np.repeat(lo, cnt) + offs]
            close = ((uv[s_idx] - xy[d_idx]) ** 2).sum(1) < r * r
            src.append(s_idx[close])
            dst.append(d_idx[close])
    if not src:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(src).astype(np.int64), np.concatenate(dst).astype(np.int64)
