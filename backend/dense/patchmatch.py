"""Dense multi-view stereo with CUDA: COLMAP's PatchMatch stereo on the undistorted workspace, stereo fusion, then
Poisson meshing (``pycolmap.patch_match_stereo``, ``stereo_fusion``, ``poisson_meshing``; Schoenberger et al.,
"Pixelwise View Selection for Unstructured Multi-View Stereo", ECCV 2016). COLMAP implements PatchMatch in CUDA
only: this method needs pycolmap built with CUDA (``pycolmap-cuda12``, which setup installs when ``--torch`` names a
CUDA build) and a GPU, and says so before any work otherwise.

Writes ``dense/workspace/`` (the undistorted workspace and its depth maps), ``dense/points.ply`` (the fused cloud
with normals), ``dense/mesh.ply`` and ``dense/dense.json``; coordinates: the model's frame.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from ..errors import InputError
from . import DENSE_DIR


def cuda_problem() -> str:
    """Why PatchMatch cannot run here ('' when it can)."""
    import pycolmap

    if not getattr(pycolmap, "has_cuda", False):
        return ("PatchMatch stereo needs pycolmap built with CUDA (pycolmap-cuda12; bash setup/setup.sh --torch "
                "with a CUDA build installs it): use --method triangulate on this machine")
    if pycolmap.get_num_cuda_devices() < 1:
        return "PatchMatch stereo needs a CUDA GPU and none is visible: use --method triangulate"
    return ""


def densify(run_dir: Path, model: int = 0, progress: Callable[[int, int, str], None] | None = None,
            **options) -> dict:
    """PatchMatch stereo, fusion and a Poisson mesh of model ``model`` (module doc).

    Raises:
        RuntimeError: no CUDA build of pycolmap or no GPU (:func:`cuda_problem`), before any work.
        InputError: no such model, or an option (this method takes none).
    """
    import pycolmap

    from ..exports import model_dir
    from .triangulate import model_stats

    problem = cuda_problem()
    if problem:
        raise RuntimeError(problem)
    if options:
        raise InputError(f"patchmatch takes no options (got {', '.join(options)})")
    run_dir = Path(run_dir)
    src = model_dir(run_dir, model)
    out = run_dir / DENSE_DIR
    shutil.rmtree(out, ignore_errors=True)
    ws = out / "workspace"
    ws.mkdir(parents=True)
    t0 = time.perf_counter()
    before = model_stats(pycolmap.Reconstruction(src))
    steps = ("undistort", "patch match stereo", "fusion", "meshing")
    if progress:
        progress(0, len(steps), f"{steps[0]}: the photos")
    pycolmap.undistort_images(str(ws), str(src), str(run_dir / "images"), output_type="COLMAP")
    if progress:
        progress(1, len(steps), f"{steps[1]}: depth maps on the GPU")
    pycolmap.patch_match_stereo(str(ws))
    if progress:
        progress(2, len(steps), f"{steps[2]}: one cloud")
    fused = pycolmap.stereo_fusion(str(out / "points.ply"), str(ws))
    if progress:
        progress(3, len(steps), f"{steps[3]}: Poisson")
    pycolmap.poisson_meshing(str(out / "points.ply"), str(out / "mesh.ply"))
    result = {"method": "patchmatch", "model": int(model), "before": before,
              "after": {"points": len(fused.points) if hasattr(fused, "points") else None},
              "seconds": {"total": round(time.perf_counter() - t0, 2)}}
    (out / "dense.json").write_text(json.dumps(result, indent=1))
    return result
