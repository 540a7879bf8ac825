"""The three pycolmap mappers behind ``--mapper``: incremental (Schönberger & Frahm, "Structure-from-Motion
Revisited", CVPR 2016), global (GLOMAP: Pan, Baráth, Pollefeys & Schönberger, "Global Structure-from-Motion
Revisited", ECCV 2024, merged into COLMAP 4) and hierarchical (COLMAP's ``hierarchical_mapper``).

Each maps a COLMAP database (:mod:`.database`, verified by :mod:`.verification`) and returns
``{index: pycolmap.Reconstruction}``. The options they share come from one table, :data:`OPTIONS`. What each
incremental pass did is recorded in a :class:`MappingLog` (``mapping.json`` ``passes`` and
``stopped_at_time_bound``).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config import MappingConfig
from ..errors import MappingError
from .database import DATABASE, inputs_dir


@dataclass
class MappingLog:
    """What the incremental mapping calls of one mapping stage did (``mapping.json``; the profile ``python -m
    bench`` reports).

    Attributes:
        passes: every incremental call: ``label``, wall ``seconds``, ``bound_seconds`` (the stall bound),
            ``ceiling_seconds``, ``stopped_by_bound``, ``images``, ``models`` kept, ``registered`` (images in them),
            ``registrations`` (image registrations during the call: the two of each initial pair, and images
            registered again after COLMAP's filtering took them out or in models thrown away),
            ``registrations_thrown_away`` (registrations minus registered) and, where it applies,
            ``stopped_early`` (the reason).
        time_bound_hits: the calls that stopped at their time bound: ``label``, ``bound_seconds``,
            ``ceiling_seconds``, ``at_ceiling``, ``seconds``.
    """

    passes: list[dict] = field(default_factory=list)
    time_bound_hits: list[dict] = field(default_factory=list)


# Options every mapper takes from the configuration: (config field or a constant, the option's attribute path on
# IncrementalPipelineOptions (also each cluster of the hierarchical mapper), on GlobalPipelineOptions; None: the
# mapper has no such option).
OPTIONS: list[tuple[Callable[[MappingConfig], object], str | None, str | None]] = [
    (lambda c: c.min_model_size, "min_model_size", "min_model_size"),
    (lambda c: True, "multiple_models", "multiple_models"),
    (lambda c: c.random_seed, "random_seed", "random_seed"),
    (lambda c: c.refine_focal_length, "ba_refine_focal_length", "mapper.bundle_adjustment.refine_focal_length"),
    (lambda c: c.refine_extra_params, "ba_refine_extra_params", "mapper.bundle_adjustment.refine_extra_params"),
    (lambda c: c.ba_global_ratio, "ba_global_frames_ratio", None),
    (lambda c: c.ba_global_ratio, "ba_global_points_ratio", None),
    (lambda c: c.ba_global_max_refinements, "ba_global_max_refinements", None),
    (lambda c: c.structure_less_fallback, "structure_less_registration_fallback", None),
    (lambda c: c.ba_ignore_redundant_points, "mapper.ba_global_ignore_redundant_points3D", None),
]


def apply_options(opts, cfg: MappingConfig, kind: str) -> None:
    """Set the :data:`OPTIONS` of ``kind`` (``"incremental"`` or ``"global"``) on pycolmap's options object
    ``opts`` from ``cfg``."""
    column = {"incremental": 1, "global": 2}[kind]
    for row in OPTIONS:
        path = row[column]
        if path is None:
            continue
        *parents, leaf = path.split(".")
        target = opts
        for p in parents:
            target = getattr(target, p)
        setattr(target, leaf, row[0](cfg))


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


def _fresh_tmp(run_dir: Path) -> Path:
    """An empty ``run_dir/sparse_tmp`` for a mapper's own output (the kept models are written to ``sparse/``)."""
    tmp = run_dir / "sparse_tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def incremental(run_dir: Path, n_images: int, cfg: MappingConfig, report, log: MappingLog, label: str = "",
                db: Path | None = None, early_stop=None) -> dict:
    """Incremental mapping of ``database.db`` (or ``db``): {index: pycolmap.Reconstruction}.

    ``early_stop(reconstruction) -> str | None``: looked at after registrations 6, 7, 8, 10, 12, 15, ... (x1.25, so
    its cost stays small on large collections) with the model being built; a reason string stops the call there
    (the pass is then recorded with ``stopped_early``, never as a time-bound stop).

    The time bound (:func:`mapping_time_bound`) is a stall guard, not a deadline: every registration moves COLMAP's
    ``max_runtime_seconds`` to "now + bound", so the call stops only after ``bound`` seconds without a new
    registration, or at the ceiling (:func:`mapping_time_ceiling`). A slow mapper that is still registering photos
    keeps them (issue 25: a 172 s deadline had cut 19 of 43 photos of an internet collection). The call is recorded
    in ``log``.

    Raises:
        MappingError: there is no database to map.
    """
    import pycolmap

    opts = pycolmap.IncrementalPipelineOptions()
    apply_options(opts, cfg, "incremental")
    opts.num_threads = cfg.num_threads
    bound = mapping_time_bound(cfg, n_images)
    ceiling = mapping_time_ceiling(cfg, n_images)
    opts.max_runtime_seconds = bound  # COLMAP stops registering and returns the models so far
    opts.image_path = str(inputs_dir(run_dir) / "images")
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
        log.time_bound_hits.append({"label": label.strip(" ()") or "mapping", "bound_seconds": bound,
                                    "ceiling_seconds": ceiling, "at_ceiling": bool(at_ceiling),
                                    "seconds": round(seconds, 2)})
        report("mapping", min(registered[0], n_images), n_images,
               f"stopped at the ceiling ({ceiling} s)" if at_ceiling else
               f"stopped: no new registration for {bound} s")
    kept = sum(m.num_reg_images() for m in models.values())
    log.passes.append({"label": label.strip(" ()") or "mapping", "seconds": round(seconds, 2), "bound_seconds": bound,
                       "ceiling_seconds": ceiling, "stopped_by_bound": bool(stopped),
                       "images": n_images, "models": len(models), "registered": int(kept),
                       "registrations": registered[0], "registrations_thrown_away": max(0, registered[0] - int(kept)),
                       **({"stopped_early": early["reason"]} if early["reason"] else {})})
    return models


def global_(run_dir: Path, n_images: int, cfg: MappingConfig, report, label: str = "",
            db: Path | None = None) -> dict:
    """Global mapping of ``database.db`` (or ``db``) with GLOMAP: rotation averaging, then all camera positions and
    points at once, then bundle adjustment and retriangulation. Pairs verified without known intrinsics (a
    fundamental matrix) are first upgraded with ``pycolmap.calibrate_view_graph`` (focal lengths from the
    fundamental matrices). Maps the largest connected part of the verified pair graph (and further ones with
    ``multiple_models``). Returns {index: pycolmap.Reconstruction}."""
    import pycolmap

    tmp = _fresh_tmp(run_dir)
    report("mapping", 0, n_images, f"global mapping{label}: calibrating the view graph")
    db = db or run_dir / DATABASE
    pycolmap.calibrate_view_graph(db)
    opts = pycolmap.GlobalPipelineOptions()
    apply_options(opts, cfg, "global")
    opts.num_threads = cfg.num_threads
    report("mapping", 0, n_images, f"global mapping{label}: rotation averaging, positions, bundle adjustment")
    models = pycolmap.global_mapping(db, inputs_dir(run_dir) / "images", tmp, opts)
    shutil.rmtree(tmp, ignore_errors=True)
    return models


def hierarchical(run_dir: Path, n_images: int, cfg: MappingConfig, report, label: str = "",
                 db: Path | None = None) -> dict:
    """COLMAP's hierarchical mapper (``pycolmap.hierarchical_mapping``; the partitioned incremental mapping of
    COLMAP's ``hierarchical_mapper``): the view graph is cut recursively (normalized cuts, two ways at a time) into
    leaf clusters of at most ``cfg.leaf_max_images`` photos, each then grown by up to ``min(50, leaf / 2)`` photos
    of its neighbours so that clusters overlap; each cluster is mapped incrementally (clusters in parallel, each
    with the incremental mapper's :data:`OPTIONS` and under its time bound), and the cluster models are merged
    through their shared photos. A collection of at most ``leaf_max_images`` photos is one cluster: incremental
    mapping. Returns {index: pycolmap.Reconstruction}."""
    import pycolmap

    tmp = _fresh_tmp(run_dir)
    opts = pycolmap.HierarchicalPipelineOptions()
    opts.num_threads = cfg.num_threads
    opts.clustering_options.leaf_max_num_images = cfg.leaf_max_images
    opts.clustering_options.image_overlap = min(50, cfg.leaf_max_images // 2)
    inc = opts.incremental_options
    apply_options(inc, cfg, "incremental")
    inc.max_runtime_seconds = mapping_time_bound(cfg, min(n_images, cfg.leaf_max_images + 50))
    report("mapping", 0, n_images, f"hierarchical mapping{label}: clusters of at most {cfg.leaf_max_images} photos "
                                   "mapped apart, then merged")
    models = pycolmap.hierarchical_mapping(db or run_dir / DATABASE, inputs_dir(run_dir) / "images", tmp, opts)
    shutil.rmtree(tmp, ignore_errors=True)
    return models


def run_mapper(run_dir: Path, n_images: int, cfg: MappingConfig, report, log: MappingLog, label: str = "",
               db: Path | None = None, early_stop=None) -> dict:
    """The mapper that ``cfg.mapper`` names: :func:`incremental`, :func:`global_` or :func:`hierarchical`, on
    ``database.db`` or ``db`` (``early_stop``: see :func:`incremental`; the other mappers run to the end).
    Returns {index: pycolmap.Reconstruction}."""
    if cfg.mapper == "global":
        return global_(run_dir, n_images, cfg, report, label, db)
    if cfg.mapper == "hierarchical":
        return hierarchical(run_dir, n_images, cfg, report, label, db)
    return incremental(run_dir, n_images, cfg, report, log, label, db, early_stop)
