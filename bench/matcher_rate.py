"""LightGlue's throughput, pair by pair against batched (issue 25): pairs per second on the bundled church sample.

    python -m bench.matcher_rate [--pairs 48] [--batch-sizes 8,16,32] [--keypoints 2048] [--out FILE]

Extracts ALIKED-n16 features (1024 px, ``--keypoints``) of the 16 church photos once, then matches the same
``--pairs`` pairs (all pairs of the sample in a fixed order, cycled if more are asked) with LightGlue:

- ``adaptive``: one pair at a time with adaptive depth and width (the balanced preset's 0.9 / 0.95);
- ``full``: one pair at a time at full depth and width (``depth_confidence = width_confidence = -1``);
- ``batch B``: ``B`` pairs at a time (``batch_size = B``), which runs at full depth and width: matches are compared
  with ``full``'s (the share of pairs whose match sets agree, allowing a match at the filter threshold, and the
  largest score difference).

On CUDA the model runs in half precision (kornia's ``mp``) with flash attention where a batch needs no padding; the
rate includes moving features to the device and results back, not extraction. One warm-up batch per variant is not
timed. Writes ``bench/out/matcher_rate.json`` (or ``--out``) and prints a table. The GPU bench
(``bash bench/gpu.sh bench``) runs it first. Not part of the tests (``tests/test_batched_matching.py`` checks the
batched path's matches).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .__main__ import REPO

CHURCH = REPO / "samples" / "church_imc2024" / "images"


def _features(keypoints: int, device: torch.device) -> list[dict]:
    from backend.config import FeaturesConfig
    from backend.features import load_extractor
    from backend.features.extract import extract_for_matching, method_options

    cfg = FeaturesConfig(name="aliked-n16", resize=1024, max_keypoints=keypoints)
    model = load_extractor("aliked-n16", device, **method_options(cfg))
    return [extract_for_matching(model, cfg, p) for p in sorted(CHURCH.iterdir())]


def _agree(a, b, threshold: float, tol: float = 1e-3) -> tuple[bool, float]:
    """Whether two ``(matches, scores)`` agree (a match found by one side only must score at the threshold) and the
    largest score difference on common matches."""
    da = {tuple(x): s for x, s in zip(a[0].tolist(), a[1])}
    db = {tuple(x): s for x, s in zip(b[0].tolist(), b[1])}
    common = set(da) & set(db)
    diff = max((abs(float(da[k]) - float(db[k])) for k in common), default=0.0)
    only = [da.get(k, db.get(k)) for k in set(da) ^ set(db)]
    return all(abs(float(s) - threshold) < 5e-2 for s in only) and len(only) <= max(1, 0.002 * len(common)), diff


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument("--keypoints", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "matcher_rate.json")
    args = ap.parse_args(argv)
    from backend.utils.device import get_device
    from backend.matchers import load_matcher

    device = get_device()
    feats = _features(args.keypoints, device)
    n = len(feats)
    order = [(i, j) for i in range(n) for j in range(i + 1, n)]
    pairs = [order[k % len(order)] for k in range(args.pairs)]
    variants = [("adaptive", {"depth_confidence": 0.9, "width_confidence": 0.95}, 1),
                ("full", {"depth_confidence": -1, "width_confidence": -1}, 1)]
    variants += [(f"batch {b}", {"depth_confidence": -1, "width_confidence": -1, "batch_size": b}, b)
                 for b in map(int, args.batch_sizes.split(","))]
    rows, full = [], None
    for label, conf, bs in variants:
        model = load_matcher("lightglue", "aliked-n16", device, **conf)
        chunks = [pairs[k:k + bs] for k in range(0, len(pairs), bs)]

        def run(chunk):
            return model.match_batch([(feats[i], feats[j]) for i, j in chunk])

        run(chunks[0])  # warm-up (kernels, allocator)
        _sync(device)
        t = time.perf_counter()
        got = [r for c in chunks for r in run(c)]
        _sync(device)
        secs = time.perf_counter() - t
        row = {"variant": label, "batch_size": bs, "pairs": len(pairs), "seconds": round(secs, 3),
               "pairs_per_second": round(len(pairs) / secs, 2), "matches_mean": round(float(np.mean(
                   [len(m) for m, _ in got])), 1)}
        if label == "full":
            full = got
        elif full is not None and label != "adaptive":
            checks = [_agree(a, b, model.conf["filter_threshold"]) for a, b in zip(full, got)]
            row["pairs_agreeing_with_full"] = round(sum(ok for ok, _ in checks) / len(checks), 3)
            row["max_score_difference"] = round(max(d for _, d in checks), 5)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "keypoints": args.keypoints,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n{meta['device']}, torch {meta['torch']}, {args.keypoints} ALIKED keypoints, {len(pairs)} church pairs")
    print("| variant | pairs/s | s per pair | matches | agree with full |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['pairs_per_second']} | {r['seconds'] / r['pairs']:.3f} | {r['matches_mean']} "
              f"| {r.get('pairs_agreeing_with_full', '')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
