"""``python -m bench.rotation``: one pair per scene with its second image turned by 0, 90 and 180 degrees, matched by
every extractor + matcher, verified by a fundamental matrix (OpenCV MAGSAC, :mod:`backend.twoview.compare`).
Prints a markdown table of verified inliers / matches (the "rotated photos" table of docs/methods.md)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

from backend.twoview.compare import compare_pair

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIRS = [("temple", "temple_ring_middlebury", "templeR0013.png", "templeR0015.png"),
         ("reichstag", "reichstag_imc2020", None, None)]
METHODS = [("aliked-n16", "lightglue"), ("aliked-n16rot", "lightglue"), ("aliked-n16rot", "nn-ratio"),
           ("aliked-n16", "nn-ratio"), ("disk", "lightglue"), ("xfeat", "lighterglue"), ("xfeat", "nn-ratio"),
           ("sift", "nn-ratio"), ("orb", "nn-ratio"), ("akaze", "nn-ratio")]
ROTATIONS = (0, 90, 180)


def main() -> int:
    run = Path(tempfile.mkdtemp(prefix="rotation_"))
    (run / "images").mkdir()
    rows: dict = {m: [] for m in METHODS}
    try:
        for label, scene, a, b in PAIRS:
            names = sorted(p.name for p in (DATA / scene / "images").iterdir())
            a, b = a or names[0], b or names[1]
            Image.open(DATA / scene / "images" / a).convert("RGB").save(run / "images" / f"{label}_a.png")
            for rot in ROTATIONS:
                img = Image.open(DATA / scene / "images" / b).convert("RGB").rotate(-rot, expand=True)
                img.save(run / "images" / f"{label}_b{rot}.png")
                for m in METHODS:
                    r = compare_pair(run, f"{label}_a.png", f"{label}_b{rot}.png", *m, resize=1024,
                                     max_keypoints=2048)
                    rows[m].append(f"{r['counts']['inliers']}/{r['counts']['matches']}")
    finally:
        shutil.rmtree(run, ignore_errors=True)
    print("| features + matcher | " + " | ".join(f"{p[0]} {r}°" for p in PAIRS for r in ROTATIONS) + " |")
    print("|---|" + "---:|" * (len(PAIRS) * len(ROTATIONS)))
    for m, v in rows.items():
        print(f"| {m[0]} + {m[1]} | " + " | ".join(v) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
