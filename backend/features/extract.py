"""Stage 3: local features for every image, with any extractor of the registry (:mod:`backend.features`),
into ``features.h5``.

``features.h5`` holds one group per image name with

- ``keypoints``: float32 [N, 2], (x, y) in pixels of the original image (as stored in the run folder),
  **pixel centres at integer coordinates** (OpenCV convention: the top-left pixel's centre is (0, 0)).
  COLMAP puts pixel centres at +0.5; :func:`to_colmap_keypoints` converts.
- ``scores``: float32 [N], detection scores (higher is stronger), sorted in decreasing order, so that a prefix is
  a smaller keypoint budget.
- ``descriptors``: float16 [N, D] (kind ``float``, L2-normalised) or uint8 [N, D] packed bits (kind ``binary``).
- optional ``scales`` float32 [N] (original-image px) and ``oris`` float32 [N] (radians), for methods that have them;
- attributes ``extractor`` (the registry name), ``descriptor_kind``, ``image_size`` (W, H) of the original,
  ``resized_size`` (W, H) the extractor saw, ``image_sha256`` (of the image file);
- attribute ``key`` (written last): :func:`feature_key` of the image bytes, the decode options, the config and
  the weights. An image is recomputed unless its entry carries the key it would get now (see
  :mod:`backend.io.h5cache`), and a pair's key in ``matches.h5`` chains both images' keys.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import h5py
import numpy as np

from ..io.h5cache import KEY_ATTR, config_key, content_key, open_cache, write_entry, writing
from ..io.images import IMAGES_JSON, file_sha256, load_rgb, upright_turns
from ..io.upright import keypoints_from_upright, orientations_from_upright, turn_upright
from ..io.weights import checksums
from ..utils.device import get_device
from . import extractor_class, extractor_conf, load_extractor
from .base import Extractor

if TYPE_CHECKING:
    from ..config import FeaturesConfig

FEATURES_H5 = "features.h5"
FEATURE_DATASETS = ("keypoints", "scores", "descriptors")


def method_options(cfg: FeaturesConfig) -> dict:
    """The options handed to the extractor: the stage's common ones (``max_keypoints``) and ``cfg.options``."""
    return {"max_keypoints": cfg.max_keypoints, **cfg.options}


def border_mask(kpts: np.ndarray, size: tuple[int, int], margin: float) -> np.ndarray:
    """bool [N]: keypoints [N, 2] (px, centres at integers) at least ``margin`` px inside an image of ``size``
    (W, H); all True for ``margin`` <= 0."""
    if margin <= 0 or len(kpts) == 0:
        return np.ones(len(kpts), bool)
    w, h = size
    x, y = kpts[:, 0], kpts[:, 1]
    return (x >= margin) & (y >= margin) & (x <= w - 1 - margin) & (y <= h - 1 - margin)


def scale_keypoints(kpts: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Map (x, y) keypoints [N, 2] from a resized image to the original, pixel centres at integers on both sides.

    A pixel centre at ``x`` in the resized image covers original pixels around ``(x + 0.5) * sx - 0.5``.
    """
    out = np.empty_like(kpts, dtype=np.float32)
    out[:, 0] = (kpts[:, 0] + 0.5) * sx - 0.5
    out[:, 1] = (kpts[:, 1] + 0.5) * sy - 0.5
    return out


def to_colmap_keypoints(kpts: np.ndarray) -> np.ndarray:
    """Keypoints [N, 2] with pixel centres at integers -> COLMAP's convention (pixel centres at +0.5), float32."""
    return (np.asarray(kpts, dtype=np.float32) + 0.5).astype(np.float32)


def feature_key(image_sha256: str, decode: dict, cfg: FeaturesConfig) -> str:
    """The content key (32 hex digits) of one image's features: its file's sha256, the options that decide its
    pixels (``decode``, e.g. ``{"background": "white"}``), the features config, the method's full options and
    its weights' sha256.

    Raises:
        ValueError: ``cfg.name`` is not a registered extractor.
    """
    conf = extractor_conf(cfg.name, **method_options(cfg))
    weights = checksums(extractor_class(cfg.name).weight_names(conf))
    return content_key("features", image_sha256, decode, config_key(cfg), conf, weights)


def features_of(model: Extractor, cfg: FeaturesConfig, img: np.ndarray, sx: float, sy: float,
                turns: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """One image's features as the stage stores them, from ``img`` (uint8 [H, W, 3], already resized by
    ``1/sx, 1/sy`` from the original by :func:`~backend.io.images.load_rgb`).

    The photo is turned upright first (``turns`` quarter-turns, see :mod:`backend.io.upright`) and the keypoints
    mapped back to the stored photo; keypoints are mapped to original pixels, the border mask (``cfg.border`` px)
    applied, keypoints sorted by score and cut at ``cfg.max_keypoints``. The same function runs in the local loop
    and in a Ray worker, so both executors store the same arrays.

    Returns:
        ``(data, attrs)``: the datasets (``keypoints`` float32 [N, 2], ``scores`` float32 [N], ``descriptors``
        float16 or uint8 [N, D], optional ``scales``/``oris`` float32 [N]) and the entry's attributes (all but
        ``image_sha256``).
    """
    cls = type(model)
    out = model.extract(turn_upright(img, turns) if turns else img)
    if turns:
        out["keypoints"] = keypoints_from_upright(out["keypoints"], turns, (img.shape[1], img.shape[0]))
        if "oris" in out:
            out["oris"] = orientations_from_upright(out["oris"], turns)
    size = (round(img.shape[1] * sx), round(img.shape[0] * sy))
    out["keypoints"] = scale_keypoints(out["keypoints"], sx, sy)
    if "scales" in out:
        out["scales"] = (out["scales"] * (sx + sy) / 2).astype(np.float32)
    keep = border_mask(out["keypoints"], size, cfg.border)
    # strongest first (a prefix is a smaller budget), and never more than the budget (SIFT gives a second
    # orientation to some of its max_keypoints locations)
    order = np.argsort(-out["scores"][keep], kind="stable")[: cfg.max_keypoints]
    out = {k: np.asarray(v)[keep][order] for k, v in out.items()}
    desc = out["descriptors"]
    data = {
        "keypoints": out["keypoints"].astype(np.float32),
        "scores": out["scores"].astype(np.float32),
        "descriptors": desc.astype(np.uint8) if cls.descriptor_kind == "binary" else desc.astype(np.float16),
    }
    data.update({k: out[k].astype(np.float32) for k in ("scales", "oris") if k in out})
    attrs = {"extractor": cfg.name, "descriptor_kind": cls.descriptor_kind, "image_size": list(size),
             "resized_size": [img.shape[1], img.shape[0]], "upright_turns": int(turns)}
    return data, attrs


def _extract_local(images_dir: Path, todo: list[str], cfg: FeaturesConfig, turns: dict[str, int],
                   cancel: threading.Event | None, device):
    """Yield ``(name, data, attrs, seconds)`` for each of ``todo`` in order, extracting in this process; image
    decoding runs one thread ahead (at most two decoded images wait, so memory does not grow with ``todo``)."""
    if not todo:
        return
    model = load_extractor(cfg.name, device, **method_options(cfg))
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(load_rgb, images_dir / n, cfg.resize) for n in todo[:2]]
        for i, name in enumerate(todo):
            if cancel is not None and cancel.is_set():
                raise InterruptedError("cancelled")
            img, sx, sy = futures[i].result()
            futures[i] = None
            if i + 2 < len(todo):
                futures.append(pool.submit(load_rgb, images_dir / todo[i + 2], cfg.resize))
            t0 = time.perf_counter()
            data, attrs = features_of(model, cfg, img, sx, sy, turns.get(name, 0))
            yield name, data, attrs, time.perf_counter() - t0


def run_features(
    run_dir: Path,
    names: list[str],
    cfg: FeaturesConfig,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    decode: dict | None = None,
    force: bool = False,
    out_path: Path | None = None,
    executor=None,
) -> dict:
    """Extract features for ``names`` (images in ``run_dir/images``) with extractor ``cfg.name`` into
    ``run_dir/features.h5`` (or ``out_path``).

    An image whose entry carries the key it would get now (:func:`feature_key` of its bytes, ``decode``, ``cfg``)
    is kept (resumable); every other one is recomputed, all of them with ``force``. A photo found turned
    (``upright_turns`` in the run's ``images.json``, see :mod:`backend.io.upright`) is extracted turned back and its
    keypoints mapped to the stored photo. Each image is written
    atomically (see :mod:`backend.io.h5cache`). Image loading runs in a background thread so that decoding
    overlaps with the extractor. The stage, not the method, resizes (``cfg.resize``, never upscaling), maps
    keypoints back to original pixels, applies the border mask (``cfg.border`` px), sorts by score and keeps at
    most ``cfg.max_keypoints``.

    Args:
        decode: the image options that decide the pixels the extractor sees besides ``cfg.resize`` (the pipeline
            passes ``{"background": ...}``); part of every key.
        force: recompute every image.
        out_path: the h5 file to write (default ``run_dir/features.h5``; the Matches page's comparisons use
            another).
        executor: where to compute: None (this process) or a :class:`backend.distributed.RayExecutor`, whose
            workers run :func:`features_of` on batches of images; this process writes every entry either way.

    Returns counts: ``{"extractor", "descriptor_kind", "keypoints_total", "keypoints_mean", "keypoints_min",
    "device", "executor", "computed", "reused", "seconds_per_image"}`` (``seconds_per_image``: extractor time,
    summed over workers with the Ray executor).

    Raises:
        ValueError: ``cfg.name`` is not a registered extractor, or an option it does not know.
        InterruptedError: ``cancel`` was set.
        OSError: an image cannot be read.
        MissingWeightsError: the method's weights are missing or fail their check.
    """
    run_dir = Path(run_dir)
    path = Path(out_path) if out_path else run_dir / FEATURES_H5
    device = get_device()
    cls = extractor_class(cfg.name)
    shas = {n: file_sha256(run_dir / "images" / n) for n in names}
    turns = upright_turns(run_dir) if (run_dir / IMAGES_JSON).exists() else {}
    # a photo found turned is extracted turned back: its quarter-turns decide its pixels, so they are in its key
    keys = {n: feature_key(shas[n], {**(decode or {}), **({"upright_turns": turns[n]} if turns.get(n) else {})},
                           cfg) for n in names}
    cached = open_cache(path, 1, FEATURE_DATASETS)
    todo = [n for n in names if force or cached.get(n) != keys[n]]
    done = len(names) - len(todo)
    if progress:
        progress(done, len(names), "cached")
    if executor is not None and todo:
        results = executor.extract(run_dir / "images", todo, cfg, {n: turns.get(n, 0) for n in todo}, cancel)
    else:
        results = _extract_local(run_dir / "images", todo, cfg, turns, cancel, device)
    seconds = 0.0
    with closing(results):  # a failed write stops the executor's work in flight too
        for name, data, attrs, secs in results:
            seconds += secs
            with writing(path, [name]) as f:
                write_entry(f, name, data, {**attrs, "image_sha256": shas[name]}, keys[name])
            done += 1
            if progress:
                progress(done, len(names), name)
    counts = list(read_keypoint_counts(path, names).values())
    return {
        "extractor": cfg.name,
        "descriptor_kind": cls.descriptor_kind,
        "keypoints_total": int(sum(counts)),
        "keypoints_mean": float(np.mean(counts)) if counts else 0.0,
        "keypoints_min": int(min(counts)) if counts else 0,
        "device": device.type,
        "executor": "ray" if executor is not None else "local",
        "computed": len(todo),
        "reused": len(names) - len(todo),
        "seconds_per_image": round(seconds / len(todo), 4) if todo else None,
    }


def read_feature_keys(path: Path, names: list[str]) -> dict[str, str]:
    """The content key of each image's entry in ``features.h5`` ("" for an entry without one).

    Raises:
        KeyError: an image has no features in the file.
        OSError: the file is missing or unreadable.
    """
    with h5py.File(path, "r") as f:
        return {n: str(f[n].attrs.get(KEY_ATTR, "")) for n in names}


def read_keypoint_counts(path: Path, names: list[str]) -> dict[str, int]:
    """Number of keypoints per image in ``features.h5``.

    Raises:
        KeyError: an image has no features in the file.
    """
    with h5py.File(path, "r") as f:
        return {n: int(f[n]["keypoints"].shape[0]) for n in names}


def extract_for_matching(model: Extractor, cfg: FeaturesConfig, path: Path) -> dict[str, np.ndarray]:
    """One photo's features straight from the extractor, in the form :func:`read_features` gives (``descriptors``
    float32 for kind ``float``, ``image_size`` int [2] as (W, H)): what a matcher takes, without a ``features.h5``
    (benchmarks and tests of matchers). Same arrays as the stage (:func:`features_of`, no upright turn).

    Raises:
        OSError: the photo cannot be read.
    """
    from ..io.images import load_rgb

    img, sx, sy = load_rgb(path, cfg.resize)
    data, attrs = features_of(model, cfg, img, sx, sy)
    if data["descriptors"].dtype != np.uint8:
        data["descriptors"] = data["descriptors"].astype(np.float32)
    data["image_size"] = np.asarray(attrs["image_size"])
    return data


def read_features(path: Path, name: str) -> dict[str, np.ndarray]:
    """One image's features from ``features.h5``: ``keypoints`` float32 [N, 2], ``scores`` float32 [N],
    ``descriptors`` [N, D] (float32 for kind ``float``, uint8 packed bits for ``binary``), ``image_size`` int [2]
    (W, H), ``descriptor_kind`` and ``extractor`` (str), and ``scales`` / ``oris`` float32 [N] where stored.

    Raises:
        KeyError: the image has no features in the file.
    """
    with h5py.File(path, "r") as f:
        g = f[name]
        kind = str(g.attrs.get("descriptor_kind", "float"))
        desc = g["descriptors"][()]
        out = {
            "keypoints": g["keypoints"][()],
            "scores": g["scores"][()],
            "descriptors": desc if kind == "binary" else desc.astype(np.float32),
            "image_size": np.asarray(g.attrs["image_size"]),
            "descriptor_kind": kind,
            "extractor": str(g.attrs.get("extractor", "aliked-n16")),
        }
        for k in ("scales", "oris"):
            if k in g:
                out[k] = g[k][()]
        return out
