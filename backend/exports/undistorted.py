"""A COLMAP workspace of undistorted photos and model (``pycolmap.undistort_images``, COLMAP's
``image_undistorter``), which gsplat, OpenSplat, COLMAP's dense stereo (``patch_match_stereo``) and OpenMVS's
``InterfaceCOLMAP`` need: they model only pinhole cameras.

Layout: ``images/`` (each registered photo resampled without lens distortion), ``sparse/`` (the model with
PINHOLE cameras, binary; the same ``cam_from_world`` poses and 3D points), ``stereo/`` (COLMAP's patch-match
configuration), ``run-colmap-geometric.sh`` and ``run-colmap-photometric.sh``. Convention: COLMAP's (see
:mod:`.colmap_text`). The undistorted photos can be smaller than the originals: COLMAP crops to the valid pixels.
"""

from __future__ import annotations

from pathlib import Path


def write(rec, images_dir: Path, out_dir: Path, *, run_dir: Path, model_dir: Path) -> dict:
    """Undistort the registered photos of the model in ``model_dir`` into the workspace ``out_dir``.

    Returns:
        ``{"images", "points"}``: undistorted photos written, 3D points of the model.

    Raises:
        RuntimeError: pycolmap could not read a photo or write the workspace.
    """
    import pycolmap

    pycolmap.undistort_images(str(out_dir), str(model_dir), str(images_dir), output_type="COLMAP")
    written = sum(1 for p in (out_dir / "images").iterdir() if p.is_file()) if (out_dir / "images").is_dir() else 0
    return {"images": written, "points": rec.num_points3D()}
