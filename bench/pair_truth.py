"""``python -m bench.pair_truth RUN_DIR SCENE``: which verified pairs of a finished run are right, by the ground truth.

For every verified pair of RUN_DIR (``two_view.h5``, at least ``--min-inliers`` inliers) the inliers' symmetric
epipolar distance (:func:`bench.church_links.epipolar_distance`) under the ground-truth fundamental matrix
F = K1^-T [t]x R K0^-1 (GT ``cam_from_world`` and GT K of SCENE's ``gt.csv``; the development-set variants of
:mod:`bench.internet` carry K) is measured; a pair is *right* when at least half its inliers lie within 4 px.
Prints the counts, the inlier counts of right and wrong pairs, and the wrong pairs with most inliers. It is the
measurement behind bench/NOTES.md "Gum variants", not part of the product.

Raises SystemExit with a message when SCENE's gt.csv has no calibration_matrix column.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

THRESHOLD_PX = 4.0


def pair_truth(run: Path, gt: dict, min_inliers: int = 15) -> list[dict]:
    """Rows ``{a, b, inliers, right_share}`` for every verified pair of ``run`` with both images in ``gt``
    (``{name: (R [3,3], t [3], K [3,3])}``, world-to-camera, px); ``right_share`` = share of the inliers within
    4 px of the GT epipolar lines."""
    from backend.features.extract import read_features
    from backend.twoview.geometry import skew

    from .church_links import epipolar_distance

    kpts: dict[str, np.ndarray] = {}
    rows = []
    with h5py.File(run / "two_view.h5", "r") as f:
        for a in f:
            for b in f[a]:
                inl = f[a][b]["inliers"][()]
                if len(inl) < min_inliers or a not in gt or b not in gt:
                    continue
                for n in (a, b):
                    if n not in kpts:
                        kpts[n] = read_features(run / "features.h5", n)["keypoints"]
                Ra, ta, Ka = gt[a]
                Rb, tb, Kb = gt[b]
                R = Rb @ Ra.T
                F = np.linalg.inv(Kb).T @ skew(tb - R @ ta) @ R @ np.linalg.inv(Ka)
                d = epipolar_distance(F, kpts[a][inl[:, 0]], kpts[b][inl[:, 1]])
                rows.append({"a": a, "b": b, "inliers": int(len(inl)),
                             "right_share": round(float(np.mean(d < THRESHOLD_PX)), 3)})
    return rows


def main(argv=None) -> int:
    from .__main__ import scene_dir
    from .internet import read_gt

    ap = argparse.ArgumentParser(prog="python -m bench.pair_truth", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("scene", help="a scene of ../shared/data or a development-set variant (gt.csv with K)")
    ap.add_argument("--min-inliers", type=int, default=15)
    a = ap.parse_args(argv)
    try:
        gt = read_gt(scene_dir(a.scene) / "gt.csv")
    except KeyError:
        raise SystemExit(f"{a.scene}: gt.csv has no calibration_matrix column; this check needs the GT intrinsics")
    rows = pair_truth(a.run_dir, gt, a.min_inliers)
    right = np.array([r["inliers"] for r in rows if r["right_share"] >= 0.5])
    wrong = np.array([r["inliers"] for r in rows if r["right_share"] < 0.5])
    print(f"{a.scene}: {len(rows)} verified pairs with >= {a.min_inliers} inliers; right {len(right)}, "
          f"wrong {len(wrong)} (right: at least half the inliers within {THRESHOLD_PX:g} px of the GT epipolar lines)")
    for tag, x in (("right", right), ("wrong", wrong)):
        if len(x):
            print(f"  inliers of {tag} pairs: median {np.median(x):.0f}, 10th percentile {np.percentile(x, 10):.0f}, "
                  f"90th {np.percentile(x, 90):.0f}, max {x.max()}")
    for r in sorted((r for r in rows if r["right_share"] < 0.5), key=lambda r: -r["inliers"])[:10]:
        print(f"  wrong: {r['a']} - {r['b']}: {r['inliers']} inliers, {100 * r['right_share']:.0f} % right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
