"""Mapping one collection of photos (the run, or one group of a collection split into scenes): the camera passes
(:func:`.cameras.choose_cameras`) on a database rebuilt where the cameras change, the refinement of the largest model
(:mod:`.refine`), the fold check (:mod:`.unfold`), and the models written to ``sparse/<k>/``, largest first."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import MappingConfig, VerificationConfig
from .cameras import choose_cameras
from .database import SPARSE, build_database, read_database_groups
from .mappers import MappingLog, mapping_time_bound, run_mapper
from .refine import deregister_implausible, final_bundle_adjustment, rescue_runaway_focals
from .unfold import unfold
from .verification import verify


class CameraDatabase:
    """The COLMAP database of a mapping folder, with the shared-camera groups it was built with
    (``database_groups.json``)."""

    def __init__(self, run_dir: Path, names: list[str], images: dict, pairs: list, cfg: MappingConfig,
                 vcfg: VerificationConfig, min_matches: int, report):
        self.run_dir, self.names, self.images, self.pairs = run_dir, names, images, pairs
        self.cfg, self.vcfg, self.min_matches, self.report = cfg, vcfg, min_matches, report

    def use(self, groups: list[dict]) -> None:
        """Make ``database.db`` (and ``two_view.h5``) hold these shared-camera groups (``[]``: one camera per
        image): rebuilt and re-verified only when it holds other ones."""
        if read_database_groups(self.run_dir) != groups:
            build_database(self.run_dir, self.names, self.images, self.pairs, self.cfg, self.min_matches,
                           self.report, groups=groups)
            verify(self.run_dir, self.vcfg, self.report)


def _refine_models(run_dir: Path, models: dict, images: dict, cfg: MappingConfig, n_images: int, report,
                   log: MappingLog) -> tuple[dict, dict, dict, dict | None]:
    """The largest model's focal rescue and final bundle adjustment, then the fold check (every model of a split gets
    the same refinement). Returns ``(models, rescued per model key, final_ba record, fold record or None)``."""
    order = sorted(models.items(), key=lambda kv: (-kv[1].num_reg_images(), kv[0]))
    rescued, final_ba, fold = {}, None, None
    if not order:
        return models, rescued, final_ba, fold
    report("mapping", n_images, n_images, "final bundle adjustment")
    key, best = order[0]
    rescued[key] = rescue_runaway_focals(best, images)
    final_ba = final_bundle_adjustment(best, cfg, constant_cameras=[r["camera_id"] for r in rescued[key]])
    if cfg.disambiguate == "auto":
        unfolded, fold = unfold(run_dir, best, n_images, cfg, report, log)
        if unfolded is not None:
            models, rescued = unfolded, {}
            for key, rec in models.items():  # every model of the split gets the final adjustment
                if rec.num_reg_images() >= cfg.min_model_size:
                    rescued[key] = rescue_runaway_focals(rec, images)
                    final_bundle_adjustment(rec, cfg, constant_cameras=[r["camera_id"] for r in rescued[key]])
    return models, rescued, final_ba, fold


def _distinct_models(models: dict) -> list[tuple[int, object]]:
    """The models with at least 2 registered images, largest first, without those that add no image to a larger one
    (COLMAP can start a later model from images a larger one already holds)."""
    order = [(k, r) for k, r in sorted(models.items(), key=lambda kv: (-kv[1].num_reg_images(), kv[0]))
             if r.num_reg_images() >= 2]
    kept, seen_names = [], set()
    for k, r in order:
        reg = {im.name for im in r.images.values() if im.has_pose}
        if reg <= seen_names:
            continue
        kept.append((k, r))
        seen_names |= reg
    return kept


def map_collection(run_dir: Path, names: list[str], images: dict, pairs: list, cfg: MappingConfig,
                   vcfg: VerificationConfig, min_matches: int, report, log: MappingLog) -> dict:
    """Map the photos ``names`` of ``run_dir``'s database and write the models to ``run_dir/sparse/<k>/``, largest
    first.

    Args:
        run_dir: the mapping folder (the run, or ``groups/<g>/``) holding ``database.db``.
        names: the photos; ``images``: name -> metadata (:mod:`backend.io.images`); ``pairs``: the matched pairs
            (name0, name1), for rebuilding the database with other cameras; ``vcfg``: how it is then verified.
        min_matches: raw matches a pair needs to enter the database.
        report: ``report(stage, done, total, message)``; ``log``: records every incremental pass.

    Returns:
        ``{"models": [{"model", "registered_images", "points", "mean_reprojection_error", "mean_track_length",
        "deregistered", "focal_rescued"}], "cameras": {...}, "deregistered_outside_models": [...], "fold": {...} or
        None, "time_bound_seconds": int, "stopped_at_time_bound": [...], "passes": [...]}``.
    """
    out = run_dir / SPARSE
    if out.exists():
        shutil.rmtree(out)
    n_images = len(names)
    database = CameraDatabase(run_dir, names, images, pairs, cfg, vcfg, min_matches, report)

    def run_pass(label: str, early_stop=None) -> dict:
        return run_mapper(run_dir, n_images, cfg, report, log, label, early_stop=early_stop)

    models, camera_info = choose_cameras(cfg, names, images, database.use, run_pass)
    models, rescued, final_ba, fold = _refine_models(run_dir, models, images, cfg, n_images, report, log)
    if final_ba is not None:
        camera_info["final_ba"] = final_ba
    deregistered = {key: deregister_implausible(rec) for key, rec in models.items()}
    order = _distinct_models(models)
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
            "time_bound_seconds": mapping_time_bound(cfg, n_images),
            "stopped_at_time_bound": list(log.time_bound_hits), "passes": list(log.passes)}
