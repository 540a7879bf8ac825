"""Stage 6: exports of the largest model.

- ``poses.csv``: IMC convention, ``image_name,rotation_matrix,translation_vector,calibration_matrix``;
  R is world-to-camera (COLMAP's ``cam_from_world``), row-major, ``;``-separated; t likewise, so that
  x_cam = R X_world + t and the camera centre is C = -Rᵀ t; K is the 3x3 pinhole part of the camera in pixels
  (distortion is not in K). Unregistered images are rows with empty pose fields.
- ``poses_imc2024.csv``: the IMC 2024 submission layout ``image_path,dataset,scene,rotation_matrix,
  translation_vector``; unregistered images carry ``nan`` values, as the Kaggle metric expects.
- ``points.ply``: the sparse points with colours (binary little-endian PLY: float x, y, z; uchar r, g, b).
- ``sparse_txt/``: the largest model as COLMAP text files; ``model.zip``: every model (binary) and the text copy.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

POSES_CSV = "poses.csv"
POSES_IMC2024_CSV = "poses_imc2024.csv"
POINTS_PLY = "points.ply"
MODEL_ZIP = "model.zip"


def _fmt(values) -> str:
    return ";".join(f"{float(v):.9g}" for v in np.ravel(values))


def camera_matrix(camera) -> np.ndarray:
    """3x3 intrinsics K (pixels, COLMAP pixel convention) of a pycolmap camera."""
    return np.asarray(camera.calibration_matrix(), dtype=np.float64)


def model_poses(rec) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Registered images of a pycolmap Reconstruction: name -> (R [3,3], t [3], K [3,3]), float64,
    R and t of ``cam_from_world``."""
    out = {}
    for image in rec.images.values():
        if not image.has_pose:
            continue
        pose = image.cam_from_world()
        out[image.name] = (
            np.asarray(pose.rotation.matrix(), dtype=np.float64),
            np.asarray(pose.translation, dtype=np.float64),
            camera_matrix(rec.cameras[image.camera_id]),
        )
    return out


def write_poses_csv(path: Path, names: list[str], poses: dict) -> None:
    """Write ``poses.csv`` (IMC convention) with one row per name in ``names``; unregistered -> empty fields."""
    with open(path, "w") as f:
        f.write("image_name,rotation_matrix,translation_vector,calibration_matrix\n")
        for n in names:
            if n in poses:
                R, t, K = poses[n]
                f.write(f"{n},{_fmt(R)},{_fmt(t)},{_fmt(K)}\n")
            else:
                f.write(f"{n},,,\n")


def write_imc2024_csv(path: Path, names: list[str], poses: dict, dataset: str, scene: str) -> None:
    """Write the IMC 2024 submission variant; ``image_path`` is ``test/<dataset>/images/<name>``."""
    nan_r, nan_t = ";".join(["nan"] * 9), ";".join(["nan"] * 3)
    with open(path, "w") as f:
        f.write("image_path,dataset,scene,rotation_matrix,translation_vector\n")
        for n in names:
            r, t = (_fmt(poses[n][0]), _fmt(poses[n][1])) if n in poses else (nan_r, nan_t)
            f.write(f"test/{dataset}/images/{n},{dataset},{scene},{r},{t}\n")


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary little-endian PLY of points ``xyz`` float [N, 3] with colours ``rgb`` uint8 [N, 3]."""
    xyz = np.asarray(xyz, dtype="<f4").reshape(-1, 3)
    rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    data = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    data["x"], data["y"], data["z"] = xyz.T
    data["red"], data["green"], data["blue"] = rgb.T
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment SfM Explorer sparse points\n"
        f"element vertex {len(data)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())


def model_points(rec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points of a reconstruction: xyz float64 [N, 3], rgb uint8 [N, 3], reprojection error float64 [N] (px),
    track length int [N]."""
    pts = list(rec.points3D.values())
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), np.zeros(0, int)
    xyz = np.array([p.xyz for p in pts], dtype=np.float64)
    rgb = np.array([p.color for p in pts], dtype=np.uint8)
    err = np.array([p.error for p in pts], dtype=np.float64)
    tl = np.array([p.track.length() for p in pts], dtype=int)
    return xyz, rgb, err, tl


def run_exports(run_dir: Path, names: list[str], dataset: str, scene: str) -> dict:
    """Write every export of the run's largest model (``sparse/0``); with no model, poses files with every
    image unregistered.

    Returns counts ``{"registered_images", "points"}``.
    """
    import pycolmap

    run_dir = Path(run_dir)
    model_dir = run_dir / "sparse" / "0"
    poses, xyz, rgb = {}, np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    if (model_dir / "images.bin").exists():
        rec = pycolmap.Reconstruction(model_dir)
        poses = model_poses(rec)
        xyz, rgb, _, _ = model_points(rec)
        txt = run_dir / "sparse_txt"
        txt.mkdir(exist_ok=True)
        rec.write_text(txt)
    write_poses_csv(run_dir / POSES_CSV, names, poses)
    write_imc2024_csv(run_dir / POSES_IMC2024_CSV, names, poses, dataset, scene)
    write_ply(run_dir / POINTS_PLY, xyz, rgb)
    with zipfile.ZipFile(run_dir / MODEL_ZIP, "w", zipfile.ZIP_DEFLATED) as z:
        for sub in ("sparse", "sparse_txt"):
            for p in sorted((run_dir / sub).rglob("*")) if (run_dir / sub).exists() else []:
                if p.is_file():
                    z.write(p, p.relative_to(run_dir))
    return {"registered_images": len(poses), "points": int(len(xyz))}
