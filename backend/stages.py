"""The stages of a run, declared as data: one :class:`Stage` each, in the order they run.

The pipeline (:mod:`backend.pipeline`), the job layer and the CLI's progress, the app (stage table, the page that
shows a stage's result) and the API read these declarations; adding a stage is one :func:`register` call (see
``docs/architecture.md``).

A stage's hash, which decides whether its finished result can be reused, chains the hashes of its ``inputs``, its
``extra`` parts, its ``config`` (sections such as ``"mapping"`` or single fields such as ``"mapping.camera_mode"``)
and the sha256 of the ``weights`` it loads, in that order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .pipeline import Pipeline

Report = Callable[..., None]
"""``report(done, total, message="")``: a stage's progress."""


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes:
        name: its id in ``run.json``, the CLI's ``--until`` and the API (lower case, no spaces).
        title: what the app and the CLI call it.
        page: the key of the app page that shows its result (``app_common.PAGES``).
        inputs: the stages whose results it reads; each must be declared before it.
        config: the config sections (``"features"``) or fields (``"mapping.camera_mode"``) its result depends on.
        run: ``run(pipeline, report) -> counts``: does the work, writes its files into the run folder and returns
            a JSON-able dict (``run.json`` ``stages.<name>.counts``). Raises on failure; the pipeline records the
            error's type and message.
        summary: ``(key in run.json's summary, key in counts)`` pairs copied after the stage finishes.
        weights: ``weights(pipeline) -> names`` of the weight files it loads (their sha256 enter its hash).
        extra: ``extra(pipeline) -> tuple`` of further hash parts (the photos' content, the dataset name).
    """

    name: str
    title: str
    page: str
    inputs: tuple[str, ...]
    config: tuple[str, ...]
    run: Callable[["Pipeline", Report], dict]
    summary: tuple[tuple[str, str], ...] = ()
    weights: Callable[["Pipeline"], tuple[str, ...]] | None = None
    extra: Callable[["Pipeline"], tuple] | None = None


_STAGES: list[Stage] = []


def register(stage: Stage, after: str | None = None) -> Stage:
    """Declare ``stage``: appended, or placed right after stage ``after``. Returns it.

    Raises:
        ValueError: a stage of that name exists, ``after`` is unknown, or an input is not declared before it.
    """
    names = [s.name for s in _STAGES]
    if stage.name in names:
        raise ValueError(f"a stage named {stage.name!r} is declared already")
    if after is not None and after not in names:
        raise ValueError(f"unknown stage {after!r}: use one of {', '.join(names)}")
    at = names.index(after) + 1 if after is not None else len(names)
    missing = [i for i in stage.inputs if i not in names[:at]]
    if missing:
        raise ValueError(f"stage {stage.name!r} reads {', '.join(missing)}, which must be declared before it")
    _STAGES.insert(at, stage)
    return stage


def unregister(name: str) -> None:
    """Remove a declared stage (tests that declare one of their own)."""
    _STAGES[:] = [s for s in _STAGES if s.name != name]


def stages() -> list[Stage]:
    """Every declared stage, in the order they run."""
    return list(_STAGES)


def stage_names() -> list[str]:
    """The names of :func:`stages`, in order."""
    return [s.name for s in _STAGES]


def get_stage(name: str) -> Stage:
    """The declaration of stage ``name``.

    Raises:
        KeyError: no such stage (the message lists the stages).
    """
    for s in _STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}: use one of {', '.join(stage_names())}")


def stage_title(name: str) -> str:
    """The title of stage ``name`` (the name itself for an unknown one)."""
    return next((s.title for s in _STAGES if s.name == name), name)


def _descriptor_weights() -> tuple[str, ...]:
    from .retrieval import descriptor_weight_names

    return descriptor_weight_names()


# ---- the stages' work ---------------------------------------------------------------------------------------------
def _images(p: "Pipeline", report: Report) -> dict:
    from .io.images import run_images

    res = run_images(p.opt.images_dir, p.run_dir, p.cfg.images, lambda d, t, m: report(d, t, m))
    return {"images": len(res["images"]), "skipped": len(res["skipped"]),
            "skipped_files": [f"{s['name']}: {s['reason']}" for s in res["skipped"]]}


def _retrieval(p: "Pipeline", report: Report) -> dict:
    from .retrieval.global_descriptors import run_retrieval

    return run_retrieval(p.run_dir, p.names(), p.cfg.retrieval, report, p.cancel)


def _features(p: "Pipeline", report: Report) -> dict:
    from .features.extract import run_features

    # the images options that decide pixels (RGBA composited onto the background) are part of every entry's key
    decode = {"background": p.cfg.images.background}
    return run_features(p.run_dir, p.names(), p.cfg.features, report, p.cancel, decode=decode, force=p.force,
                        executor=p.executor())


def _matching(p: "Pipeline", report: Report) -> dict:
    from .matchers.match import run_matching
    from .retrieval.global_descriptors import read_pairs

    pairs = [(a, b) for a, b, _ in read_pairs(p.run_dir)]
    return run_matching(p.run_dir, pairs, p.cfg.matching, report, p.cancel, force=p.force, executor=p.executor())


def _in_child(p: "Pipeline", stages: list[str]) -> dict:
    """Run verification or mapping in the pycolmap child process (:func:`backend.mapping.child.run_in_child`)."""
    from .io.images import load_images_json
    from .mapping.child import run_in_child
    from .mapping.scenes import read_split
    from .retrieval.global_descriptors import read_pairs

    images = {i["name"]: i for i in load_images_json(p.run_dir)["images"]}
    pairs = [(a, b) for a, b, _ in read_pairs(p.run_dir)]
    split = read_split(p.run_dir) if "mapping" in stages else None
    return run_in_child(p.run_dir, list(images), images, pairs, p.cfg.mapping, p.cfg.matching.min_matches, stages,
                        lambda st, d, t, m: p.progress(st, d, t, m), p.cancel,
                        split=split.to_dict() if split else None, verification=p.cfg.verification)


def _verification(p: "Pipeline", report: Report) -> dict:
    return _in_child(p, ["verification"])


def _scenes(p: "Pipeline", report: Report) -> dict:
    from .mapping.scenes import run_scenes

    return run_scenes(p.run_dir, p.names(), p.cfg.scenes, report)


def _mapping(p: "Pipeline", report: Report) -> dict:
    from .errors import NothingReconstructedError

    res = _in_child(p, ["mapping"])
    (p.run_dir / "mapping.json").write_text(json.dumps(res, indent=1))
    models = res.get("models", [])
    if not models:
        verified = p.record.get("stages", {}).get("verification", {}).get("counts", {}).get("verified_pairs")
        dropped = res.get("deregistered_outside_models") or []
        why = (f"{len(dropped)} image(s) were placed but then removed as implausible "
               f"({dropped[0]['image']}: {dropped[0]['reason']})" if dropped else
               f"no two images had enough verified matches to start a model ({verified or 0} verified pairs)")
        raise NothingReconstructedError(
            f"nothing was reconstructed: {why}. Try photos with more overlap (every part of the scene in at "
            "least three photos, taken a few steps apart), the accurate preset, or more keypoints"
            + _unregistered_exports(p))
    best = models[0]
    return {
        "models": len(models),
        "registered_images": best.get("registered_images", 0),
        "points": best.get("points", 0),
        "mean_reprojection_error": best.get("mean_reprojection_error"),
        "mean_track_length": best.get("mean_track_length"),
        "model_sizes": [m["registered_images"] for m in models],
        "deregistered": best.get("deregistered", []),
        "focal_rescued": best.get("focal_rescued", []),
        "stopped_at_time_bound": res.get("stopped_at_time_bound", []),
        "fold": res.get("fold"),
        "cameras": res.get("cameras"),
        "scenes": len(res.get("scenes", [])),
        "scene_sizes": [len(sc["images"]) for sc in res.get("scenes", [])],
        "outliers": len(res.get("outliers", [])),
        "child_peak_rss_mb": res.get("child_peak_rss_mb"),
    }


def _unregistered_exports(p: "Pipeline") -> str:
    """After a mapping that placed no photo: write the poses files and ``submission.csv`` with every photo
    unregistered, so that an IMC submission over many collections stays complete. Returns a sentence for the
    error message (empty when the files could not be written)."""
    try:
        _exports(p, report=None)
    except (OSError, ValueError, RuntimeError):  # the error being raised is what matters
        return ""
    return " (poses.csv and submission.csv list every photo as unregistered)"


def _exports(p: "Pipeline", report: Report | None) -> dict:
    from .io.export import run_exports

    return run_exports(p.run_dir, p.names(), p.record["dataset"], p.record["scene"])


# ---- the declarations ---------------------------------------------------------------------------------------------
register(Stage("images", "Images", "images", (), ("images",), _images,
               summary=(("images", "images"), ("skipped", "skipped")),
               extra=lambda p: (p.input_fingerprint(),)))
register(Stage("retrieval", "Pairs (retrieval)", "pairs", ("images",), ("retrieval",), _retrieval,
               summary=(("pairs", "pairs"), ("retrieval_model", "model"), ("retrieval_fallback", "fallback_reason")),
               weights=lambda p: _descriptor_weights()))
register(Stage("features", "Features", "features", ("images",), ("features",), _features,
               summary=(("keypoints", "keypoints_total"), ("keypoints_mean", "keypoints_mean")),
               weights=lambda p: tuple(p.method_weights()[0])))
register(Stage("matching", "Matches", "matches", ("retrieval", "features"), ("matching",), _matching,
               summary=(("matches", "matches_total"),),
               weights=lambda p: tuple(p.method_weights()[1])))
# verification builds the database (cameras by camera_mode and camera_model) and verifies it: the mapper's other
# options do not change its result
register(Stage("verification", "Verification (two-view geometry)", "matches", ("matching",),
               ("verification", "mapping.camera_mode", "mapping.camera_model"), _verification,
               summary=(("verified_pairs", "verified_pairs"), ("inliers", "inliers_total"))))
register(Stage("scenes", "Scenes (groups and outliers)", "scenes", ("verification",), ("scenes",), _scenes))
register(Stage("mapping", "Mapping (SfM)", "reconstruction", ("scenes",), ("mapping",), _mapping,
               summary=tuple((k, k) for k in ("registered_images", "points", "mean_reprojection_error",
                                              "mean_track_length", "models", "scenes", "outliers"))))
register(Stage("exports", "Exports", "reconstruction", ("mapping",), (), _exports,
               extra=lambda p: (p.record.get("dataset"), p.record.get("scene"))))
