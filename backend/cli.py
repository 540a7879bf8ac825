"""Command line: ``python -m backend reconstruct IMAGES_DIR --out RUN_DIR``, ``python -m backend evaluate``,
``python -m backend twoview IMAGE0 IMAGE1`` and ``python -m backend serve`` (the HTTP API).

Exit codes: 0 success; 1 the pipeline or evaluation failed (one-line reason on stderr); 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


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
            self.bar = tqdm(
                total=max(total, 1),
                desc=f"{stage:<12}",
                unit="step",
                leave=True,
                file=sys.stderr,
                mininterval=0.5,
                dynamic_ncols=True,
            )
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
    """The preset, every option of :data:`backend.options.OPTIONS` (each overrides the preset) and the method and
    mapping options as ``KEY=VALUE``."""
    from .config import PRESETS
    from .options import OPTIONS

    p.add_argument("--preset", default="balanced",
                   help=f"{' | '.join(PRESETS)}: the preset the options below change (default: balanced)")
    for o in OPTIONS:
        static = o.choices if isinstance(o.choices, tuple) else None  # registry choices: checked with a message
        bounds = "" if static or not o.bounds() else f" ({o.bounds()})"  # argparse lists static choices itself
        p.add_argument(o.cli_flag, dest=o.name, type=o.type, choices=static, metavar=None if static else o.name.upper(),
                       help=f"{o.help}{bounds} (default: the preset's)")
    p.add_argument("--matcher-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the matcher's default_conf, e.g. cpu_attention=kornia (repeatable)")
    p.add_argument("--mapping-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of the mapping config (backend/config.py, MappingConfig), e.g. "
                        "ba_global_ratio=1.4 (repeatable)")
    p.add_argument("--verification-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of the verification config (backend/config.py, VerificationConfig), e.g. "
                        "ransac_max_error=2 or random_seed=1 (repeatable)")
    p.add_argument("--single-scene", dest="scenes", action="store_const", const="single",
                   help="the same as --scenes single")


def config_from_args(args: argparse.Namespace):
    """The :class:`PipelineConfig` of a preset with the command-line overrides applied."""
    from .config import get_preset
    from .options import OPTION, apply_overrides

    cfg = apply_overrides(get_preset(args.preset), **{name: getattr(args, name, None) for name in OPTION})
    extra = _key_values(getattr(args, "matcher_option", None) or [], "--matcher-option")
    if extra:
        from .matchers import matcher_class

        known = matcher_class(cfg.matching.name).default_conf
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise ValueError(f"--matcher-option: {cfg.matching.name} has no option {', '.join(unknown)}; its options: "
                             f"{', '.join(known)}")
        cfg.matching.options.update(extra)
    choices = {**{k: OPTION[k].allowed() for k in ("camera_mode", "mapper", "disambiguate")},
               "final_ba_principal_point": ("all", "shared")}
    for section in ("mapping", "verification"):
        flag = f"--{section}-option"
        _set_fields(getattr(cfg, section), _key_values(getattr(args, f"{section}_option", None) or [], flag), flag,
                    choices, section)
    return cfg


def _set_fields(section, values: dict, flag: str, choices: dict, name: str) -> None:
    """Set ``values`` (``KEY=VALUE`` of ``flag``) on the config dataclass ``section``, each parsed as the field's
    type (true/false, a finite number, a whole number, or one of ``choices[key]``).

    Raises:
        ValueError: an unknown field or a value that does not fit it (the message names ``flag`` and what fits).
    """
    import dataclasses
    import math

    fields = {f.name: f for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{flag}: the {name} config has no field {', '.join(unknown)}; its fields: "
                         f"{', '.join(fields)}")
    for key, value in values.items():
        current = getattr(section, key)
        text = str(value)
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{flag} {key}={text}: give true or false")
            value = text.lower() in ("true", "1")
        elif isinstance(current, (int, float)):
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"{flag} {key}={text}: give a number") from None
            if not math.isfinite(number):
                raise ValueError(f"{flag} {key}={text}: give a finite number")
            if isinstance(current, int) and not number.is_integer():
                raise ValueError(f"{flag} {key}={text}: give a whole number")
            value = int(number) if isinstance(current, int) else number
        else:
            if key in choices and text not in choices[key]:
                raise ValueError(f"{flag} {key}={text}: choose one of {', '.join(choices[key])}")
            value = text
        setattr(section, key, value)


def _key_values(items: list[str], flag: str) -> dict:
    """``["k=v", ...]`` as a dict, each value a number where it reads as one (``-1``, ``0.9``), else the text.

    Raises:
        ValueError: an item without ``=`` (the message names ``flag``).
    """
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{flag} {item!r}: give KEY=VALUE, e.g. cpu_attention=kornia")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .messages import HINTS
    from .pipeline import Pipeline, PipelineError, RunOptions
    from .utils.logs import configure

    images_dir = Path(args.images_dir)
    if not images_dir.is_dir():
        print(f"error: {images_dir} is not a folder of images", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.ray_address and args.executor != "ray":
        print("error: --ray-address needs --executor ray", file=sys.stderr)
        return 2
    run_dir = Path(args.out)
    configure(args.verbose)
    progress = _TqdmProgress(args.quiet)
    pipe = Pipeline(RunOptions(images_dir, run_dir, args.dataset or "", args.scene or "", args.executor,
                               args.ray_address), cfg, progress)
    try:
        record = pipe.run(force=args.force)
    except PipelineError as e:
        progress.close()
        print(f"error: {e.stage} failed: {e.message.splitlines()[0]}", file=sys.stderr)
        if e.error_type in HINTS:
            print(f"what to do: {HINTS[e.error_type]}", file=sys.stderr)
        if e.error_type not in ("Cancelled", "StageOrderError"):
            print(f"details: {e.error_type}, traceback in {run_dir / 'run.log'}", file=sys.stderr)
        return 2 if e.error_type == "InputError" else 1
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
    if (s.get("scenes") or 1) > 1 or s.get("outliers"):
        sizes = record["stages"]["mapping"]["counts"].get("scene_sizes", [])
        print(f"  scenes: {s.get('scenes')} ({', '.join(map(str, sizes))} photos); outliers: {s.get('outliers')} "
              f"(scenes.json, mapping.json)")
    print(f"  registered images: {s.get('registered_images')}/{s.get('images')} in the largest of "
          f"{s.get('models')} model(s); points: {s.get('points')}; "
          f"mean reprojection error: {mre if mre is None else round(mre, 3)} px; "
          f"mean track length: {mtl if mtl is None else round(mtl, 2)}")
    times = ", ".join(f"{k} {v.get('seconds', 0):.1f}s" for k, v in record["stages"].items())
    print(f"  time: {record.get('total_seconds')} s ({times})")
    print(f"  outputs: {run_dir / 'poses.csv'}, {run_dir / 'poses_imc2024.csv'}, {run_dir / 'points.ply'}, "
          f"{run_dir / 'sparse'}/0 (COLMAP), {run_dir / 'model.zip'}, {run_dir / 'submission.csv'} (IMC 2025), "
          f"{run_dir / 'run.json'}" + (f", {run_dir / 'scenes'}/<k>/ (per scene)" if (s.get("scenes") or 1) > 1
                                       else ""))
    if args.gt:
        from .evaluation.imc_metric import evaluate_files

        thresholds = args.thresholds or str(Path(args.gt).parent / "thresholds.txt")
        try:
            res = evaluate_files(args.gt, run_dir / "poses.csv", thresholds)
        except (ValueError, OSError) as e:
            print(f"error: the reconstruction finished but cannot be evaluated: {e}", file=sys.stderr)
            return 2
        record["evaluation"] = res.to_dict()
        from .pipeline import RUN_JSON
        from .utils.text import write_json_atomic

        write_json_atomic(run_dir / RUN_JSON, record)
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


def _parse_K(text: str | None, what: str):
    """Checked 3x3 intrinsics from 'fx,fy,cx,cy' or nine numbers row-major (',' or ';' or spaces between); None
    when not given. Raises ValueError with what to type (:func:`backend.twoview.groundtruth.parse_intrinsics`)."""
    from .twoview.groundtruth import parse_intrinsics

    return parse_intrinsics(text, what) if text else None


def _twoview_summary(d: dict) -> str:
    lines = [f"{d['image0']} - {d['image1']}: {d['features']} + {d['matcher']}"
             + (" (matcher on ONNX Runtime)" if d.get("runtime") == "onnx" else ""),
             f"  keypoints {d['keypoints0']} / {d['keypoints1']}, matches {d['matches']}, "
             f"inliers {d['inliers']} ({d['inlier_ratio']:.0%}), model {d['model'] or '-'} ({d['verdict']})",
             f"  same place: {'yes' if d['same_place'] else 'no'} (>= {d['min_inliers']} inliers)"
             + (f"; global similarity {d['similarity_percent']:.1f} % ({d['similarity_model']})"
                if d.get("similarity_percent") is not None else ""),
             f"  intrinsics: {d['intrinsics']}"]
    if d.get("tta"):
        lines.append(f"  test-time rotation: {d['tta']['note']} (inliers per turn {d['tta']['inliers_per_turn']})")
    if "rotation_error_deg" in d:
        def deg(x):
            return "-" if x is None else f"{x:.2f} deg"
        lines.append(f"  ground truth: rotation error {deg(d['rotation_error_deg'])}, translation error "
                     f"{deg(d['translation_error_deg'])}"
                     + (f", match precision {d['match_precision']:.1%} (< {d['precision_threshold_px']} px)"
                        if d.get("match_precision") is not None else ""))
    lines.append("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in d["seconds"].items()))
    lines += [f"  note: {n}" for n in d.get("notes", [])]
    return "\n".join(lines)


def cmd_twoview(args) -> int:
    from .io.weights import MissingWeightsError
    from .onnx_export import OnnxRuntimeMissing
    from .twoview.groundtruth import find_pair, pair_from_poses, read_gt_csv, read_pairs_file
    from .twoview.pair import match_pair

    p0, p1 = Path(args.image0), Path(args.image1)
    for p in (p0, p1):
        if not p.is_file():
            print(f"error: no such image file: {p}", file=sys.stderr)
            return 2
    try:  # every input is checked (the readers check the ground truth) before any matching
        K0, K1 = _parse_K(args.K0, "--K0"), _parse_K(args.K1, "--K1")
        if (K0 is None) != (K1 is None):
            raise ValueError("give both --K0 and --K1, or neither")
        gt = None
        if args.gt:
            table = read_gt_csv(args.gt)
            missing = [n for n in (p0.name, p1.name) if n not in table]
            if missing:
                raise ValueError(f"{Path(args.gt).name} has no row for {', '.join(missing)} (rows are matched by "
                                 "file name)")
            gt = pair_from_poses(table[p0.name], table[p1.name], Path(args.gt).name)
        elif args.pairs_gt:
            gt = find_pair(read_pairs_file(args.pairs_gt), p0.name, p1.name)
            if gt is None:
                raise ValueError(f"{Path(args.pairs_gt).name} has no line for the pair {p0.name} {p1.name}")
        res = match_pair(p0, p1, args.features, args.matcher, resize=args.resize, max_keypoints=args.max_keypoints,
                         tta=args.tta, estimator=args.estimator, threshold_px=args.threshold, K0=K0, K1=K1, gt=gt,
                         precision_px=args.precision_px, similarity=not args.no_similarity, runtime=args.runtime)
    except (MissingWeightsError, OnnxRuntimeMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = res.to_dict()
    print(json.dumps(d, indent=1) if args.json else _twoview_summary(d))
    return 0


def cmd_export_onnx(args) -> int:
    from .io.weights import MissingWeightsError
    from .onnx_export import NOT_EXPORTED, export_matcher

    try:
        path = export_matcher(args.features, args.matcher, Path(args.out_dir))
    except (ValueError, MissingWeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.parent / 'manifest.json'} (run it with onnxruntime: "
          "backend.onnx_export.OnnxMatcher)")
    print(f"the extractor {args.features} is not exported: {NOT_EXPORTED.get(args.features, 'no network')}")
    return 0


def cmd_serve(args) -> int:
    from . import jobs
    from .api import serve

    try:  # a server setting that every run would refuse is refused at start
        jobs.server_mapping_threads()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return serve(host=args.host, port=args.port, token=args.token)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend", description="SfM Explorer: headless reconstruction.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reconstruct", help="photos in, registered cameras and a point cloud out")
    r.add_argument("images_dir", help="folder of JPEG/PNG photos: one scene, or several mixed with stray photos")
    r.add_argument("--out", required=True, help="run folder (created; an existing one is resumed)")
    _add_config_args(r)
    r.add_argument("--dataset", help="dataset name for poses_imc2024.csv and submission.csv (default: parent folder "
                                     "name)")
    r.add_argument("--scene", help="scene name for poses_imc2024.csv (default: the dataset name)")
    r.add_argument("--gt", help="ground-truth CSV (IMC format): evaluate the result")
    r.add_argument("--thresholds", help="mAA thresholds: a file or a list like '0.1;0.2' (default: thresholds.txt "
                                        "beside --gt)")
    r.add_argument("--force", action="store_true", help="recompute every stage")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where features and matching compute: here (default) or as Ray tasks on a cluster; the run "
                        "folder, resume and the app are the same either way")
    r.add_argument("--ray-address", help="the Ray cluster to use with --executor ray (ray start --head prints it, "
                                         "e.g. 10.0.0.5:6379; 'auto': one started on this machine; default: start "
                                         "a one-machine Ray here)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--verbose", action="store_true",
                   help="log every stage's start and end on stderr (the run's run.log has them in any case)")
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
    from .features import EXTRACTORS
    from .matchers import MATCHERS
    from .twoview.geometry import ESTIMATORS
    from .twoview.groundtruth import PRECISION_PX
    from .twoview.pair import DEFAULT_MAX_KEYPOINTS, DEFAULT_RESIZE, THRESHOLD_PX

    t = sub.add_parser("twoview", help="match two photos, verify their two-view geometry, score it against GT")
    t.add_argument("image0")
    t.add_argument("image1")
    t.add_argument("--features", default="aliked-n16", choices=list(EXTRACTORS))
    t.add_argument("--matcher", default="lightglue", choices=list(MATCHERS))
    t.add_argument("--resize", type=int, default=DEFAULT_RESIZE, help="long side in px the extractor sees")
    t.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS)
    t.add_argument("--tta", action="store_true", help="also try image 1 turned by 90/180/270 degrees; keep the best")
    t.add_argument("--estimator", default="poselib", choices=list(ESTIMATORS),
                   help="PoseLib LO-RANSAC (default) or OpenCV USAC MAGSAC++")
    t.add_argument("--threshold", type=float, default=THRESHOLD_PX,
                   help="RANSAC threshold in px of the resized image (default %(default)s)")
    t.add_argument("--K0", help="intrinsics of image 0: 'fx,fy,cx,cy' or 9 numbers row-major")
    t.add_argument("--K1", help="intrinsics of image 1")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--gt", help="ground-truth pose CSV (IMC layout; rows matched by file name)")
    g.add_argument("--pairs-gt", help="pair file with ground truth (name0 name1 rot0 rot1 K0 K1 T_0to1)")
    t.add_argument("--precision-px", type=float, default=PRECISION_PX,
                   help="symmetric epipolar distance (px) under which a match counts as correct")
    t.add_argument("--no-similarity", action="store_true", help="skip the global-descriptor similarity")
    t.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                   help="the matcher's runtime: onnx runs LightGlue / LighterGlue exported to ONNX (on first use, "
                        "into weights/onnx/) by ONNX Runtime on the CPU, all layers")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(func=cmd_twoview)
    from .cli_tools import add_run_tools

    add_run_tools(sub)
    x = sub.add_parser("export-onnx", help="export a learned matcher (LightGlue, LighterGlue) with our weights to ONNX")
    x.add_argument("out_dir", help="folder for <matcher>-<features>.onnx and manifest.json")
    x.add_argument("--features", default="aliked-n16", choices=list(EXTRACTORS))
    x.add_argument("--matcher", default="lightglue", choices=["lightglue", "lighterglue"])
    x.set_defaults(func=cmd_export_onnx)
    v = sub.add_parser("serve", help="the HTTP API (FastAPI; OpenAPI page at /docs)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default localhost only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--token", help="bearer token clients must send (required off localhost; generated and "
                                   "printed once when not given)")
    v.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    from .owners import private_umask

    args = build_parser().parse_args(argv)
    private_umask()  # runs, exports and uploads are private to the server's user (folders 0700, files 0600)
    return args.func(args)
