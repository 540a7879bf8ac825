"""Dense points and a mesh from a mapped run (``python -m backend densify RUN_DIR``; the "Dense" step of the
Reconstruction page).

Two methods (:data:`METHODS`):

- ``triangulate`` (CPU, the default without CUDA; :mod:`.triangulate`): more keypoints per photo, matches guided
  by the epipolar geometry of the registered cameras, triangulated into the fixed poses by
  ``pycolmap.triangulate_points`` (as hloc's ``triangulation.py`` does), then a Poisson mesh of the cloud
  (Open3D). Writes ``dense/points.ply``, ``dense/mesh.ply``, ``dense/sparse/`` (the densified model) and
  ``dense/dense.json`` (the measurements).
- ``patchmatch`` (CUDA only): COLMAP's multi-view stereo, ``pycolmap.patch_match_stereo`` then ``stereo_fusion``
  on the undistorted workspace, then ``poisson_meshing``; it needs pycolmap built with CUDA
  (``pycolmap-cuda12``), and says so before any work where it is missing.
"""

from __future__ import annotations

METHODS = ("triangulate", "patchmatch")
DENSE_DIR = "dense"


def default_method() -> str:
    """``patchmatch`` where pycolmap has CUDA and a GPU is present, else ``triangulate``."""
    try:
        import pycolmap

        if getattr(pycolmap, "has_cuda", False) and pycolmap.get_num_cuda_devices() > 0:
            return "patchmatch"
    except (ImportError, AttributeError, RuntimeError):
        pass
    return "triangulate"
