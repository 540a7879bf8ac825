"""The classical COLMAP-SIFT pipeline through pycolmap, as a peer: SIFT extraction capped at the same image size,
exhaustive matching (or, for a video, sequential matching plus retrieval pairs) with geometric verification,
incremental mapping. Run as a script so that its peak memory is its own::

    python -m bench.colmap_sift IMAGES_DIR OUT_DIR [--max-image-size 1024]
                                [--sequential-overlap 10 --retrieval-neighbors 8]

With ``--sequential-overlap K`` it matches the way COLMAP users match a video: ``match_sequential`` (each frame with
the next K, and COLMAP's quadratic overlap), plus loop-closure pairs from vocabulary-free retrieval
(``--retrieval-neighbors``: our default retrieval's pairs, the top-k of the same global descriptor at 448 px plus
pairs above 0.9 cosine similarity and bridges between groups, computed here and timed as the peer's ``retrieval``
stage, then matched with ``match_image_pairs``); COLMAP's own loop detection needs
a vocabulary tree, which is not available here.

Writes ``OUT_DIR/poses.csv`` (IMC convention) and ``OUT_DIR/result.json`` (stage wall times in s, registered
images, points).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def retrieval_pairs(images_dir: Path, names: list[str], out: Path, k: int) -> int:
    """Write ``out/retrieval_pairs.txt`` (``name0 name1`` per line): our default retrieval's pairs with ``k``
    neighbours (the top-``k`` of the pipeline's default global descriptor, plus pairs above its similarity floor and
    bridges between groups), for COLMAP's imported-pairs matcher. Returns the number of pairs."""
    from backend.config import RetrievalConfig
    from backend.retrieval.global_descriptors import read_pairs, run_retrieval

    work = out / "retrieval"
    work.mkdir()
    (work / "images").symlink_to(images_dir.resolve())
    run_retrieval(work, names, RetrievalConfig(num_neighbors=k, exhaustive_below=0))
    pairs = read_pairs(work)
    (out / "retrieval_pairs.txt").write_text("".join(f"{a} {b}\n" for a, b, _ in pairs))
    return len(pairs)


def main(argv=None) -> int:
    import pycolmap

    from backend.io.export import model_poses, write_poses_csv
    from backend.utils.colmap import no_colmap_log_files

    ap = argparse.ArgumentParser()
    ap.add_argument("images_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--max-image-size", type=int, default=1024)
    ap.add_argument("--sequential-overlap", type=int, default=0, help="0: exhaustive matching")
    ap.add_argument("--retrieval-neighbors", type=int, default=8)
    a = ap.parse_args(argv)
    pycolmap.logging.minloglevel = 2
    no_colmap_log_files()  # no glog files in the system temp folder
    out = Path(a.out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    db = out / "database.db"
    names = sorted(p.name for p in Path(a.images_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    times = {}
    t = time.perf_counter()
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = a.max_image_size
    pycolmap.extract_features(db, a.images_dir, names, pycolmap.CameraMode.AUTO, extraction_options=ext,
                              device=pycolmap.Device.cpu)
    times["features"] = time.perf_counter() - t
    t = time.perf_counter()
    if a.sequential_overlap <= 0:
        pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
    else:
        retrieval_pairs(Path(a.images_dir), names, out, a.retrieval_neighbors)
        times["retrieval"] = time.perf_counter() - t
        t = time.perf_counter()
        seq = pycolmap.SequentialPairingOptions()
        seq.overlap = a.sequential_overlap
        pycolmap.match_sequential(db, pairing_options=seq, device=pycolmap.Device.cpu)
        imp = pycolmap.ImportedPairingOptions()
        imp.match_list_path = str(out / "retrieval_pairs.txt")
        pycolmap.match_image_pairs(db, pairing_options=imp, device=pycolmap.Device.cpu)
    times["matching"] = time.perf_counter() - t
    t = time.perf_counter()
    (out / "sparse").mkdir()
    models = pycolmap.incremental_mapping(db, a.images_dir, out / "sparse")
    times["mapping"] = time.perf_counter() - t
    best = max(models.values(), key=lambda r: r.num_reg_images()) if models else None
    poses = model_poses(best) if best else {}
    write_poses_csv(out / "poses.csv", names, poses)
    res = {
        "stage_seconds": times,
        "pairing": "exhaustive"
        if a.sequential_overlap <= 0
        else f"sequential {a.sequential_overlap} + retrieval top-{a.retrieval_neighbors}",
        "total_seconds": sum(times.values()),
        "registered_images": len(poses),
        "points": best.num_points3D() if best else 0,
        "images": len(names),
    }
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
