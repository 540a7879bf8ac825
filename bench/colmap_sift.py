"""The classical COLMAP-SIFT pipeline through pycolmap, as a peer: SIFT extraction capped at the same image size,
exhaustive matching with geometric verification, incremental mapping. Run as a script so that its peak memory is
its own::

    python -m bench.colmap_sift IMAGES_DIR OUT_DIR [--max-image-size 1024]

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


def main(argv=None) -> int:
    import pycolmap

    from backend.io.export import model_poses, write_poses_csv
    from backend.mapping.reconstruction import no_colmap_log_files

    ap = argparse.ArgumentParser()
    ap.add_argument("images_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--max-image-size", type=int, default=1024)
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
    pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
    times["matching"] = time.perf_counter() - t
    t = time.perf_counter()
    (out / "sparse").mkdir()
    models = pycolmap.incremental_mapping(db, a.images_dir, out / "sparse")
    times["mapping"] = time.perf_counter() - t
    best = max(models.values(), key=lambda r: r.num_reg_images()) if models else None
    poses = model_poses(best) if best else {}
    write_poses_csv(out / "poses.csv", names, poses)
    res = {"stage_seconds": times, "total_seconds": sum(times.values()), "registered_images": len(poses),
           "points": best.num_points3D() if best else 0, "images": len(names)}
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
