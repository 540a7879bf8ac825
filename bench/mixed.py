"""Mixed-collection benchmark (issue 13, the IMC 2025 task): each mixture of :mod:`bench.mixtures` reconstructed in
one run, and each of its scenes alone (the same frames, the same settings), scored with the official IMC 2025
metric (mAA, clusterness, score).

    python -m bench.mixed [--mixtures two_scenes,lookalike,five_scenes] \
        [--configs fast,fast/aliked-n16+lightglue@640x1024]
    python -m bench.mixed --report-only

Writes ``bench/out/mixed.json``; ``python -m bench --report-only`` puts its table into ``bench/RESULTS.md``.

Per mixture and configuration: scenes found (clusters in submission.csv) against the GT scenes, outliers caught
(GT outliers marked ``outliers``), impure clusters (a cluster whose registered photos come from more than one GT
scene: an image of one scene in another's model), clusterness, mAA and score, the run's time (sum of its stage
times) against the sum of its scenes' times run alone, and each scene's score alone (the target applies to
mixtures whose scenes alone score at least 0.90). Configurations are as in :mod:`bench` (``preset`` or
``preset/features+matcher@resize x keypoints``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from .__main__ import REPO, run_tree
from .mixtures import MIXTURES, build_mixture

OUT = REPO / "bench" / "out"
MIXED_JSON = OUT / "mixed.json"
WORK = OUT / "mixed_work"  # built mixtures and runs (scene photos: gitignored, never committed)
CONFIGS = ["fast", "fast/aliked-n16+lightglue@640x1024"]


def _cmd(images: Path, run_dir: Path, config: str, dataset: str) -> list[str]:
    preset, _, method = config.partition("/")
    method, _, budget = method.partition("@")
    cmd = [sys.executable, "-m", "backend", "reconstruct", str(images), "--out", str(run_dir), "--preset", preset,
           "--dataset", dataset, "--quiet"]
    if method:
        features, _, matcher = method.partition("+")
        cmd += ["--features", features] + (["--matcher", matcher] if matcher else [])
    if budget:
        resize, _, kp = budget.partition("x")
        cmd += ["--resize", resize] + (["--max-keypoints", kp] if kp else [])
    return cmd


def _score(gt: Path, sub: Path, th: Path) -> dict:
    from backend.evaluation.imc_metric import evaluate_files

    return evaluate_files(gt, sub, th).to_dict()


def _run(images: Path, run_dir: Path, config: str, dataset: str) -> tuple[dict, float, float]:
    """Run the CLI; returns (run.json, seconds: the sum of its stage times, peak MB). A run that fails (nothing
    reconstructed) keeps its stage times and gets ``"failed"`` in the record."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    code, wall, peak, err = run_tree(_cmd(images, run_dir, config, dataset), 3600)
    rec = json.loads((run_dir / "run.json").read_text())
    if code != 0:
        rec["failed"] = err.strip().splitlines()[-1][:300] if err.strip() else f"exit {code}"
    seconds = sum(float(v.get("seconds") or 0) for v in rec.get("stages", {}).values())
    return rec, seconds, peak


def measure(name: str, config: str) -> dict:
    """One mixture with one configuration, and its scenes alone."""
    slug = config.replace("/", "_").replace("@", "_").replace("+", "-")
    root = WORK / name
    mix = build_mixture(name, root / "data")
    run_dir = root / f"run_{slug}"
    rec, seconds, peak = _run(mix.images, run_dir, config, mix.dataset)
    if rec.get("failed"):
        raise RuntimeError(f"{name} {config}: {rec['failed']}")
    sc = _score(mix.gt_csv, run_dir / "submission.csv", mix.thresholds_csv)
    with open(run_dir / "submission.csv", newline="") as f:
        sub = list(csv.DictReader(f))
    gt = {r["image"]: r["scene"] for r in csv.DictReader(open(mix.gt_csv, newline=""))}
    clusters = sorted({r["scene"] for r in sub} - {"outliers"})
    impure = 0
    for c in clusters:
        reg = {gt[r["image"]] for r in sub if r["scene"] == c and "nan" not in r["rotation_matrix"]}
        impure += len(reg - {"outliers"}) > 1 or "outliers" in reg
    caught = sum(r["scene"] == "outliers" for r in sub if gt[r["image"]] == "outliers")
    alone = {}
    for part in MIXTURES[name]:
        if part[0] in ("once", "noise", "flat"):
            continue
        scene = part[0]
        solo = build_mixture(f"{name}_{scene}", root / f"alone_{scene}" / "data", parts=[part])
        srec, ssec, _ = _run(solo.images, root / f"alone_{scene}" / f"run_{slug}", config, solo.dataset)
        sub = root / f"alone_{scene}" / f"run_{slug}" / "submission.csv"
        s = _score(solo.gt_csv, sub, solo.thresholds_csv) if sub.exists() else {"mAA": 0.0, "score": 0.0}
        alone[scene] = {"images": len(solo.scenes[scene]), "seconds": ssec, "mAA": s["mAA"], "score": s["score"],
                        "failed": srec.get("failed")}
    alone_sum = sum(a["seconds"] for a in alone.values())
    return {"mixture": name, "config": config, "images": len(gt), "gt_scenes": len(mix.scenes),
            "gt_outliers": len(mix.outliers), "clusters": len(clusters), "outliers_caught": caught,
            "impure_clusters": impure, "mAA": sc["mAA"], "clusterness": sc["clusterness"], "score": sc["score"],
            "seconds": seconds, "alone_seconds": alone_sum, "time_ratio": seconds / alone_sum if alone_sum else None,
            "peak_mb": round(peak), "alone": alone,
            "stage_seconds": {k: v.get("seconds") for k, v in rec["stages"].items()},
            "per_scene": {s: {"cluster": d["cluster"], "mAA": d["mAA"], "n_registered": d["n_registered"],
                              "n_gt": d["n_gt"]}
                          for ds in sc["per_dataset"].values() for s, d in ds.get("scenes", {}).items()}}


def report_lines(rows: list[dict]) -> list[str]:
    """The mixed-collections table for RESULTS.md."""
    if not rows:
        return []
    out = ["## Mixed collections (IMC 2025 task)", "",
           "Generated by `python -m bench.mixed` (mixtures built by `bench/mixtures.py` from `../shared/data`: "
           "scenes plus photos of scenes seen once, seeded noise and flat images, under shuffled names). Official "
           "IMC 2025 metric. *time ratio*: the mixture's run time / the sum of its scenes' run times alone (same "
           "frames, same settings). *alone*: each scene's score run alone. *impure*: clusters whose registered "
           "photos come from more than one GT scene.", "",
           "| mixture | config | images | scenes found / GT | outliers caught | impure | clusterness | mAA | score "
           "| time s | alone s | time ratio | scenes alone (score) |",
           "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        alone = ", ".join(f"{s.split('_')[0]} {a['score']:.2f}" for s, a in r["alone"].items())
        out.append(f"| {r['mixture']} | {r['config']} | {r['images']} | {r['clusters']} / {r['gt_scenes']} | "
                   f"{r['outliers_caught']} / {r['gt_outliers']} | {r['impure_clusters']} | {r['clusterness']:.3f} | "
                   f"{r['mAA']:.3f} | {r['score']:.3f} | {r['seconds']:.1f} | {r['alone_seconds']:.1f} | "
                   f"{r['time_ratio']:.2f} | {alone} |")
    out.append("")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mixed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mixtures", default=",".join(MIXTURES))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args(argv)
    rows = json.loads(MIXED_JSON.read_text()) if MIXED_JSON.exists() else []
    if not a.report_only:
        for name in a.mixtures.split(","):
            for config in a.configs.split(","):
                print(f"{name} {config} ...", flush=True)
                r = measure(name, config)
                rows = [x for x in rows if (x["mixture"], x["config"]) != (name, config)] + [r]
                MIXED_JSON.write_text(json.dumps(rows, indent=1))
                print(f"  clusters {r['clusters']}/{r['gt_scenes']}, outliers {r['outliers_caught']}/"
                      f"{r['gt_outliers']}, clusterness {r['clusterness']:.3f}, mAA {r['mAA']:.3f}, score "
                      f"{r['score']:.3f}, {r['seconds']:.0f} s vs {r['alone_seconds']:.0f} s alone", flush=True)
    print("\n".join(report_lines(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
