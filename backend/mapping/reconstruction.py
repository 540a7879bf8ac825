"""Stage 5: COLMAP database, two-view geometric verification and incremental mapping with pycolmap
(Schönberger & Frahm, "Structure-from-Motion Revisited", CVPR 2016; github.com/colmap/colmap).

Some pycolmap calls abort the whole process (SIGABRT) instead of raising, so :func:`run_in_child` does all of
its pycolmap work in a child process (``python -m backend.mapping.reconstruction JOB.json``) and turns a crash into
:class:`MappingError`.

Intrinsics (``camera_mode="auto"``): images that metadata says share a camera (:func:`metadata_camera_groups`)
are mapped with one shared camera, kept when :func:`check_shared_groups` confirms it; otherwise one camera per
image, then sharing where the refined focal lengths agree (:func:`shared_camera_groups`). Mapping ends with
:func:`final_bundle_adjustment`.

Writes into the run folder:

- ``database.db``: the COLMAP database (cameras with focal-length priors, keypoints in COLMAP's pixel
  convention (centres at +0.5), raw matches, verified two-view geometries);
- ``two_view.h5``: ``/<image0>/<image1>/inliers`` int32 [K, 2] (indices into ``features.h5``) and attribute
  ``config`` (the two-view geometry type, e.g. ``CALIBRATED``) for every verified pair;
- ``sparse/<k>/``: every reconstructed model (COLMAP binary), largest first;
- ``mapping.json``: per model the number of registered images and points, and how cameras were handled;
- ``database_groups.json``: the shared-camera groups the database was built with;
- ``groups/<g>/``: when the scenes stage split the collection (:func:`map_scenes`), group g's own database (a copy
  of ``database.db`` without the verified pairs that leave the group), mapping files and models; ``sparse/<k>/``
  then holds the models of every scene, scene k's in ``sparse/<k>``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from ..config import MappingConfig

DATABASE = "database.db"
TWO_VIEW_H5 = "two_view.h5"
SPARSE = "sparse"
MAPPING_JSON = "mapping.json"
UNFOLDED_DATABASE = "database_unfolded.db"  # database.db without the pairs across a fold (see unfold)
DATABASE_GROUPS = "database_groups.json"


class MappingError(RuntimeError):
    """Verification or mapping failed, or pycolmap crashed; the message says what to try."""


GROUPS_DIR = "groups"  # groups/<g>/: the mapping work folder of group g of a collection split into scenes


def _inputs(run_dir: Path) -> Path:
    """The run folder whose ``images/``, ``features.h5`` and ``matches.h5`` a mapping folder reads: the folder
    itself, or for ``<run>/groups/<g>/`` (one group of a split collection, see :func:`map_scenes`) the run."""
    run_dir = Path(run_dir)
    if run_dir.parent.name == GROUPS_DIR and not (run_dir / "images.json").exists() \
            and (run_dir.parents[1] / "images.json").exists():
        return run_dir.parents[1]
    return run_dir


def _build_database(run_dir: Path, names: list[str], images: dict, pairs: list[tuple[str, str]], cfg: MappingConfig,
                    min_matches: int, report, groups: list[dict] | None = None) -> None:
    """Write ``database.db``: cameras, images, keypoints and the raw matches of pairs with >= ``min_matches``.

    ``groups``: images that share one camera, as ``[{"names": [...], "focal_px": f, "trusted": bool}]``; every
    other image gets its own camera. ``focal_px`` is the camera's initial focal length, marked as a prior
    (``has_prior_focal_length``) unless ``trusted`` is False. ``camera_mode`` ``shared`` puts all images in one
    group. The groups used are recorded in ``database_groups.json``.
    """
    import pycolmap

    from ..features.extract import to_colmap_keypoints
    from ..matchers.match import read_matches

    db_path = run_dir / DATABASE
    if db_path.exists():
        db_path.unlink()
    if cfg.camera_mode not in ("per_image", "shared", "auto"):
        raise MappingError(f"unknown camera_mode {cfg.camera_mode!r}: use per_image, shared or auto")
    if groups is None and cfg.camera_mode == "shared":
        sizes = {(images[n]["width"], images[n]["height"]) for n in names}
        if len(sizes) > 1:
            raise MappingError(f"camera_mode 'shared' needs images of one size, these have {len(sizes)} sizes: "
                               "use per_image or auto")
        groups = [{"names": list(names), "focal_px": images[names[0]]["focal_px"]}]
    groups = groups or []
    pycolmap.Database.open(db_path).close()  # creates the schema
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    grouped = set()
    focal_override = {}
    untrusted = set()
    for g in groups:
        if not g.get("trusted", True):
            untrusted.update(g["names"])
        pycolmap.import_images(db_path, _inputs(run_dir) / "images", pycolmap.CameraMode.SINGLE, g["names"], reader)
        grouped.update(g["names"])
        focal_override.update({n: g["focal_px"] for n in g["names"]})
    rest = [n for n in names if n not in grouped]
    if rest:
        pycolmap.import_images(db_path, _inputs(run_dir) / "images", pycolmap.CameraMode.PER_IMAGE, rest, reader)
    db = pycolmap.Database.open(db_path)
    try:
        name_to_id = {}
        for im in db.read_all_images():
            name_to_id[im.name] = im.image_id
        # our own focal prior (EXIF FocalLengthIn35mmFilm or 1.2 max(W, H), or a shared group's estimate)
        done_cams = set()
        for im in db.read_all_images():
            if im.camera_id in done_cams:
                continue
            done_cams.add(im.camera_id)
            info = images[im.name]
            focal = focal_override.get(im.name, info["focal_px"])
            cam = pycolmap.Camera.create_from_model_name(
                im.camera_id, cfg.camera_model, focal, info["width"], info["height"]
            )
            cam.has_prior_focal_length = info["focal_source"] == "exif" or (
                im.name in focal_override and im.name not in untrusted)
            db.update_camera(cam)
        with h5py.File(_inputs(run_dir) / "features.h5", "r") as f:
            for n in names:
                db.write_keypoints(name_to_id[n], to_colmap_keypoints(f[n]["keypoints"][()]))
        written = []
        with h5py.File(_inputs(run_dir) / "matches.h5", "r") as fm:
            for n0, n1 in pairs:
                m, _ = read_matches(fm, n0, n1)
                if len(m) >= min_matches:
                    db.write_matches(name_to_id[n0], name_to_id[n1], m.astype(np.uint32))
                    written.append((n0, n1))
    finally:
        db.close()
    (run_dir / DATABASE_GROUPS).write_text(json.dumps(groups))
    with open(run_dir / "pairs_matched.txt", "w") as f:
        for n0, n1 in written:
            f.write(f"{n0} {n1}\n")
    report("database", 1, 1, f"{len(written)} pairs with >= {min_matches} matches")


def _verify(run_dir: Path, cfg: MappingConfig, report) -> dict:
    import pycolmap

    opts = pycolmap.TwoViewGeometryOptions()
    opts.ransac.max_error = cfg.ransac_max_error
    opts.ransac.max_num_trials = cfg.ransac_max_trials
    opts.ransac.min_inlier_ratio = 0.1
    opts.min_num_inliers = cfg.min_num_inliers
    opts.ransac.random_seed = cfg.random_seed
    report("verification", 0, 1, "two-view geometry (RANSAC)")
    pycolmap.verify_matches(run_dir / DATABASE, run_dir / "pairs_matched.txt", opts)
    db = pycolmap.Database.open(run_dir / DATABASE)
    id_to_name = {im.image_id: im.name for im in db.read_all_images()}
    n_verified, inliers_total = 0, 0
    with h5py.File(run_dir / TWO_VIEW_H5, "w") as f:
        pair_ids, geoms = db.read_two_view_geometries()
        for pid, geom in zip(pair_ids, geoms):
            i0, i1 = _pair_id_to_image_ids(pid)
            inl = np.asarray(geom.inlier_matches, dtype=np.int32).reshape(-1, 2)
            g = f.require_group(id_to_name[i0]).create_group(id_to_name[i1])
            g.create_dataset("inliers", data=inl)
            g.attrs["config"] = getattr(geom.config, "name", str(geom.config))
            if len(inl):
                n_verified += 1
                inliers_total += len(inl)
    db.close()
    report("verification", 1, 1, f"{n_verified} verified pairs")
    return {"verified_pairs": n_verified, "inliers_total": inliers_total}


def _pair_id_to_image_ids(pair_id: int) -> tuple[int, int]:
    """COLMAP's pair id -> (image_id1, image_id2) (see colmap/scene/database.h, kMaxNumImages = 2^31 - 1)."""
    k = 2147483647
    i2 = pair_id % k
    i1 = (pair_id - i2) // k
    return int(i1), int(i2)


def _fresh_tmp(run_dir: Path) -> Path:
    """An empty ``run_dir/sparse_tmp`` for a mapper's own output (the kept models are written to ``sparse/``)."""
    tmp = run_dir / "sparse_tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _incremental(run_dir: Path, n_images: int, cfg: MappingConfig, report, label: str = "",
                 db: Path | None = None, early_stop=None) -> dict:
    """Incremental mapping of ``database.db`` (or ``db``): {index: pycolmap.Reconstruction}.

    ``early_stop(reconstruction) -> str | None``: looked at after registrations 6, 7, 8, 10, 12, 15, ... (x1.25, so
    its cost stays small on large collections) with the model being built; a reason string stops the call there
    (the pass is then recorded with ``stopped_early``, never as a time-bound stop).

    The time bound (:func:`mapping_time_bound`) is a stall guard, not a deadline: every registration moves COLMAP's
    ``max_runtime_seconds`` to "now + bound", so the call stops only after ``bound`` seconds without a new
    registration, or at the ceiling (:func:`mapping_time_ceiling`). A slow mapper that is still registering photos
    keeps them (issue 25: a 172 s deadline had cut 19 of 43 photos of an internet collection)."""
    import pycolmap

    opts = pycolmap.IncrementalPipelineOptions()
    opts.min_model_size = cfg.min_model_size
    opts.multiple_models = True
    opts.num_threads = cfg.num_threads
    opts.random_seed = cfg.random_seed
    opts.ba_refine_focal_length = cfg.refine_focal_length
    opts.ba_refine_extra_params = cfg.refine_extra_params
    bound = mapping_time_bound(cfg, n_images)
    ceiling = mapping_time_ceiling(cfg, n_images)
    opts.max_runtime_seconds = bound  # COLMAP stops registering and returns the models so far
    opts.ba_global_frames_ratio = opts.ba_global_points_ratio = cfg.ba_global_ratio
    opts.ba_global_max_refinements = cfg.ba_global_max_refinements
    opts.structure_less_registration_fallback = cfg.structure_less_fallback
    opts.mapper.ba_global_ignore_redundant_points3D = cfg.ba_ignore_redundant_points
    opts.image_path = str(_inputs(run_dir) / "images")
    db_path = Path(db or run_dir / DATABASE)
    if not db_path.is_file():  # Database.open would create an empty one and map nothing, silently
        raise MappingError(f"no COLMAP database at {db_path}: run the verification stage first")
    registered = [0]
    early = {"next": 6, "reason": None}
    database = pycolmap.Database.open(db_path)
    try:
        manager = pycolmap.ReconstructionManager()
        pipeline = pycolmap.IncrementalPipeline(opts, database, manager)

        def on_registration(first: bool = False):
            registered[0] += 1 + first
            if early["reason"] is not None:
                return
            if early_stop is not None and manager.size() and registered[0] >= early["next"]:
                early["next"] = max(early["next"] + 1, int(early["next"] * 1.25))
                early["reason"] = early_stop(manager.get(manager.size() - 1))
                if early["reason"] is not None:
                    pipeline.options.max_runtime_seconds = 1  # COLMAP stops at its next check
                    report("mapping", min(registered[0], n_images), n_images, f"stopped early: {early['reason']}")
                    return
            # COLMAP measures max_runtime_seconds from the start of run(): move the bound to bound s from now
            # (rounded up: the stall window is never shorter than the bound)
            pipeline.options.max_runtime_seconds = int(min(ceiling, math.ceil(time.perf_counter() - t0 + bound)))
            report("mapping", min(registered[0], n_images), n_images, f"registering image {registered[0]}")

        pipeline.add_callback(pycolmap.IncrementalPipelineCallback.INITIAL_IMAGE_PAIR_REG_CALLBACK,
                              lambda: on_registration(True))
        pipeline.add_callback(pycolmap.IncrementalPipelineCallback.NEXT_IMAGE_REG_CALLBACK, on_registration)
        report("mapping", 0, n_images, f"incremental mapping{label}")
        t0 = time.perf_counter()
        pipeline.run()
        seconds = time.perf_counter() - t0
        # COLMAP checks the bound only between steps; a call whose last step (the final global bundle adjustment)
        # ran past it also reads as stopped. With every image registered nothing was left out: not a stop.
        models = {i: manager.get(i) for i in range(manager.size())}
        placed = set().union(*(set(m.reg_image_ids()) for m in models.values())) if models else set()
        stopped = early["reason"] is None and pipeline.check_reached_max_runtime() and len(placed) < n_images
        at_ceiling = stopped and pipeline.options.max_runtime_seconds >= ceiling
    finally:
        database.close()
    if stopped:
        TIME_BOUND_HIT.append({"label": label.strip(" ()") or "mapping", "bound_seconds": bound,
                               "ceiling_seconds": ceiling, "at_ceiling": bool(at_ceiling),
                               "seconds": round(seconds, 2)})
        report("mapping", min(registered[0], n_images), n_images,
               f"stopped at the ceiling ({ceiling} s)" if at_ceiling else
               f"stopped: no new registration for {bound} s")
    kept = sum(m.num_reg_images() for m in models.values())
    PASSES.append({"label": label.strip(" ()") or "mapping", "seconds": round(seconds, 2), "bound_seconds": bound,
                   "ceiling_seconds": ceiling, "stopped_by_bound": bool(stopped),
                   "images": n_images, "models": len(models), "registered": int(kept),
                   "registrations": registered[0], "registrations_thrown_away": max(0, registered[0] - int(kept)),
                   **({"stopped_early": early["reason"]} if early["reason"] else {})})
    return models


TIME_BOUND_HIT: list[dict] = []
"""The incremental mapping calls of this process that stopped at their time bound (read into mapping.json)."""
PASSES: list[dict] = []
"""Every incremental mapping call of this process (mapping.json ``passes``, the profile ``python -m bench``
reports): ``label``, wall ``seconds``, ``bound_seconds`` (the stall bound), ``ceiling_seconds``,
``stopped_by_bound``, ``images``, ``models`` kept, ``registered`` (images in them), ``registrations`` (image
registrations during the call: the two of each initial pair, and images registered again after COLMAP's filtering
took them out or in models thrown away) and ``registrations_thrown_away`` (registrations minus registered)."""


def mapping_time_bound(cfg: MappingConfig, n_images: int) -> int:
    """Seconds (whole, >= 1) an incremental mapping call may go without registering an image:
    ``cfg.max_runtime_seconds`` when > 0, else max(``cfg.min_runtime_seconds``, ``cfg.max_seconds_per_image`` x
    ``n_images``). Then COLMAP stops registering images and returns the models it has (measured: church, a 1 s
    bound, 7 of 16 registered in 1.0 s against 16 in 4.7 s unbounded)."""
    if cfg.max_runtime_seconds > 0:
        return max(1, int(round(cfg.max_runtime_seconds)))
    return max(1, int(round(max(cfg.min_runtime_seconds, cfg.max_seconds_per_image * n_images))))


def mapping_time_ceiling(cfg: MappingConfig, n_images: int) -> int:
    """Seconds (whole) after which an incremental mapping call stops even while it is still registering images:
    max(:func:`mapping_time_bound`, ``cfg.ceiling_seconds_per_image`` x ``n_images``)."""
    return max(mapping_time_bound(cfg, n_images), int(round(cfg.ceiling_seconds_per_image * n_images)))


def _global(run_dir: Path, n_images: int, cfg: MappingConfig, report, label: str = "",
            db: Path | None = None) -> dict:
    """Global mapping of ``database.db`` with GLOMAP (Pan, Baráth, Pollefeys & Schönberger, "Global
    Structure-from-Motion Revisited", ECCV 2024; merged into COLMAP 4): rotation averaging, then all camera positions
    and points at once, then bundle adjustment and retriangulation. Pairs verified without known intrinsics (a
    fundamental matrix) are first upgraded with ``pycolmap.calibrate_view_graph`` (focal lengths from the
    fundamental matrices). Maps the largest connected part of the verified pair graph (and further ones with
    ``multiple_models``). Returns {index: pycolmap.Reconstruction}."""
    import pycolmap

    tmp = _fresh_tmp(run_dir)
    report("mapping", 0, n_images, f"global mapping{label}: calibrating the view graph")
    db = db or run_dir / DATABASE
    pycolmap.calibrate_view_graph(db)
    opts = pycolmap.GlobalPipelineOptions()
    opts.min_model_size = cfg.min_model_size
    opts.multiple_models = True
    opts.num_threads = cfg.num_threads
    opts.random_seed = cfg.random_seed
    opts.mapper.bundle_adjustment.refine_focal_length = cfg.refine_focal_length
    opts.mapper.bundle_adjustment.refine_extra_params = cfg.refine_extra_params
    report("mapping", 0, n_images, f"global mapping{label}: rotation averaging, positions, bundle adjustment")
    models = pycolmap.global_mapping(db, _inputs(run_dir) / "images", tmp, opts)
    shutil.rmtree(tmp, ignore_errors=True)
    return models


def _hierarchical(run_dir: Path, n_images: int, cfg: MappingConfig, report, label: str = "",
                  db: Path | None = None) -> dict:
    """COLMAP's hierarchical mapper (``pycolmap.hierarchical_mapping``; the partitioned incremental mapping of
    COLMAP's ``hierarchical_mapper``): the view graph is cut recursively (normalized cuts, two ways at a time) into
    leaf clusters of at most ``cfg.leaf_max_images`` photos, each then grown by up to ``min(50, leaf / 2)`` photos
    of its neighbours so that clusters overlap; each cluster is mapped incrementally (clusters in parallel, each
    under the incremental mapper's time bound), and the cluster models are merged through their shared photos. A
    collection of at most ``leaf_max_images`` photos is one cluster: incremental mapping.
    Returns {index: pycolmap.Reconstruction}."""
    import pycolmap

    tmp = _fresh_tmp(run_dir)
    opts = pycolmap.HierarchicalPipelineOptions()
    opts.num_threads = cfg.num_threads
    opts.clustering_options.leaf_max_num_images = cfg.leaf_max_images
    opts.clustering_options.image_overlap = min(50, cfg.leaf_max_images // 2)
    inc = opts.incremental_options
    inc.min_model_size = cfg.min_model_size
    inc.multiple_models = True
    inc.random_seed = cfg.random_seed
    inc.ba_refine_focal_length = cfg.refine_focal_length
    inc.ba_refine_extra_params = cfg.refine_extra_params
    inc.ba_global_frames_ratio = inc.ba_global_points_ratio = cfg.ba_global_ratio
    inc.mapper.ba_global_ignore_redundant_points3D = cfg.ba_ignore_redundant_points
    inc.max_runtime_seconds = mapping_time_bound(cfg, min(n_images, cfg.leaf_max_images + 50))
    report("mapping", 0, n_images, f"hierarchical mapping{label}: clusters of at most {cfg.leaf_max_images} photos "
                                   "mapped apart, then merged")
    models = pycolmap.hierarchical_mapping(db or run_dir / DATABASE, _inputs(run_dir) / "images", tmp, opts)
    shutil.rmtree(tmp, ignore_errors=True)
    return models


def _mapper(run_dir: Path, n_images: int, cfg: MappingConfig, report, label: str = "",
            db: Path | None = None, early_stop=None) -> dict:
    """The mapper that ``cfg.mapper`` names: :func:`_incremental`, :func:`_global` or :func:`_hierarchical`, on
    ``database.db`` or ``db`` (``early_stop``: see :func:`_incremental`; the other mappers run to the end)."""
    if cfg.mapper == "global":
        return _global(run_dir, n_images, cfg, report, label, db)
    if cfg.mapper == "hierarchical":
        return _hierarchical(run_dir, n_images, cfg, report, label, db)
    return _incremental(run_dir, n_images, cfg, report, label, db, early_stop)


def _copy_database(src: Path, dst: Path) -> None:
    """A consistent copy of a COLMAP (SQLite) database, its write-ahead log included."""
    import sqlite3

    if dst.exists():
        dst.unlink()
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def unfold(run_dir: Path, rec, n_images: int, cfg: MappingConfig, report) -> tuple[dict | None, dict]:
    """Check the largest model for a fold (:func:`backend.mapping.disambiguation.find_fold`) and, when it is folded,
    map again without the verified pairs between its two groups of images.

    The cut pairs are deleted from a copy of the database, ``database_unfolded.db`` (``database.db`` keeps every
    verified pair). The split is kept when no model of the second mapping holds at least
    :data:`~backend.mapping.disambiguation.MIN_GROUP` images of both groups (otherwise another path through the pair
    graph folded it again, and the first model stays). The larger group keeps its poses from the first model (that
    model without the other group's images; church: its side-A cameras were right at every threshold, a fresh
    mapping of them varied between runs); the other group's model comes from the second mapping.

    Returns:
        (the new models {index: pycolmap.Reconstruction} or None when nothing changed, a JSON-able record:
        ``folded``, ``best`` (groups, conflict, excess), ``cut_pairs``, ``split_kept``, ``seconds``).
    """
    import pycolmap

    from .disambiguation import MIN_GROUP, find_fold

    report("mapping", n_images, n_images, "checking the model for a fold (the same structure seen from two sides)")
    t0 = time.perf_counter()
    fr = find_fold(rec)
    info = {**fr.to_dict(), "seconds": round(time.perf_counter() - t0, 2)}
    if not fr.folded:
        return None, info
    g0, g1 = set(fr.best.group0), set(fr.best.group1)
    db_path = run_dir / UNFOLDED_DATABASE
    _copy_database(run_dir / DATABASE, db_path)
    db = pycolmap.Database.open(db_path)
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        cut = 0
        for a in sorted(g0):
            for b in sorted(g1):
                if db.exists_two_view_geometry(ids[a], ids[b]):
                    db.delete_two_view_geometry(ids[a], ids[b])
                    cut += 1
    finally:
        db.close()
    info["cut_pairs"] = cut
    report("mapping", 0, n_images, f"folded model: mapping again without the {cut} pairs between its two groups")
    remapped = _mapper(run_dir, n_images, cfg, report, " (unfolded)", db=db_path)

    def count(r, group):
        return sum(im.name in group for im in r.images.values() if im.has_pose)

    refolded = any(count(r, g0) >= MIN_GROUP and count(r, g1) >= MIN_GROUP for r in remapped.values())
    info["split_kept"] = bool(remapped) and not refolded
    info["seconds"] = round(time.perf_counter() - t0, 2)
    if not info["split_kept"]:
        return None, info
    # the larger group keeps its poses from the first model (the mapper built that model around it; the other group
    # was attached through the wrong pairs): the first model without the other group's images. The other group comes
    # from the second mapping (its models that hold more of the other group than of the larger one).
    host, other = (g0, g1) if len(g0) >= len(g1) else (g1, g0)
    trimmed = copy.deepcopy(rec)
    for im in list(trimmed.images.values()):
        if im.has_pose and im.name in other:
            trimmed.deregister_frame(im.frame_id)
    models = {0: trimmed}
    for r in remapped.values():
        if count(r, other) > count(r, host):
            models[len(models)] = r
    info["kept_from_first_model"] = sorted(im.name for im in trimmed.images.values() if im.has_pose)
    return models, info


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


def _database_groups(run_dir: Path) -> list | None:
    p = run_dir / DATABASE_GROUPS
    return json.loads(p.read_text()) if p.exists() else None


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
    for g, focals in zip(groups, _group_focals(rec, groups)):
        if len(focals) < 3 or max(focals) / min(focals) > max_spread:
            return False, False
        if len(focals) < min_registered * len(g["names"]):
            mostly = False
    return True, mostly


EARLY_SPREAD = 1.3
"""The focal-length spread (max / min) within a metadata group at which the shared-camera pass stops early
(:func:`_map`); the end check (:func:`check_shared_groups`) asks for at most 1.15 of the finished model."""


def _group_focals(rec, groups: list[dict]) -> list[list[float]]:
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
    """The largest focal-length spread (max / min of :func:`_group_focals`) over the groups with at least
    ``min_images`` estimates, or None when no group has that many yet."""
    spreads = [max(f) / min(f) for f in _group_focals(rec, groups) if len(f) >= min_images]
    return max(spreads) if spreads else None


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


def _map(run_dir: Path, names: list[str], images: dict, pairs: list, cfg: MappingConfig, min_matches: int,
         report) -> dict:
    """Mapping. ``camera_mode="auto"``: when metadata suggests shared cameras (:func:`metadata_camera_groups`)
    the first pass shares them, and is kept if :func:`check_shared_groups` confirms them; otherwise (or without
    such groups) one camera per image, then a pass with shared cameras where the refined focal lengths show that
    images share intrinsics (:func:`shared_camera_groups`); the pass that registers more images wins, the
    shared one on a tie."""
    out = run_dir / SPARSE
    if out.exists():
        shutil.rmtree(out)
    n_images = len(names)
    camera_info: dict = {"mode": cfg.camera_mode, "shared_groups": [], "passes": 1}

    def n_reg(ms):
        return max((r.num_reg_images() for r in ms.values()), default=0)

    def summary(groups):
        return [{"images": len(g["names"]), "focal_px": round(g["focal_px"], 1)} for g in groups]

    def use_cameras(groups: list[dict]) -> None:
        """Make ``database.db`` (and ``two_view.h5``) hold these shared-camera groups ([] = one camera per image);
        rebuilt and re-verified only when it holds other ones."""
        if _database_groups(run_dir) != groups:
            _build_database(run_dir, names, images, pairs, cfg, min_matches, report, groups=groups)
            _verify(run_dir, cfg, report)

    models = None
    if cfg.camera_mode == "auto":
        meta = metadata_camera_groups(images, names)
        if meta:
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

            models = _mapper(run_dir, n_images, cfg, report, " (shared cameras from metadata)",
                             early_stop=wrong_cameras)
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
                models = _mapper(run_dir, n_images, cfg, report)
                camera_info["per_image_pass_registered"] = n_reg(models)
                camera_info["shared_pass_registered"] = n_reg(meta_models)
                if n_reg(meta_models) >= n_reg(models):
                    models, mostly = meta_models, True
                    use_cameras(meta)
            if agree and mostly:
                refined = {im.name: float(best.cameras[im.camera_id].mean_focal_length())
                           for im in best.images.values() if im.has_pose}
                camera_info["shared_groups"] = summary(
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
    if models is None:
        if cfg.camera_mode == "auto":
            use_cameras([])
        models = _mapper(run_dir, n_images, cfg, report)
        if cfg.camera_mode == "auto" and models:
            best = max(models.values(), key=lambda r: r.num_reg_images())
            groups = shared_camera_groups(best, images, names)
            if groups:
                camera_info["passes"] += 1
                first_reg = best.num_reg_images()
                use_cameras(groups)
                models2 = _mapper(run_dir, n_images, cfg, report, " (shared cameras)")
                reg2 = n_reg(models2)
                camera_info["first_pass_registered"] = first_reg
                camera_info["shared_pass_registered"] = reg2
                if reg2 >= first_reg:
                    models = models2
                    camera_info["shared_groups"] = summary(groups)
                else:  # restore the database of the pass that is kept
                    use_cameras([])
    order = sorted(models.items(), key=lambda kv: (-kv[1].num_reg_images(), kv[0]))
    rescued = {}
    fold = None
    if order:
        report("mapping", n_images, n_images, "final bundle adjustment")
        rescued[order[0][0]] = rescue_runaway_focals(order[0][1], images)
        camera_info["final_ba"] = final_bundle_adjustment(
            order[0][1], cfg, constant_cameras=[r["camera_id"] for r in rescued[order[0][0]]])
        if cfg.disambiguate == "auto":
            unfolded, fold = unfold(run_dir, order[0][1], n_images, cfg, report)
            if unfolded is not None:
                models, rescued = unfolded, {}
                for key, rec in models.items():  # every model of the split gets the final adjustment
                    if rec.num_reg_images() >= cfg.min_model_size:
                        rescued[key] = rescue_runaway_focals(rec, images)
                        final_bundle_adjustment(rec, cfg, constant_cameras=[r["camera_id"] for r in rescued[key]])
    deregistered = {}
    for key, rec in models.items():
        deregistered[key] = deregister_implausible(rec)
    order = [(k, r) for k, r in sorted(models.items(), key=lambda kv: (-kv[1].num_reg_images(), kv[0]))
             if r.num_reg_images() >= 2]
    # COLMAP can start a later model from images a larger one already holds: such a model adds nothing
    kept, seen_names = [], set()
    for k, r in order:
        reg = {im.name for im in r.images.values() if im.has_pose}
        if reg <= seen_names:
            continue
        kept.append((k, r))
        seen_names |= reg
    order = kept
    out.mkdir()
    summary = []
    for k, (key, rec) in enumerate(order):
        d = out / str(k)
        d.mkdir()
        rec.write(d)
        summary.append({
            "model": k,
            "registered_images": rec.num_reg_images(),
            "points": rec.num_points3D(),
            "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
            "mean_track_length": float(rec.compute_mean_track_length()),
            "deregistered": deregistered.get(key, []),
            "focal_rescued": [{k: v for k, v in r.items() if k != "camera_id"} for r in rescued.get(key, [])],
        })
    dropped = [d for key, ds in deregistered.items() for d in ds if key not in dict(order)]
    return {"models": summary, "cameras": camera_info, "deregistered_outside_models": dropped, "fold": fold,
            "time_bound_seconds": mapping_time_bound(cfg, n_images), "stopped_at_time_bound": list(TIME_BOUND_HIT),
            "passes": list(PASSES)}


def _group_database(run_dir: Path, gdir: Path, members: list[str], images: dict, cfg: MappingConfig) -> int:
    """Give group folder ``gdir`` its own ``database.db``: a copy of the run's without the verified pairs that leave
    the group (its images are the only ones the mapper can register), so no pair is verified twice. The copy keeps
    the run's cameras; ``database_groups.json`` says so when they are the shared-camera groups :func:`_map` would
    choose for these images (otherwise :func:`_map` rebuilds and verifies the group's database). Returns the number
    of verified pairs removed."""
    import pycolmap

    gdir.mkdir(parents=True, exist_ok=True)
    _copy_database(run_dir / DATABASE, gdir / DATABASE)
    inside = set(members)
    db = pycolmap.Database.open(gdir / DATABASE)
    removed = 0
    try:
        id_to_name = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, _ = db.read_two_view_geometries()
        for pid in pair_ids:
            i0, i1 = _pair_id_to_image_ids(pid)
            if id_to_name[i0] not in inside or id_to_name[i1] not in inside:
                db.delete_two_view_geometry(i0, i1)
                removed += 1
    finally:
        db.close()
    run_groups = _database_groups(run_dir)
    if run_groups is not None:
        restricted = sorted(sorted(n for n in g["names"] if n in inside) for g in run_groups)
        restricted = [g for g in restricted if g]
        wanted = metadata_camera_groups(images, members) if cfg.camera_mode == "auto" else None
        if wanted is not None and sorted(sorted(g["names"]) for g in wanted) == restricted:
            (gdir / DATABASE_GROUPS).write_text(json.dumps(wanted))
        elif cfg.camera_mode != "auto":
            (gdir / DATABASE_GROUPS).write_text(json.dumps(run_groups))
    return removed


def _registered_names(model_dir: Path) -> list[str]:
    import pycolmap

    rec = pycolmap.Reconstruction(model_dir)
    return sorted(im.name for im in rec.images.values() if im.has_pose)


def map_scenes(run_dir: Path, names: list[str], images: dict, pairs: list, cfg: MappingConfig, min_matches: int,
               report, split: dict | None) -> dict:
    """Map each group of the scenes stage on its own, then turn models into scenes (rule 4 of
    :mod:`backend.mapping.scenes`).

    One group holding every photo is mapped in the run folder as before (:func:`_map`); otherwise group g is mapped in
    ``groups/<g>/`` (:func:`_group_database`) and the models of the scenes are copied to ``sparse/<k>`` in scene order.
    Scenes are ordered by their number of photos, largest first, the scenes that gave no model last (a group whose
    photos belong together by verified pairs stays a scene, without poses: the IMC 2025 metric counts it as a
    cluster); scene k's model is ``sparse/<k>``.

    Args:
        split: :meth:`backend.mapping.scenes.SceneSplit.to_dict` (None: one scene of every image).

    Returns:
        :func:`_map`'s result (``models`` as in ``sparse/``; ``cameras`` and ``fold`` of the largest group, and
        ``groups``: each group's own) plus ``scenes`` (``[{"name", "images", "registered", "model", "group",
        "why"}]``) and ``outliers`` (``[{"image", "reason"}]``).
    """
    from .scenes import SceneSplit

    sp = SceneSplit.from_dict(split) if split else SceneSplit([sorted(names)], [], mode="single")
    min_size = sp.min_scene_size
    groups_root = run_dir / GROUPS_DIR
    if groups_root.exists():
        shutil.rmtree(groups_root)
    trivial = len(sp.groups) == 1 and len(sp.groups[0]) == len(names)
    per_group = []  # (folder whose sparse/ holds the models, _map result)
    if trivial:
        per_group.append((run_dir, _map(run_dir, names, images, pairs, cfg, min_matches, report)))
    else:
        for g, members in enumerate(sp.groups):
            gdir = groups_root / str(g)
            inside = set(members)
            report("mapping", 0, len(members), f"group {g + 1} of {len(sp.groups)}: {len(members)} photos")
            _group_database(run_dir, gdir, members, images, cfg)
            gpairs = [p for p in pairs if p[0] in inside and p[1] in inside]
            per_group.append((gdir, _map(gdir, members, images, gpairs, cfg, min_matches, report)))
    scenes, outliers = [], list(sp.outliers)
    for g, (gdir, res) in enumerate(per_group):
        members = sp.groups[g]
        regs = [(k, _registered_names(gdir / SPARSE / str(k))) for k in range(len(res["models"]))]
        if sp.mode == "single":
            big = regs[:1]
        else:
            big, taken = [], set()
            for k, r in regs:  # (an image COLMAP registered in two models counts in the larger one)
                r = [n for n in r if n not in taken]
                if len(r) >= min_size:
                    big.append((k, r))
                    taken.update(r)
        held = set().union(*(set(r) for _, r in big)) if big else set()
        rest = [n for n in members if n not in held]
        for j, (k, reg) in enumerate(big):
            why = f"group {g}: {len(members)} photos joined by verified pairs"
            if len(big) > 1:
                why += (f"; the mapper made {len(big)} models of it (no consistent way to join them), this is "
                        f"model {j + 1}")
            scenes.append({"images": sorted(reg + (rest if j == 0 else [])), "registered": reg, "group": g,
                           "group_model": k, "why": why, "_dir": str(gdir / SPARSE / str(k)),
                           "_summary": res["models"][k]})
        if not big:  # the photos belong together (verified pairs) but no model came of them: a scene without poses
            why = ("one scene (scenes mode 'single')" if sp.mode == "single" else
                   f"group {g}: {len(members)} photos joined by verified pairs; not reconstructed (no model with at "
                   f"least {min_size} registered photos)")
            scenes.append({"images": sorted(members), "registered": [], "group": g, "group_model": None,
                           "why": why, "_dir": None, "_summary": None})
    if not trivial:  # (one group: the scenes are in model order already, largest first)
        scenes.sort(key=lambda sc: (sc["_dir"] is None, -len(sc["images"]), -len(sc["registered"]), sc["images"][0]))
    if trivial:
        result = dict(per_group[0][1])
        model_summaries = result["models"]
        for i, sc in enumerate(scenes):  # the scenes' models are sparse/0..S-1 already (largest first)
            sc["model"] = sc["group_model"]
    else:
        out = run_dir / SPARSE
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        model_summaries = []
        for sc in scenes:
            if sc["_dir"] is None:
                sc["model"] = None
                continue
            sc["model"] = len(model_summaries)
            shutil.copytree(sc["_dir"], out / str(sc["model"]))
            model_summaries.append({**sc["_summary"], "model": sc["model"]})
        first = per_group[0][1] if per_group else {}
        result = {"models": model_summaries, "cameras": first.get("cameras", {}), "fold": first.get("fold"),
                  "deregistered_outside_models": [d for _, r in per_group for d in r["deregistered_outside_models"]],
                  "time_bound_seconds": first.get("time_bound_seconds"),
                  "stopped_at_time_bound": list(TIME_BOUND_HIT), "passes": list(PASSES),
                  "groups": [{"group": g, "images": len(sp.groups[g]), "cameras": r.get("cameras"),
                              "fold": r.get("fold"), "models": [m["registered_images"] for m in r["models"]]}
                             for g, (_, r) in enumerate(per_group)]}
    for i, sc in enumerate(scenes):
        sc["name"] = f"scene{i}"
        sc.pop("_dir")
        sc.pop("_summary")
        sc.pop("group_model")
    outliers.sort(key=lambda o: o["image"])
    result["scenes"] = [{k: sc[k] for k in ("name", "images", "registered", "model", "group", "why")}
                        for sc in scenes]
    result["outliers"] = outliers
    return result


MIN_OBSERVATIONS = 15  # a registered image must observe at least this many 3D points
FOCAL_RANGE = (0.1, 10.0)  # plausible focal length, in units of the image's longer side


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


def _child_main(job_file: str) -> int:
    """Entry point of the mapping child (``python -m backend.mapping.reconstruction JOB.json``).

    Reads its arguments from the JSON job file and writes one JSON message per line on stdout:
    ``["progress", stage, done, total, message]``, then ``["done", result]`` or ``["error", message]``.
    """
    job = json.loads(Path(job_file).read_text())
    out = sys.stdout
    sys.stdout = sys.stderr  # anything else that prints must not corrupt the message stream

    def send(*msg):
        out.write(json.dumps(msg) + "\n")
        out.flush()

    def report(stage, done, total, msg):
        send("progress", stage, done, total, msg)

    try:
        import pycolmap

        no_colmap_log_files()
        if not os.environ.get("SFM_COLMAP_VERBOSE"):
            pycolmap.logging.minloglevel = 2  # errors only; progress comes through the messages
        mcfg = MappingConfig(**job["cfg"])
        rd = Path(job["run_dir"])
        names, images, pairs = job["names"], job["images"], [tuple(p) for p in job["pairs"]]
        result: dict = {}
        if "verification" in job["stages"]:
            groups = metadata_camera_groups(images, names) if mcfg.camera_mode == "auto" else None
            _build_database(rd, names, images, pairs, mcfg, job["min_matches"], report, groups=groups)
            result.update(_verify(rd, mcfg, report))
        if "mapping" in job["stages"]:
            if os.environ.get("SFM_FAULT_INJECT") == "abort-mapping":  # tests: behave like a pycolmap abort
                os.abort()
            result.update(map_scenes(rd, names, images, pairs, mcfg, job["min_matches"], report, job.get("split")))
        send("done", result)
    except MappingError as e:
        send("error", str(e))
    except Exception as e:  # noqa: BLE001 - forwarded to the parent as a readable message
        send("error", f"{type(e).__name__}: {e}")
        traceback.print_exc()
    return 0


def no_colmap_log_files() -> None:
    """Stop COLMAP's glog (inside pycolmap) from writing ``.<host>.<user>.log.<LEVEL>.<date>.<pid>`` files into
    the system temp folder, for the rest of this process; its lines still go to stderr (the mapping child's stderr
    is the run's ``mapping.log``). Done in the process: pycolmap's glog ignores ``GLOG_*`` environment variables."""
    import pycolmap

    lg = pycolmap.logging
    for level in (lg.INFO, lg.WARNING, lg.ERROR, lg.FATAL):
        lg.set_log_destination(level, "")  # "" = no log file for this severity


def run_in_child(
    run_dir: Path,
    names: list[str],
    images: dict,
    pairs: list[tuple[str, str]],
    cfg: MappingConfig,
    min_matches: int,
    stages: list[str],
    progress: Callable[[str, int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    split: dict | None = None,
) -> dict:
    """Run ``stages`` (``"verification"``, ``"mapping"``) in a child Python process; mapping maps the groups of
    ``split`` (:meth:`backend.mapping.scenes.SceneSplit.to_dict`; None: one scene) with :func:`map_scenes`.

    The child is a plain subprocess (``python -m backend.mapping.reconstruction``), not ``multiprocessing``, so it works
    from any caller (scripts without a ``__main__`` guard, Streamlit, threads) and a pycolmap abort (SIGABRT) only
    ends the child. Returns the merged result dicts of the stages, plus ``child_peak_rss_mb``. Progress arrives as
    ``progress(stage, done, total, msg)``.

    Raises:
        MappingError: pycolmap raised, the child died (e.g. SIGABRT), or ``cancel`` was set.
    """
    import psutil

    run_dir = Path(run_dir)
    job_file = run_dir / "mapping_job.json"
    job_file.write_text(json.dumps({
        "run_dir": str(run_dir), "names": names, "images": images, "pairs": [list(p) for p in pairs],
        "cfg": vars(cfg).copy(), "min_matches": min_matches, "stages": stages, "split": split,
    }))
    log_path = run_dir / "mapping.log"
    repo_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = repo_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "ab") as log:
        p = subprocess.Popen([sys.executable, "-m", "backend.mapping.reconstruction", str(job_file)], cwd=repo_root,
                             env=env, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
    messages: queue.Queue = queue.Queue()

    def reader():
        for line in p.stdout:
            try:
                messages.put(json.loads(line))
            except json.JSONDecodeError:
                pass
        messages.put(None)

    threading.Thread(target=reader, daemon=True).start()
    try:
        ps = psutil.Process(p.pid)
    except psutil.Error:
        ps = None
    peak, result, error, eof = 0.0, None, None, False
    while not eof:
        try:
            msg = messages.get(timeout=0.2)
        except queue.Empty:
            msg = ()
        if ps is not None:
            try:
                peak = max(peak, ps.memory_info().rss / 2**20)
            except psutil.Error:
                pass
        if msg is None:
            eof = True
        elif msg:
            if msg[0] == "progress" and progress:
                progress(*msg[1:])
            elif msg[0] == "done":
                result = msg[1]
            elif msg[0] == "error":
                error = msg[1]
        if cancel is not None and cancel.is_set():
            p.terminate()
            p.wait(10)
            raise MappingError("cancelled")
    code = p.wait()
    if error is None and result is None:
        sig = f"signal {-code}" if code < 0 else f"exit code {code}"
        error = (f"pycolmap crashed ({sig}) during {'/'.join(stages)}. The stages before it are kept; try another "
                 f"preset, more keypoints or another camera mode, and look at the Matches page for weak pairs "
                 f"(details: {log_path.name}).")
    if error is not None:
        raise MappingError(error)
    result["child_peak_rss_mb"] = round(peak, 1)
    return result


def read_mapping_summary(run_dir: Path) -> dict:
    """``mapping.json`` of a run."""
    return json.loads((Path(run_dir) / MAPPING_JSON).read_text())


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
