"""Stage "scenes": split a photo collection into scenes and outliers from its verified pairs (the Image Matching
Challenge 2025 task: a dataset mixes several scenes and stray photos; cluster, mark outliers, map each scene).

Descriptor similarity alone cannot do it: two unrelated photos can look alike, and matchers return matches between
them. The split rests on two-view geometry (``two_view.h5`` of the verification stage), by this rule:

1. The pair graph: one node per image, one edge per verified pair (a two-view geometry with at least
   ``min_num_inliers`` inliers, 15 by default).
2. An edge is *supported* when it has at least ``strong_inliers`` inliers, or when its two images share a
   neighbour (the pair closes a triangle of verified pairs). A weak pair that closes no triangle is cut: that is
   what a false match between two scenes looks like. Measured on the ``five_scenes`` mixture (bench/mixtures.py,
   fast preset, 80 photos, 394 pairs): all 4 verified pairs across scenes had 15-18 inliers and closed no
   triangle, the one between two noise images 26; the 307 pairs within scenes had a median of 98 inliers.
3. Groups are the connected parts of the supported edges; a group of at least ``min_scene_size`` images is mapped
   as a scene, the images of smaller groups are outliers (each with its reason).
4. Cross-check by the mapper (:func:`backend.mapping.scene_mapping.map_scenes`): every model of a group with at
   least ``min_scene_size`` registered images becomes a scene of its own (the mapper found no consistent way to
   join them); a group's images that no model holds stay unregistered in its largest scene; a group that gives no
   model stays a scene without poses (its photos belong together; the IMC 2025 metric scores it as a cluster).

``mode="single"`` skips the split: every image belongs to one scene, mapped as one (the behaviour before scenes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from ..utils.graphs import connected_components

SCENES_JSON = "scenes.json"
OUTLIERS = "outliers"  # the IMC 2025 scene name of outlier images


@dataclass
class SceneSplit:
    """The groups of a collection before mapping.

    Attributes:
        groups: image names per group (each >= ``min_scene_size``), largest first, names sorted.
        outliers: ``[{"image", "reason"}]`` for images in no group.
        cut_pairs: ``[{"images": [a, b], "inliers": n}]``: verified pairs cut by rule 2.
        edges: ``[{"images": [a, b], "inliers": n}]``: every verified pair (the graph the app draws).
        mode, min_scene_size, strong_inliers: the settings used.
    """

    groups: list[list[str]]
    outliers: list[dict]
    cut_pairs: list[dict] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list)
    mode: str = "auto"
    min_scene_size: int = 3
    strong_inliers: int = 60

    def to_dict(self) -> dict:
        return {"mode": self.mode, "min_scene_size": self.min_scene_size, "strong_inliers": self.strong_inliers,
                "groups": self.groups, "outliers": self.outliers, "cut_pairs": self.cut_pairs, "edges": self.edges}

    @classmethod
    def from_dict(cls, d: dict) -> "SceneSplit":
        return cls(d["groups"], d["outliers"], d.get("cut_pairs", []), d.get("edges", []), d.get("mode", "auto"),
                   d.get("min_scene_size", 3), d.get("strong_inliers", 60))


def read_verified_pairs(run_dir: Path) -> dict[tuple[str, str], int]:
    """Inlier counts of the verified pairs in ``two_view.h5``: {(image0, image1): inliers}, pairs with > 0
    inliers only (the file also records pairs that failed verification, with none)."""
    out = {}
    p = Path(run_dir) / "two_view.h5"
    if not p.exists():
        return out
    with h5py.File(p, "r") as f:
        for a in f:
            for b in f[a]:
                n = int(f[a][b]["inliers"].shape[0])
                if n > 0:
                    out[(a, b)] = n
    return out


def split_scenes(names: list[str], verified: dict[tuple[str, str], int], *, mode: str = "auto",
                 min_scene_size: int = 3, strong_inliers: int = 60) -> SceneSplit:
    """Groups and outliers of a collection by the rule in the module docstring.

    Args:
        names: every image of the run.
        verified: {(image0, image1): inlier count} of the verified pairs (:func:`read_verified_pairs`).
        mode: ``"auto"`` (split) or ``"single"`` (one group of every image).
        min_scene_size: smallest group mapped as a scene (>= 2).
        strong_inliers: a pair with at least this many inliers needs no triangle to be kept.

    Returns:
        :class:`SceneSplit`.

    Raises:
        ValueError: an unknown mode or ``min_scene_size`` < 2.
    """
    if mode not in ("auto", "single"):
        raise ValueError(f"unknown scenes mode {mode!r}: use auto (find the scenes) or single (one scene)")
    if min_scene_size < 2:
        raise ValueError(f"min_scene_size must be at least 2 (got {min_scene_size}): a scene needs two photos")
    names = list(names)
    known = set(names)
    edges = {tuple(sorted(p)): n for p, n in verified.items() if p[0] in known and p[1] in known and p[0] != p[1]}
    edge_list = [{"images": list(p), "inliers": n} for p, n in sorted(edges.items())]
    if mode == "single":
        return SceneSplit([sorted(names)], [], [], edge_list, mode, min_scene_size, strong_inliers)
    nbrs: dict[str, set[str]] = {n: set() for n in names}
    for a, b in edges:
        nbrs[a].add(b)
        nbrs[b].add(a)
    kept, cut = [], []
    for (a, b), n in sorted(edges.items()):
        if n >= strong_inliers or nbrs[a] & nbrs[b]:
            kept.append((a, b))
        else:
            cut.append({"images": [a, b], "inliers": n})
    index = {n: i for i, n in enumerate(names)}
    comps = [[names[i] for i in c] for c in connected_components(len(names), ((index[a], index[b]) for a, b in kept))]
    groups, outliers = [], []
    for members in comps:
        if len(members) >= min_scene_size:
            groups.append(sorted(members))
            continue
        for n in members:
            weak = [c for c in cut if n in c["images"]]
            if not nbrs[n]:
                reason = "no verified pair with any other photo"
            elif len(members) > 1 and not weak:
                reason = (f"verified pairs only within a group of {len(members)} photos "
                          f"(a scene needs at least {min_scene_size})")
            elif weak:
                best = max(weak, key=lambda c: c["inliers"])
                other = best["images"][1] if best["images"][0] == n else best["images"][0]
                reason = (f"only weak pairs: the best, with {other}, has {best['inliers']} inliers (under "
                          f"{strong_inliers}) and closes no triangle with a third photo")
            else:
                reason = f"in a group of {len(members)} photos (a scene needs at least {min_scene_size})"
            outliers.append({"image": n, "reason": reason})
    groups.sort(key=lambda g: (-len(g), g[0]))
    outliers.sort(key=lambda o: o["image"])
    return SceneSplit(groups, outliers, cut, edge_list, mode, min_scene_size, strong_inliers)


def write_split(run_dir: Path, split: SceneSplit) -> None:
    """Write ``scenes.json`` (the groups before mapping)."""
    (Path(run_dir) / SCENES_JSON).write_text(json.dumps(split.to_dict(), indent=1))


def read_split(run_dir: Path) -> SceneSplit | None:
    """``scenes.json`` of a run, or None when the scenes stage has not run."""
    p = Path(run_dir) / SCENES_JSON
    return SceneSplit.from_dict(json.loads(p.read_text())) if p.exists() else None


def run_scenes(run_dir: Path, names: list[str], cfg, report) -> dict:
    """The scenes stage: read ``two_view.h5``, split (``cfg``: :class:`backend.config.ScenesConfig`), write
    ``scenes.json``. Returns counts ``{"groups", "group_sizes", "outliers", "cut_pairs"}``."""
    report(0, 1, "grouping photos by their verified pairs")
    split = split_scenes(names, read_verified_pairs(run_dir), mode=cfg.mode, min_scene_size=cfg.min_scene_size,
                         strong_inliers=cfg.strong_inliers)
    write_split(run_dir, split)
    report(1, 1, f"{len(split.groups)} group(s), {len(split.outliers)} outlier(s)")
    return {"groups": len(split.groups), "group_sizes": [len(g) for g in split.groups],
            "outliers": len(split.outliers), "cut_pairs": len(split.cut_pairs)}
