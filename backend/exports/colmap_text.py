"""COLMAP's text model and the run's database, for COLMAP's GUI (File > Import model; File > Open project).

Convention: COLMAP's own. ``images.txt`` holds each registered image's ``cam_from_world`` (world-to-camera,
quaternion ``QW QX QY QZ`` and ``TX TY TZ``), ``cameras.txt`` its camera (model and parameters in pixels, pixel
centres at +0.5), ``points3D.txt`` the points in the model's world frame with their tracks. Written by
``pycolmap.Reconstruction.write_text`` (the format: https://colmap.github.io/format.html).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def write(rec, images_dir: Path, out_dir: Path, *, run_dir: Path, model_dir: Path) -> dict:
    """Write ``rec`` as ``cameras.txt``, ``images.txt``, ``points3D.txt`` into ``out_dir/sparse/`` and copy the
    run's ``database.db`` to ``out_dir/database.db`` (when the run has one).

    Returns:
        ``{"images", "points", "cameras", "database"}``: registered images, 3D points, cameras, whether the
        database was copied.
    """
    sparse = out_dir / "sparse"
    sparse.mkdir(parents=True, exist_ok=True)
    rec.write_text(sparse)
    db = Path(run_dir) / "database.db"
    if db.is_file():
        shutil.copy2(db, out_dir / "database.db")
    return {"images": rec.num_reg_images(), "points": rec.num_points3D(), "cameras": len(rec.cameras),
            "database": db.is_file()}
