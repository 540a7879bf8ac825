"""Where a run's time goes (issue 25, part 1): read from a finished run folder, no re-run.

    python -m bench.profile RUN_DIR [RUN_DIR ...]          # a markdown table per run on stdout

- per stage: seconds (``run.json``);
- matching, per pair (``matches.h5`` attributes the matching stage writes): the matcher's seconds split by pairs that
  verification later kept (a two-view geometry with at least ``min_matches`` inliers in ``two_view.h5``) and pairs
  it did not, and for LightGlue / LighterGlue the layers run before adaptive depth stopped and the share of keypoints
  pruned by adaptive width;
- mapping (``mapping.json``): seconds per registered image, each incremental pass (seconds, its stall bound, its
  ceiling and the margin to the ceiling (before the stall guard: to the deadline), whether the bound stopped it,
  models kept, images registered, registrations thrown away).

:func:`profile_run` gives the same as a dict; ``python -m bench`` stores it in each row (``profile``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np


def _two_view_inliers(run_dir: Path) -> dict[tuple[str, str], int]:
    """Inlier counts of the pairs in ``two_view.h5`` (either order as a key)."""
    out: dict[tuple[str, str], int] = {}
    p = run_dir / "two_view.h5"
    if not p.exists():
        return out
    with h5py.File(p, "r") as f:
        for a in f:
            for b in f[a]:
                g = f[a][b]
                if "inliers" in g:
                    n = int(g["inliers"].shape[0])
                    out[(a, b)] = out[(b, a)] = n
    return out


def matching_profile(run_dir: Path, min_inliers: int = 15) -> dict:
    """Per-pair matcher time split by verified / not verified pairs, and LightGlue's adaptive depth and width.

    Returns:
        ``{"pairs", "timed_pairs", "verified", "seconds_total", "seconds_verified", "seconds_unverified",
        "median_s_verified", "median_s_unverified", "share_unverified", "layers_mean", "layers_hist",
        "pruned_mean"}`` (seconds in s; None where nothing was recorded, e.g. a run from before these attributes
        or matched on Ray).
    """
    run_dir = Path(run_dir)
    inl = _two_view_inliers(run_dir)
    secs = {True: [], False: []}
    layers, pruned = [], []
    n_pairs = 0
    with h5py.File(run_dir / "matches.h5", "r") as f:
        for a in f:
            for b in f[a]:
                g = f[a][b]
                if "matches" not in g:
                    continue
                n_pairs += 1
                if "seconds" in g.attrs:
                    secs[inl.get((a, b), 0) >= min_inliers].append(float(g.attrs["seconds"]))
                if "layers" in g.attrs:
                    layers.append(int(g.attrs["layers"]))
                    pruned.append(float(g.attrs["pruned"]))

    def med(v):
        return round(float(np.median(v)), 3) if v else None

    total = sum(secs[True]) + sum(secs[False])
    return {
        "pairs": n_pairs, "timed_pairs": len(secs[True]) + len(secs[False]), "verified": len(secs[True]),
        "seconds_total": round(total, 1), "seconds_verified": round(sum(secs[True]), 1),
        "seconds_unverified": round(sum(secs[False]), 1),
        "median_s_verified": med(secs[True]), "median_s_unverified": med(secs[False]),
        "median_s_pair": med(secs[True] + secs[False]),
        "share_unverified": round(sum(secs[False]) / total, 3) if total else None,
        "layers_mean": round(float(np.mean(layers)), 2) if layers else None,
        "layers_hist": {int(k): int(v) for k, v in zip(*np.unique(layers, return_counts=True))} if layers else {},
        "pruned_mean": round(float(np.mean(pruned)), 3) if pruned else None,
    }


def mapping_profile(run_dir: Path) -> dict:
    """Mapping seconds, per registered image, and each incremental pass (see module doc)."""
    run_dir = Path(run_dir)
    rec = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    mj = json.loads((run_dir / "mapping.json").read_text()) if (run_dir / "mapping.json").exists() else {}
    seconds = (rec.get("stages", {}).get("mapping") or {}).get("seconds")
    registered = sum(m.get("registered_images", 0) for m in mj.get("models", []))
    passes = [{**p, "margin_seconds": round(p.get("ceiling_seconds", p["bound_seconds"]) - p["seconds"], 1)}
              for p in mj.get("passes", [])]
    return {
        "seconds": seconds,
        "registered": registered,
        "seconds_per_registered": round(seconds / registered, 2) if seconds and registered else None,
        "time_bound_seconds": mj.get("time_bound_seconds"),
        "stopped_at_time_bound": mj.get("stopped_at_time_bound"),
        "passes": passes,
    }


def profile_run(run_dir: Path) -> dict:
    """``{"stages": {stage: seconds}, "matching": matching_profile, "mapping": mapping_profile}`` of a run."""
    run_dir = Path(run_dir)
    rec = json.loads((run_dir / "run.json").read_text())
    out = {"stages": {k: v.get("seconds") for k, v in rec.get("stages", {}).items()}}
    if (run_dir / "matches.h5").exists():
        out["matching"] = matching_profile(run_dir)
    out["mapping"] = mapping_profile(run_dir)
    return out


def markdown(name: str, prof: dict) -> str:
    """A short markdown block of :func:`profile_run`'s result."""
    st = prof["stages"]
    lines = [f"**{name}**", "", "| " + " | ".join(st) + " |", "|" + "---|" * len(st),
             "| " + " | ".join(f"{v:.1f}" if v is not None else "-" for v in st.values()) + " |", ""]
    m = prof.get("matching")
    if m:
        lines.append(
            f"- matching: {m['pairs']} pairs, {m['verified']} verified; matcher {m['seconds_total']} s, "
            f"median {m['median_s_pair']} s/pair (verified {m['median_s_verified']}, not verified "
            f"{m['median_s_unverified']}); {100 * (m['share_unverified'] or 0):.0f} % of the matcher's time on "
            f"pairs that do not verify; layers run: mean {m['layers_mean']} {m['layers_hist']}; "
            f"pruned {100 * (m['pruned_mean'] or 0):.0f} %"
        )
    mp = prof["mapping"]
    lines.append(f"- mapping: {mp['seconds']} s, {mp['registered']} registered, {mp['seconds_per_registered']} s per "
                 f"registered image; time bound {mp['time_bound_seconds']} s, stopped at it: "
                 f"{mp['stopped_at_time_bound'] or 'no'}")
    for p in mp["passes"]:
        limit = (f"stall bound {p['bound_seconds']} s, ceiling {p['ceiling_seconds']} s (margin "
                 f"{p['margin_seconds']} s), stopped by the bound: {'yes' if p.get('stopped_by_bound') else 'no'}"
                 if "ceiling_seconds" in p else f"deadline {p['bound_seconds']} s (margin {p['margin_seconds']} s)")
        lines.append(f"  - pass {p['label']}: {p['seconds']} s; {limit}; {p['models']} model(s), "
                     f"{p['registered']} registered, {p['registrations_thrown_away']} registrations thrown away")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    for d in (argv if argv is not None else sys.argv[1:]):
        print(markdown(Path(d).name, profile_run(Path(d))))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
