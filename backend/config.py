"""Pipeline configuration as data: one small dataclass per stage, grouped in :class:`PipelineConfig`.

Presets (``fast``, ``balanced``, ``accurate``, ``naive``) are named instances. The config a run used is
saved in ``run.json``; :meth:`PipelineConfig.stage_hash` decides which finished stages can be reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImagesConfig:
    """How inputs are read. ``background`` is the colour RGBA / LA images are composited onto."""

    background: str = "white"  # "white" or "black"
    default_focal_factor: float = 1.2  # focal prior = factor * max(W, H) px when EXIF has none (COLMAP's default)


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


@dataclass
class FeaturesConfig:
    """ALIKED keypoints and descriptors (Zhao et al. 2023), through ``kornia.feature.ALIKED``."""

    model: str = "aliked-n16"  # or "aliked-n16rot"
    resize: int = 1024  # long side in px; images are never upscaled
    max_keypoints: int = 2048
    detection_threshold: float = 0.01
    nms_radius: int = 2


@dataclass
class MatchingConfig:
    """LightGlue (Lindenberger et al. 2023) on the selected pairs, through ``kornia.feature.LightGlue``."""

    depth_confidence: float = 0.95  # early stopping (adaptive depth); -1 disables
    width_confidence: float = 0.99  # point pruning (adaptive width); -1 disables
    filter_threshold: float = 0.1
    min_matches: int = 15  # pairs with fewer matches are not written to the database


@dataclass
class MappingConfig:
    """Two-view geometric verification and incremental mapping with pycolmap (Schönberger & Frahm 2016)."""

    # "auto": one camera per image, then one shared camera for each same-size group whose refined focal lengths
    # agree (a second mapping pass); "per_image"; "shared" (one camera for all; needs one image size)
    camera_mode: str = "auto"
    camera_model: str = "SIMPLE_RADIAL"
    ransac_max_error: float = 4.0  # px, two-view geometry
    min_num_inliers: int = 15
    min_model_size: int = 3
    refine_focal_length: bool = True
    refine_extra_params: bool = True
    num_threads: int = -1  # -1: all cores
    random_seed: int = 0
    max_runtime_seconds: float = -1


@dataclass
class PipelineConfig:
    """Everything a run depends on, per stage."""

    images: ImagesConfig = field(default_factory=ImagesConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
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
            for k, v in values.items():
                if not hasattr(sub, k):
                    raise ValueError(f"unknown config key {section}.{k}")
                setattr(sub, k, v)
        return cfg

    def stage_hash(self, *sections: str) -> str:
        """Short hash of the given config sections (the inputs of one stage)."""
        blob = json.dumps({s: dataclasses.asdict(getattr(self, s)) for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _preset(name: str, **sections: dict[str, Any]) -> PipelineConfig:
    d: dict[str, Any] = {"preset": name}
    d.update(sections)
    return PipelineConfig.from_dict(d)


PRESETS: dict[str, PipelineConfig] = {
    # fast: 8 retrieved neighbours per image, 1024 keypoints at 640 px (LightGlue costs ~0.35 s per pair on 2 CPU
    # cores at 1k keypoints, ~4x that at 2k). Fewer neighbours fold symmetric objects: lego gave mAA 0.55 / 0.62 /
    # 0.98 with 6 / 7 / 8 (see bench/NOTES.md)
    "fast": _preset(
        "fast",
        retrieval={"num_neighbors": 8, "exhaustive_below": 6},
        features={"resize": 640, "max_keypoints": 1024},
        matching={"depth_confidence": 0.9, "width_confidence": 0.95},
    ),
    # balanced: all pairs up to 10 images, else 8 retrieved neighbours per image; 2048 keypoints at 1024 px
    "balanced": _preset("balanced", retrieval={"num_neighbors": 8, "exhaustive_below": 10}),
    "accurate": _preset(
        "accurate",
        retrieval={"num_neighbors": 20, "exhaustive_below": 40},
        features={"resize": 1280, "max_keypoints": 4096},
        matching={"depth_confidence": -1, "width_confidence": -1},
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


# The user-facing overrides (CLI flags and the app's advanced options): name -> (section, key, check, message).
_CHOICES = {
    "retrieval_model": ("auto", "dinov2-small", "dinov2-base", "efficientnet-lite0"),
    "aliked": ("aliked-n16", "aliked-n16rot"),
    "camera_mode": ("per_image", "shared", "auto"),
    "background": ("white", "black"),
}
_MINIMA = {"num_neighbors": 1, "exhaustive_below": 0, "resize": 64, "max_keypoints": 64, "min_matches": 1}
OVERRIDES: dict[str, tuple[str, str]] = {
    "retrieval_model": ("retrieval", "model"),
    "num_neighbors": ("retrieval", "num_neighbors"),
    "exhaustive_below": ("retrieval", "exhaustive_below"),
    "resize": ("features", "resize"),
    "max_keypoints": ("features", "max_keypoints"),
    "aliked": ("features", "model"),
    "camera_mode": ("mapping", "camera_mode"),
    "min_matches": ("matching", "min_matches"),
    "background": ("images", "background"),
}


def apply_overrides(cfg: PipelineConfig, **overrides: Any) -> PipelineConfig:
    """Set the user-facing options of :data:`OVERRIDES` on ``cfg`` (in place; ``None`` keeps the preset's value)
    and return it. Shared by the CLI flags and the app's advanced options.

    Raises:
        ValueError: an unknown option, a value not among the choices, or a number below its minimum
            (e.g. ``resize`` < 64 px).
    """
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in OVERRIDES:
            raise ValueError(f"unknown option {name!r}; known: {', '.join(OVERRIDES)}")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"unknown {name.replace('_', ' ')} {value!r}; choose one of {', '.join(_CHOICES[name])}")
        if name in _MINIMA:
            value = int(value)
            if value < _MINIMA[name]:
                raise ValueError(f"{name.replace('_', ' ')} must be at least {_MINIMA[name]}")
        section, key = OVERRIDES[name]
        setattr(getattr(cfg, section), key, value)
    return cfg
