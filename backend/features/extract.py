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
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from ..config import FeaturesConfig
from ..io.h5cache import KEY_ATTR, config_key, content_key, open_cache, write_entry, writing
from ..io.images import IMAGES_JSON, file_sha256, load_rgb, upright_turns
from ..io.upright import keypoints_from_upright, orientations_from_upright, turn_upright
from ..io.weights import checksums
from . import extractor_class, extractor_conf, load_extractor
from .base import Extractor

FEATURES_H5 = "features.h5"
FEATURE_DATASETS = ("keypoints", "scores", "descriptors")


def get_device():
    """CUDA when present, else CPU (a ``torch.device``). torch is imported here, not with the module, so that the
    mapping child, which only reads ``features.h5``, starts without it (2 s of imports on this machine)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def run_features(
    run_dir: Path,
    names: list[str],
    cfg: FeaturesConfig,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    decode: dict | None = None,
    force: bool = False,
    out_path: Path | None = None,
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

    Returns counts: ``{"extractor", "descriptor_kind", "keypoints_total", "keypoints_mean", "keypoints_min",
    "device", "computed", "reused", "seconds_per_image"}``.

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
    model: Extractor | None = load_extractor(cfg.name, device, **method_options(cfg)) if todo else None
    done = len(names) - len(todo)
    if progress:
        progress(done, len(names), "cached")
    seconds = 0.0
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(load_rgb, run_dir / "images" / n, cfg.resize) for n in todo[:2]]
        for i, name in enumerate(todo):
            if cancel is not None and cancel.is_set():
                raise InterruptedError("cancelled")
            img, sx, sy = futures[i].result()
            if i + 2 < len(todo):
                futures.append(pool.submit(load_rgb, run_dir / "images" / todo[i + 2], cfg.resize))
            t0 = time.perf_counter()
            k = turns.get(name, 0)
            out = model.extract(turn_upright(img, k) if k else img)
            seconds += time.perf_counter() - t0
            if k:
                out["keypoints"] = keypoints_from_upright(out["keypoints"], k, (img.shape[1], img.shape[0]))
                if "oris" in out:
                    out["oris"] = orientations_from_upright(out["oris"], k)
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
            with writing(path, [name]) as f:
                write_entry(f, name, data, {
                    "extractor": cfg.name,
                    "descriptor_kind": cls.descriptor_kind,
                    "image_size": list(size),
                    "resized_size": [img.shape[1], img.shape[0]],
                    "image_sha256": shas[name],
                    "upright_turns": int(k),
                }, keys[name])
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
