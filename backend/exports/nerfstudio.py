"""``transforms.json`` in nerfstudio's layout, for ``ns-train`` (nerfacto, splatfacto), gsplat and Brush.

Layout (nerfstudio's ``colmap_to_json``, ``nerfstudio/process_data/colmap_utils.py``): intrinsics at the top level
when every photo shares one camera, else in each frame; ``camera_model`` ``PINHOLE`` (SIMPLE_PINHOLE, PINHOLE),
``OPENCV`` (SIMPLE_RADIAL, RADIAL, OPENCV; with ``k1, k2, p1, p2``) or ``OPENCV_FISHEYE``; ``w``, ``h``,
``fl_x``, ``fl_y``, ``cx``, ``cy`` in pixels as COLMAP has them; one frame per registered photo with ``file_path``
(``images/<name>``), ``transform_matrix`` and ``colmap_im_id``; ``applied_transform`` and ``ply_file_path``.

Convention: ``transform_matrix`` is camera-to-world, 4x4, in nerfstudio's frame. From COLMAP's ``cam_from_world``
``[R | t]``: ``c2w = inverse([R | t])``, camera axes turned from OpenCV's (x right, y down, z forward) to
OpenGL's (y up, z backward) by negating the second and third columns, then the world turned by nerfstudio's
``applied_transform`` ``[[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]]`` (swap y and z, negate the new z). The sparse
points in ``sparse_pc.ply`` are in the same frame (``applied_transform`` applied), so they overlay the cameras.
Camera centres in the model's frame: ``A^-1 (c2w[:3, 3])`` with ``A`` the 3x3 part of ``applied_transform``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

APPLIED_TRANSFORM = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])  # world: COLMAP -> nerfstudio
TRANSFORMS_JSON = "transforms.json"
PLY_NAME = "sparse_pc.ply"

# COLMAP model -> (nerfstudio camera_model, the COLMAP parameters' names in nerfstudio's keys)
_MODELS = {
    "SIMPLE_PINHOLE": ("PINHOLE", ("f", "cx", "cy")),
    "PINHOLE": ("PINHOLE", ("fl_x", "fl_y", "cx", "cy")),
    "SIMPLE_RADIAL": ("OPENCV", ("f", "cx", "cy", "k1")),
    "RADIAL": ("OPENCV", ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": ("OPENCV", ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2")),
    "OPENCV_FISHEYE": ("OPENCV_FISHEYE", ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "k3", "k4")),
}


def camera_params(camera) -> dict:
    """nerfstudio's intrinsics of a pycolmap camera: ``w``, ``h`` (px), ``fl_x``, ``fl_y``, ``cx``, ``cy`` (px),
    the distortion its model has (``k1, k2, p1, p2`` for OPENCV, zeros where COLMAP's model has none) and
    ``camera_model``.

    Raises:
        ValueError: a COLMAP camera model nerfstudio has no counterpart for (the message names it).
    """
    name = camera.model.name
    if name not in _MODELS:
        raise ValueError(f"camera model {name} has no nerfstudio counterpart; map with --mapping-option "
                         "camera_model=SIMPLE_RADIAL (or OPENCV)")
    ns_model, keys = _MODELS[name]
    values = dict(zip(keys, (float(v) for v in camera.params)))
    if "f" in values:
        values["fl_x"] = values["fl_y"] = values.pop("f")
    out = {"w": int(camera.width), "h": int(camera.height), "fl_x": values["fl_x"], "fl_y": values["fl_y"],
           "cx": values["cx"], "cy": values["cy"]}
    if ns_model == "OPENCV":
        out.update({k: values.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")})
    elif ns_model == "OPENCV_FISHEYE":
        out.update({k: values[k] for k in ("k1", "k2", "k3", "k4")})
    out["camera_model"] = ns_model
    return out


def transform_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """nerfstudio's camera-to-world float64 [4, 4] of a COLMAP ``cam_from_world`` ``R`` [3, 3], ``t`` [3] (module
    doc for the convention)."""
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, t
    c2w = np.linalg.inv(w2c)
    c2w[0:3, 1:3] *= -1  # camera axes: OpenCV -> OpenGL
    c2w = c2w[[0, 2, 1, 3], :]  # world: swap y and z ...
    c2w[2, :] *= -1  # ... and negate the new z (= APPLIED_TRANSFORM)
    return c2w


def write(rec, images_dir: Path, out_dir: Path, *, run_dir: Path, model_dir: Path) -> dict:
    """Write ``transforms.json``, ``images/`` (the registered photos, copied) and ``sparse_pc.ply`` into
    ``out_dir``.

    Returns:
        ``{"frames", "points", "shared_intrinsics"}``.

    Raises:
        ValueError: a camera model without a nerfstudio counterpart (:func:`camera_params`).
    """
    import open3d as o3d

    from ..io.export import model_points

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    cams = {cid: camera_params(c) for cid, c in rec.cameras.items()}
    registered = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    used = {im.camera_id for im in registered}
    shared = len(used) == 1
    frames = []
    for im in registered:
        pose = im.cam_from_world()
        frame = {"file_path": f"images/{im.name}",
                 "transform_matrix": transform_matrix(np.asarray(pose.rotation.matrix()),
                                                      np.asarray(pose.translation)).tolist(),
                 "colmap_im_id": int(im.image_id)}
        if not shared:
            frame.update(cams[im.camera_id])
        frames.append(frame)
        shutil.copy2(Path(images_dir) / im.name, out_dir / "images" / im.name)
    out = dict(cams[next(iter(used))]) if shared and used else {}
    out["frames"] = frames
    out["applied_transform"] = APPLIED_TRANSFORM.tolist()
    xyz, rgb, _, _ = model_points(rec)
    pc = o3d.geometry.PointCloud()
    pc.points = o3d.utility.Vector3dVector(xyz @ APPLIED_TRANSFORM[:3, :3].T + APPLIED_TRANSFORM[:3, 3])
    pc.colors = o3d.utility.Vector3dVector(rgb.astype(np.float64) / 255.0)
    o3d.io.write_point_cloud(str(out_dir / PLY_NAME), pc, write_ascii=False)
    out["ply_file_path"] = PLY_NAME
    (out_dir / TRANSFORMS_JSON).write_text(json.dumps(out, indent=2))
    return {"frames": len(frames), "points": int(len(xyz)), "shared_intrinsics": shared}
