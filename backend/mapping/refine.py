"""After the mapper: put back photos whose focal length ran away, a final robust bundle adjustment, and the removal
of registered images a model holds without evidence (too few observations, an implausible focal length).

Every function here modifies a ``pycolmap.Reconstruction`` in place and returns a JSON-able record of what it did
(``mapping.json``).
"""

from __future__ import annotations

import copy

import numpy as np

from ..config import MappingConfig

MIN_OBSERVATIONS = 15  # a registered image must observe at least this many 3D points


FOCAL_RANGE = (0.1, 10.0)  # plausible focal length, in units of the image's longer side


def rescue_runaway_focals(rec, images: dict, focal_range: tuple[float, float] | None = None,
                          max_error_px: float = 12.0, min_inliers: int = 15) -> list[dict]:
    """Put back images whose own camera's focal length ran away during mapping, instead of losing them.

    A camera far from the scene, seen through few 3D points, lets bundle adjustment trade focal length for depth
    (the focal-depth ambiguity of narrow fields of view): reichstag's ``05466646_5360480312.jpg`` ended at
    52,172 px on a 1061 px-wide photo (ground truth 1406 px) and was then de-registered. For every registered image
    whose camera is its alone and whose focal length lies outside ``focal_range`` x its longer side, the focal
    length is reset to the image's prior (``images[name]["focal_px"]``: EXIF, else the 35 mm-equivalent default),
    radial distortion to 0, and its ``cam_from_world`` re-estimated from its 2D-3D correspondences with the focal
    length held (``pycolmap.estimate_and_refine_absolute_pose``, LO-RANSAC at ``max_error_px``). The returned
    cameras must stay constant in the next bundle adjustment (:func:`final_bundle_adjustment`). Images that keep
    fewer than ``min_inliers`` inliers are left alone (:func:`deregister_implausible` then removes them).

    Args:
        rec: ``pycolmap.Reconstruction``, modified in place.
        images: image name -> metadata with ``focal_px`` (px).

    Returns:
        ``[{"image", "camera_id", "focal_px_was", "focal_px_prior", "inliers"}]`` for every image put back.
    """
    import pycolmap

    lo, hi = focal_range or FOCAL_RANGE
    per_camera: dict[int, int] = {}
    for iid in rec.reg_image_ids():
        per_camera[rec.images[iid].camera_id] = per_camera.get(rec.images[iid].camera_id, 0) + 1
    rescued = []
    for iid in list(rec.reg_image_ids()):
        im = rec.images[iid]
        cam = rec.cameras[im.camera_id]
        side = max(cam.width, cam.height)
        f = float(cam.mean_focal_length())
        if lo * side <= f <= hi * side or per_camera[im.camera_id] > 1 or im.name not in images:
            continue
        prior = float(images[im.name]["focal_px"])
        pts = [(q.xy, rec.points3D[q.point3D_id].xyz) for q in im.points2D if q.has_point3D()]
        if len(pts) < min_inliers:
            continue
        trial = copy.copy(cam)  # a copy, so that a failed rescue leaves the model as it was
        params = np.array(trial.params, dtype=np.float64)
        params[list(trial.focal_length_idxs())] = prior
        params[len(trial.focal_length_idxs()) + 2:] = 0.0  # extra (distortion) parameters
        trial.params = params
        est = pycolmap.AbsolutePoseEstimationOptions()
        est.ransac.max_error = max_error_px
        ref = pycolmap.AbsolutePoseRefinementOptions()
        ref.refine_focal_length = False
        ref.refine_extra_params = False
        res = pycolmap.estimate_and_refine_absolute_pose(
            np.array([a for a, _ in pts], np.float64), np.array([b for _, b in pts], np.float64), trial, est, ref)
        if res is None or int(res["num_inliers"]) < min_inliers:
            continue
        rec.cameras[im.camera_id] = trial
        rec.frames[im.frame_id].set_cam_from_world(im.camera_id, res["cam_from_world"])
        rescued.append({"image": im.name, "camera_id": int(im.camera_id), "focal_px_was": round(f, 1),
                        "focal_px_prior": round(prior, 1), "inliers": int(res["num_inliers"])})
    return rescued


def final_bundle_adjustment(rec, cfg: MappingConfig, min_images_per_camera: int = 8,
                            constant_cameras: list[int] = (), narrow_focal_ratio: float = 1.5) -> dict:
    """One more global bundle adjustment of ``rec`` (in place), with a robust (Cauchy, 1 px) loss. The principal
    point is refined when every registered image's camera is shared by at least ``min_images_per_camera``
    registered images, and otherwise, when ``cfg.final_ba_principal_point`` is ``"all"`` (the default), for every
    camera but the narrow ones (a focal length above ``narrow_focal_ratio`` x the long side, held whole: their
    principal point trades against the rotation). The intrinsics of ``constant_cameras`` (camera ids, e.g. from
    :func:`rescue_runaway_focals`) are held too.

    Measured (official mAA, bench/NOTES.md "Principal points in the final bundle adjustment"): fox (one shared
    camera whose principal point is 15 px off centre) 0.977 -> 1.000; with one camera per photo, reichstag
    (balanced) 0.893 -> 0.929, church 0.385 unchanged (0.365 without holding its tele photos) and the cropped
    development variants gum s1 0.191 -> 0.223, fox s2 0.436 -> 0.479.

    Returns ``{"refine_principal_point": bool, "narrow_cameras_held": int}``.
    """
    import pycolmap

    per_camera: dict[int, int] = {}
    for im in rec.images.values():
        if im.has_pose:
            per_camera[im.camera_id] = per_camera.get(im.camera_id, 0) + 1
    all_shared = bool(per_camera) and min(per_camera.values()) >= min_images_per_camera
    refine_pp = all_shared or (bool(per_camera) and cfg.final_ba_principal_point == "all")
    held = set(constant_cameras)
    narrow = []
    if refine_pp and not all_shared:
        # a narrow view leaves its principal point free to trade against the rotation: hold such cameras
        for cid, n in per_camera.items():
            cam = rec.cameras[cid]
            if n < min_images_per_camera and cam.focal_length > narrow_focal_ratio * max(cam.width, cam.height):
                narrow.append(int(cid))
        held |= set(narrow)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.print_summary = False
    opts.refine_principal_point = refine_pp
    opts.refine_focal_length = cfg.refine_focal_length
    opts.refine_extra_params = cfg.refine_extra_params
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    opts.ceres.solver_options.num_threads = cfg.num_threads
    opts.ceres.solver_options.max_num_iterations = cfg.final_ba_iterations
    if not held:
        pycolmap.bundle_adjustment(rec, opts)
    else:
        config = pycolmap.BundleAdjustmentConfig()
        for iid in rec.reg_image_ids():
            config.add_image(iid)
        for cid in held:
            config.set_constant_cam_intrinsics(cid)
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
        pycolmap.create_default_bundle_adjuster(opts, config, rec).solve()
    return {"refine_principal_point": refine_pp, "narrow_cameras_held": len(narrow)}


def deregister_implausible(rec, min_observations: int = MIN_OBSERVATIONS,
                           focal_range: tuple[float, float] = FOCAL_RANGE) -> list[dict]:
    """De-register images that a model holds without evidence: fewer than ``min_observations`` observed 3D points,
    or a focal length outside ``focal_range`` x the longer image side (e.g. 22.6 px on a 1024x768 photo, seen in
    the church sample: such a camera is not a pose anyone can use, and its frustum would fill the 3D view).

    The check repeats until no image fails it (removing an image can leave another with too few points; COLMAP
    deletes 3D points whose track falls below two observations when an image is de-registered).

    Args:
        rec: ``pycolmap.Reconstruction``, modified in place.

    Returns:
        ``[{"image": name, "reason": text}]`` for every image removed.
    """
    removed = []
    changed = True
    while changed:
        changed = False
        for image_id in list(rec.reg_image_ids()):
            im = rec.images[image_id]
            cam = rec.cameras[im.camera_id]
            side = max(cam.width, cam.height)
            f = float(cam.mean_focal_length())
            nobs = im.num_points3D
            reason = None
            if nobs < min_observations:
                reason = f"observes {nobs} 3D points (fewer than {min_observations})"
            elif not (focal_range[0] * side <= f <= focal_range[1] * side):
                reason = (f"focal length {f:.1f} px is implausible for a {cam.width}x{cam.height} image "
                          f"(outside {focal_range[0]:g}-{focal_range[1]:g} x {side} px)")
            if reason:
                rec.deregister_frame(im.frame_id)
                removed.append({"image": im.name, "reason": reason})
                changed = True
    return removed


