"""``python -m bench.church_links RUN_DIR``: what the verified pairs of a church run look like, by side.

Church's tower shows the same clock face on two opposite sides (bench/NOTES.md, "Church"). For every verified pair
of a finished run (``two_view.h5``) this prints its inliers, the share of them a single homography explains
(OpenCV RANSAC, 4 px: the clock face is a plane) and the share of a 6 x 6 grid of each image its inliers cover,
labelled "within" (both photos on one side, from the ground truth) or "cross". It is the measurement behind the
disambiguation rule, not part of the product.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np

SIDE_A = {"00006", "00012", "00013", "00018", "00021", "00026", "00035", "00039"}
SIDE_B = {"00046", "00069", "00083", "00087", "00092", "00111", "00063", "00104"}


def side(name: str) -> str:
    return "A" if Path(name).stem in SIDE_A else "B"


def coverage(kpts: np.ndarray, size, cells: int = 6) -> float:
    w, h = size
    gx = np.clip((kpts[:, 0] / w * cells).astype(int), 0, cells - 1)
    gy = np.clip((kpts[:, 1] / h * cells).astype(int), 0, cells - 1)
    return len(set(zip(gx.tolist(), gy.tolist()))) / cells**2


def pair_rows(run: Path) -> list[dict]:
    import cv2

    from backend.features.extract import read_features

    feats = {}
    rows = []
    with h5py.File(run / "two_view.h5", "r") as f:
        for a in f:
            for b in f[a]:
                inl = f[a][b]["inliers"][()]
                if len(inl) < 15:
                    continue
                for n in (a, b):
                    if n not in feats:
                        feats[n] = read_features(run / "features.h5", n)
                pa = feats[a]["keypoints"][inl[:, 0]]
                pb = feats[b]["keypoints"][inl[:, 1]]
                H, mask = cv2.findHomography(pa, pb, cv2.RANSAC, 4.0)
                hr = float(mask.mean()) if mask is not None else 0.0
                cov = min(coverage(pa, feats[a]["image_size"]), coverage(pb, feats[b]["image_size"]))
                rows.append({"a": a, "b": b, "kind": "within" if side(a) == side(b) else "cross",
                             "inliers": len(inl), "homography_share": round(hr, 2), "coverage": round(cov, 2)})
    return rows


def main(argv=None) -> int:
    run = Path((argv or sys.argv[1:])[0])
    rows = sorted(pair_rows(run), key=lambda r: (r["kind"], -r["inliers"]))
    print("| pair | kind | inliers | homography share | grid coverage |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {Path(r['a']).stem}-{Path(r['b']).stem} | {r['kind']} | {r['inliers']} | {r['homography_share']:.2f} "
              f"| {r['coverage']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
