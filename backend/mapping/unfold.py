"""Splitting a folded model (:mod:`.disambiguation` finds the fold): map again without the verified pairs between
its two groups of images, and keep the split when the second mapping does not fold again."""

from __future__ import annotations

import copy
import time
from pathlib import Path

from ..config import MappingConfig
from .database import DATABASE, UNFOLDED_DATABASE, copy_database
from .disambiguation import MIN_GROUP, find_fold
from .mappers import MappingLog, run_mapper

def unfold(run_dir: Path, rec, n_images: int, cfg: MappingConfig, report,
           log: MappingLog) -> tuple[dict | None, dict]:
    """Check the largest model for a fold (:func:`backend.mapping.disambiguation.find_fold`) and, when it is folded,
    map again without the verified pairs between its two groups of images (the mapping calls are recorded in
    ``log``).

    The cut pairs are deleted from a copy of the database, ``database_unfolded.db`` (``database.db`` keeps every
    verified pair). The split is kept when no model of the second mapping holds at least
    :data:`~backend.mapping.disambiguation.MIN_GROUP` images of both groups (otherwise another path through the pair
    graph folded it again, and the first model stays). The larger group keeps its poses from the first model (that
    model without the other group's images; church: its side-A cameras were right at every threshold, a fresh
    mapping of them varied between runs); the other group's model comes from the second mapping.

    Returns:
        (the new models {index: pycolmap.Reconstruction} or None when nothing changed, a JSON-able record:
        ``folded``, ``best`` (groups, conflict, excess), ``cut_pairs``, ``split_kept``, ``seconds``).
    """
    import pycolmap

    report("mapping", n_images, n_images, "checking the model for a fold (the same structure seen from two sides)")
    t0 = time.perf_counter()
    fr = find_fold(rec)
    info = {**fr.to_dict(), "seconds": round(time.perf_counter() - t0, 2)}
    if not fr.folded:
        return None, info
    g0, g1 = set(fr.best.group0), set(fr.best.group1)
    db_path = run_dir / UNFOLDED_DATABASE
    copy_database(run_dir / DATABASE, db_path)
    db = pycolmap.Database.open(db_path)
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        cut = 0
        for a in sorted(g0):
            for b in sorted(g1):
                if db.exists_two_view_geometry(ids[a], ids[b]):
                    db.delete_two_view_geometry(ids[a], ids[b])
                    cut += 1
    finally:
        db.close()
    info["cut_pairs"] = cut
    report("mapping", 0, n_images, f"folded model: mapping again without the {cut} pairs between its two groups")
    remapped = run_mapper(run_dir, n_images, cfg, report, log, " (unfolded)", db=db_path)

    def count(r, group):
        return sum(im.name in group for im in r.images.values() if im.has_pose)

    refolded = any(count(r, g0) >= MIN_GROUP and count(r, g1) >= MIN_GROUP for r in remapped.values())
    info["split_kept"] = bool(remapped) and not refolded
    info["seconds"] = round(time.perf_counter() - t0, 2)
    if not info["split_kept"]:
        return None, info
    # the larger group keeps its poses from the first model (the mapper built that model around it; the other group
    # was attached through the wrong pairs): the first model without the other group's images. The other group comes
    # from the second mapping (its models that hold more of the other group than of the larger one).
    host, other = (g0, g1) if len(g0) >= len(g1) else (g1, g0)
    trimmed = copy.deepcopy(rec)
    for im in list(trimmed.images.values()):
        if im.has_pose and im.name in other:
            trimmed.deregister_frame(im.frame_id)
    models = {0: trimmed}
    for r in remapped.values():
        if count(r, other) > count(r, host):
            models[len(models)] = r
    info["kept_from_first_model"] = sorted(im.name for im in trimmed.images.values() if im.has_pose)
    return models, info


