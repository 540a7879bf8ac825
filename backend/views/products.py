"""What a page reads of the products made from a model on request: the dense cloud and mesh
(:mod:`backend.dense`) and the alignment to the photos' GPS (:mod:`backend.io.gps`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def dense(run_dir: Path, k: int) -> dict | None:
    """``dense/dense.json`` of a run when it densified model ``k`` (:mod:`backend.dense`), with the paths of its
    files under ``files`` (``points.ply``, ``mesh.ply``); None otherwise."""
    d = Path(run_dir) / "dense"
    try:
        info = json.loads((d / "dense.json").read_text())
    except (OSError, ValueError):
        return None
    if int(info.get("model", 0)) != int(k):
        return None
    info["files"] = {n: d / n for n in ("points.ply", "mesh.ply") if (d / n).is_file()}
    return info


def dense_points(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The densified cloud ``dense/points.ply``: xyz float [N, 3], rgb uint8 [N, 3] (Open3D's reader)."""
    import open3d as o3d

    pc = o3d.io.read_point_cloud(str(Path(run_dir) / "dense" / "points.ply"))
    return np.asarray(pc.points), (np.asarray(pc.colors) * 255).round().astype(np.uint8)


def dense_mesh(run_dir: Path, max_triangles: int = 200_000) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The mesh ``dense/mesh.ply``: vertices float [V, 3], triangles int [F, 3], vertex colours uint8 [V, 3] or
    None; above ``max_triangles`` simplified (quadric decimation) for drawing."""
    import open3d as o3d

    m = o3d.io.read_triangle_mesh(str(Path(run_dir) / "dense" / "mesh.ply"))
    if len(m.triangles) > max_triangles:
        m = m.simplify_quadric_decimation(max_triangles)
    C = (np.asarray(m.vertex_colors) * 255).round().astype(np.uint8) if m.has_vertex_colors() else None
    return np.asarray(m.vertices), np.asarray(m.triangles), C


def georef(run_dir: Path) -> dict | None:
    """``geo/georef.json`` of a run (the largest model aligned to its photos' GPS, :mod:`backend.io.gps`), with
    the paths of its CSVs under ``files``; None when the run was not geo-referenced."""
    d = Path(run_dir) / "geo"
    try:
        g = json.loads((d / "georef.json").read_text())
    except (OSError, ValueError):
        return None
    g["files"] = {n: d / n for n in ("poses_enu.csv", "cameras_wgs84.csv") if (d / n).is_file()}
    return g
