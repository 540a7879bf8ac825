"""The COLMAP database of a run or of one scene's group: cameras with focal-length priors, keypoints, raw matches,
and (after :mod:`.verification`) the verified two-view geometries.

Files (in the run folder, or in ``groups/<g>/`` for one group of a collection split into scenes):

- ``database.db``: the COLMAP database (keypoints in COLMAP's pixel convention, centres at +0.5);
- ``database_groups.json``: the shared-camera groups the database was built with (``[]``: one camera per image);
- ``database_unfolded.db``: ``database.db`` without the pairs across a fold (:func:`.unfold.unfold`);
- ``pairs_matched.txt``: the pairs whose raw matches were written, one ``name0 name1`` per line.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..config import MappingConfig
from ..errors import MappingError
from .cameras import metadata_camera_groups

DATABASE = "database.db"
TWO_VIEW_H5 = "two_view.h5"
SPARSE = "sparse"
MAPPING_JSON = "mapping.json"
UNFOLDED_DATABASE = "database_unfolded.db"  # database.db without the pairs across a fold (see unfold)
DATABASE_GROUPS = "database_groups.json"
GROUPS_DIR = "groups"  # groups/<g>/: the mapping work folder of group g of a collection split into scenes


def inputs_dir(run_dir: Path) -> Path:
    """The run folder whose ``images/``, ``features.h5`` and ``matches.h5`` a mapping folder reads: the folder
    itself, or for ``<run>/groups/<g>/`` (one group of a split collection, see :func:`.scene_mapping.map_scenes`)
    the run."""
    run_dir = Path(run_dir)
    if run_dir.parent.name == GROUPS_DIR and not (run_dir / "images.json").exists() \
            and (run_dir.parents[1] / "images.json").exists():
        return run_dir.parents[1]
    return run_dir


def build_database(run_dir: Path, names: list[str], images: dict, pairs: list[tuple[str, str]], cfg: MappingConfig,
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
        pycolmap.import_images(db_path, inputs_dir(run_dir) / "images", pycolmap.CameraMode.SINGLE, g["names"], reader)
        grouped.update(g["names"])
        focal_override.update({n: g["focal_px"] for n in g["names"]})
    rest = [n for n in names if n not in grouped]
    if rest:
        pycolmap.import_images(db_path, inputs_dir(run_dir) / "images", pycolmap.CameraMode.PER_IMAGE, rest, reader)
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
        with h5py.File(inputs_dir(run_dir) / "features.h5", "r") as f:
            for n in names:
                db.write_keypoints(name_to_id[n], to_colmap_keypoints(f[n]["keypoints"][()]))
        written = []
        with h5py.File(inputs_dir(run_dir) / "matches.h5", "r") as fm:
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


def pair_id_to_image_ids(pair_id: int) -> tuple[int, int]:
    """COLMAP's pair id -> (image_id1, image_id2) (see colmap/scene/database.h, kMaxNumImages = 2^31 - 1)."""
    k = 2147483647
    i2 = pair_id % k
    i1 = (pair_id - i2) // k
    return int(i1), int(i2)


def copy_database(src: Path, dst: Path) -> None:
    """A consistent copy of a COLMAP (SQLite) database, its write-ahead log included."""
    import sqlite3

    if dst.exists():
        dst.unlink()
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def read_database_groups(run_dir: Path) -> list | None:
    """The shared-camera groups ``database.db`` was built with (``database_groups.json``), or None before it was
    built."""
    p = run_dir / DATABASE_GROUPS
    return json.loads(p.read_text()) if p.exists() else None


def group_database(run_dir: Path, gdir: Path, members: list[str], images: dict, cfg: MappingConfig) -> int:
    """Give group folder ``gdir`` its own ``database.db``: a copy of the run's without the verified pairs that leave
    the group (its images are the only ones the mapper can register), so no pair is verified twice. The copy keeps
    the run's cameras; ``database_groups.json`` says so when they are the shared-camera groups
    :func:`.cameras.choose_cameras` would choose for these images (otherwise :func:`.collection.map_collection`
    rebuilds and verifies the group's database). Returns the number
    of verified pairs removed."""
    import pycolmap

    gdir.mkdir(parents=True, exist_ok=True)
    copy_database(run_dir / DATABASE, gdir / DATABASE)
    inside = set(members)
    db = pycolmap.Database.open(gdir / DATABASE)
    removed = 0
    try:
        id_to_name = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, _ = db.read_two_view_geometries()
        for pid in pair_ids:
            i0, i1 = pair_id_to_image_ids(pid)
            if id_to_name[i0] not in inside or id_to_name[i1] not in inside:
                db.delete_two_view_geometry(i0, i1)
                removed += 1
    finally:
        db.close()
    run_groups = read_database_groups(run_dir)
    if run_groups is not None:
        restricted = sorted(sorted(n for n in g["names"] if n in inside) for g in run_groups)
        restricted = [g for g in restricted if g]
        wanted = metadata_camera_groups(images, members) if cfg.camera_mode == "auto" else None
        if wanted is not None and sorted(sorted(g["names"]) for g in wanted) == restricted:
            (gdir / DATABASE_GROUPS).write_text(json.dumps(wanted))
        elif cfg.camera_mode != "auto":
            (gdir / DATABASE_GROUPS).write_text(json.dumps(run_groups))
    return removed


