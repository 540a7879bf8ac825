"""Inspecting a model as COLMAP's GUI does: a 3D point's track (which photos see it, where, and how far each
reprojection is off), a camera's observations with their residuals, and the points coloured or filtered by track
length or reprojection error. Pure reading of a ``pycolmap.Reconstruction``; the Reconstruction page draws it.

Pixels: the photo as stored in the run folder, pixel centres at integers (as ``features.h5``; COLMAP's keypoints
have centres at +0.5, removed here). Reprojection error: the distance in pixels between an observation's keypoint
and the projection of its 3D point through the camera (with distortion).
"""

from __future__ import annotations

import numpy as np

COLOUR_BY = ("photo colour", "track length", "reprojection error")


def _project(camera, R: np.ndarray, t: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Pixel (COLMAP convention) of world points ``X`` float [N, 3] in a camera with ``cam_from_world`` R, t."""
    cam = np.asarray(X, float) @ np.asarray(R).T + np.asarray(t)
    return np.asarray(camera.img_from_cam(cam), float).reshape(-1, 2)


def point_arrays(rec) -> dict[str, np.ndarray]:
    """Every 3D point in ``rec.points3D`` order: ``ids`` int64 [N], ``xyz`` float [N, 3], ``rgb`` uint8 [N, 3],
    ``track_length`` int [N], ``error`` float [N] (COLMAP's mean reprojection error of the point, px)."""
    pts = list(rec.points3D.items())
    return {"ids": np.array([i for i, _ in pts], np.int64),
            "xyz": np.array([p.xyz for _, p in pts], float).reshape(-1, 3),
            "rgb": np.array([p.color for _, p in pts], np.uint8).reshape(-1, 3),
            "track_length": np.array([p.track.length() for _, p in pts], int),
            "error": np.array([p.error for _, p in pts], float)}


def point_track(rec, point_id: int) -> dict:
    """The track of 3D point ``point_id``: ``{"point_id", "xyz", "colour", "error_px" (COLMAP's mean),
    "observations": [{"image", "image_id", "keypoint" [x, y], "projection" [x, y], "error_px"}]}`` (stored-photo
    pixels), observations by image name.

    Raises:
        KeyError: no such point in the model.
    """
    if point_id not in rec.points3D:
        raise KeyError(f"no 3D point {point_id} in this model")
    p = rec.points3D[point_id]
    obs = []
    for el in p.track.elements:
        im = rec.images[el.image_id]
        pose = im.cam_from_world()
        kp = np.asarray(im.points2D[el.point2D_idx].xy, float)
        proj = _project(rec.cameras[im.camera_id], pose.rotation.matrix(), pose.translation, p.xyz[None])[0]
        obs.append({"image": im.name, "image_id": int(el.image_id), "keypoint": (kp - 0.5).round(2).tolist(),
                    "projection": (proj - 0.5).round(2).tolist(),
                    "error_px": round(float(np.linalg.norm(proj - kp)), 3)})
    return {"point_id": int(point_id), "xyz": np.asarray(p.xyz).round(6).tolist(), "colour": list(map(int, p.color)),
            "error_px": round(float(p.error), 3), "observations": sorted(obs, key=lambda o: o["image"])}


def image_residuals(rec, name: str) -> dict:
    """A registered photo's observations: ``keypoints`` and ``projections`` float [N, 2] (stored-photo pixels),
    ``errors`` float [N] (px), ``point_ids`` int [N], ``keypoint_index`` int [N] (the keypoint's row in
    ``features.h5``); its ``camera`` (model, width, height, params, as COLMAP has
    them), ``R`` [3, 3] and ``t`` [3] of ``cam_from_world``, ``centre`` [3] (world), ``image_id``.

    Raises:
        KeyError: no registered photo of that name in the model.
    """
    im = next((i for i in rec.images.values() if i.name == name and i.has_pose), None)
    if im is None:
        raise KeyError(f"no registered photo {name!r} in this model")
    pose = im.cam_from_world()
    R, t = np.asarray(pose.rotation.matrix()), np.asarray(pose.translation)
    cam = rec.cameras[im.camera_id]
    obs = [(p2.xy, p2.point3D_id, j) for j, p2 in enumerate(im.points2D) if p2.has_point3D()]
    kp = np.array([o[0] for o in obs], float).reshape(-1, 2)
    ids = np.array([o[1] for o in obs], np.int64)
    idx = np.array([o[2] for o in obs], np.int64)
    X = np.array([rec.points3D[i].xyz for i in ids], float).reshape(-1, 3)
    proj = _project(cam, R, t, X) if len(X) else np.zeros((0, 2))
    return {"image": name, "image_id": int(im.image_id), "keypoints": kp - 0.5, "projections": proj - 0.5,
            "errors": np.linalg.norm(proj - kp, axis=1), "point_ids": ids, "keypoint_index": idx,
            "R": R, "t": t, "centre": -R.T @ t,
            "camera": {"model": cam.model.name, "width": int(cam.width), "height": int(cam.height),
                       "params": [float(v) for v in cam.params], "params_info": cam.params_info}}


def colour_points(values: np.ndarray, lo: float | None = None, hi: float | None = None,
                  cmap: str = "viridis") -> np.ndarray:
    """uint8 [N, 3] colours of ``values`` through a matplotlib colour map, from ``lo`` (default the 2nd percentile)
    to ``hi`` (default the 98th)."""
    from matplotlib import colormaps

    v = np.asarray(values, float)
    if not len(v):
        return np.zeros((0, 3), np.uint8)
    lo = float(np.percentile(v, 2)) if lo is None else lo
    hi = float(np.percentile(v, 98)) if hi is None else hi
    x = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1)
    return (colormaps[cmap](x)[:, :3] * 255).round().astype(np.uint8)


def point_filter(arrays: dict, min_track_length: int = 2, max_error_px: float = float("inf")) -> np.ndarray:
    """bool [N]: the points of :func:`point_arrays` seen by at least ``min_track_length`` photos with a mean
    reprojection error of at most ``max_error_px``."""
    return (arrays["track_length"] >= min_track_length) & (arrays["error"] <= max_error_px)


def observation_crop(image_path, keypoint, projection, size: int = 160, zoom: int = 2):
    """A ``size`` x ``size`` px crop (PIL RGB) of a photo around an observation, enlarged ``zoom`` times: the
    keypoint as a green circle, the 3D point's projection as a red cross (stored-photo pixels)."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as im:
        im = im.convert("RGB")
        x, y = float(keypoint[0]), float(keypoint[1])
        half = size / (2 * zoom)
        box = (int(round(x - half)), int(round(y - half)), int(round(x + half)), int(round(y + half)))
        crop = im.crop(box).resize((size, size), Image.Resampling.LANCZOS)
    d = ImageDraw.Draw(crop)
    to = lambda u, v: ((u - box[0]) * zoom, (v - box[1]) * zoom)  # noqa: E731
    kx, ky = to(x, y)
    d.ellipse((kx - 7, ky - 7, kx + 7, ky + 7), outline=(0, 220, 0), width=2)
    px, py = to(float(projection[0]), float(projection[1]))
    d.line((px - 6, py - 6, px + 6, py + 6), fill=(255, 0, 0), width=2)
    d.line((px - 6, py + 6, px + 6, py - 6), fill=(255, 0, 0), width=2)
    return crop


def residual_figure(image_path, res: dict, arrow_scale: float = 10.0, max_error_px: float | None = None):
    """A matplotlib figure of a photo with its observations (:func:`image_residuals`): each keypoint a dot, the
    residual vector (projection - keypoint) ``arrow_scale`` times enlarged, both coloured by the reprojection error
    (viridis, 0 to ``max_error_px`` or the 98th percentile), with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    with Image.open(image_path) as im:
        img = np.asarray(im.convert("RGB"))
    kp, proj, err = res["keypoints"], res["projections"], res["errors"]
    hi = max_error_px or (float(np.percentile(err, 98)) if len(err) else 1.0)
    fig, ax = plt.subplots(figsize=(7, 7 * img.shape[0] / img.shape[1]), dpi=110)
    ax.imshow(img)
    if len(err):
        d = (proj - kp) * arrow_scale
        q = ax.quiver(kp[:, 0], kp[:, 1], d[:, 0], d[:, 1], err, cmap="viridis", clim=(0, hi), angles="xy",
                      scale_units="xy", scale=1, width=0.003)
        ax.scatter(kp[:, 0], kp[:, 1], c=err, cmap="viridis", vmin=0, vmax=hi, s=6)
        fig.colorbar(q, ax=ax, fraction=0.035, pad=0.01, label="reprojection error (px)")
    ax.set_axis_off()
    ax.set_title(f"{res['image']}: {len(err)} observations, mean {err.mean() if len(err) else 0:.2f} px "
                 f"(residuals x{arrow_scale:g})", fontsize=9)
    fig.tight_layout()
    return fig
