"""Pair benchmark with ground truth (issue 12): pose AUC, match precision, matches and time per pair, per
extractor + matcher, with and without test-time rotation (TTA).

    python -m bench.pairs [--per-scene 6] [--methods aliked-n16+lightglue,...] [--tta-methods ...]

Writes ``bench/out/pairs.json`` and ``bench/RESULTS_PAIRS.md`` (generated). Not part of the tests.

Pair sets:

- ``scenes``: co-visible pairs of the real scenes in ``../shared/data`` whose gt.csv has intrinsics (temple,
  reichstag, fox, lego, gum; church's gt.csv has none). Co-visible by the rule of :mod:`bench.retrieval_recall`
  (frusta cut at the scene centre overlap by >= 30 % both ways on average, optical axes <= 60 degrees apart).
  ``--per-scene`` pairs per scene, seeded, drawn round-robin from relative-rotation bins (0-15, 15-30, 30-60
  degrees) so that every scene contributes easy and hard pairs; the hardness table gives the rotation and overlap
  bins of the pairs drawn.
- ``scannet``: the 15 pairs of ``pairs_scannet1500_sample`` (SuperGlue's ScanNet sample, indoor, wide baseline).
- ``... turned``: the same pairs with image 1 turned a quarter counter-clockwise (``np.rot90``), the ground truth
  turned with it (K1 and the pose follow the pixels exactly, see :func:`turn_gt`): the rotation-robustness case.

Metrics (:mod:`backend.twoview.groundtruth`): pose AUC at 5/10/20 degrees of max(rotation error, translation
direction error), a failed pair counting as infinite error (the SuperGlue / LightGlue evaluation); the essential
matrix is estimated with PoseLib LO-RANSAC from the ground-truth intrinsics, threshold 1 px at the extractor's
resolution (the product default). Match precision: share of matches whose symmetric epipolar distance under the
ground truth is below 4 px (``scenes``: COLMAP-accurate poses) or below SuperGlue's threshold (5e-4 on the squared
distance in normalised coordinates, about 26 px at ScanNet's 1164 px focal length; ScanNet's poses are not
pixel-accurate). Time per pair = two extractions (image 1 once per TTA turn) + matching + verification on this
machine, model loading excluded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .__main__ import DATA, REPO
from .retrieval_recall import covisibility

OUT = REPO / "bench" / "out"
SCENES = ["temple_ring_middlebury", "reichstag_imc2020", "fox_instant_ngp", "lego_nerf_synthetic", "gum_scene2mesh"]
METHODS = ["aliked-n16+lightglue", "disk+lightglue", "xfeat+lighterglue", "xfeat+nn-ratio", "sift+nn-ratio"]
TTA_METHODS = ["aliked-n16+lightglue", "sift+nn-ratio"]
ROT_BINS = [(0, 15), (15, 30), (30, 60), (60, 180)]
OVERLAP_BINS = [(0.3, 0.5), (0.5, 0.7), (0.7, 1.01)]
SCENE_PRECISION_PX = 4.0
MAX_IMAGES = 60  # per scene, evenly spaced by name, for the co-visibility search
SUPERGLUE_EPI_SQ = 5e-4
# published numbers on MegaDepth-1500 (other pairs, other images: context, not a like-for-like comparison)
PUBLISHED = [("SuperPoint + LightGlue, PoseLib", "MegaDepth-1500", "66.8 / 79.3 / 87.9",
              "cvg/glue-factory README, relative-pose table (PoseLib column)"),
             ("SuperPoint + SuperGlue, PoseLib", "MegaDepth-1500", "64.8 / 77.9 / 87.0",
              "cvg/glue-factory README, relative-pose table (PoseLib column)"),
             ("SuperPoint + SuperGlue, OpenCV RANSAC", "ScanNet-1500 (our 15 ScanNet pairs are a sample of it)",
              "16.2 / 33.8 / 51.8; precision 84.4 % at SuperGlue's threshold",
              "Sarlin et al., SuperGlue (CVPR 2020), indoor pose estimation table")]


def turn_gt(gt, width1: int):
    """Ground truth of a pair whose image 1 (``width1`` px wide) is turned a quarter counter-clockwise
    (``np.rot90(image, 1)``): a pixel (x, y) moves to (y, W-1-x), so K1' = [[fy, 0, cy], [0, fx, W-1-cx], [0, 0, 1]]
    and the camera turns about its axis, R' = Rz R, t' = Rz t with Rz = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]."""
    from backend.twoview.groundtruth import PairGT

    Rz = np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    K = gt.K1
    K1 = np.array([[K[1, 1], 0, K[1, 2]], [0, K[0, 0], width1 - 1 - K[0, 2]], [0, 0, 1]])
    return PairGT(Rz @ gt.R, Rz @ gt.t, gt.K0, K1, gt.source + " (image 1 turned)")


def _check_turn() -> None:
    """The turned ground truth projects a point where np.rot90 moves its pixel (a self-check of :func:`turn_gt`)."""
    from backend.twoview.groundtruth import PairGT

    K = np.array([[700.0, 0, 300], [0, 690.0, 200], [0, 0, 1]])
    gt = PairGT(np.eye(3), np.array([0.1, 0, 0]), K, K)
    X = np.array([0.3, -0.2, 4.0])
    x = K @ (gt.R @ X + gt.t)
    x = x[:2] / x[2]
    g2 = turn_gt(gt, 640)
    y = g2.K1 @ (g2.R @ X + g2.t)
    y = y[:2] / y[2]
    assert np.allclose(y, [x[1], 640 - 1 - x[0]], atol=1e-6), (x, y)


def scene_pairs(per_scene: int, seed: int = 0) -> list[dict]:
    """Co-visible pairs of the shared scenes (module doc), each ``{"set", "scene", "image0", "image1", "gt",
    "rotation_deg", "overlap"}``."""
    from backend.twoview.groundtruth import pair_from_poses, read_gt_csv

    out = []
    for scene in SCENES:
        d = DATA / scene
        table = read_gt_csv(d / "gt.csv")
        names = sorted(n for n in table if (d / "images" / n).is_file() and table[n][2] is not None)
        names = names[:: max(1, len(names) // MAX_IMAGES)]  # gum's 492 frames: every 8th or so
        sizes = {n: Image.open(d / "images" / n).size for n in names}
        gt3 = {n: table[n] for n in names}
        cov, frac = covisibility(gt3, sizes, names, return_overlap=True)
        rng = np.random.default_rng(seed)
        by_bin: dict[int, list] = {b: [] for b in range(3)}
        for i, j in zip(*np.nonzero(np.triu(cov, 1))):
            g = pair_from_poses(gt3[names[i]], gt3[names[j]], f"{scene}/gt.csv")
            rot = float(np.degrees(np.arccos(np.clip((np.trace(g.R) - 1) / 2, -1, 1))))
            b = 0 if rot < 15 else (1 if rot < 30 else 2)
            by_bin[b].append({"set": "scenes", "scene": scene, "image0": d / "images" / names[i],
                              "image1": d / "images" / names[j], "gt": g, "rotation_deg": rot,
                              "overlap": float(frac[i, j])})
        for b in by_bin:
            rng.shuffle(by_bin[b])
        picked, b = [], 0
        while len(picked) < per_scene and any(by_bin.values()):
            if by_bin[b % 3]:
                picked.append(by_bin[b % 3].pop())
            b += 1
        out += picked
    return out


def scannet_pairs() -> list[dict]:
    from backend.twoview.groundtruth import read_pairs_file

    d = DATA / "pairs_scannet1500_sample"
    out = []
    for (a, b), g in read_pairs_file(d / "pairs_with_gt.txt").items():
        rot = float(np.degrees(np.arccos(np.clip((np.trace(g.R) - 1) / 2, -1, 1))))
        out.append({"set": "scannet", "scene": "scannet", "image0": d / "images" / a, "image1": d / "images" / b,
                    "gt": g, "rotation_deg": rot, "overlap": None})
    return out


def turned(pairs: list[dict], work: Path) -> list[dict]:
    """The same pairs with image 1 turned a quarter counter-clockwise (written once into ``work``)."""
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for p in pairs:
        dst = work / f"{p['scene']}__{Path(p['image1']).stem}__rot90.png"
        img = Image.open(p["image1"]).convert("RGB")
        if not dst.exists():
            Image.fromarray(np.rot90(np.asarray(img), 1)).save(dst)
        out.append({**p, "set": p["set"] + " turned", "image1": dst, "gt": turn_gt(p["gt"], img.size[0])})
    return out


def superglue_px(p: dict) -> float:
    """SuperGlue's precision threshold (5e-4 on the squared symmetric epipolar distance in normalised coordinates)
    in pixels for this pair: sqrt(5e-4) x the mean focal length."""
    g = p["gt"]
    f = (g.K0[0, 0] + g.K0[1, 1] + g.K1[0, 0] + g.K1[1, 1]) / 4
    return float(np.sqrt(SUPERGLUE_EPI_SQ) * f)


def precision_px(p: dict) -> float:
    """The threshold of the table's main precision column: 4 px on the scenes (COLMAP-accurate poses), SuperGlue's
    on ScanNet (poses not pixel-accurate)."""
    return superglue_px(p) if p["set"].startswith("scannet") else SCENE_PRECISION_PX


def run(pairs: list[dict], methods: list[str], tta_methods: list[str], work: Path) -> list[dict]:
    from backend.twoview.groundtruth import epipolar_distance, pose_errors
    from backend.twoview.geometry import fundamental_from_pose
    from backend.twoview.pair import match_prepared, prepare_image

    prepared: dict[str, object] = {}

    def prep(path: Path):
        key = str(path)
        if key not in prepared:
            i = len(prepared)
            prepared[key] = prepare_image(Path(path), work / "images", f"{i:05d}{Path(path).suffix.lower()}",
                                          Path(path).name)
        return prepared[key]

    rows = []
    models: dict = {}
    caches: dict = {}  # per extractor: the TTA run reuses the upright extractions of the plain run
    ext_time: dict = {}  # per extractor: [seconds, extractions] over every run that computed some
    for spec in [(m, False) for m in methods] + [(m, True) for m in tta_methods]:
        (features, matcher), tta = spec[0].split("+"), spec[1]
        cache = caches.setdefault(features, {})
        t_ext, n_ext = 0.0, 0
        per_pair = []
        for p in pairs:
            im0, im1 = prep(p["image0"]), prep(p["image1"])
            r = match_prepared(im0, im1, features, matcher, tta=tta, gt=p["gt"], precision_px=precision_px(p),
                               similarity=False, models=models, feature_cache=cache)
            t_ext += r.seconds["extraction"]
            n_ext += r.extracted_images
            r_err, t_err = pose_errors(r.geometry.R, r.geometry.t, p["gt"])
            g = p["gt"]
            d = epipolar_distance(r.keypoints0[r.matches[:, 0]], r.keypoints1[r.matches[:, 1]],
                                  fundamental_from_pose(g.R, g.t, g.K0, g.K1))
            per_pair.append(
                {
                    "set": p["set"],
                    "scene": p["scene"],
                    "err": max(r_err, t_err),
                    "matches": int(len(r.matches)),
                    "inliers": int(r.inliers.sum()),
                    "correct": int(r.correct.sum()) if r.correct is not None else 0,
                    "correct_4px": int((d < SCENE_PRECISION_PX).sum()),
                    "correct_superglue": int((d < superglue_px(p)).sum()),
                    "match_s": r.seconds["matching"] + r.seconds["verification"],
                    "turn": (r.tta or {}).get("turn_degrees", 0),
                }
            )
        acc = ext_time.setdefault(features, [0.0, 0])
        acc[0] += t_ext
        acc[1] += n_ext
        ext_per_image = acc[0] / max(acc[1], 1)  # a run served from the cache takes the extractor's measured cost
        rows.append({"features": features, "matcher": matcher, "tta": tta, "extraction_s_per_image": ext_per_image,
                     "pairs": per_pair})
        print(f"  {features}+{matcher}{' +TTA' if tta else ''}: {len(pairs)} pairs, "
              f"{ext_per_image:.2f} s per image", flush=True)
    return rows


def summarise(rows: list[dict], sets: list[str]) -> list[dict]:
    from backend.twoview.groundtruth import pose_auc

    out = []
    for r in rows:
        extractions = 5 if r["tta"] else 2  # image 0 once, image 1 once per turn
        for s in sets:
            ps = [p for p in r["pairs"] if p["set"] == s]
            if not ps:
                continue
            auc = pose_auc([p["err"] for p in ps])
            m = sum(p["matches"] for p in ps)
            out.append({"set": s, "method": f"{r['features']} + {r['matcher']}", "tta": r["tta"], "pairs": len(ps),
                        "auc5": auc[0], "auc10": auc[1], "auc20": auc[2],
                        "precision": sum(p["correct"] for p in ps) / m if m else float("nan"),
                        "precision_4px": sum(p.get("correct_4px", 0) for p in ps) / m if m else float("nan"),
                        "precision_superglue": sum(p.get("correct_superglue", 0) for p in ps) / m if m
                        else float("nan"),
                        "matches": m / len(ps), "inliers": sum(p["inliers"] for p in ps) / len(ps),
                        "seconds_per_pair": extractions * r["extraction_s_per_image"]
                        + sum(p["match_s"] for p in ps) / len(ps),
                        "tta_turned": sum(p["turn"] != 0 for p in ps)})
    return out


def similarity_calibration(per_scene: int = 40, seed: int = 0) -> dict:
    """Global-descriptor similarity (percent, the Two-view page's number) of ground-truth co-visible pairs against
    pairs from two different scenes, over ``per_scene`` images of each shared scene (church included: no
    intrinsics needed for "different scene"; its co-visible pairs are left out), and the threshold that
    separates them best (highest balanced accuracy)."""
    from backend.config import RetrievalConfig
    from backend.utils.device import get_device
    from backend.io.images import load_rgb
    from backend.retrieval.global_descriptors import describe, load_descriptor, resolve_model
    from backend.twoview.groundtruth import read_gt_csv

    name, _ = resolve_model("auto")
    device = get_device()
    net = load_descriptor(name, device)
    multiple = 14 if name.startswith("dinov2") else 32
    rng = np.random.default_rng(seed)
    descs, scene_of, same = [], [], []
    for scene in SCENES + ["church_imc2024"]:
        d = DATA / scene
        table = read_gt_csv(d / "gt.csv")
        names = sorted(n for n in table if (d / "images" / n).is_file())
        names = [names[i] for i in sorted(rng.choice(len(names), min(per_scene, len(names)), replace=False))]
        base = len(descs)
        for n in names:
            v = describe(net, load_rgb(d / "images" / n, RetrievalConfig().resize)[0], device, multiple)
            descs.append(v / max(np.linalg.norm(v), 1e-12))
            scene_of.append(scene)
        if all(table[n][2] is not None for n in names):
            sizes = {n: Image.open(d / "images" / n).size for n in names}
            cov = covisibility({n: table[n] for n in names}, sizes, names)
            same += [(base + i, base + j) for i, j in zip(*np.nonzero(np.triu(cov, 1)))]
    D = np.stack(descs)
    S = D @ D.T * 100
    pos = np.array([S[i, j] for i, j in same])
    idx = np.triu_indices(len(D), 1)
    diff = np.array([scene_of[i] != scene_of[j] for i, j in zip(*idx)])
    neg = S[idx][diff]
    best = max(((float(t), (np.mean(pos >= t) + np.mean(neg < t)) / 2) for t in np.arange(0, 100.5, 0.5)),
               key=lambda x: x[1])
    return {"model": name, "covisible_pairs": int(len(pos)), "other_scene_pairs": int(len(neg)),
            "covisible_percentiles": {str(q): float(np.percentile(pos, q)) for q in (5, 25, 50, 75, 95)},
            "other_percentiles": {str(q): float(np.percentile(neg, q)) for q in (5, 25, 50, 75, 95)},
            "best_threshold": best[0], "balanced_accuracy": best[1],
            "at_50": {"covisible_above": float(np.mean(pos >= 50)), "other_below": float(np.mean(neg < 50))}}


def per_scene(rows: list[dict]) -> list[dict]:
    """Per scene of the ``scenes`` set, without TTA: AUC@10 and precision at both thresholds."""
    from backend.twoview.groundtruth import pose_auc

    out = []
    for r in rows:
        if r["tta"]:
            continue
        ps_all = [p for p in r["pairs"] if p["set"] == "scenes"]
        for scene in dict.fromkeys(p["scene"] for p in ps_all):
            ps = [p for p in ps_all if p["scene"] == scene]
            m = sum(p["matches"] for p in ps)
            out.append({"method": f"{r['features']} + {r['matcher']}", "scene": scene, "pairs": len(ps),
                        "auc10": pose_auc([p["err"] for p in ps])[1],
                        "precision_4px": sum(p["correct_4px"] for p in ps) / m if m else float("nan"),
                        "precision_superglue": sum(p["correct_superglue"] for p in ps) / m if m else float("nan")})
    return out


def hardness(pairs: list[dict]) -> list[dict]:
    out = []
    for s in dict.fromkeys(p["set"] for p in pairs):
        ps = [p for p in pairs if p["set"] == s]
        row = {"set": s, "pairs": len(ps)}
        for lo, hi in ROT_BINS:
            row[f"rot {lo}-{hi}"] = sum(lo <= p["rotation_deg"] < hi for p in ps)
        for lo, hi in OVERLAP_BINS:
            row[f"overlap {lo:.1f}-{min(hi, 1):.1f}"] = sum(p["overlap"] is not None and lo <= p["overlap"] < hi
                                                            for p in ps)
        out.append(row)
    return out


def write_report(res: dict, path: Path) -> None:
    L = [
        "# Pair benchmark (generated by `python -m bench.pairs`; do not edit)",
        "",
        "How the pairs were chosen, the metrics and the thresholds: `bench/pairs.py` docstring. "
        f"Machine: {_machine_text(res['machine'])}. Each method at {res['resize']} px, "
        f"at most {res['max_keypoints']} keypoints, "
        "PoseLib LO-RANSAC with the ground-truth intrinsics.",
        "",
        "## How hard the pairs are (relative rotation in degrees; overlap of the frusta, scenes only)",
        "",
    ]
    hard = res["hardness"]
    cols = list(hard[0].keys())
    L += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    L += ["| " + " | ".join(str(h[c]) for c in cols) + " |" for h in hard]
    L += ["", "## Pose AUC, match precision, matches and time per pair", "",
          "Match precision in two columns: within 4 px of the true epipolar line (symmetric distance; tight: "
          "keypoints are found at 1024 px and the photos are up to 1600 px), and within SuperGlue's threshold "
          "(5e-4 on the squared symmetric distance in normalised coordinates, the one of the published "
          "MegaDepth-1500 / ScanNet-1500 precision numbers; sqrt(5e-4) x focal length = 15-60 px here).", "",
          "| pair set | method | TTA | pairs | AUC@5 | AUC@10 | AUC@20 | precision < 4 px | precision (SuperGlue) | "
          "matches | inliers | s / pair | TTA turned |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["summary"]:
        L.append(f"| {r['set']} | {r['method']} | {'on' if r['tta'] else 'off'} | {r['pairs']} | "
                 f"{100 * r['auc5']:.1f} | {100 * r['auc10']:.1f} | {100 * r['auc20']:.1f} | "
                 f"{_pct(r.get('precision_4px'))} | {_pct(r.get('precision_superglue'))} | "
                 f"{r['matches']:.0f} | {r['inliers']:.0f} | "
                 f"{r['seconds_per_pair']:.2f} | {r['tta_turned'] if r['tta'] else '-'} |")
    if res.get("per_scene"):
        L += ["", "### Per scene (the `scenes` set, no TTA)", "",
              "| method | scene | pairs | AUC@10 | precision < 4 px | precision (SuperGlue) |",
              "|---|---|---:|---:|---:|---:|"]
        L += [f"| {r['method']} | {r['scene']} | {r['pairs']} | {100 * r['auc10']:.1f} | {_pct(r['precision_4px'])} | "
              f"{_pct(r['precision_superglue'])} |" for r in res["per_scene"]]
    sim = res.get("similarity")
    if sim:
        q = ["5", "25", "50", "75", "95"]
        L += ["", "## Same place? Global similarity of co-visible pairs and of pairs from different scenes", "",
              f"{sim['model']} descriptors of up to 40 photos per scene (`--similarity`): "
              f"{sim['covisible_pairs']} ground-truth co-visible pairs, {sim['other_scene_pairs']} pairs of two "
              "different scenes. Percentiles of the similarity in percent:", "",
              "| pairs | " + " | ".join(f"{x} %" for x in q) + " |", "|---|" + "---:|" * len(q),
              "| co-visible | " + " | ".join(f"{sim['covisible_percentiles'][x]:.1f}" for x in q) + " |",
              "| different scenes | " + " | ".join(f"{sim['other_percentiles'][x]:.1f}" for x in q) + " |", "",
              f"The best single threshold is {sim['best_threshold']:.1f} % (balanced accuracy "
              f"{100 * sim['balanced_accuracy']:.1f} %), the Two-view page's default; at 50 %, "
              f"{100 * sim['at_50']['covisible_above']:.1f} % of co-visible pairs are above and "
              f"{100 * sim['at_50']['other_below']:.1f} % of different-scene pairs below. Verified inliers remain "
              "the evidence the page leads with."]
    L += ["", "## Targets", ""]
    L += _targets(res["summary"])
    L += ["", "## Published numbers for comparison (other pairs, other settings; AUC@5/10/20 in %)", "",
          "| method | benchmark | AUC@5/10/20 | source |", "|---|---|---|---|"]
    L += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in PUBLISHED]
    L += ["", "No published numbers exist for these pairs or for our methods on these benchmarks under these "
          "settings (ALIKED + LightGlue, DISK + LightGlue and XFeat + LighterGlue report MegaDepth-1500 numbers in "
          "their own papers at other resolutions and thresholds), so the rows above are context, not a like-for-like "
          "comparison. SuperPoint and SuperGlue are not available here (licence). On ScanNet the published number is "
          "over all 1500 pairs; ours over 15 of them, so it swings by several points with one pair.", ""]
    path.write_text("\n".join(L) + "\n")


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f} %"


def _machine_text(m) -> str:
    if isinstance(m, dict):
        return ", ".join(f"{k} {v}" for k, v in m.items() if not isinstance(v, (dict, list)))
    return str(m)


def _targets(summary: list[dict]) -> list[str]:
    out = []
    by = {(r["set"], r["method"], r["tta"]): r for r in summary}
    sets = list(dict.fromkeys(r["set"] for r in summary))
    sift = "sift + nn-ratio"
    deep = [m for m in dict.fromkeys(r["method"] for r in summary) if "lightglue" in m or "lighterglue" in m]
    for m in deep:
        r = by.get(("scenes", m, False))
        if r:
            sg = r.get("precision_superglue", float("nan"))
            out.append(f"- {m}: match precision on the scenes' pairs {_pct(sg)} at SuperGlue's threshold "
                       f"({_pct(r.get('precision_4px'))} within 4 px; target >= 95 %): "
                       f"{'met' if sg >= 0.95 else 'not met'}.")
        for s in sets:
            for tta in (False, True):
                a, b = by.get((s, m, tta)), by.get((s, sift, tta))
                if a and b:
                    out.append(f"  - {s}{', TTA' if tta else ''}: AUC@10 {100 * a['auc10']:.1f} against SIFT + ratio "
                               f"test {100 * b['auc10']:.1f}: {'met' if a['auc10'] >= b['auc10'] else 'not met'}.")
    for fast in ("xfeat + nn-ratio", "xfeat + lighterglue"):
        for s in sets:
            a, b = by.get((s, fast, False)), by.get((s, sift, False))
            if a and b:
                ratio = a["seconds_per_pair"] / b["seconds_per_pair"]
                ok = ratio <= 0.7 and a["auc10"] > b["auc10"]
                out.append(f"- {fast} on {s}: {ratio:.2f}x SIFT + ratio test's time per pair, AUC@10 "
                           f"{100 * a['auc10']:.1f} against {100 * b['auc10']:.1f}: {'met' if ok else 'not met'}.")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pairs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-scene", type=int, default=6)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tta-methods", default=",".join(TTA_METHODS))
    ap.add_argument("--no-turned", action="store_true", help="skip the turned copies of the pairs")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--similarity", action="store_true",
                    help="only (re)measure the similarity calibration and add it to pairs.json")
    a = ap.parse_args(argv)
    from backend.twoview.pair import DEFAULT_MAX_KEYPOINTS, DEFAULT_RESIZE

    from .__main__ import machine

    path = OUT / "pairs.json"
    if a.report_only:
        res = json.loads(path.read_text())
        write_report(res, REPO / "bench" / "RESULTS_PAIRS.md")
        return 0
    if a.similarity:
        res = json.loads(path.read_text()) if path.exists() else {}
        res["similarity"] = similarity_calibration()
        path.write_text(json.dumps(res, indent=1, default=float))
        if "summary" in res:
            write_report(res, REPO / "bench" / "RESULTS_PAIRS.md")
        print(json.dumps(res["similarity"], indent=1))
        return 0
    _check_turn()
    work = OUT / "pairs_work"
    pairs = scene_pairs(a.per_scene) + scannet_pairs()
    if not a.no_turned:
        pairs += turned(pairs, work / "turned")
    sets = list(dict.fromkeys(p["set"] for p in pairs))
    print(f"{len(pairs)} pairs: " + ", ".join(f"{s} {sum(p['set'] == s for p in pairs)}" for s in sets), flush=True)
    t0 = time.time()
    rows = run(pairs, [m for m in a.methods.split(",") if m], [m for m in a.tta_methods.split(",") if m], work)
    old = json.loads(path.read_text()) if path.exists() else {}
    res = {
        "similarity": old.get("similarity"),
        "machine": machine(),
        "resize": DEFAULT_RESIZE,
        "max_keypoints": DEFAULT_MAX_KEYPOINTS,
        "hardness": hardness(pairs),
        "summary": summarise(rows, sets),
        "per_scene": per_scene(rows),
        "seconds": time.time() - t0,
        "pairs": [{k: (str(v) if isinstance(v, Path) else v) for k, v in p.items() if k != "gt"} for p in pairs],
    }
    path.write_text(json.dumps(res, indent=1, default=float))
    write_report(res, REPO / "bench" / "RESULTS_PAIRS.md")
    print(f"wrote {REPO / 'bench' / 'RESULTS_PAIRS.md'} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
