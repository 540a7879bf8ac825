"""Densify a sparse model on the CPU from its known poses: more keypoints per photo, matches guided by the epipolar
geometry of the registered cameras, points triangulated into the fixed poses, and a mesh.

1. Keypoints: ALIKED-N16 (or ``features``) with ``max_keypoints`` (8192) per registered photo, at the run's resize,
   with a low detection threshold (0.001) and NMS radius (1) so that weakly textured photos give keypoints too.
2. Pairs: each photo with the ``neighbours`` photos that share most 3D points with it in the sparse model.
3. Guided matching: for a pair, the relative pose ``cam1_from_cam0`` of the model gives the essential matrix
   ``E = [t]x R``; keypoints are undistorted to normalised coordinates by their camera
   (``pycolmap.Camera.cam_from_img``), and a keypoint of photo 0 may only match a keypoint of photo 1 that lies
   within ``epipolar_px`` of its epipolar line (both ways, in pixels of the photo's focal length). Among those,
   mutual nearest neighbours by descriptor (cosine similarity at least ``min_similarity``) are the matches:
   LightGlue is not needed once the geometry is known, and the band makes the nearest neighbour reliable.
4. Triangulation: a COLMAP database holding the model's cameras, rigs, frames and photos (same ids), the new
   keypoints and the guided matches as verified two-view geometries; ``pycolmap.triangulate_points`` builds tracks
   from them and triangulates into the fixed poses (COLMAP's triangulator: merges, completes and filters tracks
   by reprojection error and triangulation angle; hloc, ``hloc/triangulation.py``).
5. Mesh: Open3D's screened Poisson reconstruction of the cloud, trimmed to where the points are
   (:func:`mesh_from_points`).

Coordinates: the model's frame, as ``sparse/``; PLYs are binary (``points.ply``: x, y, z, red, green, blue;
``mesh.ply``: vertices with colours and triangles).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from . import DENSE_DIR

log = logging.getLogger(__name__)

DEFAULTS = {"features": "aliked-n16", "max_keypoints": 8192, "detection_threshold": 0.001, "nms_radius": 1,
            "neighbours": 6, "epipolar_px": 2.0, "min_similarity": 0.5, "mesh_depth": 9}
# ALIKED's own detection threshold (0.01) and NMS radius (2) leave 1,435 keypoints on a 640 x 480 temple photo;
# 0.001 and 1 give about 4,500: the guided matching keeps only what fits the geometry
_ROWS = 1024  # keypoints of photo 0 per block of the guided matching (bounds memory: rows x N1 floats)


def covisible_pairs(rec, neighbours: int) -> list[tuple[int, int]]:
    """Pairs of registered image ids ``(i, j)``, ``i < j``: each image with the ``neighbours`` images that share
    most 3D points with it (at least 15)."""
    shared: dict[tuple[int, int], int] = {}
    for p in rec.points3D.values():
        ids = sorted({el.image_id for el in p.track.elements})
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                shared[(ids[a], ids[b])] = shared.get((ids[a], ids[b]), 0) + 1
    best: dict[int, list[tuple[int, int]]] = {}
    for (a, b), n in shared.items():
        if n >= 15:
            best.setdefault(a, []).append((n, b))
            best.setdefault(b, []).append((n, a))
    pairs = set()
    for a, lst in best.items():
        for _, b in sorted(lst, reverse=True)[:neighbours]:
            pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


def guided_matches(kp0: np.ndarray, kp1: np.ndarray, d0: np.ndarray, d1: np.ndarray, cam0, cam1, R: np.ndarray,
                   t: np.ndarray, epipolar_px: float = 2.0, min_similarity: float = 0.5) -> np.ndarray:
    """Mutual nearest neighbours by descriptor among the keypoint pairs that fit the epipolar geometry.

    Args:
        kp0, kp1: keypoints float [N0, 2], [N1, 2] in COLMAP's pixel convention (centres at +0.5).
        d0, d1: L2-normalised descriptors float32 [N0, D], [N1, D].
        cam0, cam1: their pycolmap cameras (distortion is removed through ``cam_from_img``).
        R, t: ``cam1_from_cam0`` (float [3, 3], [3]).
        epipolar_px: largest distance to the epipolar line, both ways, in pixels (scaled by each focal length).
        min_similarity: smallest cosine similarity of a match.

    Returns:
        int32 [M, 2] indices into ``kp0``, ``kp1``.
    """
    if len(kp0) == 0 or len(kp1) == 0:
        return np.zeros((0, 2), np.int32)
    x0 = np.c_[np.asarray(cam0.cam_from_img(np.asarray(kp0, float))), np.ones(len(kp0))]
    x1 = np.c_[np.asarray(cam1.cam_from_img(np.asarray(kp1, float))), np.ones(len(kp1))]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    E = tx @ R
    l1 = x0 @ E.T  # epipolar lines in photo 1 of photo 0's keypoints [N0, 3]
    l0 = x1 @ E  # epipolar lines in photo 0 of photo 1's keypoints [N1, 3]
    n1 = np.linalg.norm(l1[:, :2], axis=1) + 1e-12
    n0 = np.linalg.norm(l0[:, :2], axis=1) + 1e-12
    tol1 = epipolar_px / float(cam1.mean_focal_length())
    tol0 = epipolar_px / float(cam0.mean_focal_length())
    best_j = np.full(len(kp0), -1)
    best_s = np.full(len(kp0), -np.inf, np.float32)
    col_i = np.full(len(kp1), -1)
    col_s = np.full(len(kp1), -np.inf, np.float32)
    d0 = np.asarray(d0, np.float32)
    d1 = np.asarray(d1, np.float32)
    for a in range(0, len(kp0), _ROWS):
        b = min(len(kp0), a + _ROWS)
        num = np.abs(l1[a:b] @ x1.T)  # |x1^T E x0| [rows, N1]
        ok = (num / n1[a:b, None] < tol1) & (num / n0[None, :] < tol0)
        s = d0[a:b] @ d1.T
        s[~ok] = -np.inf
        j = np.argmax(s, axis=1)
        sj = s[np.arange(b - a), j]
        best_j[a:b], best_s[a:b] = j, sj
        i = np.argmax(s, axis=0)
        si = s[i, np.arange(len(kp1))]
        better = si > col_s
        col_i[better], col_s[better] = i[better] + a, si[better]
    idx = np.arange(len(kp0))
    keep = (best_s >= min_similarity) & (col_i[np.maximum(best_j, 0)] == idx)
    return np.c_[idx[keep], best_j[keep]].astype(np.int32)


def _database_from_model(rec, path: Path) -> None:
    """A COLMAP database with the model's cameras, rigs, frames and images under their ids."""
    import pycolmap

    if path.exists():
        path.unlink()
    db = pycolmap.Database.open(str(path))
    try:
        for cam in rec.cameras.values():
            db.write_camera(cam, use_camera_id=True)
        for rig in rec.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in rec.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for im in rec.images.values():
            db.write_image(im, use_image_id=True)
    finally:
        db.close()


def model_stats(rec) -> dict:
    """``{"points", "mean_track_length", "mean_reprojection_error_px", "registered_images"}`` of a model."""
    n = rec.num_points3D()
    return {"points": int(n), "registered_images": int(rec.num_reg_images()),
            "mean_track_length": round(float(rec.compute_mean_track_length()), 3) if n else 0.0,
            "mean_reprojection_error_px": round(float(rec.compute_mean_reprojection_error()), 4) if n else 0.0}


def mesh_from_points(xyz: np.ndarray, rgb: np.ndarray, centres: list[np.ndarray], path: Path, depth: int = 9) -> dict:
    """A screened Poisson mesh (Open3D; Kazhdan and Hoppe 2013) of the cloud ``xyz`` float [N, 3] with colours
    ``rgb`` uint8 [N, 3], written as a binary PLY at ``path``.

    The cloud's statistical outliers are left out first (20 neighbours, 2 standard deviations); normals come from
    30 neighbours, turned towards the nearest camera centre of ``centres``. Poisson closes the surface, also where
    no point is: vertices farther from every point than twice the cloud's 95th-percentile point spacing are cut,
    as are the lowest-density 5 %. Returns ``{"vertices", "triangles", "points_used"}``."""
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(xyz, float)))
    pc.colors = o3d.utility.Vector3dVector(np.asarray(rgb, float) / 255.0)
    pc, _ = pc.remove_statistical_outlier(nb_neighbors=20, std_ratio=2.0)
    pts = np.asarray(pc.points)
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(30))
    normals = np.asarray(pc.normals)
    C = np.asarray(centres, float).reshape(-1, 3)
    if len(C):
        nearest = np.empty_like(pts)
        for a in range(0, len(pts), 4096):  # blocks: points x cameras distances
            blk = pts[a:a + 4096]
            nearest[a:a + 4096] = C[np.argmin(((blk[:, None, :] - C[None]) ** 2).sum(-1), axis=1)]
        normals[((nearest - pts) * normals).sum(1) < 0] *= -1
    pc.normals = o3d.utility.Vector3dVector(normals)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pc, depth=depth)
    density = np.asarray(density)
    spacing = np.asarray(pc.compute_nearest_neighbor_distance())
    far = np.asarray(o3d.geometry.PointCloud(mesh.vertices).compute_point_cloud_distance(pc)) \
        > 2 * np.percentile(spacing, 95)
    if len(density):
        mesh.remove_vertices_by_mask(far | (density < np.quantile(density, 0.05)))
    mesh.remove_unreferenced_vertices()
    o3d.io.write_triangle_mesh(str(path), mesh, write_ascii=False)
    return {"vertices": len(mesh.vertices), "triangles": len(mesh.triangles), "points_used": len(pts)}


def _keypoints(run_dir: Path, images: dict, cfg, progress,
               detector: dict | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per registered image id: keypoints float64 [N, 2] (COLMAP's pixel convention) and L2-normalised descriptors
    float32 [N, D], extracted at ``cfg``; ``detector``: the extractor's options among ``detection_threshold`` and
    ``nms_radius`` (those it has)."""
    from ..features import extractor_conf, load_extractor
    from ..features.extract import extract_for_matching
    from ..utils.device import get_device

    extra = {k: v for k, v in (detector or {}).items() if k in extractor_conf(cfg.name)}
    extractor = load_extractor(cfg.name, get_device(), max_keypoints=cfg.max_keypoints, **extra)
    feats = {}
    for k, (i, im) in enumerate(sorted(images.items(), key=lambda x: x[1].name)):
        f = extract_for_matching(extractor, cfg, Path(run_dir) / "images" / im.name)
        d = f["descriptors"].astype(np.float32)
        d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
        feats[i] = (f["keypoints"].astype(np.float64) + 0.5, d)  # COLMAP's pixel convention
        if progress:
            progress(k + 1, len(images), f"keypoints: {im.name} ({len(d)})")
    return feats


def _match_pairs(rec, images: dict, feats: dict, pairs: list[tuple[int, int]], opts: dict,
                 progress) -> dict[tuple[int, int], np.ndarray]:
    """:func:`guided_matches` of every pair, from the model's relative poses."""
    matches = {}
    for k, (a, b) in enumerate(pairs):
        pa, pb = images[a].cam_from_world(), images[b].cam_from_world()
        Ra, Rb = np.asarray(pa.rotation.matrix()), np.asarray(pb.rotation.matrix())
        R = Rb @ Ra.T
        t = np.asarray(pb.translation) - R @ np.asarray(pa.translation)
        matches[(a, b)] = guided_matches(feats[a][0], feats[b][0], feats[a][1], feats[b][1],
                                         rec.cameras[images[a].camera_id], rec.cameras[images[b].camera_id], R, t,
                                         float(opts["epipolar_px"]), float(opts["min_similarity"]))
        if progress:
            progress(k + 1, len(pairs), f"guided matching: {images[a].name} - {images[b].name}: "
                                        f"{len(matches[(a, b)])} matches")
    return matches


def _write_database(rec, db_path: Path, feats: dict, matches: dict) -> None:
    """The database ``triangulate_points`` reads: the model's cameras and images, the keypoints, and each pair's
    guided matches as raw matches and as a calibrated two-view geometry's inliers."""
    import pycolmap

    _database_from_model(rec, db_path)
    db = pycolmap.Database.open(str(db_path))
    try:
        for i, (kp, _) in feats.items():
            db.write_keypoints(i, kp.astype(np.float32))
        for (a, b), m in matches.items():
            db.write_matches(a, b, m.astype(np.uint32))
            g = pycolmap.TwoViewGeometry()
            g.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            g.inlier_matches = m.astype(np.uint32)
            db.write_two_view_geometry(a, b, g)
    finally:
        db.close()


def densify(run_dir: Path, model: int = 0, progress: Callable[[int, int, str], None] | None = None,
            **options) -> dict:
    """Densify model ``model`` of a run into ``<run>/dense/`` (module doc for the steps).

    Args:
        options: any of :data:`DEFAULTS` (``features``, ``max_keypoints``, ``neighbours``, ``epipolar_px``,
            ``min_similarity``, ``mesh_depth``).
        progress: ``progress(done, total, message)``.

    Returns:
        ``dense.json``'s content: ``{"method", "options", "before", "after"`` (:func:`model_stats`), ``"pairs"``,
        ``"matches"``, ``"mesh"``, ``"seconds"`` (per step and total)``}``.

    Raises:
        InputError: no such model, an unknown option, or features with binary descriptors.
        MissingWeightsError: the extractor's weights are missing.
    """
    import pycolmap

    from ..exports import model_dir
    from ..features import extractor_class
    from ..config import FeaturesConfig
    from ..io.export import model_points

    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise InputError(f"unknown densify option(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    if extractor_class(opts["features"]).descriptor_kind != "float":
        raise InputError(f"{opts['features']} has binary descriptors: densify with aliked-n16, disk or xfeat")
    run_dir = Path(run_dir)
    src = model_dir(run_dir, model)
    out = run_dir / DENSE_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    rec = pycolmap.Reconstruction(src)
    before = model_stats(rec)
    seconds, t0 = {}, time.perf_counter()
    run_cfg = json.loads((run_dir / "run.json").read_text()).get("config", {}).get("features", {})
    cfg = FeaturesConfig(name=opts["features"], resize=int(run_cfg.get("resize", 1024)),
                         max_keypoints=int(opts["max_keypoints"]))
    images = {i: im for i, im in rec.images.items() if im.has_pose}
    feats = _keypoints(run_dir, images, cfg, progress,
                       {k: opts[k] for k in ("detection_threshold", "nms_radius")})
    seconds["keypoints"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    pairs = covisible_pairs(rec, int(opts["neighbours"]))
    matches = _match_pairs(rec, images, feats, pairs, opts, progress)
    seconds["matching"] = round(time.perf_counter() - t1, 2)
    t2 = time.perf_counter()
    db_path = out / "database.db"
    _write_database(rec, db_path, feats, matches)
    (out / "sparse").mkdir()
    if progress:
        progress(0, 1, "triangulating into the fixed poses (pycolmap)")
    dense = pycolmap.triangulate_points(rec, str(db_path), str(run_dir / "images"), str(out / "sparse"))
    seconds["triangulation"] = round(time.perf_counter() - t2, 2)
    after = model_stats(dense)
    dense.export_PLY(str(out / "points.ply"))
    t3 = time.perf_counter()
    xyz, rgb, _, _ = model_points(dense)
    centres = [-(np.asarray(im.cam_from_world().rotation.matrix()).T @ np.asarray(im.cam_from_world().translation))
               for im in dense.images.values() if im.has_pose]
    mesh = mesh_from_points(xyz, rgb, centres, out / "mesh.ply", int(opts["mesh_depth"])) if len(xyz) >= 100 \
        else {"vertices": 0, "triangles": 0}
    seconds["mesh"] = round(time.perf_counter() - t3, 2)
    seconds["total"] = round(time.perf_counter() - t0, 2)
    result = {"method": "triangulate", "model": int(model), "options": opts, "before": before, "after": after,
              "pairs": len(pairs), "matches": int(sum(len(m) for m in matches.values())), "mesh": mesh,
              "seconds": seconds}
    (out / "dense.json").write_text(json.dumps(result, indent=1))
    log.info("densify: %s", result)
    return result
