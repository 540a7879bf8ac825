"""Two-view geometric verification of the raw matches in a COLMAP database (``pycolmap.verify_matches``: RANSAC
over the essential, fundamental and homography models, COLMAP's ``TwoViewGeometry``).

Writes ``two_view.h5``: ``/<image0>/<image1>/inliers`` int32 [K, 2] (indices into ``features.h5``) and attribute
``config`` (the two-view geometry type, e.g. ``CALIBRATED``) for every pair of ``pairs_matched.txt``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..config import VerificationConfig
from .database import DATABASE, TWO_VIEW_H5, pair_id_to_image_ids

def verify(run_dir: Path, cfg: VerificationConfig, report) -> dict:
    """Verify every pair of ``run_dir/pairs_matched.txt`` in ``run_dir/database.db`` and write ``two_view.h5``.

    RANSAC at ``cfg.ransac_max_error`` px, at most ``cfg.ransac_max_trials`` trials, a minimum inlier ratio of 0.1,
    and ``cfg.min_num_inliers`` inliers for a pair to count as verified.

    Args:
        run_dir: the folder holding ``database.db`` (built by :func:`.database.build_database`).
        report: ``report(stage, done, total, message)``.

    Returns:
        ``{"verified_pairs": int, "inliers_total": int}``.
    """
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
            i0, i1 = pair_id_to_image_ids(pid)
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


