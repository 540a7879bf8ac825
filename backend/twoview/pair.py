"""Two photos in, the evidence that they show the same place out: global similarity, matches, verified two-view
geometry, and (with ground truth) pose errors and match precision.

The same building blocks as the reconstruction pipeline, on two images that need not belong to a run:

1. each image is validated as uploads are (:func:`backend.io.images.validate_image`: size limits, HEIC, 16-bit,
   EXIF orientation; the validated copy lives in a scratch folder);
2. the global descriptor of the retrieval stage (:mod:`backend.retrieval.global_descriptors`) gives a cosine
   similarity, shown in percent;
3. local features of a registered extractor (``features``, :data:`backend.features.EXTRACTORS`) at ``resize`` px
   (never upscaled), at most ``max_keypoints``, strongest first, keypoints in stored-image pixels (the features
   stage's conventions), matched by a registered matcher (``matcher``);
4. test-time augmentation (``tta``): image 1 is also extracted turned by 90, 180 and 270 degrees
   (:func:`backend.io.upright.turn_upright`), each turn matched and verified; the turn with the most verified
   inliers wins (ties: the smaller turn) and its keypoints are mapped back to the stored image 1;
5. two-view geometry (:func:`backend.twoview.geometry.estimate_two_view`): E when both images' intrinsics are
   known (ground truth, given, or EXIF focal length with the principal point at the centre), F otherwise, and a
   homography for the planar / rotation-only verdict.

The verdict "same place" rests on the verified inliers (at least :data:`~backend.twoview.geometry.MIN_INLIERS`,
COLMAP's minimum for a verified pair); the similarity percentage is shown beside it with its own threshold
(:data:`SIMILARITY_THRESHOLD`), as the weaker evidence.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ImagesConfig
from .geometry import ESTIMATORS, MIN_INLIERS, TwoViewGeometry, estimate_two_view
from .groundtruth import PRECISION_PX, PairGT, match_precision, pose_errors

TTA_TURNS = (0, 1, 2, 3)
# percent: the best single threshold between ground-truth co-visible pairs (median 76 %) and pairs of two different
# scenes (median 50 %) with EfficientNet-Lite0, balanced accuracy 97 % (bench/RESULTS_PAIRS.md, "Same place?")
SIMILARITY_THRESHOLD = 61.0
DEFAULT_RESIZE = 1024
DEFAULT_MAX_KEYPOINTS = 2048
THRESHOLD_PX = 1.0  # RANSAC threshold in pixels of the image the extractor saw (scaled to stored pixels)
PREVIEW_MAX_SIDE = 1600  # long side of the images a page keeps for drawing (drawn 420-600 px high)


@dataclass
class PairImage:
    """One validated image of a pair: ``path`` of the validated copy, ``name`` (the source's file name, for
    ground-truth lookup and display only), ``width``/``height`` px, ``focal_px`` and ``focal_source``
    (``"exif"`` or ``"prior"``)."""

    path: Path
    name: str
    width: int
    height: int
    focal_px: float
    focal_source: str

    def exif_K(self) -> np.ndarray | None:
        """Intrinsics from the EXIF focal length (principal point at the centre), ``None`` without EXIF."""
        if self.focal_source != "exif":
            return None
        return np.array([[self.focal_px, 0, self.width / 2], [0, self.focal_px, self.height / 2], [0, 0, 1]])


@dataclass
class PairResult:
    """Everything :func:`match_pair` found. Arrays: ``keypoints0`` float32 [N0, 2], ``keypoints1`` float32 [N1, 2]
    (stored-image pixels), ``matches`` int32 [M, 2], ``scores`` float32 [M], ``inliers`` bool [M], ``correct``
    bool [M] (ground truth) or ``None``."""

    features: str
    matcher: str
    image0: PairImage
    image1: PairImage
    keypoints0: np.ndarray
    keypoints1: np.ndarray
    matches: np.ndarray
    scores: np.ndarray
    geometry: TwoViewGeometry
    intrinsics: str
    seconds: dict[str, float]
    tta: dict | None = None
    similarity_percent: float | None = None
    similarity_model: str = ""
    gt: dict | None = None
    correct: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    extracted_images: int = 0  # extractions computed by this call (not taken from ``feature_cache``)
    runtime: str = "torch"  # the matcher's: "torch" or "onnx" (ONNX Runtime, all layers)

    @property
    def inliers(self) -> np.ndarray:
        return self.geometry.inliers

    @property
    def same_place(self) -> bool:
        """Verified: at least :data:`~backend.twoview.geometry.MIN_INLIERS` inliers of a two-view model."""
        return bool(self.geometry.model) and int(self.inliers.sum()) >= MIN_INLIERS

    def to_dict(self) -> dict:
        """The JSON of ``python -m backend twoview --json`` and ``POST /v1/match``: ``matches`` and ``inliers``
        (counts), ``model`` (``E``, ``F``, ``H`` or ``""``), ``verdict``, ``same_place``, ``similarity_percent``,
        ``keypoints0``/``keypoints1`` (counts), ``geometry`` (:meth:`TwoViewGeometry.to_dict`), ``intrinsics``
        (where K came from), ``tta``, ``seconds`` per step, ``runtime`` (the matcher's: ``torch`` or ``onnx``), and with
        ground truth ``rotation_error_deg``,
        ``translation_error_deg``, ``match_precision``, ``precision_threshold_px``."""
        g = self.geometry
        out = {
            "image0": self.image0.name, "image1": self.image1.name,
            "features": self.features, "matcher": self.matcher, "runtime": self.runtime,
            "keypoints0": int(len(self.keypoints0)), "keypoints1": int(len(self.keypoints1)),
            "matches": int(len(self.matches)), "inliers": int(g.inliers.sum()),
            "inlier_ratio": round(g.inlier_ratio, 4), "model": g.model, "verdict": g.verdict,
            "same_place": self.same_place, "min_inliers": MIN_INLIERS,
            "similarity_percent": None if self.similarity_percent is None else round(self.similarity_percent, 2),
            "similarity_model": self.similarity_model, "similarity_threshold_percent": SIMILARITY_THRESHOLD,
            "intrinsics": self.intrinsics, "geometry": g.to_dict(), "tta": self.tta,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()}, "notes": list(self.notes),
        }
        if self.gt is not None:
            out.update(self.gt)
        return out


def prepare_image(src: Path, work_dir: Path, out_name: str, label: str | None = None) -> PairImage:
    """Validate ``src`` into ``work_dir/out_name`` (:func:`~backend.io.images.validate_image`).

    Args:
        label: the name shown and used for ground-truth lookup (default ``src``'s file name; the API passes the
            upload's file name, never used as a path).

    Raises:
        ValueError: the file is not a usable image (the message says why).
    """
    from ..io.images import validate_image

    work_dir.mkdir(parents=True, exist_ok=True)
    info = validate_image(Path(src), work_dir, ImagesConfig(), out_name=out_name)
    return PairImage(work_dir / info.name, label or Path(src).name, info.width, info.height,
                     float(info.focal_px), info.focal_source)


def preview_image(im: PairImage, max_side: int = PREVIEW_MAX_SIDE):
    """A small copy of a validated image for drawing matches, so that a page keeps kilobytes, not the full photo.

    Args:
        im: from :func:`prepare_image`.
        max_side: long side in px of the preview (never upscaled); a JPEG is decoded reduced (draft mode).

    Returns:
        ``(preview, scale)``: ``preview`` a PIL RGB image; ``scale`` float64 [2] = stored px / preview px per axis
        (x, y), so a keypoint ``kp`` float [N, 2] in stored-image pixels is at ``kp / scale`` on the preview.

    Raises:
        OSError: the validated copy cannot be read.
    """
    from PIL import Image

    from ..io.images import load_rgb

    arr, sx, sy = load_rgb(im.path, max_side)
    return Image.fromarray(arr), np.array([sx, sy], np.float64)


def _extract(model, features: str, path: Path, resize: int, max_keypoints: int, turns: int = 0) -> dict:
    """Features of one image (original pixels), as the features stage computes them (module doc)."""
    from ..features.extract import scale_keypoints
    from ..io.images import load_rgb
    from ..io.upright import keypoints_from_upright, orientations_from_upright, turn_upright

    img, sx, sy = load_rgb(path, resize)
    out = model.extract(turn_upright(img, turns) if turns else img)
    if turns:
        out["keypoints"] = keypoints_from_upright(out["keypoints"], turns, (img.shape[1], img.shape[0]))
        if "oris" in out:
            out["oris"] = orientations_from_upright(out["oris"], turns)
    out["keypoints"] = scale_keypoints(out["keypoints"], sx, sy)
    if "scales" in out:
        out["scales"] = (out["scales"] * (sx + sy) / 2).astype(np.float32)
    order = np.argsort(-np.asarray(out["scores"]), kind="stable")[:max_keypoints]
    f = {k: np.asarray(v)[order] for k, v in out.items()}
    f["keypoints"] = f["keypoints"].astype(np.float32)
    f["image_size"] = np.array([round(img.shape[1] * sx), round(img.shape[0] * sy)])
    f["extractor"] = features
    f["descriptor_kind"] = model.descriptor_kind
    return f


def similarity_percent(path0: Path, path1: Path, model: str = "auto") -> tuple[float, str]:
    """``(cosine similarity x 100, model name)`` of the two images' global descriptors (the retrieval stage's
    network at its resolution; :func:`~backend.retrieval.global_descriptors.resolve_model` picks DINOv2-small when
    installed, else EfficientNet-Lite0)."""
    from ..config import RetrievalConfig
    from ..utils.device import get_device
    from ..io.images import load_rgb
    from ..retrieval.global_descriptors import describe, load_descriptor, resolve_model

    name, _ = resolve_model(model)
    device = get_device()
    net = load_descriptor(name, device)
    multiple = 14 if name.startswith("dinov2") else 32
    d = [describe(net, load_rgb(p, RetrievalConfig().resize)[0], device, multiple) for p in (path0, path1)]
    return float(np.dot(d[0], d[1]) / max(np.linalg.norm(d[0]) * np.linalg.norm(d[1]), 1e-12) * 100), name


def match_prepared(im0: PairImage, im1: PairImage, features: str = "aliked-n16", matcher: str = "lightglue", *,
                   resize: int = DEFAULT_RESIZE, max_keypoints: int = DEFAULT_MAX_KEYPOINTS, tta: bool = False,
                   estimator: str = "poselib", threshold_px: float = THRESHOLD_PX,
                   K0: np.ndarray | None = None, K1: np.ndarray | None = None, gt: PairGT | None = None,
                   precision_px: float = PRECISION_PX, similarity: bool = True, models: dict | None = None,
                   feature_cache: dict | None = None, runtime: str = "torch") -> PairResult:
    """Match two validated images (:func:`prepare_image`) and verify them (module doc for the steps).

    Args:
        features, matcher: registry names (:data:`backend.features.EXTRACTORS`, :data:`backend.matchers.MATCHERS`).
        resize: long side in px the extractor sees (never upscaled). max_keypoints: per image.
        tta: also try image 1 turned by 90/180/270 degrees and keep the turn with the most inliers.
        estimator: ``"poselib"`` or ``"opencv"``. threshold_px: RANSAC threshold in pixels of the resized image.
        K0, K1: intrinsics float [3, 3] in stored-image pixels (both or neither); default: the ground truth's, else
            EXIF (both images need an EXIF focal length), else none (fundamental matrix only).
        gt: ground truth of the pair; adds ``rotation_error_deg``, ``translation_error_deg`` (when a pose was
            estimated), ``match_precision`` and the per-match ``correct`` flags (when it has intrinsics).
        precision_px: symmetric epipolar distance threshold in pixels for match precision.
        similarity: compute the global-descriptor similarity (a second network; off for benchmarks).
        models: a dict reused across calls to keep loaded models (keys ``(kind, name)``).
        feature_cache: a dict reused across calls to keep each image's features (keyed by method, sizes, the
            validated copy's path and the turn; for benchmarks that match one image in many pairs). Cached
            extractions add no time to ``seconds["extraction"]``.
        runtime: ``"torch"`` (the matcher as the pipeline runs it, on CUDA when present) or ``"onnx"``: LightGlue /
            LighterGlue exported to ONNX (:func:`backend.onnx_export.onnx_matcher`, exported on first use) and run
            by ONNX Runtime on the CPU, all layers (no adaptive depth or width, so slightly more matches). The
            features always come from torch (the extractors are not exported: :mod:`backend.onnx_export`).

    Raises:
        ValueError: unknown features, matcher, estimator, runtime, a combination that cannot work, only one of
            K0 / K1, or runtime ``"onnx"`` with a matcher that has no network.
        OnnxRuntimeMissing: runtime ``"onnx"`` without onnxruntime installed.
        MissingWeightsError: the method's weights are missing or fail their check.
    """
    from ..matchers import check_combination
    from ..onnx_export import RUNTIMES

    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if (K0 is None) != (K1 is None):
        raise ValueError("give the intrinsics of both images or of neither")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    check_combination(features, matcher)
    models = {} if models is None else models
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    ext, mat = _models(models, features, matcher, resize, max_keypoints, runtime)
    seconds["load_models"] = time.perf_counter() - t
    K0, K1, intrinsics = _intrinsics(im0, im1, K0, K1, gt)
    thr = threshold_px * max(1.0, max(im0.width, im0.height) / resize, max(im1.width, im1.height) / resize)

    seconds["extraction"] = seconds["matching"] = seconds["verification"] = 0.0
    extracted = [0]

    def extract(path: Path, turns: int = 0) -> dict:
        key = (features, resize, max_keypoints, str(path), turns)
        if feature_cache is not None and key in feature_cache:
            return feature_cache[key]
        t0 = time.perf_counter()
        f = _extract(ext, features, path, resize, max_keypoints, turns=turns)
        seconds["extraction"] += time.perf_counter() - t0
        extracted[0] += 1
        if feature_cache is not None:
            feature_cache[key] = f
        return f

    f0 = extract(im0.path)
    tries = []
    for k in (TTA_TURNS if tta else (0,)):
        f1 = extract(im1.path, k)
        t = time.perf_counter()
        m, s = mat.match(f0, f1)
        m = np.asarray(m, np.int32).reshape(-1, 2)
        seconds["matching"] += time.perf_counter() - t
        t = time.perf_counter()
        g = estimate_two_view(f0["keypoints"][m[:, 0]], f1["keypoints"][m[:, 1]], K0, K1, thr, estimator)
        seconds["verification"] += time.perf_counter() - t
        tries.append((k, f1, m, np.asarray(s, np.float32).reshape(-1), g))
    best = max(tries, key=lambda x: (int(x[4].inliers.sum()), -x[0]))
    k, f1, m, s, g = best
    tta_info = None
    if tta:
        tta_info = {"turn_degrees": 90 * k, "inliers_per_turn": {str(90 * x[0]): int(x[4].inliers.sum())
                                                                for x in tries},
                    "note": f"image 1 extracted turned by {90 * k} degrees clockwise won" if k else
                    "image 1 as it is won"}
    res = PairResult(features, matcher, im0, im1, f0["keypoints"], f1["keypoints"], m, s, g, intrinsics, seconds,
                     tta=tta_info, extracted_images=extracted[0], runtime=runtime)
    if similarity:
        t = time.perf_counter()
        res.similarity_percent, res.similarity_model = similarity_percent(im0.path, im1.path)
        seconds["similarity"] = time.perf_counter() - t
    if gt is not None:
        _score_against_gt(res, gt, precision_px)
    return res


def _models(models: dict, features: str, matcher: str, resize: int, max_keypoints: int, runtime: str) -> tuple:
    """The extractor and the matcher, loaded once per ``models`` dict (keys ``(kind, name, ...)``)."""
    from ..features import load_extractor
    from ..matchers import load_matcher
    from ..onnx_export import onnx_matcher
    from ..utils.device import get_device

    device = get_device()
    ext = models.get(("features", features, resize, max_keypoints))
    if ext is None:
        ext = models[("features", features, resize, max_keypoints)] = load_extractor(
            features, device, max_keypoints=max_keypoints)
    mat = models.get(("matcher", matcher, features, runtime))
    if mat is None:
        mat = models[("matcher", matcher, features, runtime)] = (
            onnx_matcher(features, matcher) if runtime == "onnx" else load_matcher(matcher, features, device))
    return ext, mat


def _intrinsics(im0: PairImage, im1: PairImage, K0, K1, gt: PairGT | None) -> tuple:
    """``(K0, K1, where they come from)``: the given ones, else the ground truth's, else EXIF, else none."""
    if K0 is not None:
        return K0, K1, "given"
    if gt is not None and gt.K0 is not None and gt.K1 is not None:
        return gt.K0, gt.K1, "ground truth"
    if im0.exif_K() is not None and im1.exif_K() is not None:
        return im0.exif_K(), im1.exif_K(), "EXIF focal length"
    return None, None, "none (fundamental matrix)"


def _score_against_gt(res: PairResult, gt: PairGT, precision_px: float) -> None:
    """Add the pose errors and, with the ground truth's intrinsics, the match precision to ``res`` (in place)."""
    g, m = res.geometry, res.matches
    r_err, t_err = pose_errors(g.R, g.t, gt)
    res.gt = {"rotation_error_deg": None if not np.isfinite(r_err) else round(r_err, 4),
              "translation_error_deg": None if not np.isfinite(t_err) else round(t_err, 4),
              "pose_error_deg": None if not np.isfinite(max(r_err, t_err)) else round(max(r_err, t_err), 4),
              "gt_source": gt.source}
    if gt.K0 is not None and gt.K1 is not None:
        p, correct = match_precision(res.keypoints0[m[:, 0]], res.keypoints1[m[:, 1]], gt, precision_px)
        res.correct = correct
        res.gt.update({"match_precision": None if not np.isfinite(p) else round(p, 4),
                       "correct_matches": int(correct.sum()), "precision_threshold_px": precision_px})
        inl = g.inliers
        res.gt["inlier_precision"] = round(float(correct[inl].mean()), 4) if inl.any() else None
    else:
        res.notes.append("the ground truth has no intrinsics: match precision not computed")
    if g.R is None:
        res.notes.append("no relative pose (no intrinsics, or too few inliers): pose errors are undefined")


def match_pair(path0: str | Path, path1: str | Path, features: str = "aliked-n16", matcher: str = "lightglue", *,
               labels: tuple[str, str] | None = None, work_dir: Path | None = None, **options) -> PairResult:
    """Validate two image files into a scratch folder and :func:`match_prepared` them (same options).

    Args:
        path0, path1: image files (JPEG, PNG, HEIC/HEIF).
        labels: the names shown and used for ground-truth lookup (default: the files' names).
        work_dir: where the validated copies stay (``image0.*``, ``image1.*``; the result's image paths point
            there); default a temporary folder removed on return.

    Raises:
        ValueError: a file is not a usable image (the message names which and why), or a bad option.
        MissingWeightsError: the method's weights are missing.
    """
    labels = labels or (Path(path0).name, Path(path1).name)
    with tempfile.TemporaryDirectory(prefix="sfm-twoview-") as tmp:
        folder = Path(work_dir) if work_dir is not None else Path(tmp)
        ims = []
        for i, (p, label) in enumerate(zip((path0, path1), labels)):
            try:
                ims.append(prepare_image(Path(p), folder, f"image{i}{_suffix(p)}", label))
            except (ValueError, OSError) as e:
                raise ValueError(f"image {i} ({label}): {e}") from None
        return match_prepared(ims[0], ims[1], features, matcher, **options)


def _suffix(p) -> str:
    s = Path(p).suffix.lower()
    return ".jpg" if s in (".heic", ".heif", ".jpeg") else (s if s in (".jpg", ".png") else ".jpg")
