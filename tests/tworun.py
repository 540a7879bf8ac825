"""A finished run turned into a run with two models, as the church sample ends up (a folded model mapped as its two
sides, one photo of the smaller side placed by neither): the fixture behind the tests that every page counts the
registered photos alike (tests/test_app.py, tests/test_browser_truth.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image


def make_two_model_run(src: Path, dst: Path, extra_photo: Path) -> dict:
    """Copy the finished run folder ``src`` to ``dst`` and split its model in two, the way the mapping stage writes a
    fold that was mapped apart: ``sparse/0`` keeps all but the last two registered photos (by name), ``sparse/1``
    the last two, and ``extra_photo`` is added to the run's photos (``images/``, ``images.json``) without a pose in
    either model. ``mapping.json`` gets the two models, the fold's two groups (the extra photo in the second) and
    two scenes as :func:`backend.mapping.scene_mapping.map_scenes` lists them (the photo without a pose in the
    first scene; ``why`` counts the group's models from 1, as that function writes it).

    Returns:
        ``{"model0": [names], "model1": [names], "unregistered": [names], "images": int}``, read back from the
        written models (what a page must count).

    Raises:
        AssertionError: the source model has fewer than four registered photos.
    """
    import pycolmap

    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("thumbs", "compare", "cleaned"))
    rec = pycolmap.Reconstruction(dst / "sparse" / "0")
    reg = sorted(im.name for im in rec.images.values() if im.has_pose)
    assert len(reg) >= 4, f"the source run registered {len(reg)} photos; four are needed"
    groups = (reg[:-2], reg[-2:])
    shutil.rmtree(dst / "sparse")
    summaries = []
    for k, keep in enumerate(groups):
        r = pycolmap.Reconstruction(src / "sparse" / "0")
        for im in list(r.images.values()):
            if im.has_pose and im.name not in keep:
                r.deregister_frame(im.frame_id)
        (dst / "sparse" / str(k)).mkdir(parents=True)
        r.write(dst / "sparse" / str(k))
        summaries.append({"model": k, "registered_images": r.num_reg_images(), "points": r.num_points3D(),
                          "mean_reprojection_error": float(r.compute_mean_reprojection_error()),
                          "mean_track_length": float(r.compute_mean_track_length()),
                          "deregistered": [], "focal_rescued": []})
    extra = extra_photo.name
    shutil.copy(extra_photo, dst / "images" / extra)
    info = json.loads((dst / "images.json").read_text())
    w, h = Image.open(extra_photo).size
    info["images"].append({**info["images"][0], "name": extra, "width": w, "height": h})
    (dst / "images.json").write_text(json.dumps(info))
    names = [i["name"] for i in info["images"]]
    unregistered = sorted(n for n in names if n not in reg)
    mapping = json.loads((dst / "mapping.json").read_text())
    why = (f"group 0: {len(names)} photos joined by verified pairs; the mapper made 2 models of it (no consistent "
           "way to join them), this is model {}")
    mapping.update(
        models=summaries,
        fold={"folded": True, "split_kept": True, "cut_pairs": 4, "seconds": 1.0,
              "best": {"group0": list(groups[0]), "group1": sorted(list(groups[1]) + [extra]), "conflict": 0.8,
                       "within": 0.6}},
        scenes=[{"name": "scene0", "images": sorted(list(groups[0]) + unregistered), "registered": list(groups[0]),
                 "model": 0, "group": 0, "why": why.format(1)},
                {"name": "scene1", "images": list(groups[1]), "registered": list(groups[1]), "model": 1,
                 "group": 0, "why": why.format(2)}],
        outliers=[])
    (dst / "mapping.json").write_text(json.dumps(mapping))
    run = json.loads((dst / "run.json").read_text())
    s = run.setdefault("summary", {})
    s.update(images=len(names), registered_images=len(groups[0]), models=2, scenes=2, outliers=0,
             points=summaries[0]["points"])
    run["stages"]["images"].setdefault("counts", {})["images"] = len(names)
    (dst / "run.json").write_text(json.dumps(run))
    back = [sorted(im.name for im in pycolmap.Reconstruction(dst / "sparse" / str(k)).images.values()
                   if im.has_pose) for k in (0, 1)]
    return {"model0": back[0], "model1": back[1], "unregistered": unregistered, "images": len(names)}
