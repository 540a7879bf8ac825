"""What the IMC 2025 training labels (``../shared/data/_imc2025_labels/``) look like, and a check that our
``submission.csv`` writer produces a file the competition would accept for them (same columns, one row per image,
every image present): a submission of every labelled image written by :func:`backend.io.export.write_submission_csv`,
checked by :func:`backend.io.export.check_submission` and scored by our implementation of the official metric.

    python -m bench.imc2025_labels        # writes bench/out/imc2025_labels.md (a section of RESULTS.md)
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np

from backend.evaluation.imc_metric import read_thresholds
from backend.utils.text import parse_numbers

from .__main__ import DATA

LABELS = DATA / "_imc2025_labels"


def labels_summary() -> dict:
    """Per dataset: scenes (with image counts), outliers, thresholds (per scene, 6 numbers), image naming."""
    rows = list(csv.DictReader(open(LABELS / "train_labels.csv", newline="")))
    th = {k: list(v) for k, v in read_thresholds(LABELS / "train_thresholds.csv").by_scene.items()}
    out = {}
    for r in rows:
        d = out.setdefault(r["dataset"], {"scenes": {}, "outliers": 0, "images": 0, "nan_poses": 0})
        d["images"] += 1
        d["nan_poses"] += "nan" in r["rotation_matrix"].lower()
        if r["scene"] == "outliers":
            d["outliers"] += 1
        else:
            d["scenes"][r["scene"]] = d["scenes"].get(r["scene"], 0) + 1
    for (ds, sc), t in th.items():
        out.setdefault(ds, {"scenes": {}, "outliers": 0, "images": 0, "nan_poses": 0}).setdefault(
            "thresholds", {})[sc] = t
    return {"rows": rows, "datasets": out}


def check_our_writer(rows: list[dict]) -> tuple[list[str], dict]:
    """Write a submission of every labelled image with our writer (GT scenes as clusters, GT poses), check it and
    score it. Returns (problems, score dict)."""
    from backend.evaluation.imc_metric import evaluate_files
    from backend.io.export import check_submission, write_submission_csv

    expected: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        by_ds: dict[str, list] = {}
        for r in rows:
            expected.setdefault(r["dataset"], set()).add(r["image"])
            R, t = parse_numbers(r["rotation_matrix"]), parse_numbers(r["translation_vector"])
            pose = None if np.isnan(R).any() else (R.reshape(3, 3), t)
            by_ds.setdefault(r["dataset"], []).append((r["image"], r["scene"], pose))
        parts = []
        for ds, items in by_ds.items():
            p = Path(tmp) / f"{ds}.csv"
            write_submission_csv(p, items, ds)
            parts.append(p.read_text().splitlines())
        sub = Path(tmp) / "submission.csv"
        sub.write_text("\n".join([parts[0][0]] + [ln for p in parts for ln in p[1:]]) + "\n")
        problems = check_submission(sub, expected)
        score = evaluate_files(LABELS / "train_labels.csv", sub, LABELS / "train_thresholds.csv").to_dict()
    return problems, score


def report_lines() -> list[str]:
    if not (LABELS / "train_labels.csv").exists():
        return []
    s = labels_summary()
    problems, score = check_our_writer(s["rows"])
    ds = s["datasets"]
    all_th = [t for d in ds.values() for t in d.get("thresholds", {}).values()]
    lo = min(min(t) for t in all_th)
    hi = max(max(t) for t in all_th)
    out = ["## IMC 2025 training labels", "",
           f"`../shared/data/_imc2025_labels/train_labels.csv`: {len(s['rows'])} rows, columns "
           "`dataset,scene,image,rotation_matrix,translation_vector`, {0} datasets, {1} scenes, {2} outlier images "
           "(scene `outliers`, `nan` poses); image names are `<scene>_<original name>` within a dataset. "
           "`train_thresholds.csv` (`dataset,scene,thresholds`): {3} thresholds per scene, in each scene's own "
           "units, from {4:g} to {5:g} (the metric skips the two tightest).".format(
               len(ds), sum(len(d["scenes"]) for d in ds.values()), sum(d["outliers"] for d in ds.values()),
               len(all_th[0]), lo, hi), "",
           "| dataset | scenes (images) | outliers | thresholds (first scene) |", "|---|---|---:|---|"]
    for name, d in sorted(ds.items()):
        first = next(iter(d.get("thresholds", {}).values()), [])
        out.append(f"| {name} | " + ", ".join(f"{k} ({v})" for k, v in d["scenes"].items())
                   + f" | {d['outliers']} | {';'.join(f'{x:g}' for x in first)} |")
    out += ["", "Our writer on these labels (every labelled image, GT scenes as clusters, GT poses): "
            + ("accepted: header `image_id,dataset,scene,image,rotation_matrix,translation_vector`, one row per "
               "image, every image present" if not problems else "PROBLEMS: " + "; ".join(problems))
            + f"; scored by our metric: mAA {score['mAA']:.3f}, clusterness {score['clusterness']:.3f}, score "
            f"{score['score']:.3f} (the ground truth scored against itself).", ""]
    return out


if __name__ == "__main__":
    from .__main__ import REPO

    text = "\n".join(report_lines())
    (REPO / "bench" / "out" / "imc2025_labels.md").write_text(text + "\n")
    print(text)
