"""Densification on the CPU (``python -m backend densify``), measured on scenes with exact ground truth.

    python -m bench.dense [--scenes temple_ring_middlebury fox_instant_ngp]   # writes bench/out/dense.json

Each scene's balanced bench run (``bench/out/runs/<scene>__balanced``, made by ``python -m bench``) is copied and
densified. Reported: points, mean track length and mean reprojection error before and after, the time per step,
and an accuracy measure of the dense cloud:

*Distance to the same matches triangulated into the ground-truth poses.* The guided matches of the densification
(its ``dense/database.db``) are triangulated a second time, with the same cameras, into the ground-truth poses
(``pycolmap.triangulate_points``); the dense cloud is mapped into the ground-truth frame by the similarity between
the two models' camera centres (``pycolmap.align_reconstructions_via_proj_centers``); each dense point's distance
to the nearest point of the ground-truth-posed cloud is then what the estimated poses cost that point (matching
errors are common to both clouds, so this isolates the error of the poses and of the triangulation). Distances are
given as a percentage of the scene's size, the median distance of the ground-truth camera centres to the cloud's
centroid, so scenes in different units compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from .__main__ import DATA, REPO, machine

OUT = REPO / "bench" / "out"
SCENES = ("temple_ring_middlebury", "fox_instant_ngp")


def _copy_run(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in ("images", "sparse"):
        shutil.copytree(src / name, dst / name)
    for name in ("run.json", "images.json"):
        shutil.copy2(src / name, dst / name)


def accuracy(run_dir: Path, gt_csv: Path) -> dict:
    """The distance measure of the module doc for a densified run."""
    import open3d as o3d
    import pycolmap

    from backend.io.export import model_points
    from backend.twoview.groundtruth import read_gt_csv

    gt = read_gt_csv(gt_csv)
    dense = pycolmap.Reconstruction(run_dir / "dense" / "sparse")
    posed = pycolmap.Reconstruction(run_dir / "dense" / "sparse")
    for im in posed.images.values():
        if im.has_pose and im.name in gt:
            R, t, _ = gt[im.name]
            posed.frames[im.frame_id].rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(R), t)
    out = run_dir / "dense" / "gt_posed"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    tri = pycolmap.triangulate_points(posed, str(run_dir / "dense" / "database.db"), str(run_dir / "images"),
                                      str(out))
    centres = np.array([-np.asarray(gt[n][0]).T @ gt[n][1] for n in gt])
    size = float(np.median(np.linalg.norm(centres - model_points(tri)[0].mean(0), axis=1)))
    sim = pycolmap.align_reconstructions_via_proj_centers(dense, tri, max_proj_center_error=0.1 * size)
    if sim is None:
        return {"aligned": False}
    xyz = model_points(dense)[0]
    M = np.asarray(sim.matrix())  # 3 x 4: scale * R | t
    aligned = xyz @ M[:, :3].T + M[:, 3]
    a = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(aligned))
    b = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(model_points(tri)[0]))
    d = np.asarray(a.compute_point_cloud_distance(b))
    return {"aligned": True, "gt_posed_points": int(tri.num_points3D()), "scene_size": round(size, 4),
            "median_distance_percent": round(100 * float(np.median(d)) / size, 3),
            "p90_distance_percent": round(100 * float(np.percentile(d, 90)) / size, 3)}


def measure(scene: str) -> dict:
    """Densify the scene's balanced bench run (a copy) and measure it."""
    from backend.dense.triangulate import densify

    src = OUT / "runs" / f"{scene}__balanced"
    if not (src / "sparse" / "0" / "images.bin").is_file():
        return {"scene": scene, "skipped": f"no balanced bench run at {src} (run python -m bench --scenes {scene})"}
    work = OUT / "dense" / scene
    _copy_run(src, work)
    t = time.perf_counter()
    res = densify(work)
    res["wall_seconds"] = round(time.perf_counter() - t, 1)
    res["accuracy"] = accuracy(work, DATA / scene / "gt.csv")
    res["scene"] = scene
    return res


def report_lines(results: dict) -> list[str]:
    """The RESULTS.md section."""
    lines = ["## Dense points on the CPU (`python -m bench.dense`)", "",
             f"{results.get('date', '')}; {results.get('machine', '')} Each scene's balanced run densified by "
             "`python -m backend densify` (ALIKED at 8192 keypoints, epipolar-guided matches, triangulated into the "
             "fixed poses, Poisson mesh). Distance: each dense point to the same matches triangulated into the "
             "ground-truth poses, as % of the scene's size (median distance of the ground-truth cameras to the "
             "cloud's centroid).", "",
             "| scene | points before | after | ratio | track length before / after | reprojection error before / "
             "after (px) | distance median / p90 (% of scene size) | mesh triangles | s (keypoints / matching / "
             "triangulation / mesh) |",
             "|---|---:|---:|---:|---|---|---|---:|---|"]
    for r in results.get("scenes", []):
        if "skipped" in r:
            lines.append(f"| {r['scene']} | skipped: {r['skipped']} |||||||| ")
            continue
        b, a, acc, s = r["before"], r["after"], r["accuracy"], r["seconds"]
        dist = f"{acc['median_distance_percent']} / {acc['p90_distance_percent']}" if acc.get("aligned") else "-"
        lines.append(f"| {r['scene']} | {b['points']} | {a['points']} | {a['points'] / max(1, b['points']):.1f}x "
                     f"| {b['mean_track_length']} / {a['mean_track_length']} | {b['mean_reprojection_error_px']} / "
                     f"{a['mean_reprojection_error_px']} | {dist} | {r['mesh']['triangles']} | {s['total']} "
                     f"({s['keypoints']} / {s['matching']} / {s['triangulation']} / {s['mesh']}) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from datetime import datetime

    from .report import machine_line

    ap = argparse.ArgumentParser(prog="python -m bench.dense", description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="+", default=list(SCENES))
    a = ap.parse_args(argv)
    results = {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "scenes": []}
    results["machine"] = machine_line(machine())
    for scene in a.scenes:
        r = measure(scene)
        print(json.dumps({k: r.get(k) for k in ("scene", "before", "after", "accuracy", "seconds")}))
        results["scenes"].append(r)
    (OUT / "dense.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(report_lines(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
