"""Mixed photo collections for the IMC 2025 task (several scenes plus outlier images in one folder), built in code
from the scenes in ``../shared/data`` (nothing is copied into the repository).

A mixture is a list of parts: ``(scene, count)`` takes ``count`` frames of a scene evenly spread over its sorted
file names (``None``: all of them); ``("once", scene, k)`` takes the ``k``-th photo of a scene that appears only
once (a GT outlier); ``("noise", k)`` and ``("flat", k)`` make synthetic outlier images (seeded noise; a flat colour
with a faint gradient). The photos are written under shuffled, meaningless names (``mix_007.jpg``) so nothing about
the scenes can be read from a name, with the ground truth in the IMC 2025 layout:

- ``gt.csv``: ``dataset,scene,image,rotation_matrix,translation_vector`` (world-to-camera R row-major ``;``, t ``;``;
  scene ``outliers`` with ``nan`` poses for outlier images);
- ``thresholds.csv``: ``dataset,scene,thresholds`` from each scene's ``thresholds.txt``.

``python -m bench.mixtures NAME OUT`` writes one (``images/``, ``gt.csv``, ``thresholds.csv``) for a look by hand.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SFM_DATA_DIR", REPO.parent / "shared" / "data"))

MIXTURES: dict[str, list[tuple]] = {
    # the example: three small real scenes, two subsampled ones, photos of scenes seen once, synthetic junk
    "five_scenes": [("temple_ring_middlebury", None), ("reichstag_imc2020", None), ("church_imc2024", None),
                    ("fox_instant_ngp", 15), ("lego_nerf_synthetic", 15),
                    ("once", "gum_scene2mesh", 100), ("once", "pairs_scannet1500_sample", 0),
                    ("noise", 0), ("noise", 1), ("flat", 0)],
    # two small objects on similar tables, filmed with phones: the look-alike case
    "lookalike": [("fox_instant_ngp", 25), ("gum_scene2mesh", 25),
                  ("once", "pairs_scannet1500_sample", 4), ("noise", 2), ("flat", 1)],
    # the scenes that alone score >= 0.90 with the fast preset, plus outliers (the CI case)
    "two_scenes": [("temple_ring_middlebury", 12), ("fox_instant_ngp", 12),
                   ("once", "lego_nerf_synthetic", 3), ("noise", 3), ("flat", 2)],
}


@dataclass
class Mixture:
    """A built mixture: ``images`` folder, ``gt_csv`` and ``thresholds_csv`` (IMC 2025 layout), the ``dataset``
    name, ``scenes`` {GT scene: [image names]} and ``outliers`` [image names]."""

    name: str
    root: Path
    images: Path
    gt_csv: Path
    thresholds_csv: Path
    dataset: str
    scenes: dict[str, list[str]]
    outliers: list[str]


def _read_gt(scene: str) -> dict[str, tuple[str, str]]:
    out = {}
    with open(DATA / scene / "gt.csv") as f:
        for row in csv.DictReader(f):
            out[row["image_name"]] = (row["rotation_matrix"], row["translation_vector"])
    return out


def _frames(scene: str, count: int | None) -> list[str]:
    names = sorted(p.name for p in (DATA / scene / "images").iterdir() if p.is_file())
    if count is None or count >= len(names):
        return names
    idx = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in idx]


def _synthetic(kind: str, k: int, path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1000 + k)
    if kind == "noise":  # coloured noise, smoothed a little so it holds corners a detector fires on
        a = rng.integers(0, 256, (480 // 4, 640 // 4, 3), dtype=np.uint8)
        Image.fromarray(a).resize((640, 480), Image.BILINEAR).save(path, quality=92)
    else:  # a flat colour with a faint vertical gradient (a photo of a wall, a lens cap, a sky)
        base = rng.integers(40, 220, 3)
        ramp = np.linspace(-6, 6, 600)[:, None, None]
        a = np.clip(base[None, None, :] + ramp + np.zeros((600, 800, 1)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(path)


def build_mixture(name: str, out: Path, parts: list[tuple] | None = None, seed: int = 0) -> Mixture:
    """Write mixture ``name`` (or the given ``parts``) into ``out`` (created; an existing ``out/images`` is
    replaced). Returns the :class:`Mixture`.

    Raises:
        KeyError: an unknown mixture name. FileNotFoundError: a scene missing from ``../shared/data`` (set
        ``SFM_DATA_DIR``).
    """
    parts = parts if parts is not None else MIXTURES[name]
    out = Path(out)
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    items = []  # (source path or synthetic spec, GT scene, R, t)
    for part in parts:
        if part[0] == "once":
            _, scene, k = part
            src = sorted(p for p in (DATA / scene / "images").iterdir() if p.is_file())[k]
            items.append((src, "outliers", None, None))
        elif part[0] in ("noise", "flat"):
            items.append(((part[0], part[1]), "outliers", None, None))
        else:
            scene, count = part
            gt = _read_gt(scene)
            for n in _frames(scene, count):
                items.append((DATA / scene / "images" / n, scene, *gt[n]))
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    rows, scenes, outliers = [], {}, []
    for new_idx, i in enumerate(order):
        src, scene, R, t = items[i]
        ext = ".jpg" if isinstance(src, tuple) and src[0] == "noise" else (
            ".png" if isinstance(src, tuple) else src.suffix.lower())
        dst = images / f"mix_{new_idx:03d}{ext}"
        if isinstance(src, tuple):
            _synthetic(src[0], src[1], dst)
        else:
            shutil.copyfile(src, dst)
        if scene == "outliers":
            outliers.append(dst.name)
            R, t = ";".join(["nan"] * 9), ";".join(["nan"] * 3)
        else:
            scenes.setdefault(scene, []).append(dst.name)
        rows.append((name, scene, dst.name, R, t))
    rows.sort(key=lambda r: r[2])
    gt_csv = out / "gt.csv"
    with open(gt_csv, "w") as f:
        f.write("dataset,scene,image,rotation_matrix,translation_vector\n")
        for r in rows:
            f.write(",".join(r) + "\n")
    th_csv = out / "thresholds.csv"
    with open(th_csv, "w") as f:
        f.write("dataset,scene,thresholds\n")
        for scene in scenes:
            f.write(f"{name},{scene},{(DATA / scene / 'thresholds.txt').read_text().strip()}\n")
    return Mixture(name, out, images, gt_csv, th_csv, name, {s: sorted(v) for s, v in scenes.items()},
                   sorted(outliers))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mixtures", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", choices=sorted(MIXTURES))
    ap.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    m = build_mixture(a.name, a.out)
    print(f"{m.images}: {sum(map(len, m.scenes.values())) + len(m.outliers)} images, scenes "
          + ", ".join(f"{s} ({len(v)})" for s, v in m.scenes.items()) + f", {len(m.outliers)} outliers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
