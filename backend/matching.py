"""Stage 4: LightGlue matching (Lindenberger, Sarlin & Pollefeys, "LightGlue: Local Feature Matching at Light
Speed", ICCV 2023; github.com/cvg/LightGlue) of ALIKED features, through ``kornia.feature.LightGlue`` with the
official ALIKED weights and adaptive depth (early stopping) and width (point pruning).

``matches.h5`` holds, per pair, the group ``/<image0>/<image1>/`` with

- ``matches``: int32 [M, 2], indices into the keypoints of image0 and image1 in ``features.h5``;
- ``scores``: float16 [M], LightGlue matching confidence in (0, 1];
- attribute ``key`` (written last): :func:`match_key` of both images' feature keys (``features.h5``), the
  matching config and the LightGlue weights. A pair is recomputed unless its entry carries the key it would get
  now, so matches always index the current keypoints (see :mod:`backend.h5cache`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch

from .config import MatchingConfig
from .features import FEATURES_H5, get_device, read_feature_keys, read_features
from .h5cache import content_key, open_cache, write_entry, writing
from .weights import checksums, weight_path

MATCHES_H5 = "matches.h5"
MATCH_DATASETS = ("matches", "scores")


def load_lightglue(cfg: MatchingConfig, device: torch.device | None = None) -> torch.nn.Module:
    """LightGlue for ALIKED (128-D descriptors) in eval mode, weights from ``weights/aliked_lightglue.pth``.

    Raises:
        MissingWeightsError: the weight file is missing or fails its sha256 check.
    """
    from kornia.feature import LightGlue

    device = device or get_device()
    model = LightGlue(
        None,
        input_dim=128,
        depth_confidence=cfg.depth_confidence,
        width_confidence=cfg.width_confidence,
        filter_threshold=cfg.filter_threshold,
        mp=device.type == "cuda",
    )
    state = torch.load(weight_path("aliked-lightglue"), map_location="cpu", weights_only=True)
    # the official checkpoint names the attention layers self_attn.i / cross_attn.i
    for i in range(model.conf.n_layers):
        for kind in ("self_attn", "cross_attn"):
            state = {k.replace(f"{kind}.{i}.", f"transformers.{i}.{kind}."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    learned = {n for n, _ in model.named_parameters()}
    if any(k in learned for k in missing) or unexpected:
        raise RuntimeError(f"LightGlue weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval().to(device)


def pair_key(name0: str, name1: str) -> str:
    """HDF5 path of a pair in ``matches.h5``."""
    return f"{name0}/{name1}"


@torch.inference_mode()
def match_pair(model: torch.nn.Module, f0: dict, f1: dict, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Match two images' features (dicts as returned by :func:`backend.features.read_features`).

    Returns ``(matches int32 [M, 2], scores float32 [M])``.
    """
    def side(f: dict) -> dict:
        return {
            "keypoints": torch.from_numpy(f["keypoints"]).to(device)[None],
            "descriptors": torch.from_numpy(f["descriptors"]).to(device)[None],
            "image_size": torch.as_tensor(f["image_size"], device=device, dtype=torch.float32)[None],
        }

    if len(f0["keypoints"]) == 0 or len(f1["keypoints"]) == 0:
        return np.zeros((0, 2), np.int32), np.zeros((0,), np.float32)
    out = model({"image0": side(f0), "image1": side(f1)})
    return (
        out["matches"][0].cpu().numpy().astype(np.int32),
        out["scores"][0].float().cpu().numpy().astype(np.float32),
    )


def match_key(feature_key0: str, feature_key1: str, cfg: MatchingConfig) -> str:
    """The content key (32 hex digits) of a pair's matches: the two images' feature keys (in pair order), the
    LightGlue options (not ``min_matches``, which only filters later) and the LightGlue weights' sha256."""
    options = {"depth_confidence": cfg.depth_confidence, "width_confidence": cfg.width_confidence,
               "filter_threshold": cfg.filter_threshold}
    return content_key("matches", feature_key0, feature_key1, options, checksums(["aliked-lightglue"]))


def run_matching(
    run_dir: Path,
    pairs: list[tuple[str, str]],
    cfg: MatchingConfig,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> dict:
    """Match every pair of ``pairs`` into ``run_dir/matches.h5``.

    A pair whose entry carries the key it would get now (:func:`match_key` of the two images' current feature
    keys) is kept; every other one is recomputed, all of them with ``force``. Pairs are written atomically in
    batches (every 5 s, see :mod:`backend.h5cache`).

    Returns counts: ``{"pairs", "matches_total", "matches_mean", "pairs_min_matches", "computed", "reused"}``
    where ``pairs_min_matches`` is the number of pairs with at least ``cfg.min_matches`` matches.

    Raises:
        InterruptedError: ``cancel`` was set.
        KeyError: an image of ``pairs`` has no features in ``features.h5``.
        MissingWeightsError: the LightGlue weights are missing or fail their check.
    """
    run_dir = Path(run_dir)
    path = run_dir / MATCHES_H5
    feats_path = run_dir / FEATURES_H5
    device = get_device()
    fkeys = read_feature_keys(feats_path, sorted({n for p in pairs for n in p}))
    keys = {p: match_key(fkeys[p[0]], fkeys[p[1]], cfg) for p in pairs}
    cached = open_cache(path, 2, MATCH_DATASETS)
    todo = [p for p in pairs if force or cached.get(pair_key(*p)) != keys[p]]
    model = load_lightglue(cfg, device) if todo else None
    cache: dict[str, dict] = {}

    def feats(name: str) -> dict:
        if name not in cache:
            cache[name] = read_features(feats_path, name)
        return cache[name]

    done = len(pairs) - len(todo)
    if progress:
        progress(done, len(pairs), "cached")
    buffer: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    last_flush = time.monotonic()

    def flush():
        # the file is opened only to write, so that readers (the app) can open it between writes
        if not buffer:
            return
        with writing(path, [pair_key(a, b) for a, b, _, _ in buffer]) as f:
            for a, b, m, s in buffer:
                write_entry(f, pair_key(a, b), {"matches": m, "scores": s.astype(np.float16)}, {}, keys[(a, b)])
        buffer.clear()

    try:
        for n0, n1 in todo:
            if cancel is not None and cancel.is_set():
                raise InterruptedError("cancelled")
            m, s = match_pair(model, feats(n0), feats(n1), device)
            buffer.append((n0, n1, m, s))
            done += 1
            if time.monotonic() - last_flush > 5.0:
                flush()
                last_flush = time.monotonic()
            if progress:
                progress(done, len(pairs), f"{n0} - {n1}: {len(m)} matches")
    finally:
        flush()
    counts = [len(read_matches(path, *p)[0]) for p in pairs]
    return {
        "pairs": len(pairs),
        "matches_total": int(sum(counts)),
        "matches_mean": float(np.mean(counts)) if counts else 0.0,
        "pairs_min_matches": int(sum(c >= cfg.min_matches for c in counts)),
        "computed": len(todo),
        "reused": len(pairs) - len(todo),
    }


def read_matches(path: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """``(matches int32 [M, 2], scores float32 [M])`` of a pair; looks the pair up in either order.

    Raises:
        KeyError: the pair is not in the file.
    """
    with h5py.File(path, "r") as f:
        if pair_key(name0, name1) in f:
            g = f[pair_key(name0, name1)]
            return g["matches"][()], g["scores"][()].astype(np.float32)
        g = f[pair_key(name1, name0)]
        return g["matches"][()][:, ::-1].copy(), g["scores"][()].astype(np.float32)
