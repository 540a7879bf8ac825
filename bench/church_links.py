"""``python -m bench.church_links RUN_DIR [--methods]``: what the verified pairs of a church run look like, by side;
with ``--methods``, whether any extractor + matcher we have finds a correct link between the two sides (written to
``bench/out/church_links.json``; ``--resume`` keeps the methods already there).

Church's tower shows the same clock face on two opposite sides (bench/NOTES.md, "Church"). For every verified pair
of a finished run (``two_view.h5``) this prints its inliers, the share of them a single homography explains
(OpenCV RANSAC, 4 px: the clock face is a plane) and the share of a 6 x 6 grid of each image its inliers cover,
labelled "within" (both photos on one side, from the ground truth) or "cross". It is the measurement behind the
disambiguation rule, not part of the product.

``--methods``: every cross-side pair (8 x 8 photos) matched by every extractor + matcher of the registries
(:func:`backend.twoview.compare.compare_pair`: 2048 keypoints at 1024 px, verified by a fundamental matrix).
A match is *correct* when its symmetric epipolar distance under the ground-truth relative pose (GT ``cam_from_world``
with the intrinsics of RUN_DIR's models; church's gt.csv has no K) is below 4 px. *Chance*: the same count with the
second image's matched keypoints shuffled (mean of 5 shuffles), what unrelated matches score in a 4 px band. A pair
with a correct link would show many more correct matches than chance.
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


DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "church_imc2024"


def all_methods() -> list[tuple[str, str]]:
    """Every extractor of the registry with every matcher that can match it."""
    from backend.features import EXTRACTORS
    from backend.matchers import matchers_for

    return [(f, m) for f in EXTRACTORS for m in matchers_for(f)]


THRESHOLD_PX = 4.0


def run_intrinsics(run: Path) -> dict[str, np.ndarray]:
    """K float64 [3, 3] of every image registered in any model of the run (distortion ignored)."""
    import pycolmap

    K = {}
    for d in sorted((run / "sparse").iterdir()):
        rec = pycolmap.Reconstruction(d)
        for im in rec.images.values():
            if im.has_pose and im.name not in K:
                K[im.name] = np.asarray(rec.cameras[im.camera_id].calibration_matrix(), dtype=np.float64)
    return K


def epipolar_distance(F: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance (px) of matches x0, x1 float [M, 2] under F (x1^T F x0 = 0)."""
    h0 = np.c_[x0, np.ones(len(x0))]
    h1 = np.c_[x1, np.ones(len(x1))]
    l1 = h0 @ F.T  # epipolar lines in image 1
    l0 = h1 @ F  # in image 0
    e = np.abs((h1 * l1).sum(1))
    return 0.5 * (e / np.hypot(l1[:, 0], l1[:, 1]) + e / np.hypot(l0[:, 0], l0[:, 1]))


def method_rows(run: Path, methods=None, done: list[dict] | None = None, save=None) -> list[dict]:
    import shutil
    import tempfile

    from backend.evaluation.imc_metric import read_pose_table
    from backend.twoview.compare import compare_pair

    K = run_intrinsics(run)
    gt = {r.image: (r.R, r.t) for r in read_pose_table(DATA / "gt.csv")}
    side_a = sorted(n for n in gt if Path(n).stem in SIDE_A and n in K)
    side_b = sorted(n for n in gt if Path(n).stem in SIDE_B and n in K)
    tmp = Path(tempfile.mkdtemp(prefix="church_links_"))
    shutil.copytree(DATA / "images", tmp / "images")
    rng = np.random.default_rng(0)
    rows = list(done or [])
    try:
        for feats, matcher in methods or all_methods():
            if any(r["method"] == f"{feats} + {matcher}" for r in rows):
                continue
            best, correct_total, chance_total, inl_total, inl_correct = 0, 0, 0.0, 0, 0
            for a in side_a:
                for b in side_b:
                    r = compare_pair(tmp, a, b, feats, matcher, resize=1024, max_keypoints=2048)
                    m = r["matches"]
                    if not len(m):
                        continue
                    (R0, t0), (R1, t1) = gt[a], gt[b]
                    R = R1 @ R0.T
                    t = t1 - R @ t0
                    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
                    F = np.linalg.inv(K[b]).T @ tx @ R @ np.linalg.inv(K[a])
                    x0, x1 = r["keypoints0"][m[:, 0]], r["keypoints1"][m[:, 1]]
                    ok = epipolar_distance(F, x0, x1) < THRESHOLD_PX
                    chance = np.mean([(epipolar_distance(F, x0, x1[rng.permutation(len(x1))]) < THRESHOLD_PX).sum()
                                      for _ in range(5)])
                    best = max(best, int(ok.sum()))
                    correct_total += int(ok.sum())
                    chance_total += float(chance)
                    inl_total += int(r["inliers"].sum())
                    inl_correct += int((ok & r["inliers"]).sum())
            rows.append({"method": f"{feats} + {matcher}", "pairs": len(side_a) * len(side_b),
                         "best_pair_correct": best, "correct": correct_total, "chance": round(chance_total, 1),
                         "verified": inl_total, "verified_correct": inl_correct})
            print(rows[-1], flush=True)
            if save:
                save(rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    argv = list(argv or sys.argv[1:])
    run = Path(argv[0])
    if "--methods" in argv:
        import json

        out = Path(__file__).resolve().parent / "out" / "church_links.json"
        done = json.loads(out.read_text()) if out.exists() and "--resume" in argv else []
        rows = method_rows(run, done=done, save=lambda rows: out.write_text(json.dumps(rows, indent=1)))
        print(
            "| features + matcher | cross-side pairs | correct matches (all pairs) | chance | most correct in one pair "
            "| verified inliers | of them correct |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['method']} | {r['pairs']} | {r['correct']} | {r['chance']:.0f} | {r['best_pair_correct']} "
                  f"| {r['verified']} | {r['verified_correct']} |")
        return 0
    rows = sorted(pair_rows(run), key=lambda r: (r["kind"], -r["inliers"]))
    print("| pair | kind | inliers | homography share | grid coverage |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {Path(r['a']).stem}-{Path(r['b']).stem} | {r['kind']} | {r['inliers']} | {r['homography_share']:.2f} "
              f"| {r['coverage']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
