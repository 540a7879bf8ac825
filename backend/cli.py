"""Command line: ``python -m backend reconstruct IMAGES_DIR --out RUN_DIR`` and ``python -m backend evaluate``.

Exit codes: 0 success; 1 the pipeline or evaluation failed (one-line reason on stderr); 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import MAPPERS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class _TqdmProgress:
    """One tqdm bar per stage."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int, msg: str = "") -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=max(total, 1), desc=f"{stage:<12}", unit="step", leave=True, file=sys.stderr, mininterval=0.5,
                            dynamic_ncols=True)
        if self.bar is not None and msg == "done":
            self.bar.n = self.bar.total
            self.bar.set_postfix_str("done")
            self.close()
            return
        if self.bar is not None:
            if total and total != self.bar.total:
                self.bar.total = total
            self.bar.n = done
            self.bar.set_postfix_str(msg[:60], refresh=False)
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="balanced", help="fast | balanced | accurate | naive (default: balanced)")
    p.add_argument("--retrieval", dest="retrieval_model", help="auto | dinov2-small | dinov2-base | efficientnet-lite0")
    p.add_argument("--num-neighbors", type=int, help="retrieval: pairs per image (top-k)")
    p.add_argument("--exhaustive-below", type=int, help="match all pairs when there are at most this many images")
    p.add_argument("--resize", type=int, help="features: long side in px")
    p.add_argument("--max-keypoints", type=int, help="features: keypoints per image")
    p.add_argument("--features", help="local features: aliked-n16 | aliked-n16rot | aliked-n32 | aliked-t16 | disk | "
                   "xfeat | sift | orb | akaze (default: the preset's)")
    p.add_argument("--matcher", help="lightglue (ALIKED, DISK) | lighterglue (XFeat) | nn-ratio (any) | adalam (any); default: the "
                   "preset's, or the features' own when the preset's cannot match them")
    p.add_argument("--border", type=int, help="features: drop keypoints within this many px of the image edge")
    p.add_argument("--camera-mode", choices=["per_image", "shared", "auto"], help="one camera per image or shared")
    p.add_argument("--mapper", choices=MAPPERS,
                   help="incremental (COLMAP, default) or global (GLOMAP: rotation averaging, then positions)")
    p.add_argument("--min-matches", type=int, help="pairs with fewer matches are not used")
    p.add_argument("--background", choices=["white", "black"], help="background for transparent images")
    p.add_argument("--upright", choices=["off", "auto"],
                   help="auto: find photos turned by 90/180/270 degrees against the others and match them turned "
                        "back (default: the preset's)")
    p.add_argument("--disambiguate", choices=["off", "auto"],
                   help="auto: check the model for a fold (one side of a symmetric building mapped onto the other) "
                        "and map the two sides as two models (default: the preset's)")


def config_from_args(args: argparse.Namespace):
    """The :class:`PipelineConfig` of a preset with the command-line overrides applied."""
    from .config import OVERRIDES, apply_overrides, get_preset

    return apply_overrides(get_preset(args.preset), **{name: getattr(args, name, None) for name in OVERRIDES})


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .io.images import InputError
    from .pipeline import Pipeline, PipelineError, RunOptions

    images_dir = Path(args.images_dir)
    if not images_dir.is_dir():
        print(f"error: {images_dir} is not a folder of images", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(args.out)
    progress = _TqdmProgress(args.quiet)
    pipe = Pipeline(RunOptions(images_dir, run_dir, args.dataset or "", args.scene or ""), cfg, progress)
    try:
        record = pipe.run(force=args.force)
    except PipelineError as e:
        progress.close()
        cause = e.__cause__
        code = 2 if isinstance(cause, InputError) else 1
        print(f"error: {e.stage} failed: {e.message.splitlines()[0]}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        progress.close()
        print("error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        progress.close()
    s = record["summary"]
    print(f"Run folder: {run_dir}")
    print(f"  images: {s.get('images')} usable, {s.get('skipped')} skipped")
    for f in record["stages"]["images"]["counts"].get("skipped_files", []):
        print(f"    skipped {f}")
    fb = f" (fallback: {s['retrieval_fallback']})" if s.get("retrieval_fallback") else ""
    print(f"  pairs: {s.get('pairs')} from {s.get('retrieval_model')}{fb}")
    print(f"  features: {cfg.features.name}  matcher: {cfg.matching.name}  mapper: {cfg.mapping.mapper}")
    print(f"  keypoints: {s.get('keypoints')}  matches: {s.get('matches')}  inliers: {s.get('inliers')}")
    mre = s.get("mean_reprojection_error")
    mtl = s.get("mean_track_length")
    print(f"  registered images: {s.get('registered_images')}/{s.get('images')} in the largest of "
          f"{s.get('models')} model(s); points: {s.get('points')}; "
          f"mean reprojection error: {mre if mre is None else round(mre, 3)} px; "
          f"mean track length: {mtl if mtl is None else round(mtl, 2)}")
    times = ", ".join(f"{k} {v.get('seconds', 0):.1f}s" for k, v in record["stages"].items())
    print(f"  time: {record.get('total_seconds')} s ({times})")
    print(f"  outputs: {run_dir / 'poses.csv'}, {run_dir / 'poses_imc2024.csv'}, {run_dir / 'points.ply'}, "
          f"{run_dir / 'sparse'}/0 (COLMAP), {run_dir / 'model.zip'}, {run_dir / 'run.json'}")
    if args.gt:
        from .evaluation.imc_metric import evaluate_files

        thresholds = args.thresholds or str(Path(args.gt).parent / "thresholds.txt")
        try:
            res = evaluate_files(args.gt, run_dir / "poses.csv", thresholds)
        except (ValueError, OSError) as e:
            print(f"error: the reconstruction finished but cannot be evaluated: {e}", file=sys.stderr)
            return 2
        record["evaluation"] = res.to_dict()
        from .pipeline import RUN_JSON, _write_json_atomic

        _write_json_atomic(run_dir / RUN_JSON, record)
        print(res.table())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.imc_metric import evaluate_files

    try:
        res = evaluate_files(args.gt, args.pred, args.thresholds)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res.to_dict(), indent=1))
    else:
        print(res.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend", description="SfM Explorer: headless reconstruction.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reconstruct", help="photos in, registered cameras and a point cloud out")
    r.add_argument("images_dir", help="folder of JPEG/PNG photos of one scene")
    r.add_argument("--out", required=True, help="run folder (created; an existing one is resumed)")
    _add_config_args(r)
    r.add_argument("--dataset", help="dataset name for poses_imc2024.csv (default: parent folder name)")
    r.add_argument("--scene", help="scene name for poses_imc2024.csv (default: the dataset name)")
    r.add_argument("--gt", help="ground-truth CSV (IMC format): evaluate the result")
    r.add_argument("--thresholds", help="mAA thresholds: a file or a list like '0.1;0.2' (default: thresholds.txt "
                                        "beside --gt)")
    r.add_argument("--force", action="store_true", help="recompute every stage")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_reconstruct)
    e = sub.add_parser("evaluate", help="official IMC 2025 score (mAA, clusterness, score) of predicted poses")
    e.add_argument("gt", help="ground-truth CSV (IMC training layout, or IMC 2025 with dataset,scene,image)")
    e.add_argument("pred", help="predicted poses CSV: our poses.csv, an IMC 2024 or an IMC 2025 submission")
    e.add_argument("--thresholds", required=True,
                   help="a list such as '0.1;0.2,0.5', a file of numbers (thresholds.txt), or the IMC thresholds CSV "
                        "(dataset,scene,thresholds)")
    e.add_argument("--json", action="store_true",
                   help='print {"mAA", "clusterness", "score", "accuracy_all_thresholds", "per_dataset"} as JSON')
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
