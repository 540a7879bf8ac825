"""Retrieval recall against ground-truth co-visibility (issue 11): how many of the pairs that see the same part of
the scene each pair-selection method finds.

    python -m bench.retrieval_recall [--runs fast] [--scenes ...] [--k 5,8,12,20]

Reads the runs of a finished ``python -m bench`` (``bench/out/runs/<scene>__<config>/``: ``retrieval.h5`` for the
global descriptor, ``features.h5`` for the local descriptors, ``pairs.txt`` for the pairs the run matched) and
writes ``bench/out/retrieval_recall.json``; ``python -m bench --report-only`` puts the table in RESULTS.md.

Ground-truth co-visibility (a stated rule, no depth maps needed): every camera's frustum is cut at the depth of the
scene centre (the point closest to all optical axes, least squares); a 16 x 16 grid of its pixels is lifted to
that depth and projected into the other camera. Two images are co-visible when on average over both directions at
least 30 % of the grid lands inside the other image, in front of it, and their optical axes differ by at most
60 degrees (opposite sides of an object share a frustum, not a surface). Object-centric captures (fox, gum) fit this
well; for a landmark photographed from very different distances it is an approximation.

Methods (no new weights): the global descriptor's top-k (EfficientNet-Lite0 GeM here, cosine similarity); VLAD
(Jégou et al., CVPR 2010) of the local descriptors the run already extracted, with a 32-word k-means vocabulary
learnt on the collection itself (intra-normalised, signed square root, L2); their mean similarity; and the pairs
the run actually matched (top-k plus exhaustive matching of small collections and bridges between groups).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .__main__ import REPO, scene_dir
from .internet import read_gt

OUT = REPO / "bench" / "out"


def covisibility(gt: dict, sizes: dict[str, tuple[int, int]], names: list[str], grid: int = 16,
                 min_overlap: float = 0.3, max_angle_deg: float = 60.0, return_overlap: bool = False):
    """bool [N, N]: the ground-truth co-visible pairs of ``names`` (see the module docstring); with
    ``return_overlap`` also the symmetric overlap float [N, N] (mean of the two directions' grid shares).

    ``gt``: name -> (R [3, 3] world-to-camera, t [3], K [3, 3]); ``sizes``: name -> (width, height) px."""
    n = len(names)
    R = np.stack([gt[x][0] for x in names])
    t = np.stack([gt[x][1] for x in names])
    K = np.stack([gt[x][2] for x in names])
    C = -np.einsum("nji,nj->ni", R, t)  # camera centres
    axis = R[:, 2, :]  # optical axes in world coordinates
    # the point closest to every optical axis: sum (I - a a^T) (P - C) = 0
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, a in zip(C, axis):
        P = np.eye(3) - np.outer(a, a)
        A += P
        b += P @ c
    centre = np.linalg.lstsq(A, b, rcond=None)[0]
    depth = np.maximum(np.einsum("ni,ni->n", centre - C, axis), 1e-3 * np.linalg.norm(C - centre, axis=1).max())
    frac = np.zeros((n, n))
    for i, name in enumerate(names):
        w, h = sizes[name]
        u, v = np.meshgrid(np.linspace(0, w - 1, grid), np.linspace(0, h - 1, grid))
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
        rays = R[i].T @ np.linalg.inv(K[i]) @ pix  # world directions, axial component 1
        X = C[i][:, None] + rays * depth[i]  # [3, G]
        for j, other in enumerate(names):
            if i == j:
                continue
            x = K[j] @ (R[j] @ X + t[j][:, None])
            z = x[2]
            ok = z > 1e-9
            uu, vv = x[0] / np.where(ok, z, 1), x[1] / np.where(ok, z, 1)
            W, H = sizes[other]
            frac[i, j] = np.mean(ok & (uu >= 0) & (uu <= W - 1) & (vv >= 0) & (vv <= H - 1))
    angle = np.degrees(np.arccos(np.clip(axis @ axis.T, -1, 1)))
    cov = ((frac + frac.T) / 2 >= min_overlap) & (angle <= max_angle_deg)
    np.fill_diagonal(cov, False)
    return (cov, (frac + frac.T) / 2) if return_overlap else cov


def vlad(descs: list[np.ndarray], words: int = 32, iters: int = 12, seed: int = 0) -> np.ndarray:
    """float32 [N, words * D]: VLAD of each image's local descriptors (``descs``: N arrays [M_i, D]) with a
    k-means vocabulary learnt on (a sample of) all of them; intra-normalised, signed square root, L2-normalised."""
    rng = np.random.default_rng(seed)
    allx = np.concatenate([d for d in descs if len(d)]).astype(np.float32)
    sample = allx[rng.choice(len(allx), size=min(len(allx), 50000), replace=False)]
    cent = sample[rng.choice(len(sample), size=words, replace=False)].copy()
    for _ in range(iters):
        lab = np.argmax(sample @ cent.T - 0.5 * (cent ** 2).sum(1), axis=1)
        for k in range(words):
            m = lab == k
            cent[k] = sample[m].mean(0) if m.any() else sample[rng.integers(len(sample))]
    out = []
    for d in descs:
        v = np.zeros((words, allx.shape[1]), np.float32)
        if len(d):
            d = d.astype(np.float32)
            lab = np.argmax(d @ cent.T - 0.5 * (cent ** 2).sum(1), axis=1)
            np.add.at(v, lab, d - cent[lab])
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        v = np.sign(v) * np.sqrt(np.abs(v))
        v = v.ravel()
        out.append(v / max(np.linalg.norm(v), 1e-12))
    return np.stack(out)


def topk_pairs(sim: np.ndarray, k: int) -> np.ndarray:
    """bool [N, N], symmetric: each image's ``k`` most similar other images."""
    s = sim.copy()
    np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1)[:, :k]
    sel = np.zeros_like(s, dtype=bool)
    sel[np.repeat(np.arange(len(s)), idx.shape[1]), idx.ravel()] = True
    return sel | sel.T


def measure(run: Path, scene: str, ks: list[int]) -> dict:
    import h5py
    from PIL import Image

    from backend.features.extract import read_features

    d = scene_dir(scene)
    with h5py.File(run / "retrieval.h5", "r") as f:
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in f["names"][()]]
        sim_global = f["similarity"][()].astype(np.float64)
    gt = read_gt(d / "gt.csv")
    keep = [i for i, x in enumerate(names) if x in gt]
    names = [names[i] for i in keep]
    sim_global = sim_global[np.ix_(keep, keep)]
    sizes = {x: Image.open(d / "images" / x).size for x in names}
    cov = covisibility(gt, sizes, names)
    descs = [read_features(run / "features.h5", x)["descriptors"] for x in names]
    sim_vlad = vlad(descs).astype(np.float64)
    sim_vlad = sim_vlad @ sim_vlad.T
    sims = {"global": sim_global, "vlad": sim_vlad, "global+vlad": (sim_global + sim_vlad) / 2}
    n_cov = int(np.triu(cov, 1).sum())
    rows = []
    for method, sim in sims.items():
        for k in ks:
            sel = topk_pairs(sim, k)
            rows.append(_score(f"{method} top-{k}", sel, cov))
    ran = np.zeros_like(cov)
    index = {x: i for i, x in enumerate(names)}
    for line in (run / "pairs.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            a, b = line.split()[:2]
            if a in index and b in index:
                ran[index[a], index[b]] = ran[index[b], index[a]] = True
    rows.append(_score("the run's pairs", ran, cov))
    return {"scene": scene, "run": run.name, "images": len(names), "covisible_pairs": n_cov,
            "all_pairs": len(names) * (len(names) - 1) // 2, "rows": rows}


def _score(method: str, sel: np.ndarray, cov: np.ndarray) -> dict:
    s, c = np.triu(sel, 1), np.triu(cov, 1)
    hit = int((s & c).sum())
    return {"method": method, "pairs": int(s.sum()), "recall": round(hit / max(int(c.sum()), 1), 4),
            "precision": round(hit / max(int(s.sum()), 1), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.retrieval_recall")
    ap.add_argument("--runs", default="fast", help="the bench configuration whose runs to read")
    ap.add_argument("--scenes", default="")
    ap.add_argument("--k", default="5,8,12,20")
    a = ap.parse_args(argv)
    ks = [int(x) for x in a.k.split(",")]
    results = []
    for run in sorted((OUT / "runs").glob(f"*__{a.runs}")):
        scene = run.name.rsplit("__", 1)[0].replace("_internet-s", "@internet-s")
        if (a.scenes and scene not in a.scenes.split(",")) or not (run / "retrieval.h5").exists():
            continue
        try:
            r = measure(run, scene, ks)
        except (OSError, KeyError, ValueError) as e:
            print(f"  {scene}: skipped ({e})")
            continue
        results.append(r)
        best = max(r["rows"][:-1], key=lambda x: x["recall"])
        print(f"  {scene}: {r['covisible_pairs']} co-visible of {r['all_pairs']} pairs; run's pairs recall "
              f"{r['rows'][-1]['recall']:.3f}; best {best['method']} {best['recall']:.3f}")
    path = OUT / "retrieval_recall.json"
    old = json.loads(path.read_text()) if path.exists() else []
    done = {(r["scene"], r["run"]) for r in results}
    path.write_text(json.dumps([r for r in old if (r["scene"], r["run"]) not in done] + results, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
