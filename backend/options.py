"""The user-facing options, one table: each option's name, the config field it sets, its choices (from the
registries), its bounds and its help. The CLI's flags (:func:`backend.cli.build_parser`), the app's advanced
options (``streamlit_app.py``), the API's form fields of ``POST /v1/runs`` and the options table in ``docs/cli.md``
are generated from :data:`OPTIONS`; :func:`apply_overrides` checks values against it and sets them.

Defaults are the preset's (``backend/config.py``, ``PRESETS``): an option left out keeps the preset's value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .config import (DISAMBIGUATE_MODES, MAPPERS, SCENES_MODES, SEQUENTIAL_MODES, UPRIGHT_MODES,
                     VIDEO_SEQUENTIAL_MODES, PipelineConfig)


@dataclass(frozen=True)
class Option:
    """One user-facing option.

    Attributes:
        name: the keyword of :func:`apply_overrides`, the API's form field, the app's widget key.
        section, key: the config field it sets (``cfg.<section>.<key>``).
        label: what the app calls it; ``help``: one sentence or two for the CLI, the app's tooltip and the API docs.
        type: ``str`` or ``int``.
        choices: the allowed values (a tuple, or a function returning them from a registry); None: any value of
            ``type`` within the bounds.
        minimum, maximum: bounds of an ``int`` option (inclusive; None: unbounded).
        flag: the CLI flag (default ``--`` + name with dashes).
        app: shown in the app's advanced options; ``step``: the app's step for a number.
        details: what the docs add to ``help`` (markdown: measurements, caveats, links); not in the CLI's help.
    """

    name: str
    section: str
    key: str
    label: str
    help: str
    type: type = str
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    minimum: int | None = None
    maximum: int | None = None
    flag: str | None = None
    app: bool = True
    step: int = 1
    details: str = ""

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def bounds(self) -> str:
        """What values it takes, in words: ``"one of a | b"``, ``"64-8192"``, ``"at least 1"``, or ``""``."""
        allowed = self.allowed()
        if allowed is not None:
            return "one of " + " | ".join(allowed)
        if self.minimum is None:
            return ""
        return f"{self.minimum}-{self.maximum}" if self.maximum is not None else f"at least {self.minimum}"

    def allowed(self) -> tuple[str, ...] | None:
        """The allowed values, from the registry where the option names one; None for a number."""
        return self.choices() if callable(self.choices) else self.choices


def _extractors() -> tuple[str, ...]:
    from .features import EXTRACTORS

    return tuple(EXTRACTORS)


def _matchers() -> tuple[str, ...]:
    from .matchers import MATCHERS

    return tuple(MATCHERS)


def _retrieval() -> tuple[str, ...]:
    from .retrieval import RETRIEVAL_CHOICES

    return RETRIEVAL_CHOICES


OPTIONS: list[Option] = [
    Option("retrieval_model", "retrieval", "model", "Global descriptor (pair selection)",
           "global descriptor for pair selection; auto: DINOv2-small when its weights are installed, else "
           "EfficientNet-Lite0", choices=_retrieval, flag="--retrieval"),
    Option("num_neighbors", "retrieval", "num_neighbors", "Pairs per image (k)",
           "retrieval: the k most similar photos per photo are matched", int, minimum=1, maximum=1000,
           details="Above 4096 photos the pairs are chosen block by block from the global descriptors (128 MB of "
                   "similarities at a time, no N x N matrix; `retrieval.h5` then holds no `similarity`)."),
    Option("exhaustive_below", "retrieval", "exhaustive_below", "Match all pairs up to (photos)",
           "match all pairs when there are at most this many photos", int, minimum=0, app=False,
           details="The IMC baseline uses 20."),
    Option("features", "features", "name", "Local features",
           "local features (naming only these picks their own matcher when the preset's cannot match them)",
           choices=_extractors,
           details="See [Local features and matchers](methods.md)."),
    Option("matcher", "matching", "name", "Matcher",
           "the matcher; only the matchers that can match the features are accepted", choices=_matchers,
           details="`lightglue` matches ALIKED (n16, n16rot, n32) and DISK, `lighterglue` XFeat, `nn-ratio` and "
                   "`adalam` any features. Without it: the preset's matcher, or the features' own when the "
                   "preset's cannot match them. A combination that cannot work is refused (exit 2), naming the "
                   "ones that can. `--matcher-option` sets the matcher's own options (below)."),
    Option("resize", "features", "resize", "Resize (long side, px)",
           "the long side in px the extractor sees (never upscales)", int, minimum=64, maximum=8192, step=64),
    Option("max_keypoints", "features", "max_keypoints", "Maximum keypoints per image",
           "keypoints per photo at most", int, minimum=64, maximum=32768, step=256),
    Option("border", "features", "border", "Border (px)",
           "drop keypoints within this many px of the photo's edge", int, minimum=0, app=False),
    Option("camera_mode", "mapping", "camera_mode", "Cameras",
           "auto: photos of one size and the same EXIF share a camera, kept only when their own focal lengths "
           "agree after mapping; per_image: one camera per photo; shared: one camera for all (one photo size)",
           choices=("auto", "per_image", "shared"),
           details="`auto` keeps sharing only when each photo's own focal length, re-estimated after mapping, "
                   "agrees; otherwise it maps with one camera per photo, then shares where the refined focal "
                   "lengths agree."),
    Option("min_matches", "matching", "min_matches", "Minimum matches per pair",
           "pairs with fewer matches are not used for the reconstruction", int, minimum=1, maximum=100000),
    Option("mapper", "mapping", "mapper", "Mapper",
           "incremental: COLMAP's, one photo at a time; global: GLOMAP (rotation averaging, then all positions at "
           "once); hierarchical: COLMAP's, overlapping clusters mapped apart and merged (thousands of photos)",
           choices=MAPPERS,
           details="`hierarchical` cuts the pair graph into overlapping clusters of at most `--leaf-max-images` "
                   "photos, maps the clusters in parallel and merges them. `global` is "
                   "`pycolmap.global_mapping`, after `pycolmap.calibrate_view_graph` upgrades the pairs verified "
                   "without intrinsics. With any mapper, a camera whose focal length runs away (bundle "
                   "adjustment trading focal length for depth on a far camera seen through few points) is put "
                   "back at its prior focal length with its pose re-estimated, and the Reconstruction page says "
                   "so."),
    Option("leaf_max_images", "mapping", "leaf_max_images", "Largest cluster (photos)",
           "hierarchical mapper: the largest cluster mapped on its own", int, minimum=20, app=False),
    Option("background", "images", "background", "Background of transparent photos",
           "the colour transparent photos are composited onto", choices=("white", "black"), app=False),
    Option("upright", "images", "upright", "Turned photos",
           "auto: find photos turned by 90, 180 or 270 degrees against the others and match them turned back; "
           "off: use every photo as stored", choices=UPRIGHT_MODES,
           details="`auto` (balanced, accurate) votes OpenCV SIFT orientations of verified pairs over the pair "
                   "graph (about 0.2 s per photo) and shows the turned photos to retrieval and the extractor "
                   "turned back; keypoints and poses stay in the stored photo's pixels. A collection whose views "
                   "turn by arbitrary angles (a camera orbiting an object from above) is left as it is. `off` "
                   "(fast, naive)."),
    Option("disambiguate", "mapping", "disambiguate", "Symmetric structure",
           "auto: check the model for a fold (one side of a symmetric building mapped onto the other) and map the "
           "two sides as two models; off: keep the mapper's model", choices=DISAMBIGUATE_MODES,
           details="`auto` (balanced, accurate): church's two identical clock faces fold its model; the check "
                   "splits it into two correct models "
                   "([Symmetric structure](outputs.md#symmetric-structure-folded-models)). It costs 0.5 s on "
                   "reichstag, 2 s on church, 26 s on lego's 50 photos. `off` (fast, naive)."),
    Option("scenes", "scenes", "mode", "Scenes",
           "auto: group the photos into scenes by their verified pairs, mark photos that join none as outliers and "
           "map each scene on its own; single: map every photo as one scene", choices=SCENES_MODES,
           details="See [Mixed collections](mixed-collections.md). `--single-scene` is the same as `--scenes "
                   "single`."),
    Option("min_scene_size", "scenes", "min_scene_size", "Smallest scene (photos)",
           "smaller groups of photos are outliers", int, minimum=2, maximum=100000),
    Option("sequential", "retrieval", "sequential", "Sequential pairs",
           "auto: when the file names form one numbered sequence (video frames), also pair each photo with the "
           "next --sequential-overlap photos, as COLMAP's sequential matcher",
           choices=SEQUENTIAL_MODES, app=False,
           details="Recognised names: `frame_0001.jpg`, `0001.jpg`, `IMG_1234.JPG`; retrieval's pairs stay as "
                   "loop closures. Off by default: on the 492-frame gum video retrieval alone already registers "
                   "every frame (see [Many photos, many machines](scale.md))."),
    Option("video_sequential", "retrieval", "video_sequential", "Sequential pairs of video frames",
           "on: the frames kept of a video are also paired with the next --sequential-overlap frames of it, in "
           "time order; off: retrieval's pairs only", choices=VIDEO_SEQUENTIAL_MODES, app=False,
           details="A video (MP4, MOV) in the photos becomes its sharpest frame of every 0.5 s (at most 300 "
                   "frames; [Outputs](outputs.md) has the record of what was kept)."),
    Option("sequential_overlap", "retrieval", "sequential_overlap", "Sequential pairs per photo",
           "sequential pairs per photo", int, minimum=1, app=False),
    Option("mapping_threads", "mapping", "num_threads", "Mapping threads",
           "threads of mapping (the preset's: all cores; a server's $SFM_MAPPING_THREADS wins); 1 makes mapping "
           "reproducible: the same model every run", int, minimum=1, app=False,
           details="With more than one thread, bundle adjustment sums in a varying order and a photo at the edge "
                   "of registration can go either way (church's fold split: 15 or 16 photos between identical "
                   "runs; `bench/NOTES.md`, \"Reproducible mapping\"). On church one thread took as long as two "
                   "(21 s against 19-22 s of mapping)."),
]
OPTION = {o.name: o for o in OPTIONS}


def apply_overrides(cfg: PipelineConfig, **overrides: Any) -> PipelineConfig:
    """Set the user-facing options of :data:`OPTIONS` on ``cfg`` (in place; ``None`` keeps the
    preset's value) and return it. Shared by the CLI flags, the app's advanced options and the API's form fields.

    Naming ``features`` without ``matcher`` picks the extractor's own matcher (e.g. ``nn-ratio`` for SIFT) when
    the preset's cannot match it.

    Raises:
        ValueError: an unknown option, a value not among the choices, a number outside its bounds
            (e.g. ``resize`` < 64 px), unknown features or matcher, or a combination that cannot work (the message
            names the ones that can).
    """
    from .features import extractor_class
    from .matchers import check_combination, matchers_for

    for name, value in overrides.items():
        if value is None:
            continue
        if name not in OPTION:
            raise ValueError(f"unknown option {name!r}; known: {', '.join(OPTION)}")
        opt = OPTION[name]
        allowed = opt.allowed()
        if allowed is not None and value not in allowed:
            raise ValueError(f"unknown {name.replace('_', ' ')} {value!r}; choose one of {', '.join(allowed)}")
        if opt.type is int:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name.replace('_', ' ')} must be a whole number, not {value!r}") from None
            if opt.minimum is not None and value < opt.minimum:
                raise ValueError(f"{name.replace('_', ' ')} must be at least {opt.minimum}")
            if opt.maximum is not None and value > opt.maximum:
                raise ValueError(f"{name.replace('_', ' ')} must be at most {opt.maximum}")
        setattr(getattr(cfg, opt.section), opt.key, value)
    if overrides.get("features") is not None and overrides.get("matcher") is None \
            and cfg.matching.name not in matchers_for(cfg.features.name):
        cfg.matching.name = extractor_class(cfg.features.name).default_matcher
    check_combination(cfg.features.name, cfg.matching.name)
    return cfg
