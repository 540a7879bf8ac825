"""Read a run folder for display: the tables and arrays the app's pages show, and the content keys the app's
caches are keyed on (:func:`features_key`, :func:`matches_key`, :func:`model_key`). Read-only (except thumbnails,
written once per version of an image into ``<run>/thumbs/``); nothing imports streamlit.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import h5py
import numpy as np

from ..io.uploads import read_upload_json

THUMBS = "thumbs"
# COLMAP's TwoViewGeometry::ConfigurationType (two_view.h5 may hold the number as text)
GEOMETRY_NAMES = {0: "undefined", 1: "degenerate", 2: "calibrated", 3: "uncalibrated", 4: "planar", 5: "panoramic",
                  6: "planar or panoramic", 7: "watermark", 8: "multiple", 9: "calibrated (rig)"}


def geometry_name(config: str) -> str:
    """Readable two-view geometry type from ``two_view.h5``'s ``config`` attribute (a number or a name)."""
    s = str(config).strip()
    if s.lstrip("-").isdigit():
        return GEOMETRY_NAMES.get(int(s), s)
    return s.lower().replace("_", " ")


def images_info(run_dir: Path) -> dict:
    """``{"images": [...], "skipped": [...], "upload_skipped": [...], "renamed": {...}}`` of a run: the validated
    images (name, size, EXIF focal, camera make/model, ...) and every file that was not used, with the reason."""
    run_dir = Path(run_dir)
    p = run_dir / "images.json"
    data = json.loads(p.read_text()) if p.exists() else {"images": [], "skipped": []}
    up = read_upload_json(run_dir)
    data["upload_skipped"] = up.get("skipped", [])
    data["renamed"] = up.get("renamed", {})
    return data


def image_path(run_dir: Path, name: str) -> Path:
    """Path of a validated image in the run folder.

    Raises:
        KeyError: ``name`` is not one of the run's images (names are never used as paths otherwise).
    """
    names = {i["name"] for i in images_info(run_dir)["images"]}
    if name not in names:
        raise KeyError(f"no image {name!r} in this run")
    return Path(run_dir) / "images" / name


def thumbnail_path(run_dir: Path, name: str, size: int = 320) -> Path:
    """A JPEG thumbnail of one of the run's images (made once per version of the image):
    ``thumbs/<size>/<name>.<version>.jpg``, where the version hashes the image file's size, modification and
    status-change times (ctime, which no tool can set back), so a replaced image gets a new thumbnail even with the
    same size and modification time. Older versions' thumbnails are deleted.

    Raises:
        KeyError: ``name`` is not one of the run's images.
    """
    from .viz import thumbnail

    src = image_path(run_dir, name)
    st = src.stat()
    version = hashlib.sha256(f"{st.st_size}/{st.st_mtime_ns}/{st.st_ctime_ns}/{st.st_ino}".encode()).hexdigest()[:12]
    folder = Path(run_dir) / THUMBS / f"{size}"
    dst = folder / f"{name}.{version}.jpg"
    if not dst.exists() and folder.is_dir():
        for old in folder.iterdir():
            if old.name.startswith(name + ".") and old.name != dst.name and old.name.count(".") == name.count(".") + 2:
                old.unlink(missing_ok=True)
    return thumbnail(src, dst, size)


def retrieval_info(run_dir: Path) -> dict:
    """``names``, ``similarity`` [N, N] (None above the dense limit), ``model``, ``fallback_reason`` from
    ``retrieval.h5``."""
    with h5py.File(Path(run_dir) / "retrieval.h5", "r") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["names"][()]]
        return {
            "names": names,
            "similarity": f["similarity"][()] if "similarity" in f else None,
            "model": str(f.attrs.get("model", "")),
            "fallback_reason": str(f.attrs.get("fallback_reason", "")),
        }


def pairs(run_dir: Path) -> list[tuple[str, str, float]]:
    """The selected pairs ``(name0, name1, similarity)``."""
    from ..retrieval.global_descriptors import read_pairs

    return read_pairs(run_dir)


def keypoint_counts(run_dir: Path) -> dict[str, int]:
    """Keypoints per image from ``features.h5`` (images order of ``images.json``)."""
    names = [i["name"] for i in images_info(run_dir)["images"]]
    out = {}
    with h5py.File(Path(run_dir) / "features.h5", "r") as f:
        for n in names:
            if n in f:
                out[n] = int(f[n]["keypoints"].shape[0])
    return out


def features(run_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints [N, 2] and scores [N] of one image."""
    with h5py.File(Path(run_dir) / "features.h5", "r") as f:
        g = f[name]
        return g["keypoints"][()], g["scores"][()]


def _entry_key(path: Path, names: list[str]) -> str:
    """The ``key`` attribute of the first of ``names`` (HDF5 paths) present in ``path``; "" when none is."""
    if not path.exists():
        return ""
    try:
        with h5py.File(path, "r") as f:
            for n in names:
                if n in f:
                    return str(f[n].attrs.get("key", ""))
    except OSError:  # being written right now (HDF5 file locking) or unreadable: a key no cache holds
        return f"unreadable-{time.monotonic_ns()}"
    return ""


def _stage_stamp(run_dir: Path, stage: str) -> str:
    """``hash/status/started`` of a stage in ``run.json`` ("" when it has not run)."""
    try:
        rec = json.loads((Path(run_dir) / "run.json").read_text()).get("stages", {}).get(stage, {})
    except (OSError, ValueError):
        return ""
    return f"{rec.get('hash', '')}/{rec.get('status', '')}/{rec.get('started', '')}" if rec else ""


def features_key(run_dir: Path, name: str) -> str:
    """A key that changes whenever an image's features (or the image itself) change: the entry's content key in
    ``features.h5`` (sha256 of the image bytes, decode options, config, weights) and the features stage's record.
    For caching drawings; "" while there are none."""
    key = _entry_key(Path(run_dir) / "features.h5", [name])
    return f"{key}|{_stage_stamp(run_dir, 'features')}" if key else ""


def matches_key(run_dir: Path, name0: str, name1: str) -> str:
    """A key that changes whenever a pair's drawing can change: the pair's content key in ``matches.h5`` (which
    chains both images' feature keys) and the verification stage's record (its inliers). "" while there are
    no matches for the pair."""
    key = _entry_key(Path(run_dir) / "matches.h5", [f"{name0}/{name1}", f"{name1}/{name0}"])
    return f"{key}|{_stage_stamp(run_dir, 'matching')}|{_stage_stamp(run_dir, 'verification')}" if key else ""


def model_key(run_dir: Path, k: int) -> str:
    """A key that changes whenever model ``sparse/<k>`` can change: the mapping stage's record in ``run.json``
    (its hash chains the content of every input) and the model file's size and change times."""
    p = Path(run_dir) / "sparse" / str(int(k)) / "images.bin"
    try:
        st = p.stat()
    except OSError:
        return ""
    return f"{_stage_stamp(run_dir, 'mapping')}|{st.st_size}/{st.st_mtime_ns}/{st.st_ctime_ns}"


def matches(run_dir: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matches [M, 2] (indices into name0's / name1's keypoints) and scores [M] of a pair."""
    from ..matchers.match import read_matches

    return read_matches(Path(run_dir) / "matches.h5", name0, name1)


def inliers(run_dir: Path, name0: str, name1: str) -> tuple[np.ndarray | None, str]:
    """Verified inlier matches [K, 2] (name0's index, name1's index) and the two-view geometry type of a pair;
    ``(None, "")`` when the pair was not verified (too few matches, or not in ``two_view.h5``)."""
    p = Path(run_dir) / "two_view.h5"
    if not p.exists():
        return None, ""
    with h5py.File(p, "r") as f:
        for a, b, flip in ((name0, name1, False), (name1, name0, True)):
            key = f"{a}/{b}"
            if key in f:
                g = f[key]
                inl = g["inliers"][()].reshape(-1, 2)
                return (inl[:, ::-1].copy() if flip else inl), geometry_name(g.attrs.get("config", ""))
    return None, ""


def inlier_mask(matches_: np.ndarray, inliers_: np.ndarray | None) -> np.ndarray:
    """bool [M]: which of ``matches_`` rows are among the verified ``inliers_`` rows."""
    m = np.asarray(matches_, dtype=np.int64).reshape(-1, 2)
    if inliers_ is None or len(inliers_) == 0:
        return np.zeros(len(m), bool)
    inl = np.asarray(inliers_, dtype=np.int64).reshape(-1, 2)
    key = lambda a: a[:, 0] * (1 << 32) + a[:, 1]  # noqa: E731
    return np.isin(key(m), key(inl))


def match_table(run_dir: Path):
    """pandas DataFrame, one row per selected pair: ``image0, image1, similarity, matches, inliers,
    inlier_ratio, geometry``. ``inliers`` is NaN where verification has not run or the pair was not used."""
    import pandas as pd

    run_dir = Path(run_dir)
    rows = []
    mpath, tpath = run_dir / "matches.h5", run_dir / "two_view.h5"
    fm = h5py.File(mpath, "r") if mpath.exists() else None
    ft = h5py.File(tpath, "r") if tpath.exists() else None
    try:
        for a, b, s in pairs(run_dir):
            m = np.nan
            if fm is not None:
                for k in (f"{a}/{b}", f"{b}/{a}"):
                    if k in fm:
                        m = int(fm[k]["matches"].shape[0])
                        break
            inl, geom = (np.nan, "") if ft is None else (0, "not verified")
            if ft is not None:
                for k in (f"{a}/{b}", f"{b}/{a}"):
                    if k in ft:
                        inl = int(ft[k]["inliers"].shape[0])
                        geom = geometry_name(ft[k].attrs.get("config", ""))
                        break
            rows.append({"image0": a, "image1": b, "similarity": round(float(s), 4), "matches": m,
                         "inliers": inl, "geometry": geom})
    finally:
        for f in (fm, ft):
            if f is not None:
                f.close()
    df = pd.DataFrame(rows, columns=["image0", "image1", "similarity", "matches", "inliers", "geometry"])
    with np.errstate(divide="ignore", invalid="ignore"):
        df["inlier_ratio"] = (df["inliers"].astype(float) / df["matches"].astype(float)).round(3)
    return df


def models(run_dir: Path) -> list[dict]:
    """The reconstructed models in ``mapping.json`` order (largest first): ``model`` (index k of ``sparse/<k>``),
    ``registered_images``, ``points``, ``mean_reprojection_error``, ``mean_track_length``. Counts to show come
    from :func:`registration`."""
    run_dir = Path(run_dir)
    p = run_dir / "mapping.json"
    if p.exists():
        try:
            out = json.loads(p.read_text()).get("models", [])
        except ValueError:
            out = []
        return [m for m in out if (run_dir / "sparse" / str(m["model"]) / "images.bin").exists()]
    return []


def time_bound_note(run_dir: Path) -> str | None:
    """A sentence when an incremental mapping call of the run stopped at its time bound (``mapping.json``), or
    None."""
    try:
        m = json.loads((Path(run_dir) / "mapping.json").read_text())
    except (OSError, ValueError):
        return None
    hit = m.get("stopped_at_time_bound") or []
    if not hit:
        return None
    h = hit[0]
    if "ceiling_seconds" not in h:  # a run from before the stall guard: the bound was a deadline
        why = (f"at its time bound ({h['bound_seconds']} s per mapping pass: the larger of 60 s and 4 s per "
               "image)")
    elif h.get("at_ceiling"):
        why = (f"at its ceiling ({h['ceiling_seconds']} s per mapping pass, 60 s per image), still registering "
               "images")
    else:
        why = (f"after {h['bound_seconds']} s without registering a new image (the larger of 60 s and 4 s per "
               "image)")
    return (f"Mapping stopped {why} and kept the images registered by then. Images left out had weak links to the "
            "model; more pairs per image or the accurate preset may place them.")


def fold_note(run_dir: Path) -> str | None:
    """A paragraph when the mapping stage found the model folded and mapped its two groups of photos apart
    (``mapping.json`` ``fold``, :func:`backend.mapping.unfold.unfold`), or None. Plain text."""
    try:
        fold = json.loads((Path(run_dir) / "mapping.json").read_text()).get("fold") or {}
    except (OSError, ValueError):
        return None
    best = fold.get("best") or {}
    if not (fold.get("folded") and fold.get("split_kept") and best):
        return None
    g0, g1 = list(best.get("group0", [])), list(best.get("group1", []))
    n0, n1 = len(g0), len(g1)
    return (f"Symmetric structure: the first model was folded. Its photos form two groups ({n0} and {n1} photos) "
            "that see the same structure from different sides, and the mapper had put one group onto the other: "
            f"{100 * best.get('conflict', 0):.0f} % of the 3D points one group alone observes land, in the other "
            "group's photos, on points that only those photos observe (inside the groups "
            f"{100 * best.get('within', 0):.0f} %). "
            f"The {fold.get('cut_pairs', 0)} verified pairs between the two groups matched one side onto the other, "
            "so they were dropped: the larger group keeps its poses from the first model and the other was mapped "
            "on its own. The models below are the sides. No pair links them correctly, so they cannot share one "
            "frame; photos that see both sides would join them. " + _fold_sides(run_dir, g0, g1))


def _fold_sides(run_dir: Path, g0: list[str], g1: list[str]) -> str:
    """How the two groups of a fold ended up, in the counts of :func:`registration`: how many photos of each
    group each model holds, the photos no model holds, and the scene the Scenes page lists them under (so the
    groups' sizes and the scenes' sizes can be told apart)."""
    reg = registration(run_dir)
    parts = []
    for m in sorted(reg["models"], key=lambda m: m["model"]):
        held = set(m["names"])
        a, b = len(held & set(g0)), len(held & set(g1))
        if a or b:
            g, n = (g0, a) if a >= b else (g1, b)
            parts.append(f"model {m['model']} holds {n} of the {len(g)} photos of the "
                         f"{'first' if g is g0 else 'second'} group")
    text = ("Registered: " + "; ".join(parts) + ".") if parts else ""
    lost = sorted(n for n in set(g0) | set(g1) if n not in reg["where"])
    if lost:
        scene_of = scenes(run_dir)["scene_of"]
        homes = sorted({scene_of.get(n, "outliers") for n in lost})
        text += (f" {len(lost)} photo{'s' if len(lost) != 1 else ''} of the groups got no pose in any model "
                 f"({', '.join(lost[:8])}{', ...' if len(lost) > 8 else ''}); the Scenes page lists "
                 f"{'it' if len(lost) == 1 else 'them'} under {', '.join(homes)} (a group's photos without a pose "
                 "go with its first scene), so the scenes have "
                 + " and ".join(str(sc["photos"]) for sc in reg["scenes"]) + " photos.")
    return text


def camera_summary(run_dir: Path) -> str | None:
    """One sentence on how the mapping stage handled intrinsics (from ``mapping.json``), or None."""
    p = Path(run_dir) / "mapping.json"
    try:
        cams = json.loads(p.read_text()).get("cameras") or {}
    except (OSError, ValueError):
        return None
    if not cams:
        return None
    groups = cams.get("shared_groups") or []
    if groups:
        text = "Shared cameras: " + "; ".join(f"{g['images']} images with f = {g['focal_px']:.0f} px" for g in groups)
        try:
            n_images = len(images_info(run_dir)["images"])
        except (OSError, ValueError, KeyError):
            n_images = 0
        text += "; every other image has its own." if sum(g["images"] for g in groups) < n_images else "."
    elif cams.get("mode") == "auto" and "metadata_groups_confirmed" not in cams:
        text = "One camera per image: no three images share a size and EXIF."
    else:
        text = "One camera per image."
    if cams.get("metadata_groups_confirmed") is False:
        text += (
            " Images of one size without differing EXIF were tried with one shared camera first; their focal "
            "lengths, re-estimated one by one, disagreed (e.g. a wide and a tele lens), so each image got its own."
        )
    final_ba = cams.get("final_ba") or {}
    if final_ba.get("refine_principal_point"):
        held = final_ba.get("narrow_cameras_held") or 0
        text += " The final bundle adjustment also refined the principal point" + (
            f" (not of the {held} narrow-view camera{'s' if held != 1 else ''}: held as mapped)." if held else ".")
    return text


_NAMES_CACHE: dict[tuple[str, int], tuple[str, list[str]]] = {}


def model_names(run_dir: Path, k: int) -> list[str]:
    """Sorted names of the images registered (with a pose) in model ``sparse/<k>``, read from the model itself
    (what the 3D view shows and the exports hold); [] when there is no such model. Kept in memory per
    :func:`model_key`, so a changed model is read again.

    Raises:
        RuntimeError: pycolmap cannot read the model files (being rewritten, or damaged).
    """
    run_dir = Path(run_dir)
    key = model_key(run_dir, k)
    if not key:
        return []
    hit = _NAMES_CACHE.get((str(run_dir.resolve()), int(k)))
    if hit is not None and hit[0] == key:
        return list(hit[1])
    names = sorted(im.name for im in load_model(run_dir, k).images.values() if im.has_pose)
    if len(_NAMES_CACHE) > 64:
        _NAMES_CACHE.clear()
    _NAMES_CACHE[(str(run_dir.resolve()), int(k))] = (key, names)
    return list(names)


def registration(run_dir: Path) -> dict:
    """Every "registered" count the app shows, from one place: the models in ``sparse/`` (what the 3D view, the
    exports and ``model.zip`` hold), the scenes of ``mapping.json`` and the photos of ``images.json``. Home,
    Scenes, Reconstruction and Images all read these numbers, so they agree.

    Returns:
        ``{"images": int`` (photos used, ``images.json``),
        ``"largest": int`` (registered in the largest model: the one holding most photos, normally
        ``sparse/0``; 0 without a model), ``"largest_model"``: its k (None without a model),
        ``"all_models": int`` (distinct photos registered in any model),
        ``"all_scenes": int`` (distinct photos registered in the model of a scene; photos of a model too small to
        be a scene are not counted),
        ``"models": [{"model": k, "registered": int, "names": [str]}]`` (largest first, ``k`` as in
        ``sparse/<k>``, the number the pages show),
        ``"scenes": [{"name", "model": k or None, "photos": int, "registered": int, "registered_names": [str]}]``
        (``mapping.json``'s order, largest first; ``registered`` counts the scene's photos that its model holds),
        ``"where": {image name: [(k, scene name or None)]}`` (the models that hold each registered photo)}``.
        Every list is empty before the mapping stage has run.
    """
    run_dir = Path(run_dir)
    try:
        n_images = len(images_info(run_dir)["images"])
    except (OSError, ValueError):
        n_images = 0
    ms = []
    for m in models(run_dir):
        names = model_names(run_dir, m["model"])
        ms.append({"model": int(m["model"]), "registered": len(names), "names": names})
    ms.sort(key=lambda m: (-m["registered"], m["model"]))
    held = {m["model"]: set(m["names"]) for m in ms}
    sc_out = []
    for sc in scenes(run_dir)["scenes"]:
        k = sc.get("model")
        reg = sorted(n for n in sc["images"] if k is not None and n in held.get(k, ()))
        sc_out.append({"name": sc["name"], "model": k, "photos": len(sc["images"]), "registered": len(reg),
                       "registered_names": reg})
    scene_of_model = {sc["model"]: sc["name"] for sc in sc_out if sc["model"] is not None}
    where: dict[str, list] = {}
    for m in sorted(ms, key=lambda m: m["model"]):
        for n in m["names"]:
            where.setdefault(n, []).append((m["model"], scene_of_model.get(m["model"])))
    in_scenes = set().union(*(set(sc["registered_names"]) for sc in sc_out)) if sc_out else set()
    return {"images": n_images, "largest": ms[0]["registered"] if ms else 0,
            "largest_model": ms[0]["model"] if ms else None, "all_models": len(where),
            "all_scenes": len(in_scenes), "models": ms, "scenes": sc_out, "where": where}


def load_model(run_dir: Path, k: int):
    """The pycolmap Reconstruction ``sparse/<k>`` of a run.

    Raises:
        FileNotFoundError: no such model.
    """
    import pycolmap

    d = Path(run_dir) / "sparse" / str(int(k))
    if not (d / "images.bin").exists():
        raise FileNotFoundError(f"model {k} does not exist in this run")
    return pycolmap.Reconstruction(d)


def verified_partners(run_dir: Path, name: str) -> list[tuple[str, int]]:
    """The photos ``name`` forms a verified pair with (``two_view.h5``) and their inlier counts, most first."""
    p = Path(run_dir) / "two_view.h5"
    if not p.exists():
        return []
    out = []
    with h5py.File(p, "r") as f:
        for a in f:
            for b in f[a]:
                if name in (a, b):
                    n = int(f[a][b]["inliers"].shape[0])
                    if n:
                        out.append((b if a == name else a, n))
    return sorted(out, key=lambda x: -x[1])


def scenes(run_dir: Path) -> dict:
    """What the Scenes view shows: ``scenes`` (``[{"name", "images", "registered", "model", "group", "why"}]`` of
    ``mapping.json``, largest first), ``outliers`` (``[{"image", "reason"}]``, skipped input files included),
    ``edges`` (``[{"images": [a, b], "inliers"}]``, every verified pair), ``cut`` (the set of pairs the split cut,
    as sorted tuples), ``mode``, ``min_scene_size``, ``strong_inliers`` (``scenes.json``), and ``scene_of``
    ({image: scene name or "outliers"}). Empty lists before the stages ran."""
    run_dir = Path(run_dir)
    split_p, map_p = run_dir / "scenes.json", run_dir / "mapping.json"
    split = json.loads(split_p.read_text()) if split_p.exists() else {}
    mapping = json.loads(map_p.read_text()) if map_p.exists() else {}
    scenes_ = [dict(sc, why=_why_with_model(sc)) for sc in mapping.get("scenes", [])]
    outliers = list(mapping.get("outliers", split.get("outliers", [])))
    from ..io.images import SUPPORTED_EXTENSIONS

    for s in images_info(run_dir).get("skipped", []):  # photos not used (other files are listed on Images)
        if Path(s["name"]).suffix.lower() in SUPPORTED_EXTENSIONS:
            outliers.append({"image": s["name"], "reason": f"not used: {s['reason']}", "skipped": True})
    scene_of = {n: sc["name"] for sc in scenes_ for n in sc["images"]}
    scene_of.update({o["image"]: "outliers" for o in outliers})
    return {"has_scenes": "scenes" in mapping, "scenes": scenes_, "outliers": outliers,
            "edges": split.get("edges", []),
            "cut": {tuple(sorted(c["images"])) for c in split.get("cut_pairs", [])},
            "mode": split.get("mode"), "min_scene_size": split.get("min_scene_size"),
            "strong_inliers": split.get("strong_inliers"), "scene_of": scene_of}


_GROUP_MODEL = re.compile(r"this is model \d+$")


def _why_with_model(sc: dict) -> str:
    """A scene's ``why`` (``mapping.json``) with the model it names as the pages number it: ``mapping.json`` writes
    "this is model j" counting the models of the scene's group from 1, while every page (and ``sparse/<k>``,
    ``model.zip``) numbers the run's models from 0."""
    why = str(sc.get("why", ""))
    if sc.get("model") is None:
        return why
    return _GROUP_MODEL.sub(f"this is model {int(sc['model'])}", why)


def scene_files(run_dir: Path, k: int) -> dict[str, Path]:
    """The export files of scene ``k`` that exist: ``poses.csv``, ``points.ply``, ``model.zip`` under
    ``scenes/<k>/`` (a run with one scene: the run's own)."""
    run_dir = Path(run_dir)
    d = run_dir / "scenes" / str(int(k))
    if not d.is_dir():
        d = run_dir
    return {n: d / n for n in ("poses.csv", "points.ply", "model.zip") if (d / n).is_file()}
