"""``python -m bench``: our presets, a naive IMC-baseline configuration and COLMAP-SIFT on the real scenes, in one
process tree on one machine; per scene and configuration: registered images, mAA, wall time per stage, total,
peak memory, and ratios of ours to each peer.

    python -m bench [--scenes temple_ring_middlebury,...] [--configs fast,balanced,accurate,naive,colmap-sift]
                    [--scaling] [--out bench/out]

Writes ``bench/out/results.json``, ``bench/out/*.png`` and ``bench/RESULTS.md`` (generated). Every configuration
runs as its own subprocess; peak memory is the largest resident set of its process tree, sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SFM_DATA_DIR", REPO.parent / "shared" / "data"))
OURS = ["fast", "balanced", "accurate"]
RUN_ID = time.strftime("%Y-%m-%d %H:%M")  # this `python -m bench` run (the report's "run" column): when it started
PEERS = ["naive", "colmap-sift"]


def run_tree(cmd: list[str], timeout: float) -> tuple[int, float, float, str]:
    """Run ``cmd``; returns (exit code, wall seconds, peak RSS of the process tree in MB, stderr tail).
    After ``timeout`` seconds the whole process tree is killed and the exit code is -9."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(p.pid)
    peak = 0.0
    out_chunks = []
    while p.poll() is None:
        try:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            peak = max(peak, rss / 2**20)
        except psutil.Error:
            pass
        if time.perf_counter() - t0 > timeout:
            for c in proc.children(recursive=True):
                c.kill()
            p.kill()
            break
        time.sleep(0.1)
    _, err = p.communicate()
    out_chunks.append(err or "")
    return p.returncode, time.perf_counter() - t0, peak, "".join(out_chunks)[-2000:]


def scene_dir(scene: str) -> Path:
    """The folder of ``scene``: ``DATA/<scene>``, or for ``<scene>@internet-s<seed>`` the internet-photo variant
    of :mod:`bench.internet` (made on first use)."""
    from .internet import make_variant, parse_variant

    v = parse_variant(scene)
    return make_variant(*v) if v else DATA / scene


def images_of(scene: str) -> Path:
    return scene_dir(scene) / "images"


def subset_dir(scene: str, n: int, root: Path) -> Path:
    """A folder of symlinks to the first ``n`` images of ``scene`` (for the scaling runs)."""
    d = root / f"{scene}_{n}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for p in sorted(images_of(scene).iterdir())[:n]:
        (d / p.name).symlink_to(p)
    return d


def evaluate(scene: str, poses: Path) -> dict:
    from backend.evaluation.imc_metric import evaluate_files

    try:
        return evaluate_files(scene_dir(scene) / "gt.csv", poses, scene_dir(scene) / "thresholds.txt").to_dict()
    except (OSError, ValueError) as e:
        return {"mAA": 0.0, "accuracy_all_thresholds": 0.0, "error": str(e)}


def estimate_unfinished(run_dir: Path, wall: float) -> dict:
    """For a run stopped during matching: the pairs it matched, the seconds that took, and an estimate of the total
    wall time (elapsed + the remaining pairs at the measured seconds per pair; mapping not included, so the estimate
    is a lower bound)."""
    import h5py

    try:
        rec = json.loads((run_dir / "run.json").read_text())
        st = rec["stages"]
        if st.get("matching", {}).get("status") != "running":
            return {}
        total = sum(1 for line in (run_dir / "pairs.txt").read_text().splitlines() if line and line[0] != "#")
        with h5py.File(run_dir / "matches.h5", "r") as f:
            done = sum(len(f[k]) for k in f)
        before = sum(v.get("seconds") or 0 for k, v in st.items() if k != "matching")
        elapsed = max(wall - before, 1e-6)
    except (OSError, KeyError, ValueError):
        return {}
    if done == 0:
        return {}
    return {"pairs": total, "pairs_matched_before_stop": done, "matching_seconds_per_pair": round(elapsed / done, 3),
            "estimated_wall_seconds": round(wall + (total - done) * elapsed / done, 1)}


def run_config(scene: str, config: str, out: Path, images: Path | None = None, timeout: float = 3600) -> dict:
    """One (scene, configuration) measurement."""
    images = images or images_of(scene)
    folder = images.name if images.name != "images" else scene.replace("@", "_")
    run_dir = out / "runs" / f"{folder}__{config.replace('/', '_').replace('@', '_').replace(':', '_')}"
    if config == "colmap-sift":
        cmd = [sys.executable, "-m", "bench.colmap_sift", str(images), str(run_dir), "--max-image-size", "1024"]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        # "fast/sift+nn-ratio@640x1024": a preset with other features + matcher, optionally at another resize (px)
        # and keypoint budget
        # "fast:global": a preset with the global mapper; ":upright" / ":noupright": upright "auto" / "off";
        # ":fold" / ":nofold": the fold check (--disambiguate) "auto" / "off"
        preset, _, method = config.partition("/")
        preset, *flags = preset.split(":")
        method, _, budget = method.partition("@")
        cmd = [sys.executable, "-m", "backend", "reconstruct", str(images), "--out", str(run_dir),
               "--preset", preset, "--quiet"]
        for flag in flags:
            cmd += {
                "upright": ["--upright", "auto"],
                "noupright": ["--upright", "off"],
                "fold": ["--disambiguate", "auto"],
                "nofold": ["--disambiguate", "off"],
            }.get(flag, ["--mapper", flag])
        if method:
            features, _, matcher = method.partition("+")
            cmd += ["--features", features] + (["--matcher", matcher] if matcher else [])
        if budget:
            resize, _, kp = budget.partition("x")
            cmd += ["--resize", resize, "--max-keypoints", kp]
    code, wall, peak, err = run_tree(cmd, timeout)
    row = {"scene": scene, "config": config, "measured": RUN_ID, "exit_code": code,
           "wall_seconds": round(wall, 2),
           "peak_rss_mb": round(peak, 1), "n_images": len(list(images.iterdir()))}
    row["timed_out"] = wall >= timeout
    if row["timed_out"]:
        row["error"] = f"stopped after {timeout:.0f} s"
        if config != "colmap-sift":
            row.update(estimate_unfinished(run_dir, wall))
    elif code != 0:
        row["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
    if config == "colmap-sift":
        res = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
        row["stage_seconds"] = {k: round(v, 2) for k, v in res.get("stage_seconds", {}).items()}
        row["registered_images"] = res.get("registered_images", 0)
        row["pairs"] = row["n_images"] * (row["n_images"] - 1) // 2
    else:
        rec = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
        st = rec.get("stages", {})
        row["stage_seconds"] = {k: v.get("seconds") for k, v in st.items()}
        row["stage_peak_rss_mb"] = {k: max(v.get("peak_rss_mb") or 0, v.get("child_peak_rss_mb") or 0)
                                    for k, v in st.items()}
        s = rec.get("summary", {})
        row["registered_images"] = s.get("registered_images", 0)
        row["pairs"] = s.get("pairs")
        row["keypoints_mean"] = s.get("keypoints_mean")
        row["retrieval_model"] = s.get("retrieval_model")
        cfg = rec.get("config", {})
        row["features"] = cfg.get("features", {}).get("name")
        row["resize"] = cfg.get("features", {}).get("resize")
        row["max_keypoints"] = cfg.get("features", {}).get("max_keypoints")
        row["matcher"] = cfg.get("matching", {}).get("name")
        row["seconds_per_image"] = st.get("features", {}).get("counts", {}).get("seconds_per_image")
        row["seconds_per_pair"] = st.get("matching", {}).get("counts", {}).get("seconds_per_pair")
        if (run_dir / "run.json").exists():
            from bench.profile import profile_run

            try:  # where the time went: per pair (verified or not, LightGlue's depth and width), per mapping pass
                row["profile"] = profile_run(run_dir)
            except (OSError, KeyError, ValueError) as e:
                row["profile"] = {"error": str(e)}
    if (run_dir / "poses.csv").exists() and (scene_dir(scene) / "gt.csv").exists():
        ev = evaluate(scene, run_dir / "poses.csv")
        row["mAA"] = round(ev["mAA"], 4)  # the official IMC 2025 mAA
        row["accuracy_all_thresholds"] = round(ev.get("accuracy_all_thresholds", 0.0), 4)  # not the mAA
        row["models_right"] = models_right(run_dir, scene)
    else:
        row["mAA"] = 0.0
    mj = run_dir / "mapping.json"
    if mj.exists():
        fold = json.loads(mj.read_text()).get("fold") or {}
        best = fold.get("best") or {}
        row["fold"] = {k: fold.get(k) for k in ("folded", "split_kept", "cut_pairs", "seconds")} | {
            k: best.get(k) for k in ("conflict", "within", "excess")} | {
            "groups": [len(best.get("group0", [])), len(best.get("group1", []))] if best else None}
    print(f"  {scene:<24} {config:<12} reg {row['registered_images']}/{row['n_images']}  mAA {row['mAA']:.3f}  "
          f"{row['wall_seconds']:.1f} s  {row['peak_rss_mb']:.0f} MB" + (f"  ERROR {row.get('error')}" if code else ""),
          flush=True)
    return row


def models_right(run_dir: Path, scene: str) -> list[dict]:
    """Per model of a run (``sparse/<k>``, at least 3 images): registered images and how many lie within each
    threshold of the ground truth when the model alone is aligned to it (as the IMC metric aligns a model). Tells a
    folded model (half its cameras off) from two correct ones."""
    import numpy as np
    import pycolmap

    from backend.evaluation.imc_metric import parse_threshold_text, read_pose_table, register_cameras
    from backend.io.export import model_poses

    d = scene_dir(scene)
    gt = {r.image: (r.R, r.t) for r in read_pose_table(d / "gt.csv")}
    th = parse_threshold_text((d / "thresholds.txt").read_text())
    out = []
    for m in sorted((run_dir / "sparse").iterdir(), key=lambda p: int(p.name)) if (run_dir / "sparse").exists() else []:
        poses = {n: p for n, p in model_poses(pycolmap.Reconstruction(m)).items() if n in gt}
        names = sorted(poses)
        if len(names) < 3:
            continue
        pred = np.array([-poses[n][0].T @ poses[n][1] for n in names])
        ref = np.array([-gt[n][0].T @ gt[n][1] for n in names])
        reg = register_cameras(pred, ref, th)
        out.append({"model": int(m.name), "registered": len(names),
                    "right": {f"{t:g}": int(c) for t, c in zip(th, reg.inliers)}})
    return out


def machine() -> dict:
    """CPU cores, memory (GB) and, where CUDA is present, the GPU's name with the torch and CUDA versions."""
    m = {"cpu_count": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30)}
    try:
        import torch

        if torch.cuda.is_available():
            m.update(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda)
    except ImportError:
        pass
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--scenes", default="temple_ring_middlebury,reichstag_imc2020,church_imc2024,fox_instant_ngp,"
                                        "lego_nerf_synthetic")
    ap.add_argument("--configs", default=",".join(OURS + PEERS))
    ap.add_argument("--scaling", action="store_true", help="also time each stage against the number of images")
    ap.add_argument("--scaling-scene", default="fox_instant_ngp")
    ap.add_argument("--scaling-sizes", default="10,20,40,50")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    ap.add_argument("--naive-timeout", type=float, default=1200,
                    help="seconds for the naive configuration (all pairs at 4096 keypoints grows as n^2)")
    ap.add_argument("--scaling-configs", default="fast,balanced")
    ap.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from results.json")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"rows": [], "scaling": []}
    if not a.report_only:
        results["machine"] = machine()  # first, so that a run stopped half-way still names its machine
        for scene in [x for x in a.scenes.split(",") if x]:
            for config in [x for x in a.configs.split(",") if x]:
                row = run_config(scene, config, out,
                                 timeout=a.naive_timeout if config == "naive" else a.timeout)
                results["rows"] = [r for r in results["rows"] if (r["scene"], r["config"]) != (scene, config)]
                results["rows"].append(row)
                results_path.write_text(json.dumps(results, indent=1))
        if a.scaling:
            for n in [int(x) for x in a.scaling_sizes.split(",")]:
                d = subset_dir(a.scaling_scene, n, out / "subsets")
                for config in a.scaling_configs.split(","):
                    row = run_config(a.scaling_scene, config, out, images=d, timeout=a.timeout)
                    row["subset"] = n
                    results["scaling"] = [r for r in results["scaling"]
                                          if (r["subset"], r["config"]) != (n, config)]
                    results["scaling"].append(row)
                    results_path.write_text(json.dumps(results, indent=1))
        results_path.write_text(json.dumps(results, indent=1))
    from .report import write_report

    write_report(results, out, REPO / "bench" / "RESULTS.md")
    print(f"wrote {REPO / 'bench' / 'RESULTS.md'} and {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
