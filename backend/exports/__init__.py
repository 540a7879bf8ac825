"""Exports for the tools people take a sparse model into: one file per format behind a registry, as the extractors
and matchers are.

=================  ==========================================================================================
``colmap-text``    COLMAP's text model (``cameras.txt``, ``images.txt``, ``points3D.txt``) and the run's
                   ``database.db`` (keypoints, matches, two-view geometries): COLMAP's GUI opens both
                   (File > Import model, File > Open project).
``nerfstudio``     ``transforms.json`` in nerfstudio's layout, the photos in ``images/`` and the sparse points
                   as ``sparse_pc.ply``: ``ns-train splatfacto --data DIR`` (nerfstudio's ``nerfstudio-data``
                   parser) and gsplat's / Brush's nerfstudio loaders read it.
``undistorted``    A COLMAP workspace of undistorted PINHOLE photos and model (``images/``, ``sparse/``,
                   ``stereo/``) made by ``pycolmap.undistort_images``: what gsplat, OpenSplat, COLMAP's dense
                   stereo and OpenMVS's ``InterfaceCOLMAP`` need.
=================  ==========================================================================================

Every export is of one model of the run (default: model 0, the largest scene's) and goes to
``<run>/exports/<format>-<model>/`` unless a folder is given; :func:`export_zip` zips it for a download. The
coordinate convention of each format is in its module and in ``docs/outputs.md``.

Adding a format: one module here with ``write(rec, images_dir, out_dir, run_dir) -> dict`` and one line in
:data:`FORMATS`.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

log = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
_ZIP_LOCK = threading.Lock()  # one export at a time per process: two requests for one zip make it once

FORMATS: dict[str, tuple[str, str]] = {
    "colmap-text": ("colmap_text", "COLMAP text model (cameras.txt, images.txt, points3D.txt) and database.db, "
                                   "for COLMAP's GUI"),
    "nerfstudio": ("nerfstudio", "transforms.json, images/ and sparse_pc.ply for nerfstudio (splatfacto, "
                                 "nerfacto), gsplat and Brush"),
    "undistorted": ("undistorted", "undistorted PINHOLE photos and model (COLMAP workspace) for gsplat, OpenSplat, "
                                   "COLMAP dense stereo and OpenMVS"),
}


@dataclass
class ExportResult:
    """Where an export went and what it holds: ``out_dir`` (the folder), ``format``, ``model`` (the model's
    number in ``<run>/sparse/``), ``counts`` (the format's own: images, points, ...)."""

    out_dir: Path
    format: str
    model: int
    counts: dict


def model_dir(run_dir: Path, model: int = 0) -> Path:
    """``<run>/sparse/<model>``, checked.

    Raises:
        InputError: the run has no such model (not mapped yet, or the mapper registered nothing); the message says
            which models exist.
    """
    run_dir = Path(run_dir)
    d = run_dir / "sparse" / str(int(model))
    if not (d / "images.bin").is_file():
        have = sorted(p.name for p in (run_dir / "sparse").iterdir() if (p / "images.bin").is_file()) \
            if (run_dir / "sparse").is_dir() else []
        raise InputError(f"the run has no model {model}" + (f"; its models are {', '.join(have)}" if have else
                         ": run the mapping stage first (python -m backend reconstruct, or the app's Reconstruction "
                         "page)"))
    return d


def export_model(run_dir: Path, fmt: str, out_dir: Path | None = None, model: int = 0) -> ExportResult:
    """Write model ``model`` of a run in format ``fmt`` (:data:`FORMATS`) into ``out_dir`` (default
    ``<run>/exports/<fmt>-<model>/``, replaced when it exists).

    Raises:
        ValueError: unknown format (the message lists the known ones).
        InputError: no such model in the run (:func:`model_dir`).
        FileExistsError: ``out_dir`` is given, exists and is not empty (nothing of the user's is overwritten).
    """
    import pycolmap

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    src = model_dir(run_dir, model)
    if out_dir is None:
        out_dir = run_dir / EXPORTS_DIR / f"{fmt}-{int(model)}"
        shutil.rmtree(out_dir, ignore_errors=True)
    else:
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} is not empty: give a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"{__name__}.{FORMATS[fmt][0]}")
    rec = pycolmap.Reconstruction(src)
    counts = module.write(rec, run_dir / "images", out_dir, run_dir=run_dir, model_dir=src)
    log.info("export %s of model %d: %s", fmt, model, counts)
    return ExportResult(out_dir, fmt, int(model), counts)


def export_zip(run_dir: Path, fmt: str, model: int = 0) -> Path:
    """:func:`export_model` into ``<run>/exports/`` and a zip of it, ``<run>/exports/<fmt>-<model>.zip`` (the
    folder's content at the zip's top level). Made again only when the model is newer than the zip.

    Raises:
        ValueError, InputError: as :func:`export_model`.
    """
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    src = model_dir(run_dir, model)
    zip_path = run_dir / EXPORTS_DIR / f"{fmt}-{int(model)}.zip"
    with _ZIP_LOCK:
        if zip_path.is_file() and zip_path.stat().st_mtime >= (src / "images.bin").stat().st_mtime:
            return zip_path
        res = export_model(run_dir, fmt, model=model)
        tmp = zip_path.with_name(f".{zip_path.name}.tmp")
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for p in sorted(res.out_dir.rglob("*")):
                    if p.is_file():
                        z.write(p, str(p.relative_to(res.out_dir)))
            tmp.replace(zip_path)
        finally:
            tmp.unlink(missing_ok=True)
    return zip_path
