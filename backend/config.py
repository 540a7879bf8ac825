"""Pipeline configuration as data: one small dataclass per stage, grouped in :class:`PipelineConfig`.

Presets (``fast``, ``balanced``, ``accurate``, ``naive``) are named instances. The config a run used is
saved in ``run.json``; :meth:`PipelineConfig.stage_hash` decides which finished stages can be reused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .utils.hashing import json_sha256


@dataclass
class ImagesConfig:
    """How inputs are read. ``background`` is the colour RGBA / LA images are composited onto."""

    background: str = "white"  # "white" or "black"
    default_focal_factor: float = 1.2  # focal prior = factor * max(W, H) px when EXIF has none (COLMAP's default)
    # "auto": find photos turned by 90/180/270 degrees against the collection and show them to retrieval and the
    # extractor turned back (backend/io/upright.py); "off": use every photo as stored
    upright: str = "off"  # one of UPRIGHT_MODES


@dataclass
class RetrievalConfig:
    """Image-pair selection from global descriptors.

    ``model``: ``"auto"`` (DINOv2-small if its weights are installed, else EfficientNet-Lite0),
    ``"dinov2-small"``, ``"dinov2-base"``, ``"efficientnet-lite0"``.
    All pairs are matched when there are at most ``exhaustive_below`` images (the IMC baseline uses 20);
    otherwise each image's ``num_neighbors`` most similar images plus every pair with cosine similarity
    of at least ``min_score``.
    """

    model: str = "auto"
    num_neighbors: int = 10
    min_score: float = 0.9
    bridge_pairs: int = 3  # pairs added from each disconnected group of images to the rest (see select_pairs)
    exhaustive_below: int = 20
    resize: int = 448  # long side in px for the global descriptor network
    # "auto": when the file names form one numbered sequence (video frames), also pair each photo with the next
    # ``sequential_overlap`` (COLMAP's sequential matcher); "off": retrieval alone
    sequential: str = "off"  # one of SEQUENTIAL_MODES
    sequential_overlap: int = 5
    # "on": the frames of each video (images.json "videos") are also paired with the next ``sequential_overlap``
    # frames of that video, in time order; "off": a video's frames get retrieval's pairs only
    video_sequential: str = "on"  # one of VIDEO_SEQUENTIAL_MODES


@dataclass
class FeaturesConfig:
    """Local features: extractor ``name`` from :data:`backend.features.EXTRACTORS` (ALIKED, DISK, XFeat, SIFT,
    ORB, AKAZE). ``options`` override the method's own ``default_conf`` (e.g. ``{"detection_threshold": 0.2}``)."""

    name: str = "aliked-n16"
    resize: int = 1024  # long side in px; images are never upscaled
    max_keypoints: int = 2048
    border: int = 0  # px of the original image: keypoints closer to the edge are dropped (0: keep all)
    options: dict = field(default_factory=dict)


@dataclass
class MatchingConfig:
    """Matcher ``name`` from :data:`backend.matchers.MATCHERS` on the selected pairs. The LightGlue options apply
    to ``lightglue`` and ``lighterglue``, ``ratio`` to ``nn-ratio``; ``options`` override any method's
    ``default_conf``."""

    name: str = "lightglue"
    depth_confidence: float = 0.95  # LightGlue: early stopping (adaptive depth); -1 disables
    width_confidence: float = 0.99  # LightGlue: point pruning (adaptive width); -1 disables
    filter_threshold: float = 0.1  # LightGlue: minimum match confidence
    ratio: float = 0.8  # nn-ratio: Lowe's ratio test
    min_matches: int = 15  # pairs with fewer matches are not written to the database
    options: dict = field(default_factory=dict)


UPRIGHT_MODES = ("off", "auto")  # ImagesConfig.upright
SEQUENTIAL_MODES = ("off", "auto")  # RetrievalConfig.sequential
VIDEO_SEQUENTIAL_MODES = ("on", "off")  # RetrievalConfig.video_sequential
DISAMBIGUATE_MODES = ("off", "auto")  # MappingConfig.disambiguate
MAPPERS = ("incremental", "global", "hierarchical")  # MappingConfig.mapper; the CLI and the app list these


@dataclass
class VerificationConfig:
    """Two-view geometric verification of the raw matches (COLMAP's ``TwoViewGeometryOptions``: LO-RANSAC over the
    essential, fundamental and homography models). The database it verifies takes its cameras from
    ``mapping.camera_mode`` and ``mapping.camera_model``; no other mapping option changes its result."""

    ransac_max_error: float = 4.0  # px, two-view geometry
    ransac_max_trials: int = 20000  # RANSAC iterations per pair at most (a pair of unrelated photos uses them all)
    min_num_inliers: int = 15
    random_seed: int = 0


_VERIFICATION_KEYS = ("ransac_max_error", "ransac_max_trials", "min_num_inliers")  # in mapping before issue 26


@dataclass
class MappingConfig:
    """Mapping with pycolmap (Schönberger & Frahm 2016; GLOMAP; COLMAP's hierarchical mapper), the cameras, the final
    bundle adjustment and the fold check. Verification has its own section (:class:`VerificationConfig`)."""

    # "auto": one camera per image, then one shared camera for each same-size group whose refined focal lengths
    # agree (a second mapping pass); "per_image"; "shared" (one camera for all; needs one image size)
    camera_mode: str = "auto"
    # "incremental": COLMAP's incremental mapper; "global": GLOMAP (Pan et al., "Global Structure-from-Motion
    # Revisited", ECCV 2024), merged into COLMAP 4 as pycolmap.global_mapping; "hierarchical": COLMAP's
    # hierarchical mapper (the view graph cut into overlapping clusters of at most leaf_max_images photos, each mapped
    # incrementally in parallel, then merged), pycolmap.hierarchical_mapping
    mapper: str = "incremental"  # one of MAPPERS
    leaf_max_images: int = 500  # hierarchical mapper: largest cluster mapped on its own (COLMAP's default)
    camera_model: str = "SIMPLE_RADIAL"
    min_model_size: int = 3
    refine_focal_length: bool = True
    refine_extra_params: bool = True
    # threads of mapping (COLMAP's incremental, global and hierarchical mappers, the final bundle adjustment);
    # -1: all cores. With 1 (and the fixed random_seed) mapping gives the same model every run; with more, COLMAP's
    # multithreaded bundle adjustment sums in a varying order and a photo at the edge of registration can go either
    # way (bench/NOTES.md, "Reproducible mapping")
    num_threads: int = -1
    random_seed: int = 0
    max_runtime_seconds: float = -1  # > 0: the time bound of each incremental mapping call, whole seconds
    # otherwise each incremental mapping call stops (keeping what it has registered) after
    # max(min_runtime_seconds, max_seconds_per_image x images) without a new registration: no call can stall, and
    # none is cut while it still registers photos
    max_seconds_per_image: float = 4.0
    min_runtime_seconds: float = 60.0
    # ... and in any case after ceiling_seconds_per_image x images (a mapper that keeps re-registering photos)
    ceiling_seconds_per_image: float = 60.0
    # incremental mapping's global bundle adjustment runs when the model has grown by this factor (COLMAP: 1.1)
    ba_global_ratio: float = 1.1
    # global bundle adjustments (with retriangulation) per global refinement step at most (COLMAP: 5)
    ba_global_max_refinements: int = 5
    # COLMAP 4's structure-less registration: an image that the 2D-3D pose cannot register is tried again from its
    # 2D-2D correspondences to registered images (7 s a try on church's last photo, which failed both times)
    structure_less_fallback: bool = True
    ba_ignore_redundant_points: bool = False  # COLMAP's option to leave well-constrained points out of global BA
    final_ba_iterations: int = 100  # solver iterations of the last global bundle adjustment (Ceres' default)
    # the last global bundle adjustment refines the principal point of "all" cameras (narrow ones held), or only
    # when every camera is "shared" by at least 8 registered images (the behaviour before; bench/NOTES.md,
    # "Principal points in the final bundle adjustment")
    final_ba_principal_point: str = "all"
    # "auto": check the largest model for a fold (one side of a symmetric building mapped onto the other; Heinly et
    # al., ECCV 2014; backend/mapping/disambiguation.py) and, when folded, map again without the pairs between the
    # two groups: two correct models instead of one folded one. "off": no check
    disambiguate: str = "off"  # one of DISAMBIGUATE_MODES


SCENES_MODES = ("auto", "single")  # ScenesConfig.mode


@dataclass
class ScenesConfig:
    """How a collection is split into scenes and outliers before mapping (backend/mapping/scenes.py): groups of
    verified pairs, each mapped on its own. ``mode`` ``"single"`` maps every photo as one scene."""

    mode: str = "auto"  # one of SCENES_MODES
    min_scene_size: int = 3  # smaller groups (and models) are outliers
    # a verified pair with fewer inliers is kept only when it closes a triangle with a third photo (false pairs
    # between scenes measured 15-26 inliers, pairs within scenes a median of 98; backend/mapping/scenes.py)
    strong_inliers: int = 60


@dataclass
class PipelineConfig:
    """Everything a run depends on, per stage."""

    images: ImagesConfig = field(default_factory=ImagesConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    preset: str = "balanced"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineConfig":
        """Build from a (possibly partial) dict such as the ``config`` of a ``run.json``.

        Raises:
            ValueError: an unknown section or key.
        """
        cfg = cls()
        for section, values in d.items():
            if section == "preset":
                cfg.preset = values
                continue
            if not hasattr(cfg, section):
                raise ValueError(f"unknown config section {section!r}")
            sub = getattr(cfg, section)
            values = _upgrade(section, dict(values))
            if section == "mapping":  # a run.json written before verification had its own section
                for k in _VERIFICATION_KEYS:
                    if k in values:
                        setattr(cfg.verification, k, values.pop(k))
            for k, v in values.items():
                if not hasattr(sub, k):
                    raise ValueError(f"unknown config key {section}.{k}")
                setattr(sub, k, v)
        return cfg

    def stage_hash(self, *sections: str) -> str:
        """Short hash of the given config sections (``"mapping"``) or fields (``"mapping.camera_mode"``): the inputs
        of one stage. Options added later (:data:`_HASH_NEW_DEFAULTS`) are left out while they hold the value that
        behaves as before, so a run made before they existed is still reused."""
        def section(s):
            if "." in s:
                name, key = s.split(".", 1)
                return getattr(getattr(self, name), key)
            d = dataclasses.asdict(getattr(self, s))
            return {k: v for k, v in d.items() if _HASH_NEW_DEFAULTS.get((s, k), object()) != v}

        return json_sha256({s: section(s) for s in sections}, 16)


_HASH_NEW_DEFAULTS = {("retrieval", "sequential"): "off", ("retrieval", "sequential_overlap"): 5,
                      ("retrieval", "video_sequential"): "on",
                      ("mapping", "leaf_max_images"): 500, ("mapping", "final_ba_principal_point"): "shared",
                      ("mapping", "ceiling_seconds_per_image"): 60.0, ("mapping", "ba_global_max_refinements"): 5,
                      ("mapping", "structure_less_fallback"): True}


def _upgrade(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Read the config of a run made before the extractor registry (``features.model`` and ALIKED's own
    thresholds as stage options)."""
    if section == "features":
        if "model" in values:
            values.setdefault("name", values.pop("model"))
        extra = {k: values.pop(k) for k in ("detection_threshold", "nms_radius") if k in values}
        if extra:
            values["options"] = {**extra, **values.get("options", {})}
    return values


def _preset(name: str, **sections: dict[str, Any]) -> PipelineConfig:
    d: dict[str, Any] = {"preset": name}
    d.update(sections)
    return PipelineConfig.from_dict(d)


PRESETS: dict[str, PipelineConfig] = {
    # fast: XFeat + mutual nearest neighbours with the ratio test, 2048 keypoints at 1024 px, 8 retrieved
    # neighbours per image (global descriptor at 320 px). Measured on temple at 1024 keypoints / 640 px
    # (bench/RESULTS.md, per method): XFeat
    # 0.07 s per image and the ratio-test matcher 0.01 s per pair, against ALIKED 0.7 s and LightGlue 0.5 s, at the
    # same mAA (1.000); 1024 keypoints at 640 px registered 2 of 5 internet photos of reichstag, 2048 at 1024 px all
    # five. Fewer neighbours fold symmetric objects: lego gave mAA 0.55 / 0.62 / 0.98 with 6 / 7 / 8
    # (bench/NOTES.md). The LightGlue options apply when --matcher lightglue is chosen with this preset.
    "fast": _preset(
        "fast",
        retrieval={"num_neighbors": 8, "exhaustive_below": 6, "resize": 320},
        features={"name": "xfeat", "resize": 1024, "max_keypoints": 2048},
        # ratio 0.9, not Lowe's 0.8: with 0.8 XFeat kept too few matches on lego (21 of 50 registered) and fox split
        # in two models (38 + 13); with 0.9 both register all 50 (bench/NOTES.md)
        matching={"name": "nn-ratio", "ratio": 0.9, "depth_confidence": 0.9, "width_confidence": 0.95},
        # global BA after 40 % growth instead of 10 %, without redundant points: 2.6 -> 1.7 s of mapping on temple,
        # same registered images (bench/NOTES.md)
        mapping={"ba_global_ratio": 1.4, "ba_ignore_redundant_points": True, "final_ba_iterations": 25},
    ),
    # balanced: all pairs up to 10 images, else 8 retrieved neighbours per image; 2048 keypoints at 1024 px
    # balanced: ALIKED + LightGlue. ALIKED + the ratio-test matcher at the same budget registered 4 of 16 church
    # photos (mAA 0.077) against LightGlue's 15 (0.385)
    # upright "auto" (balanced, accurate): fox_instant_ngp@internet-s0 (10 of 50 photos turned) 39/50 at mAA 0.261
    # without, 47/50 at 0.356 with; the real scenes have no turned photo and are unchanged (bench/NOTES.md)
    # disambiguate "auto" (balanced, accurate): church's folded model (15/16, both sides on one clock face) becomes
    # two correct models; no other scene's model is split (bench/NOTES.md, "Folded models")
    # LightGlue stops earlier and prunes more (depth 0.9, width 0.95 instead of 0.95 / 0.99): 0.52-0.68x the
    # matching time at 91-93 % of the inliers, no pair lost, the same or a higher mAA (issue 25, bench/NOTES.md)
    "balanced": _preset("balanced", images={"upright": "auto"}, retrieval={"num_neighbors": 8, "exhaustive_below": 10},
                        matching={"depth_confidence": 0.9, "width_confidence": 0.95},
                        mapping={"disambiguate": "auto"}),
    "accurate": _preset(
        "accurate",
        images={"upright": "auto"},
        retrieval={"num_neighbors": 20, "exhaustive_below": 40},
        features={"resize": 1280, "max_keypoints": 4096},
        matching={"depth_confidence": -1, "width_confidence": -1},
        mapping={"disambiguate": "auto"},
    ),
    # Mirrors the Kaggle IMC 2024/2025 baseline: all pairs, 4096 keypoints at 1024 px, no early stopping.
    "naive": _preset(
        "naive",
        retrieval={"exhaustive_below": 100000},
        features={"resize": 1024, "max_keypoints": 4096},
        matching={"depth_confidence": -1, "width_confidence": -1},
    ),
}


def get_preset(name: str) -> PipelineConfig:
    """A fresh copy of preset ``name``. Raises ValueError naming the known presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PipelineConfig.from_dict(PRESETS[name].to_dict())
