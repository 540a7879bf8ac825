"""Stage "exports": poses, points and models of every scene (the scenes of ``mapping.json``; scene k's model is
``sparse/<k>``; a run from before scenes has one scene, ``sparse/0``).

- ``poses.csv``: IMC convention, ``image_name,rotation_matrix,translation_vector,calibration_matrix,scene``;
  R is world-to-camera (COLMAP's ``cam_from_world``), row-major, ``;``-separated; t likewise, so that
  x_cam = R X_world + t and the camera centre is C = -Rᵀ t; K is the 3x3 pinhole part of the camera in pixels
  (distortion is not in K). Unregistered images are rows with empty pose fields. ``scene`` names the image's scene
  (``scene0``, ``scene1``, ... each in its own coordinate frame) or ``outliers``.
- ``poses_imc2024.csv``: the IMC 2024 submission layout ``image_path,dataset,scene,rotation_matrix,
  translation_vector``; unregistered images carry ``nan`` values, as the Kaggle metric expects.
- ``submission.csv``: the IMC 2025 layout ``image_id,dataset,scene,image,rotation_matrix,translation_vector``: one
  row per input photo (photos refused at validation or at upload included, as unregistered outliers; files not
  named like photos, such as a README, are not), ``image`` the file name as saved (the upload's sanitised name;
  a photo refused at upload gets the name it would have been saved under, made unique), ``scene`` the scene or
  ``outliers``, ``nan`` poses for unregistered images; ``image_id`` is ``<dataset>_<image>_public``.
- ``points.ply``: the largest scene's sparse points with colours (binary little-endian PLY: float x, y, z; uchar
  r, g, b).
- ``sparse_txt/``: the largest scene's model as COLMAP text files; ``model.zip``: every model (binary), the text
  copy and ``database.db`` (keypoints, matches and two-view geometries, for COLMAP's GUI).
- ``geo/``, when at least 3 registered photos of the largest scene carry EXIF GPS: the model aligned to it
  (:func:`backend.io.gps.write_geo`: ``georef.json``, ``poses_enu.csv``, ``cameras_wgs84.csv``).
- For other tools (nerfstudio, undistorted workspaces, COLMAP text with the database) see :mod:`backend.exports`,
  made on request.
- ``scenes/<k>/``, when there are several scenes: ``poses.csv``, ``points.ply`` and ``model.zip`` of scene k.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ..utils.text import parse_numbers

POSES_CSV = "poses.csv"
SUBMISSION_CSV = "submission.csv"
SCENES_DIR = "scenes"
POSES_IMC2024_CSV = "poses_imc2024.csv"
POINTS_PLY = "points.ply"
MODEL_ZIP = "model.zip"


def _fmt(values) -> str:
    return ";".join(f"{float(v):.9g}" for v in np.ravel(values))


def camera_matrix(camera) -> np.ndarray:
    """3x3 intrinsics K (pixels, COLMAP pixel convention) of a pycolmap camera."""
    return np.asarray(camera.calibration_matrix(), dtype=np.float64)


def model_poses(rec) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Registered images of a pycolmap Reconstruction: name -> (R [3,3], t [3], K [3,3]), float64,
    R and t of ``cam_from_world``."""
    out = {}
    for image in rec.images.values():
        if not image.has_pose:
            continue
        pose = image.cam_from_world()
        out[image.name] = (
            np.asarray(pose.rotation.matrix(), dtype=np.float64),
            np.asarray(pose.translation, dtype=np.float64),
            camera_matrix(rec.cameras[image.camera_id]),
        )
    return out


def write_poses_csv(path: Path, names: list[str], poses: dict, scene_of: dict[str, str] | None = None) -> None:
    """Write ``poses.csv`` (IMC convention) with one row per name in ``names``; unregistered -> empty fields.
    With ``scene_of`` ({name: scene}) a last column ``scene``."""
    with open(path, "w") as f:
        f.write("image_name,rotation_matrix,translation_vector,calibration_matrix" + (",scene" if scene_of else "")
                + "\n")
        for n in names:
            sc = f",{scene_of.get(n, 'outliers')}" if scene_of else ""
            if n in poses:
                R, t, K = poses[n]
                f.write(f"{n},{_fmt(R)},{_fmt(t)},{_fmt(K)}{sc}\n")
            else:
                f.write(f"{n},,,{sc}\n")


NAN_R, NAN_T = ";".join(["nan"] * 9), ";".join(["nan"] * 3)


def write_imc2024_csv(path: Path, names: list[str], poses: dict, dataset: str, scene: str,
                      scene_of: dict[str, str] | None = None) -> None:
    """Write the IMC 2024 submission variant; ``image_path`` is ``test/<dataset>/images/<name>``; ``scene`` is
    ``scene``, or each image's from ``scene_of`` when given."""
    with open(path, "w") as f:
        f.write("image_path,dataset,scene,rotation_matrix,translation_vector\n")
        for n in names:
            r, t = (_fmt(poses[n][0]), _fmt(poses[n][1])) if n in poses else (NAN_R, NAN_T)
            sc = scene_of.get(n, "outliers") if scene_of else scene
            f.write(f"test/{dataset}/images/{n},{dataset},{sc},{r},{t}\n")


def write_submission_csv(path: Path, rows: list[tuple[str, str, tuple | None]], dataset: str) -> None:
    """Write an IMC 2025 submission: ``rows`` are ``(image file name, scene or "outliers", (R, t) or None)``.

    Raises:
        ValueError: a name or the dataset holds a comma, quote or line break (the Kaggle CSV is not quoted).
    """
    for text in [dataset] + [r[0] for r in rows] + [r[1] for r in rows]:
        if any(c in text for c in ',"\n\r'):
            raise ValueError(f"{text[:80]!r} holds a comma, quote or line break, which an IMC submission cannot "
                             "carry: rename the file or choose another dataset name")
    with open(path, "w") as f:
        f.write("image_id,dataset,scene,image,rotation_matrix,translation_vector\n")
        for image, scene, pose in rows:
            r, t = (_fmt(pose[0]), _fmt(pose[1])) if pose is not None else (NAN_R, NAN_T)
            f.write(f"{dataset}_{image}_public,{dataset},{scene},{image},{r},{t}\n")


def _unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``<stem>_1.<ext>``, ``_2``... when ``taken`` (lower-cased names) holds it; adds the result."""
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, f".{ext}") if dot else (name, "")
    cand, i = name, 1
    while cand.lower() in taken:
        cand, i = f"{stem}_{i}{ext}", i + 1
    taken.add(cand.lower())
    return cand


def upload_refused_rows(run_dir: Path, taken: set[str]) -> list[tuple[str, str, None]]:
    """``submission.csv`` rows ``(name, "outliers", None)`` of the photos refused at upload (a zero-byte file, an SVG
    or a GIF renamed ``.jpg``: ``refused_photos`` of ``upload.json``, see :class:`backend.io.uploads.UploadResult`),
    each name made unique against ``taken`` (lower-cased, updated). Runs without ``upload.json``, or from before
    the field, give none."""
    from .uploads import read_upload_json, sanitize_name

    names = read_upload_json(run_dir).get("refused_photos", [])
    return [(_unique_name(sanitize_name(n), taken), "outliers", None) for n in names if isinstance(n, str)]


def write_model_ply(path: Path, rec) -> None:
    """The 3D points of ``rec`` (a ``pycolmap.Reconstruction``, or None: no points) as a binary little-endian PLY
    with float x, y, z and uchar red, green, blue (``pycolmap.Reconstruction.export_PLY``; world coordinates of the
    model)."""
    import pycolmap

    (rec if rec is not None else pycolmap.Reconstruction()).export_PLY(path)


def model_points(rec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points of a reconstruction: xyz float64 [N, 3], rgb uint8 [N, 3], reprojection error float64 [N] (px),
    track length int [N]."""
    pts = list(rec.points3D.values())
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), np.zeros(0, int)
    xyz = np.array([p.xyz for p in pts], dtype=np.float64)
    rgb = np.array([p.color for p in pts], dtype=np.uint8)
    err = np.array([p.error for p in pts], dtype=np.float64)
    tl = np.array([p.track.length() for p in pts], dtype=int)
    return xyz, rgb, err, tl


def read_scenes(run_dir: Path, names: list[str]) -> tuple[list[dict], list[dict]]:
    """The scenes and outliers of a run's ``mapping.json`` (``[{"name", "images", "registered", "model", ...}]``,
    ``[{"image", "reason"}]``); a run from before scenes: one scene of every image with model 0."""
    import json

    p = Path(run_dir) / "mapping.json"
    m = json.loads(p.read_text()) if p.exists() else {}
    if "scenes" in m:
        return m["scenes"], m.get("outliers", [])
    return [{"name": "scene0", "images": list(names), "model": 0, "why": "one scene"}], []


def _zip_model(zip_path: Path, parts: list[tuple[Path, str]], files: tuple[tuple[Path, str], ...] = ()) -> None:
    """Zip every file under each ``(folder, name in the archive)``, and each ``(file, name)`` of ``files`` that
    exists."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for folder, arc in parts:
            for p in sorted(folder.rglob("*")) if folder.exists() else []:
                if p.is_file():
                    z.write(p, f"{arc}/{p.relative_to(folder)}")
        for path, arc in files:
            if path.is_file():
                z.write(path, arc)


def run_exports(run_dir: Path, names: list[str], dataset: str, scene: str) -> dict:
    """Write every export (see the module docstring); with no model, poses files with every image unregistered.

    Args:
        names: the run's images (``images.json``); photos skipped at validation or refused at upload are added to
            ``submission.csv`` as unregistered outliers.
        dataset, scene: names for the IMC CSVs (the scene name is used when the run holds one scene).

    Returns:
        counts ``{"registered_images"`` (largest scene), ``"points"`` (largest scene), ``"scenes"``,
        ``"registered_all_scenes"``, ``"outliers"}``.
    """
    import pycolmap

    from .gps import write_geo
    from .images import SUPPORTED_EXTENSIONS, load_images_json

    run_dir = Path(run_dir)
    scenes, outliers = read_scenes(run_dir, names)
    several = len(scenes) > 1
    scene_of = {n: sc["name"] for sc in scenes for n in sc["images"]}
    poses_all: dict = {}
    largest = None
    scenes_root = run_dir / SCENES_DIR
    if scenes_root.exists():
        import shutil

        shutil.rmtree(scenes_root)
    for k, sc in enumerate(scenes):
        model_dir = run_dir / "sparse" / str(sc.get("model"))
        rec = pycolmap.Reconstruction(model_dir) if sc.get("model") is not None and \
            (model_dir / "images.bin").exists() else None
        poses = model_poses(rec) if rec is not None else {}
        poses_all.update({n: p for n, p in poses.items() if n in sc["images"]})
        if k == 0:
            largest = (rec, poses)
        if several:
            d = scenes_root / str(k)
            d.mkdir(parents=True)
            write_poses_csv(d / POSES_CSV, sc["images"], poses)
            write_model_ply(d / POINTS_PLY, rec)
            if rec is not None:
                (d / "sparse_txt").mkdir()
                rec.write_text(d / "sparse_txt")
                _zip_model(d / MODEL_ZIP, [(model_dir, "sparse/0"), (d / "sparse_txt", "sparse_txt")])
    rec, poses0 = largest if largest else (None, {})
    if rec is not None:
        txt = run_dir / "sparse_txt"
        txt.mkdir(exist_ok=True)
        rec.write_text(txt)
    write_poses_csv(run_dir / POSES_CSV, names, poses_all, scene_of)
    write_imc2024_csv(run_dir / POSES_IMC2024_CSV, names, poses_all, dataset, scene,
                      scene_of if several or outliers else None)
    write_model_ply(run_dir / POINTS_PLY, rec)
    # database.db beside the models: COLMAP's GUI opens it (File > Open project) to go on from our matches
    _zip_model(run_dir / MODEL_ZIP, [(run_dir / "sparse", "sparse"), (run_dir / "sparse_txt", "sparse_txt")],
               files=((run_dir / "database.db", "database.db"),))
    info = load_images_json(run_dir)
    rows = []
    by_source = {}
    for im in info["images"]:
        n = im["name"]
        row = (Path(im.get("source") or n).name, scene_of.get(n, "outliers"), poses_all.get(n))
        by_source[row[0]] = row
        rows.append(row)
    skipped_photos = 0
    for s in info.get("skipped", []):  # photos that were not used (not other files: a README is no image)
        if Path(s["name"]).suffix.lower() not in SUPPORTED_EXTENSIONS:
            continue
        twin = re.match(r"identical to (\S+?) \(", s.get("reason", ""))
        twin_row = by_source.get(twin.group(1)) if twin else None
        rows.append((s["name"], *twin_row[1:]) if twin_row else (s["name"], "outliers", None))
        skipped_photos += twin_row is None
    refused = upload_refused_rows(run_dir, {r[0].lower() for r in rows})  # refused at upload: no image file at all
    rows += refused
    skipped_photos += len(refused)
    gps = {im["name"]: im.get("gps") for im in info["images"]}
    geo = write_geo(run_dir, rec, gps) if rec is not None else {"georeferenced": 0}
    counts = {"registered_images": len(poses0), "points": rec.num_points3D() if rec is not None else 0,
              "scenes": len(scenes),
              "registered_all_scenes": len(poses_all), "outliers": len(outliers) + skipped_photos, **geo}
    try:
        write_submission_csv(run_dir / SUBMISSION_CSV, rows, dataset)
    except ValueError as e:  # a name an IMC CSV cannot carry: every other export stays
        (run_dir / SUBMISSION_CSV).unlink(missing_ok=True)
        counts["submission_not_written"] = str(e)
    return counts


SUBMISSION_COLUMNS = ["image_id", "dataset", "scene", "image", "rotation_matrix", "translation_vector"]


def check_submission(path: Path, expected: dict[str, set[str]]) -> list[str]:
    """What would keep an IMC 2025 submission from being accepted: the header is not exactly
    :data:`SUBMISSION_COLUMNS`, a row has the wrong number of fields, an empty scene, a rotation that is not 9
    numbers or a translation that is not 3 (``nan`` allowed), an image listed twice, or an image of ``expected``
    ({dataset: image file names}) missing or not expected. Returns the problems (empty: acceptable)."""
    import csv

    problems, seen = [], set()
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != SUBMISSION_COLUMNS:
            return [f"header {header} is not {SUBMISSION_COLUMNS}"]
        for row in reader:
            where = f"line {reader.line_num}"
            if len(row) != len(SUBMISSION_COLUMNS):
                problems.append(f"{where}: {len(row)} fields")
                continue
            _, ds, scene, image, rot, trans = row
            if not scene:
                problems.append(f"{where}: empty scene")
            for text, n, what in ((rot, 9, "rotation_matrix"), (trans, 3, "translation_vector")):
                try:  # the official layout: exactly n numbers, each between ';'
                    ok = len(parse_numbers(text, what, where)) == n == len(text.split(";"))
                except ValueError:
                    ok = False
                if not ok:
                    problems.append(f"{where}: {what} is not {n} numbers separated by ';'")
            if (ds, image) in seen:
                problems.append(f"{where}: {image} of {ds} listed twice")
            seen.add((ds, image))
    want = {(d, i) for d, imgs in expected.items() for i in imgs}
    missing, extra = want - seen, seen - want
    if missing:
        problems.append(f"{len(missing)} expected image(s) missing, e.g. {sorted(missing)[0]}")
    if extra:
        problems.append(f"{len(extra)} image(s) not expected, e.g. {sorted(extra)[0]}")
    return problems
