"""Stage 3: ALIKED keypoints and descriptors (Zhao et al., "ALIKED: A Lighter Keypoint and Descriptor
Extraction Network via Deformable Transformation", IEEE TIM 2023; github.com/Shiaoming/ALIKED) through
``kornia.feature.ALIKED`` with the official weights.

``features.h5`` holds one group per image name with

- ``keypoints``: float32 [N, 2], (x, y) in pixels of the original image (as stored in the run folder),
  **pixel centres at integer coordinates** (OpenCV convention: the top-left pixel's centre is (0, 0)).
  COLMAP puts pixel centres at +0.5; :func:`to_colmap_keypoints` converts.
- ``scores``: float32 [N], detection scores in (0, 1), sorted in decreasing order.
- ``descriptors``: float16 [N, 128], L2-normalised.
- attributes ``image_size`` (W, H) of the original and ``resized_size`` (W, H) the network saw;
- attribute ``image_sha256``: the sha256 of the image file the features were computed from;
- attribute ``key`` (written last): :func:`feature_key` of the image bytes, the decode options, the config and
  the weights. An image is recomputed unless its entry carries the key it would get now (see
  :mod:`backend.h5cache`), and a pair's key in ``matches.h5`` chains both images' keys.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch

from .config import FeaturesConfig
from .h5cache import KEY_ATTR, config_key, content_key, open_cache, write_entry, writing
from .images import file_sha256, load_rgb
from .weights import checksums, weight_path

FEATURES_H5 = "features.h5"
FEATURE_DATASETS = ("keypoints", "scores", "descriptors")


def get_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_aliked(cfg: FeaturesConfig, device: torch.device | None = None) -> torch.nn.Module:
    """ALIKED in eval mode on ``device`` with the official weights from ``weights/``.

    Raises:
        MissingWeightsError: the weight file is missing or fails its sha256 check.
    """
    from kornia.feature import ALIKED

    device = device or get_device()
    model = ALIKED(
        model_name=cfg.model,
        max_num_keypoints=cfg.max_keypoints,
        detection_threshold=cfg.detection_threshold,
        nms_radius=cfg.nms_radius,
    )
    state = torch.load(weight_path(cfg.model), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    learned = {n for n, _ in model.named_parameters()}
    if any(k in learned for k in missing) or unexpected:
        raise RuntimeError(f"ALIKED weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval().to(device)


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


@torch.inference_mode()
def extract_one(model: torch.nn.Module, image: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    """Run ALIKED on one uint8 RGB image [H, W, 3].

    Returns ``keypoints`` float32 [N, 2] (pixels of ``image``, centres at integers), ``scores`` float32 [N],
    ``descriptors`` float32 [N, 128].
    """
    t = torch.from_numpy(np.ascontiguousarray(image).copy()).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda"):
        feats = model(t)[0]
    return {
        "keypoints": feats.keypoints.float().cpu().numpy(),
        "scores": feats.keypoint_scores.float().cpu().numpy(),
        "descriptors": feats.descriptors.float().cpu().numpy(),
    }


def feature_key(image_sha256: str, decode: dict, cfg: FeaturesConfig) -> str:
    """The content key (32 hex digits) of one image's features: its file's sha256, the options that decide its
    pixels (``decode``, e.g. ``{"background": "white"}``), the features config and the ALIKED weights' sha256."""
    return content_key("features", image_sha256, decode, config_key(cfg), checksums([cfg.model]))


def run_features(
    run_dir: Path,
    names: list[str],
    cfg: FeaturesConfig,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    decode: dict | None = None,
    force: bool = False,
) -> dict:
    """Extract features for ``names`` (images in ``run_dir/images``) into ``run_dir/features.h5``.

    An image whose entry carries the key it would get now (:func:`feature_key` of its bytes, ``decode``, ``cfg``)
    is kept (resumable); every other one is recomputed, all of them with ``force``. Each image is written
    atomically (see :mod:`backend.h5cache`). Image loading runs in a background thread so that decoding overlaps
    with the network.

    Args:
        decode: the image options that decide the pixels the network sees besides ``cfg.resize`` (the pipeline
            passes ``{"background": ...}``); part of every key.
        force: recompute every image.

    Returns counts: ``{"keypoints_total", "keypoints_mean", "keypoints_min", "device", "computed", "reused"}``.

    Raises:
        InterruptedError: ``cancel`` was set.
        OSError: an image cannot be read.
        MissingWeightsError: the ALIKED weights are missing or fail their check.
    """
    run_dir = Path(run_dir)
    path = run_dir / FEATURES_H5
    device = get_device()
    shas = {n: file_sha256(run_dir / "images" / n) for n in names}
    keys = {n: feature_key(shas[n], decode or {}, cfg) for n in names}
    cached = open_cache(path, 1, FEATURE_DATASETS)
    todo = [n for n in names if force or cached.get(n) != keys[n]]
    model = load_aliked(cfg, device) if todo else None
    done = len(names) - len(todo)
    if progress:
        progress(done, len(names), "cached")
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(load_rgb, run_dir / "images" / n, cfg.resize) for n in todo[:2]]
        for i, name in enumerate(todo):
            if cancel is not None and cancel.is_set():
                raise InterruptedError("cancelled")
            img, sx, sy = futures[i].result()
            if i + 2 < len(todo):
                futures.append(pool.submit(load_rgb, run_dir / "images" / todo[i + 2], cfg.resize))
            out = extract_one(model, img, device)
            order = np.argsort(-out["scores"], kind="stable")  # strongest first: a prefix is a smaller budget
            out = {k: v[order] for k, v in out.items()}
            kpts = scale_keypoints(out["keypoints"], sx, sy)
            with writing(path, [name]) as f:
                write_entry(f, name, {
                    "keypoints": kpts,
                    "scores": out["scores"].astype(np.float32),
                    "descriptors": out["descriptors"].astype(np.float16),
                }, {
                    "image_size": [round(img.shape[1] * sx), round(img.shape[0] * sy)],
                    "resized_size": [img.shape[1], img.shape[0]],
                    "image_sha256": shas[name],
                }, keys[name])
            done += 1
            if progress:
                progress(done, len(names), name)
    counts = list(read_keypoint_counts(path, names).values())
    return {
        "keypoints_total": int(sum(counts)),
        "keypoints_mean": float(np.mean(counts)) if counts else 0.0,
        "keypoints_min": int(min(counts)) if counts else 0,
        "device": device.type,
        "computed": len(todo),
        "reused": len(names) - len(todo),
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
    ``descriptors`` float32 [N, D], ``image_size`` int [2] (W, H).

    Raises:
        KeyError: the image has no features in the file.
    """
    with h5py.File(path, "r") as f:
        g = f[name]
        return {
            "keypoints": g["keypoints"][()],
            "scores": g["scores"][()],
            "descriptors": g["descriptors"][()].astype(np.float32),
            "image_size": np.asarray(g.attrs["image_size"]),
        }
