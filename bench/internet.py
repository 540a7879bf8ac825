"""A development set that behaves like internet photos, made from scenes with exact ground truth (issue 11).

    python -m bench.internet [--scenes fox_instant_ngp,gum_scene2mesh] [--seeds 0,1,2] [--out bench/out/internet]

Each variant ``<scene>@internet-s<seed>`` is a folder ``images/``, ``gt.csv`` (IMC layout with K) and
``thresholds.txt`` (the source scene's), written once and reused. Every frame is, independently:

1. cropped to a random zoom of 1-3x (the crop's size is 1/zoom of the frame, its centre anywhere that keeps it
   inside the frame: off-centre crops, as people crop);
2. resized to a random long side of 640-1600 px (internet photos come at many sizes);
3. colour- and gamma-jittered (per-channel gain 0.8-1.2, gamma 0.7-1.4);
4. rotated by 90 degrees (either way) with probability 0.15;
5. re-encoded as JPEG at quality 40-95;
6. given EXIF by thirds: none; a plausible but wrong FocalLengthIn35mmFilm (24-85 mm, at least 30 % off the true
   one); the true one (from the ground-truth K after the crop).

The ground truth follows: K is scaled and shifted with the crop and resize and turned with a 90-degree rotation;
the rotation matrix turns with the image (R' = Rz R, t' = Rz t), so every camera centre is unchanged.

What the variants capture: many "cameras" (every frame its own focal length and principal point), random image
sizes and aspect ratios, zoomed and off-centre views, colour and compression differences, in-plane rotation, absent
and wrong EXIF. What they do not: lighting, weather, season or day/night changes, occluders (people, cars,
scaffolding), different capture times, lens distortion other than the source's, and photos of other places (no
distractors); each frame still comes from one steady capture, so the overlap between views is that of the source.
``gum_scene2mesh`` (492 frames) is sub-sampled to every 10th frame (50) so the bench fits on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SFM_DATA_DIR", REPO.parent / "shared" / "data"))
OUT = REPO / "bench" / "out" / "internet"
SUBSAMPLE = {"gum_scene2mesh": 10}
RECIPE_VERSION = "1"  # bump when the recipe changes, so that old variants are rebuilt
FRAME_35MM_DIAGONAL_MM = 43.27


def variant_name(scene: str, seed: int) -> str:
    return f"{scene}@internet-s{seed}"


def parse_variant(name: str) -> tuple[str, int] | None:
    """``"fox_instant_ngp@internet-s0"`` -> ``("fox_instant_ngp", 0)``; None for a plain scene name."""
    scene, sep, tail = name.partition("@internet-s")
    return (scene, int(tail)) if sep and tail.isdigit() else None


def read_gt(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{image: (R [3, 3], t [3], K [3, 3])}`` of a scene's gt.csv (world-to-camera; the scenes here all give K)."""
    from backend.twoview.groundtruth import read_gt_csv

    return read_gt_csv(path)


def _exif_with_focal35(f35: float | None) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    if f35 is None:
        return b""
    exif[0x010F] = "Internet"  # Make
    exif[0x0110] = "Variant"  # Model
    ifd = exif.get_ifd(0x8769)
    ifd[0xA405] = int(round(f35))  # FocalLengthIn35mmFilm, mm
    return exif.tobytes()


def make_variant(scene: str, seed: int, out_root: Path = OUT) -> Path:
    """Write variant ``seed`` of ``scene`` (see the module docstring) and return its folder; reused when its recipe
    version matches. Raises FileNotFoundError when the source scene or its ground truth (with K) is missing."""
    from PIL import Image

    src = DATA / scene
    dst = out_root / variant_name(scene, seed)
    stamp = dst / "RECIPE"
    if stamp.exists() and stamp.read_text().strip() == RECIPE_VERSION:
        return dst
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "images").mkdir(parents=True)
    gt = read_gt(src / "gt.csv")
    names = sorted(gt)[:: SUBSAMPLE.get(scene, 1)]
    rng = np.random.default_rng(seed)
    rows = []
    exif_kinds = rng.permutation(np.arange(len(names)) % 3)  # 0 none, 1 wrong, 2 true: a third each
    for name, exif_kind in zip(names, exif_kinds):
        R, t, K = gt[name]
        im = Image.open(src / "images" / name).convert("RGB")
        W, H = im.size
        zoom = rng.uniform(1.0, 3.0)
        cw, ch = W / zoom, H / zoom
        x0, y0 = rng.uniform(0, W - cw), rng.uniform(0, H - ch)
        long_side = rng.uniform(640, 1600)
        s = long_side / max(cw, ch)
        nw, nh = max(int(round(cw * s)), 16), max(int(round(ch * s)), 16)
        im = im.resize((nw, nh), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
        sx, sy = nw / cw, nh / ch
        # pixel centres at integers: a source pixel u maps to (u + 0.5 - x0) * s - 0.5
        K2 = np.array([[K[0, 0] * sx, 0, (K[0, 2] + 0.5 - x0) * sx - 0.5],
                       [0, K[1, 1] * sy, (K[1, 2] + 0.5 - y0) * sy - 0.5],
                       [0, 0, 1.0]])
        a = np.asarray(im, dtype=np.float32) / 255.0
        gain = rng.uniform(0.8, 1.2, size=3)
        gamma = rng.uniform(0.7, 1.4)
        a = np.clip(np.clip(a * gain, 0, 1) ** gamma, 0, 1)
        im = Image.fromarray((a * 255 + 0.5).astype(np.uint8))
        R2, t2 = R, t
        turn = 0
        if rng.uniform() < 0.15:
            turn = 1 if rng.uniform() < 0.5 else -1  # +1: 90 degrees counter-clockwise
            w, h = im.size
            im = im.transpose(Image.Transpose.ROTATE_90 if turn == 1 else Image.Transpose.ROTATE_270)
            # new pixel (u', v') of old (u, v): CCW u' = v, v' = w-1-u; CW u' = h-1-v, v' = u
            if turn == 1:
                A = np.array([[0, 1, 0], [-1, 0, w - 1], [0, 0, 1.0]])
            else:
                A = np.array([[0, -1, h - 1], [1, 0, 0], [0, 0, 1.0]])
            # A K = K' Rz, with Rz the rotation about the optical axis
            Rz = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1.0]]) if turn == 1 else \
                np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
            K2 = A @ K2 @ Rz.T
            R2, t2 = Rz @ R, Rz @ t
        w, h = im.size
        f_true35 = 0.5 * (K2[0, 0] + K2[1, 1]) / math.hypot(w, h) * FRAME_35MM_DIAGONAL_MM
        if exif_kind == 0:
            f35 = None
        elif exif_kind == 1:
            while True:
                f35 = rng.uniform(24, 85)
                if abs(f35 / f_true35 - 1) >= 0.3:
                    break
        else:
            f35 = f_true35
        out_name = Path(name).stem + ".jpg"
        im.save(dst / "images" / out_name, "JPEG", quality=int(rng.integers(40, 96)), exif=_exif_with_focal35(f35))
        rows.append((out_name, R2, t2, K2, zoom, turn, exif_kind))
    with open(dst / "gt.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["image_name", "rotation_matrix", "translation_vector", "calibration_matrix"])
        for n, R2, t2, K2, *_ in rows:
            wr.writerow([n, ";".join(f"{x:.10g}" for x in R2.ravel()), ";".join(f"{x:.10g}" for x in t2),
                         ";".join(f"{x:.10g}" for x in K2.ravel())])
    with open(dst / "recipe.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["image_name", "zoom", "turn", "exif"])
        for n, _, _, _, zoom, turn, kind in rows:
            wr.writerow([n, f"{zoom:.2f}", {0: "", 1: "90 ccw", -1: "90 cw"}[turn], ("none", "wrong", "true")[kind]])
    shutil.copy(src / "thresholds.txt", dst / "thresholds.txt")
    stamp.write_text(RECIPE_VERSION + "\n")
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.internet")
    ap.add_argument("--scenes", default="fox_instant_ngp,gum_scene2mesh")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    for scene in a.scenes.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            d = make_variant(scene, seed, Path(a.out))
            print(f"{d}: {len(list((d / 'images').iterdir()))} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
