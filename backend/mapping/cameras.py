"""Which photos share a camera (intrinsics), and the camera policy of ``camera_mode="auto"``.

Images that metadata says share a camera (:func:`metadata_camera_groups`) are mapped with one shared camera, kept
when :func:`check_shared_groups` confirms it; otherwise one camera per image, then sharing where the refined focal
lengths agree (:func:`shared_camera_groups`). :func:`choose_cameras` runs that policy over a mapper and a database
it is given, so the policy itself holds no pycolmap state.

A group is ``{"names": [...], "focal_px": f, "trusted": bool}`` (``trusted``: the focal length comes from EXIF and
is a prior for the mapper).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..config import MappingConfig

EARLY_SPREAD = 1.3
"""The focal-length spread (max / min) within a metadata group at which the shared-camera pass stops early
(:func:`_metadata_pass`); the end check (:func:`check_shared_groups`) asks for at most 1.15 of the finished model."""


def metadata_camera_groups(images: dict, names: list[str], min_size: int = 3) -> list[dict]:
    """Images that probably share one camera, from metadata alone: the same size (W, H) and the same EXIF make,
    model and focal length (or no EXIF at all), in groups of at least ``min_size``.

    Video frames, turntables and renders become one group; phone photos from a wide and a tele lens without EXIF
    also do, which :func:`check_shared_groups` catches after mapping. Returns ``[{"names": [...], "focal_px": f}]``
    with the group's median focal-length prior in px.
    """
    by_key: dict[tuple, list[str]] = {}
    for n in names:
        i = images[n]
        key = (i["width"], i["height"], i.get("make", ""), i.get("model", ""), i.get("exif_focal_mm"))
        by_key.setdefault(key, []).append(n)
    return [{"names": m, "focal_px": float(np.median([images[n]["focal_px"] for n in m])),
             "trusted": all(images[n]["focal_source"] == "exif" for n in m)}
            for m in by_key.values() if len(m) >= min_size]


def shared_camera_groups(rec, images: dict, names: list[str], max_spread: float = 1.08,
                         min_registered: float = 0.8) -> list[dict]:
    """Groups of images that evidently share intrinsics, from a reconstruction with one camera per image.

    Images are grouped by size (W, H); a group of >= 3 images is shared when at least ``min_registered`` of it is
    registered and the refined focal lengths of its registered images agree within ``max_spread`` (max / min).
    Returns ``[{"names": [...], "focal_px": median focal}]``. Phone photos from a wide and a tele camera, or
    internet photos, stay per image; a video or a turntable becomes one camera.
    """
    by_size: dict[tuple, list[str]] = {}
    for n in names:
        by_size.setdefault((images[n]["width"], images[n]["height"]), []).append(n)
    focal = {}
    for im in rec.images.values():
        if im.has_pose:
            focal[im.name] = float(rec.cameras[im.camera_id].mean_focal_length())
    groups = []
    for members in by_size.values():
        f = [focal[n] for n in members if n in focal]
        if len(members) >= 3 and len(f) >= max(3, min_registered * len(members)) and max(f) / min(f) <= max_spread:
            groups.append({"names": members, "focal_px": float(np.median(f))})
    return groups


def check_shared_groups(rec, groups: list[dict], max_spread: float = 1.15,
                        min_registered: float = 0.9) -> tuple[bool, bool]:
    """How far a reconstruction made with shared cameras confirms its groups: ``(focals_agree, mostly_registered)``.

    Each registered image of a group re-estimates its own focal length from its 2D-3D correspondences
    (``pycolmap.estimate_and_refine_absolute_pose`` with focal refinement, starting from the shared camera).
    ``focals_agree``: in every group at least 3 images could do so and their focal lengths agree within
    ``max_spread`` (max / min). ``mostly_registered``: in every group at least ``min_registered`` of the images did.
    A wide and a tele lens forced into one camera fail one of the two tests; a scene that splits into several models
    fails only the second.
    """
    mostly = True
    for g, focals in zip(groups, group_focals(rec, groups)):
        if len(focals) < 3 or max(focals) / min(focals) > max_spread:
            return False, False
        if len(focals) < min_registered * len(g["names"]):
            mostly = False
    return True, mostly


def group_focals(rec, groups: list[dict]) -> list[list[float]]:
    """Per group, the focal lengths (px) its registered images estimate on their own from their 2D-3D
    correspondences (at least 20; ``pycolmap.estimate_and_refine_absolute_pose`` with focal refinement, starting
    from the shared camera)."""
    import pycolmap

    name_to_image = {im.name: im for im in rec.images.values()}
    out = []
    for g in groups:
        focals = []
        for n in g["names"]:
            im = name_to_image.get(n)
            if im is None or not im.has_pose:
                continue
            pts = [(p.xy, rec.points3D[p.point3D_id].xyz) for p in im.points2D if p.has_point3D()]
            if len(pts) < 20:
                continue
            src = rec.cameras[im.camera_id]
            cam = pycolmap.Camera.create_from_model_name(src.camera_id, src.model.name, src.mean_focal_length(),
                                                         src.width, src.height)
            cam.params = src.params
            ref = pycolmap.AbsolutePoseRefinementOptions()
            ref.refine_focal_length = True
            est = pycolmap.AbsolutePoseEstimationOptions()
            est.ransac.max_error = 4.0
            r = pycolmap.estimate_and_refine_absolute_pose(
                np.array([a for a, _ in pts], np.float64), np.array([b for _, b in pts], np.float64), cam, est, ref)
            if r is not None:
                focals.append(cam.mean_focal_length())
        out.append(focals)
    return out


def shared_group_spread(rec, groups: list[dict], min_images: int = 5) -> float | None:
    """The largest focal-length spread (max / min of :func:`group_focals`) over the groups with at least
    ``min_images`` estimates, or None when no group has that many yet."""
    spreads = [max(f) / min(f) for f in group_focals(rec, groups) if len(f) >= min_images]
    return max(spreads) if spreads else None


def _n_registered(models: dict) -> int:
    return max((r.num_reg_images() for r in models.values()), default=0)


def _group_summary(groups: list[dict]) -> list[dict]:
    return [{"images": len(g["names"]), "focal_px": round(g["focal_px"], 1)} for g in groups]


def choose_cameras(cfg: MappingConfig, names: list[str], images: dict,
                   use_cameras: Callable[[list[dict]], None],
                   run_pass: Callable[..., dict]) -> tuple[dict, dict]:
    """Map with the camera policy of ``cfg.camera_mode``, and say how cameras were handled.

    ``auto``: when metadata suggests shared cameras (:func:`metadata_camera_groups`) the first pass shares them
    (stopped early when the model being built shows their focal lengths more than :data:`EARLY_SPREAD` apart), and
    is kept if :func:`check_shared_groups` confirms them; otherwise (or without such groups) one camera per image,
    then a pass with shared cameras where the refined focal lengths show that images share intrinsics
    (:func:`shared_camera_groups`); the pass that registers more images wins, the shared one on a tie.
    ``per_image`` and ``shared``: one pass on the database as it was built.

    Args:
        cfg: the mapping configuration (``camera_mode``).
        names: the photos to map; ``images``: name -> metadata (``width``, ``height``, ``focal_px``,
            ``focal_source``, EXIF ``make`` / ``model`` / ``exif_focal_mm``).
        use_cameras: ``use_cameras(groups)`` makes the database hold these shared-camera groups (``[]``: one camera
            per image), rebuilding and re-verifying it when it holds other ones.
        run_pass: ``run_pass(label, early_stop=None)`` maps the database as it is and returns
            ``{index: pycolmap.Reconstruction}`` (``early_stop``: see :func:`.mappers.incremental`).

    Returns:
        ``(models, camera_info)``: the kept pass's models (the database holds its cameras on return) and a JSON-able
        record: ``mode``, ``passes``, ``shared_groups`` (``[{"images", "focal_px"}]``), and where they apply
        ``metadata_groups_confirmed``, ``shared_pass_stopped_early``, ``first_pass_registered``,
        ``per_image_pass_registered``, ``shared_pass_registered``.
    """
    camera_info: dict = {"mode": cfg.camera_mode, "shared_groups": [], "passes": 1}
    models = None
    if cfg.camera_mode == "auto":
        meta = metadata_camera_groups(images, names)
        if meta:
            models = _metadata_pass(meta, use_cameras, run_pass, camera_info)
    if models is None:
        if cfg.camera_mode == "auto":
            use_cameras([])
        models = run_pass("")
        if cfg.camera_mode == "auto" and models:
            models = _refined_shared_pass(models, names, images, use_cameras, run_pass, camera_info)
    return models, camera_info


def _metadata_pass(meta: list[dict], use_cameras, run_pass, camera_info: dict) -> dict | None:
    """The pass with the metadata groups' shared cameras (see :func:`choose_cameras`): its models, the per-image
    pass's models when that registers more, or None when the shared cameras are wrong (the database then holds one
    camera per image). Records its decision in ``camera_info``."""
    use_cameras(meta)  # the verification stage normally built it so already
    early: list[str] = []

    def wrong_cameras(rec) -> str | None:
        """Stop the shared pass as soon as the model being built shows the focal lengths far apart (church:
        1.36x at the 9th of 15 photos, against 1.01x on temple's true shared camera; the full pass then spent
        15 s more before the end check threw it away)."""
        spread = shared_group_spread(rec, meta)
        if spread is not None and spread > EARLY_SPREAD:
            early.append(f"the photos' own focal lengths differ by {spread:.2f}x (> {EARLY_SPREAD}x) at "
                         f"{rec.num_reg_images()} registered")
            return early[-1]
        return None

    models = run_pass(" (shared cameras from metadata)", early_stop=wrong_cameras)
    best = max(models.values(), key=lambda r: r.num_reg_images()) if models else None
    agree, mostly = check_shared_groups(best, meta) if best is not None and not early else (False, False)
    if early:
        camera_info["shared_pass_stopped_early"] = early[0]
    if agree and not mostly:
        # focal lengths agree, but many images are missing from the largest model (the scene may have split):
        # keep the shared pass unless one camera per image registers more
        camera_info["passes"] += 1
        meta_models = models
        use_cameras([])
        models = run_pass("")
        camera_info["per_image_pass_registered"] = _n_registered(models)
        camera_info["shared_pass_registered"] = _n_registered(meta_models)
        if _n_registered(meta_models) >= _n_registered(models):
            models, mostly = meta_models, True
            use_cameras(meta)
    if agree and mostly:
        refined = {im.name: float(best.cameras[im.camera_id].mean_focal_length())
                   for im in best.images.values() if im.has_pose}
        camera_info["shared_groups"] = _group_summary(
            [{**g, "focal_px": float(np.median([refined[n] for n in g["names"] if n in refined]))}
             for g in meta])
        camera_info["metadata_groups_confirmed"] = True
    elif not agree:
        camera_info["metadata_groups_confirmed"] = False
        camera_info["passes"] += 1
        use_cameras([])
        models = None
    else:  # the per-image pass registered more: keep it
        camera_info["metadata_groups_confirmed"] = False
    return models


def _refined_shared_pass(models: dict, names: list[str], images: dict, use_cameras, run_pass,
                         camera_info: dict) -> dict:
    """After a pass with one camera per image: a pass with shared cameras where the refined focal lengths show
    that images share intrinsics (:func:`shared_camera_groups`), kept when it registers at least as many images.
    Returns the kept pass's models (the database holds its cameras)."""
    best = max(models.values(), key=lambda r: r.num_reg_images())
    groups = shared_camera_groups(best, images, names)
    if not groups:
        return models
    camera_info["passes"] += 1
    first_reg = best.num_reg_images()
    use_cameras(groups)
    models2 = run_pass(" (shared cameras)")
    reg2 = _n_registered(models2)
    camera_info["first_pass_registered"] = first_reg
    camera_info["shared_pass_registered"] = reg2
    if reg2 >= first_reg:
        camera_info["shared_groups"] = _group_summary(groups)
        return models2
    use_cameras([])  # restore the database of the pass that is kept
    return models
