"""Stage 4: match the selected pairs with any matcher of the registry (:mod:`backend.matchers`) into
``matches.h5``.

``matches.h5`` holds, per pair, the group ``/<image0>/<image1>/`` with

- ``matches``: int32 [M, 2], indices into the keypoints of image0 and image1 in ``features.h5``;
- ``scores``: float16 [M], the matcher's confidence in [0, 1] (LightGlue's probability; 1 - ratio for nn-ratio);
- attribute ``matcher`` (the registry name);
- attributes ``seconds`` (the matcher's time on this pair, s; absent for pairs matched on Ray workers) and, for
  LightGlue and LighterGlue, ``layers`` (transformer layers run before adaptive depth stopped) and ``pruned``
  (share of keypoints dropped by adaptive width): the profile ``python -m bench`` reports;
- (with a matcher's ``batch_size`` > 1, ``seconds`` is the batch's time divided by its pairs, ``layers`` the
  model's full depth and ``pruned`` 0: a batch runs every layer on every point);
- attribute ``key`` (written last): :func:`match_key` of both images' feature keys (``features.h5``), the
  matcher, its options and its weights. A pair is recomputed unless its entry carries the key it would get now,
  so matches always index the current keypoints (see :mod:`backend.io.h5cache`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import h5py
import numpy as np

from ..features.extract import FEATURES_H5, read_feature_keys, read_features
from ..io.h5cache import content_key, open_cache, write_entry, writing
from ..io.weights import checksums
from ..utils.device import get_device
from . import check_combination, load_matcher, matcher_class, matcher_conf

if TYPE_CHECKING:
    from ..config import MatchingConfig

MATCHES_H5 = "matches.h5"
MATCH_DATASETS = ("matches", "scores")
FEATURE_CACHE_IMAGES = 128  # images whose features the matcher keeps in memory (about 40 MB for XFeat at 2048)


def method_options(cfg: MatchingConfig) -> dict:
    """The options handed to the matcher: the stage's common fields (LightGlue's confidences, the ratio) that the
    method knows, then ``cfg.options``."""
    return {"depth_confidence": cfg.depth_confidence, "width_confidence": cfg.width_confidence,
            "filter_threshold": cfg.filter_threshold, "ratio": cfg.ratio, **cfg.options}


def pair_key(name0: str, name1: str) -> str:
    """HDF5 path of a pair in ``matches.h5``."""
    return f"{name0}/{name1}"


def match_key(feature_key0: str, feature_key1: str, cfg: MatchingConfig, extractor: str) -> str:
    """The content key (32 hex digits) of a pair's matches: the two images' feature keys (in pair order), the
    matcher's name and full options (not ``min_matches``, which only filters later) and the sha256 of the weights
    it loads for ``extractor``'s features."""
    conf = matcher_conf(cfg.name, **method_options(cfg))
    weights = checksums(matcher_class(cfg.name).weight_names(conf, extractor))
    return content_key("matches", feature_key0, feature_key1, cfg.name, conf, weights)


def _match_local(feats_path: Path, todo: list[tuple[str, str]], cfg: MatchingConfig, extractor: str,
                 cancel: threading.Event | None, device):
    """Yield ``((name0, name1), matches int32 [M, 2], scores float32 [M], seconds, stats)`` for each pair of
    ``todo`` in order, matching in this process; ``stats``: the matcher's ``last_stats`` for the pair ({} when it
    keeps none). A matcher whose ``batch_size`` is above 1 gets that many pairs at a time
    (:meth:`~backend.matchers.base.Matcher.match_batch`); each pair of a batch is given the batch's mean time."""
    if not todo:
        return
    model = load_matcher(cfg.name, extractor, device, **method_options(cfg))
    # features of the most recently used images only, so memory does not grow with the collection; pairs come
    # grouped by their first image (retrieval and sequential pairs), so a small cache reads each image ~once
    cache: OrderedDict[str, dict] = OrderedDict()

    def feats(name: str) -> dict:
        if name in cache:
            cache.move_to_end(name)
        else:
            cache[name] = read_features(feats_path, name)
            if len(cache) > FEATURE_CACHE_IMAGES:
                cache.popitem(last=False)
        return cache[name]

    step = max(1, int(getattr(model, "batch_size", 1)))
    for start in range(0, len(todo), step):
        if cancel is not None and cancel.is_set():
            raise InterruptedError("cancelled")
        chunk = todo[start:start + step]
        t0 = time.perf_counter()
        results = model.match_batch([(feats(n0), feats(n1)) for n0, n1 in chunk])
        secs = (time.perf_counter() - t0) / len(chunk)  # a batch's time, shared evenly by its pairs
        stats = dict(getattr(model, "last_stats", None) or {})
        for (n0, n1), (m, s) in zip(chunk, results):
            yield (n0, n1), m, s, secs, stats


def run_matching(
    run_dir: Path,
    pairs: list[tuple[str, str]],
    cfg: MatchingConfig,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
    features_path: Path | None = None,
    out_path: Path | None = None,
    executor=None,
) -> dict:
    """Match every pair of ``pairs`` with matcher ``cfg.name`` into ``run_dir/matches.h5`` (or ``out_path``),
    from the features in ``run_dir/features.h5`` (or ``features_path``).

    A pair whose entry carries the key it would get now (:func:`match_key` of the two images' current feature
    keys) is kept; every other one is recomputed, all of them with ``force``. Pairs are written atomically in
    batches (every 5 s, see :mod:`backend.io.h5cache`).

    ``executor``: where to compute: None (this process) or a :class:`backend.distributed.RayExecutor`, whose
    workers match batches of pairs (features sent from here); this process writes every entry either way.

    Returns counts: ``{"matcher", "pairs", "matches_total", "matches_mean", "pairs_min_matches", "executor",
    "computed", "reused", "seconds_per_pair"}`` where ``pairs_min_matches`` is the number of pairs with at least
    ``cfg.min_matches`` matches.

    Raises:
        ValueError: the matcher cannot match these features (the message names the ones that can).
        InterruptedError: ``cancel`` was set.
        KeyError: an image of ``pairs`` has no features in ``features.h5``.
        MissingWeightsError: the matcher's weights are missing or fail their check.
    """
    run_dir = Path(run_dir)
    path = Path(out_path) if out_path else run_dir / MATCHES_H5
    feats_path = Path(features_path) if features_path else run_dir / FEATURES_H5
    device = get_device()
    names = sorted({n for p in pairs for n in p})
    fkeys = read_feature_keys(feats_path, names)
    extractor = read_extractor(feats_path, names)
    check_combination(extractor, cfg.name)
    keys = {p: match_key(fkeys[p[0]], fkeys[p[1]], cfg, extractor) for p in pairs}
    cached = open_cache(path, 2, MATCH_DATASETS)
    todo = [p for p in pairs if force or cached.get(pair_key(*p)) != keys[p]]
    done = len(pairs) - len(todo)
    if progress:
        progress(done, len(pairs), "cached")
    seconds = 0.0
    buffer: list[tuple[str, str, np.ndarray, np.ndarray, dict]] = []
    last_flush = time.monotonic()

    def flush():
        # the file is opened only to write, so that readers (the app) can open it between writes
        if not buffer:
            return
        with writing(path, [pair_key(a, b) for a, b, _, _, _ in buffer]) as f:
            for a, b, m, s, attrs in buffer:
                write_entry(f, pair_key(a, b), {"matches": m, "scores": s.astype(np.float16)},
                            {"matcher": cfg.name, **attrs}, keys[(a, b)])
        buffer.clear()

    if executor is not None and todo:
        results = executor.match(feats_path, todo, cfg, extractor, cancel)
    else:
        results = _match_local(feats_path, todo, cfg, extractor, cancel, device)
    try:
        for (n0, n1), m, s, secs, *more in results:  # (Ray's workers send no per-pair stats)
            seconds += secs
            attrs = {"seconds": float(secs), **(more[0] if more else {})} if executor is None else {}
            buffer.append((n0, n1, m, s, attrs))
            done += 1
            if time.monotonic() - last_flush > 5.0:
                flush()
                last_flush = time.monotonic()
            if progress:
                progress(done, len(pairs), f"{n0} - {n1}: {len(m)} matches")
    finally:
        results.close()  # a failed write stops the executor's work in flight too
        flush()
    with h5py.File(path, "r") as f:
        counts = [len(read_matches(f, *p)[0]) for p in pairs]
    return {
        "matcher": cfg.name,
        "pairs": len(pairs),
        "matches_total": int(sum(counts)),
        "matches_mean": float(np.mean(counts)) if counts else 0.0,
        "pairs_min_matches": int(sum(c >= cfg.min_matches for c in counts)),
        "executor": "ray" if executor is not None else "local",
        "computed": len(todo),
        "reused": len(pairs) - len(todo),
        "seconds_per_pair": round(seconds / len(todo), 4) if todo else None,
    }


def read_extractor(path: Path, names: list[str]) -> str:
    """The extractor that wrote the features of ``names`` in ``features.h5`` (runs before the registry: ALIKED).

    Raises:
        ValueError: the images' features come from different extractors (a stage was interrupted between
            methods; rerun the features stage).
    """
    with h5py.File(path, "r") as f:
        found = {str(f[n].attrs.get("extractor", "aliked-n16")) for n in names}
    if len(found) > 1:
        raise ValueError(f"features.h5 mixes extractors ({', '.join(sorted(found))}); rerun the features stage")
    return found.pop() if found else "aliked-n16"


def read_matches(path: "Path | h5py.File", name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """``(matches int32 [M, 2], scores float32 [M])`` of a pair; looks the pair up in either order. ``path`` is the
    ``matches.h5`` file or an open ``h5py.File`` of it (to read many pairs without reopening the file).

    Raises:
        KeyError: the pair is not in the file.
    """
    if isinstance(path, h5py.File):
        return _pair_arrays(path, name0, name1)
    with h5py.File(path, "r") as f:
        return _pair_arrays(f, name0, name1)


def _pair_arrays(f: h5py.File, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    if pair_key(name0, name1) in f:
        g = f[pair_key(name0, name1)]
        return g["matches"][()], g["scores"][()].astype(np.float32)
    g = f[pair_key(name1, name0)]
    return g["matches"][()][:, ::-1].copy(), g["scores"][()].astype(np.float32)
