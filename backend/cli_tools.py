"""The command line's tools for a finished run: ``export`` (the model for another tool, :mod:`backend.exports`) and
``densify`` (dense points and a mesh, :mod:`backend.dense`). :func:`add_run_tools` adds them to the parser of
:mod:`backend.cli`."""

from __future__ import annotations

import sys
from pathlib import Path


def _run_folder_problem(run_dir: Path) -> str:
    if not (run_dir / "run.json").is_file():
        return f"{run_dir} is not a run folder (no run.json); give the --out folder of a reconstruct run"
    return ""


def cmd_export(args) -> int:
    from .errors import InputError
    from .exports import export_model

    run_dir = Path(args.run_dir)
    if _run_folder_problem(run_dir):
        print(f"error: {_run_folder_problem(run_dir)}", file=sys.stderr)
        return 2
    try:
        res = export_model(run_dir, args.format, Path(args.out) if args.out else None, model=args.model)
    except (ValueError, InputError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v}" for k, v in res.counts.items())
    print(f"wrote {args.format} of model {res.model} to {res.out_dir} ({counts})")
    return 0


def cmd_densify(args) -> int:
    from .dense import METHODS, default_method
    from .errors import InputError
    from .io.weights import MissingWeightsError

    run_dir = Path(args.run_dir)
    if _run_folder_problem(run_dir):
        print(f"error: {_run_folder_problem(run_dir)}", file=sys.stderr)
        return 2
    method = args.method or default_method()
    if method == "patchmatch":
        from .dense.patchmatch import densify as dense_fn
    elif method in METHODS:
        from .dense.triangulate import densify as dense_fn
    options = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --option {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        options[key] = _option_value(value)
    from .cli import _TqdmProgress

    bar = _TqdmProgress(quiet=args.quiet)
    try:
        res = dense_fn(run_dir, model=args.model, progress=lambda d, t, m: bar(m.split(":")[0], d, t, m), **options)
    except (InputError, MissingWeightsError, RuntimeError) as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, InputError) else 1
    bar.close()
    b, a = res["before"], res["after"]
    print(f"densified model {res['model']}: {b['points']} -> {a['points']} points "
          f"({a['points'] / max(1, b['points']):.1f}x), track length {b['mean_track_length']} -> "
          f"{a['mean_track_length']}, reprojection error {b['mean_reprojection_error_px']} -> "
          f"{a['mean_reprojection_error_px']} px, mesh {res['mesh']['triangles']} triangles, "
          f"{res['seconds']['total']} s; written to {run_dir / 'dense'}")
    return 0


def _option_value(text: str):
    """``KEY=VALUE``'s value as an int, a float or the text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def add_run_tools(sub) -> None:
    """Add ``export`` and ``densify`` to the subcommands ``sub`` (argparse's ``add_subparsers``)."""
    from .dense import METHODS
    from .exports import FORMATS

    dp = sub.add_parser("densify", help="dense points and a mesh from a mapped run (dense/points.ply, dense/mesh.ply)")
    dp.add_argument("run_dir", help="the run folder (reconstruct's --out)")
    dp.add_argument("--method", choices=list(METHODS),
                    help="triangulate: more keypoints, epipolar-guided matches, triangulated into the fixed poses "
                         "(CPU); patchmatch: COLMAP's multi-view stereo (CUDA only). Default: patchmatch with CUDA, "
                         "else triangulate")
    dp.add_argument("--model", type=int, default=0, help="which model (sparse/MODEL; default 0, the largest)")
    dp.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="triangulate's options: features, max_keypoints (8192), detection_threshold (0.001), "
                         "nms_radius (1), neighbours (6), epipolar_px (2), "
                         "min_similarity (0.5), mesh_depth (9)")
    dp.add_argument("--quiet", action="store_true", help="no progress bars")
    dp.set_defaults(func=cmd_densify)

    xp = sub.add_parser("export", help="a run's model for another tool: "
                        + "; ".join(f"{k}: {v[1]}" for k, v in FORMATS.items()))
    xp.add_argument("run_dir", help="the run folder (reconstruct's --out)")
    xp.add_argument("--format", required=True, choices=list(FORMATS))
    xp.add_argument("--out", help="a new or empty folder (default: RUN_DIR/exports/FORMAT-MODEL/)")
    xp.add_argument("--model", type=int, default=0,
                    help="which model (sparse/MODEL; default 0, the largest scene's)")
    xp.set_defaults(func=cmd_export)
