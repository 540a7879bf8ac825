"""Mapping a collection split into scenes: each group of the scenes stage (:mod:`.scenes`) mapped on its own
(:func:`.collection.map_collection`), then its models turned into scenes (rule 4 of :mod:`.scenes`).

Writes ``groups/<g>/`` (group g's own database, mapping files and models) when the collection was split, and
``sparse/<k>/``: scene k's model, in scene order.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import MappingConfig, VerificationConfig
from .collection import map_collection
from .database import GROUPS_DIR, SPARSE, group_database
from .mappers import MappingLog


@dataclass
class Scene:
    """One scene of a mapped collection (``mapping.json`` ``scenes``).

    Attributes:
        images: its photos (names, sorted); ``registered``: those with a pose.
        group: the scenes-stage group it comes from; ``why``: a sentence saying why these photos are a scene.
        group_model: the index of its model in the group's ``sparse/`` (None: no model).
        model_dir: that model's folder; ``summary``: that model's :func:`.collection.map_collection` summary.
        model: its index in the run's ``sparse/`` (set when the models are laid out).
    """

    images: list[str]
    registered: list[str]
    group: int
    why: str
    group_model: int | None = None
    model_dir: Path | None = None
    summary: dict | None = None
    model: int | None = None

    def to_dict(self, index: int) -> dict:
        return {"name": f"scene{index}", "images": self.images, "registered": self.registered, "model": self.model,
                "group": self.group, "why": self.why}


def _registered_names(model_dir: Path) -> list[str]:
    import pycolmap

    rec = pycolmap.Reconstruction(model_dir)
    return sorted(im.name for im in rec.images.values() if im.has_pose)


def _group_scenes(g: int, members: list[str], gdir: Path, res: dict, mode: str, min_size: int) -> list[Scene]:
    """The scenes of group ``g``'s mapping result ``res`` (models in ``gdir/sparse/``): every model with at least
    ``min_size`` registered photos not already in a larger one (mode ``single``: the largest only); the group's
    other photos join the first. A group without such a model is one scene without poses."""
    regs = [(k, _registered_names(gdir / SPARSE / str(k))) for k in range(len(res["models"]))]
    if mode == "single":
        big = regs[:1]
    else:
        big, taken = [], set()
        for k, r in regs:  # (an image COLMAP registered in two models counts in the larger one)
            r = [n for n in r if n not in taken]
            if len(r) >= min_size:
                big.append((k, r))
                taken.update(r)
    held = set().union(*(set(r) for _, r in big)) if big else set()
    rest = [n for n in members if n not in held]
    scenes = []
    for j, (k, reg) in enumerate(big):
        why = f"group {g}: {len(members)} photos joined by verified pairs"
        if len(big) > 1:
            why += (f"; the mapper made {len(big)} models of it (no consistent way to join them), this is "
                    f"model {j + 1}")
        scenes.append(Scene(sorted(reg + (rest if j == 0 else [])), reg, g, why, group_model=k,
                            model_dir=gdir / SPARSE / str(k), summary=res["models"][k]))
    if not big:  # the photos belong together (verified pairs) but no model came of them: a scene without poses
        why = ("one scene (scenes mode 'single')" if mode == "single" else
               f"group {g}: {len(members)} photos joined by verified pairs; not reconstructed (no model with at "
               f"least {min_size} registered photos)")
        scenes.append(Scene(sorted(members), [], g, why))
    return scenes


def map_scenes(run_dir: Path, names: list[str], images: dict, pairs: list, cfg: MappingConfig,
               vcfg: VerificationConfig, min_matches: int, report, split: dict | None) -> dict:
    """Map each group of the scenes stage on its own, then turn models into scenes (rule 4 of
    :mod:`backend.mapping.scenes`).

    One group holding every photo is mapped in the run folder (:func:`.collection.map_collection`); otherwise group
    g is mapped in ``groups/<g>/`` (:func:`.database.group_database`) and the models of the scenes are copied to
    ``sparse/<k>`` in scene order. Scenes are ordered by their number of photos, largest first, the scenes that gave
    no model last (a group whose photos belong together by verified pairs stays a scene, without poses: the IMC 2025
    metric counts it as a cluster); scene k's model is ``sparse/<k>``.

    Args:
        split: :meth:`backend.mapping.scenes.SceneSplit.to_dict` (None: one scene of every image).

    Returns:
        :func:`.collection.map_collection`'s result (``models`` as in ``sparse/``; ``cameras`` and ``fold`` of the
        largest group, and ``groups``: each group's own) plus ``scenes`` (``[{"name", "images", "registered",
        "model", "group", "why"}]``) and ``outliers`` (``[{"image", "reason"}]``).
    """
    from .scenes import SceneSplit

    sp = SceneSplit.from_dict(split) if split else SceneSplit([sorted(names)], [], mode="single")
    log = MappingLog()
    groups_root = run_dir / GROUPS_DIR
    if groups_root.exists():
        shutil.rmtree(groups_root)
    trivial = len(sp.groups) == 1 and len(sp.groups[0]) == len(names)
    per_group = []  # (folder whose sparse/ holds the models, map_collection result)
    if trivial:
        per_group.append((run_dir, map_collection(run_dir, names, images, pairs, cfg, vcfg, min_matches, report, log)))
    else:
        for g, members in enumerate(sp.groups):
            gdir = groups_root / str(g)
            inside = set(members)
            report("mapping", 0, len(members), f"group {g + 1} of {len(sp.groups)}: {len(members)} photos")
            group_database(run_dir, gdir, members, images, cfg)
            gpairs = [p for p in pairs if p[0] in inside and p[1] in inside]
            per_group.append((gdir, map_collection(gdir, members, images, gpairs, cfg, vcfg, min_matches, report, log)))
    scenes: list[Scene] = []
    for g, (gdir, res) in enumerate(per_group):
        scenes += _group_scenes(g, sp.groups[g], gdir, res, sp.mode, sp.min_scene_size)
    if trivial:  # the scenes' models are sparse/0..S-1 already (largest first)
        result = dict(per_group[0][1])
        for sc in scenes:
            sc.model = sc.group_model
    else:
        scenes.sort(key=lambda sc: (sc.model_dir is None, -len(sc.images), -len(sc.registered), sc.images[0]))
        result = _lay_out_models(run_dir, scenes, per_group, sp, log)
    result["scenes"] = [sc.to_dict(i) for i, sc in enumerate(scenes)]
    result["outliers"] = sorted(sp.outliers, key=lambda o: o["image"])
    return result


def _lay_out_models(run_dir: Path, scenes: list[Scene], per_group: list, sp, log: MappingLog) -> dict:
    """Copy the scenes' models to ``run_dir/sparse/<k>`` in scene order (setting each scene's ``model``) and merge
    the groups' mapping results into one."""
    out = run_dir / SPARSE
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    model_summaries = []
    for sc in scenes:
        if sc.model_dir is None:
            continue
        sc.model = len(model_summaries)
        shutil.copytree(sc.model_dir, out / str(sc.model))
        model_summaries.append({**sc.summary, "model": sc.model})
    first = per_group[0][1] if per_group else {}
    return {"models": model_summaries, "cameras": first.get("cameras", {}), "fold": first.get("fold"),
            "deregistered_outside_models": [d for _, r in per_group for d in r["deregistered_outside_models"]],
            "time_bound_seconds": first.get("time_bound_seconds"),
            "stopped_at_time_bound": list(log.time_bound_hits), "passes": list(log.passes),
            "groups": [{"group": g, "images": len(sp.groups[g]), "cameras": r.get("cameras"),
                        "fold": r.get("fold"), "models": [m["registered_images"] for m in r["models"]]}
                       for g, (_, r) in enumerate(per_group)]}
