"""Pose accuracy of a reconstruction: the Image Matching Challenge mAA of registered camera centres.

This reproduces the metric of the Kaggle "Image Matching Challenge 2024" and "Image Matching
Challenge 2025" competitions (evaluation code in the style of
github.com/ubc-vision/image-matching-benchmark and the IMC 2024/2025 ``metric.py``): a reconstruction
lives in an arbitrary similarity frame (scale, rotation, translation), so its camera centres are first
registered onto the ground-truth (GT) centres with a RANSAC over triplets of centre correspondences and
a least-squares refinement on the inliers; a camera then counts as *accurate at threshold* ``th`` when
its registered centre lies strictly closer than ``th`` (GT units, usually metres) to its GT centre.
Registration is redone for every threshold, as IMC does. The accuracy at ``th`` is the number of
accurate cameras divided by the number of GT cameras (images that fail to register stay in the
denominator), and the mean average accuracy (mAA) is the mean of the accuracies over the thresholds.

Conventions
-----------
* Poses are world-to-camera: ``x_cam = R @ X + t`` with ``R`` float64 ``[3, 3]`` and ``t`` float64
  ``[3]``; the camera centre is ``C = -R.T @ t`` (float64 ``[3]``, world units).
* A pose dictionary maps image name (basename) to ``(R, t)`` or ``None`` for an unregistered image.
* Pose CSV files follow the IMC convention: a header naming ``image_name`` (or ``image``, or the IMC
  2024/2025 submission column ``image_path`` whose basename is taken), ``rotation_matrix`` (9 numbers,
  row-major, ``;``-separated) and ``translation_vector`` (3 numbers, ``;``-separated); other columns
  (``dataset``, ``scene``, ``calibration_matrix``, ...) are allowed and ignored. An empty or NaN pose
  field means "not registered".

Differences from the official code, none of which changes a result on well-posed data: the minimal
solver is Umeyama's (1991) closed form instead of Horn's quaternion method (same rotation and
translation; Umeyama's least-squares scale), triplets are sampled with a fixed seed when there are
more than ``max_iters`` of them instead of all being enumerated, and only the best triplet hypothesis
(plus the all-camera least-squares fit) is refined.

Everything here is pure numpy; nothing imports streamlit.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

Pose = tuple[np.ndarray, np.ndarray]
PoseDict = Mapping[str, Union[Pose, None]]
ThresholdSpec = Union[str, Path, Sequence[float], np.ndarray, float]

NAME_COLUMNS = ("image_name", "image", "image_path")  # by priority; image_path is reduced to its basename
ROTATION_COLUMN = "rotation_matrix"
TRANSLATION_COLUMN = "translation_vector"

DEFAULT_MAX_ITERS = 4000  # triplets: all of them when C(N, 3) <= this, else this many sampled with a fixed seed
_REFINE_ROUNDS = 5
_CHUNK_ELEMS = 1 << 20  # hypotheses x cameras per chunk when scoring (bounds memory for large scenes)
_FULL_ENUM_LIMIT = 50_000  # up to this many triplets, sample without replacement from the full list


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def _parse_vector(text: str, expected: int, what: str, where: str) -> np.ndarray | None:
    """Numbers of one pose field; None when the field says "not registered" (empty or NaN)."""
    text = text.strip()
    if not text:
        return None
    tokens = [tok for tok in re.split(r"[;\s]+", text) if tok]
    try:
        values = np.array([float(tok) for tok in tokens], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{where}: {what} {text!r} is not a list of numbers separated by ';'") from None
    if values.size and np.all(np.isnan(values)):
        return None
    if values.size != expected:
        raise ValueError(f"{where}: {what} has {values.size} numbers, expected {expected} (got {text!r})")
    if not np.all(np.isfinite(values)):
        return None
    return values


def read_poses_csv(
    path: str | Path, *, dataset: str | None = None, scene: str | None = None
) -> dict[str, Pose | None]:
    """Read an IMC-style pose CSV.

    Accepted headers (column order free, names case-insensitive, extra columns ignored):
    ``image_name,rotation_matrix,translation_vector[,calibration_matrix]`` (IMC training GT),
    ``image,...`` and ``image_path,dataset,scene,rotation_matrix,translation_vector`` (IMC 2024/2025
    submission; the image name is the basename of ``image_path``).

    Args:
        path: CSV file.
        dataset, scene: when given, keep only rows whose ``dataset`` / ``scene`` column equals it
            (for multi-scene submission files; the column must exist).

    Returns:
        ``{image_name: (R, t)}`` with ``R`` float64 ``[3, 3]`` (row-major from the 9 numbers of
        ``rotation_matrix``, world-to-camera) and ``t`` float64 ``[3]``, or ``{image_name: None}``
        for an image whose rotation or translation field is empty or NaN (not registered).
        ``R`` is not checked for orthonormality.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty file, a required column missing, or a malformed row (wrong number of
            fields or of numbers, non-numeric value, empty or duplicate image name); the message
            names the file and the 1-based line number.
    """
    path = Path(path)
    out: dict[str, Pose | None] = {}
    first_line: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = None
        for row in reader:
            if any(cell.strip() for cell in row):
                header = [cell.strip().lower() for cell in row]
                break
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header such as 'image_name,rotation_matrix,translation_vector'")
        header_line = reader.line_num

        name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
        missing = [c for c in (ROTATION_COLUMN, TRANSLATION_COLUMN) if c not in header]
        if name_col is None:
            missing.insert(0, "image_name (or image / image_path)")
        if missing:
            raise ValueError(
                f"{path}:{header_line}: header {','.join(header)!r} lacks the required column(s): {', '.join(missing)}"
            )
        use_basename = header[name_col] == "image_path"
        rot_col = header.index(ROTATION_COLUMN)
        trans_col = header.index(TRANSLATION_COLUMN)
        filters = []
        for col, wanted in (("dataset", dataset), ("scene", scene)):
            if wanted is not None:
                if col not in header:
                    raise ValueError(f"{path}:{header_line}: cannot filter on {col}={wanted!r}, the file has no {col!r} column")
                filters.append((header.index(col), str(wanted)))

        for row in reader:
            line = reader.line_num
            where = f"{path}:{line}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} fields, the header has {len(header)} ({','.join(header)})")
            if any(row[col].strip() != wanted for col, wanted in filters):
                continue
            name = row[name_col].strip()
            if use_basename:
                name = re.split(r"[\\/]", name)[-1]
            if not name:
                raise ValueError(f"{where}: empty image name")
            if name in out:
                raise ValueError(
                    f"{where}: image {name!r} already appeared on line {first_line[name]} "
                    "(a multi-scene file needs dataset=/scene= to pick one scene)"
                )
            R = _parse_vector(row[rot_col], 9, ROTATION_COLUMN, where)
            t = _parse_vector(row[trans_col], 3, TRANSLATION_COLUMN, where)
            out[name] = None if R is None or t is None else (R.reshape(3, 3), t)
            first_line[name] = line
    return out


def read_thresholds(spec: ThresholdSpec) -> np.ndarray:
    """Distance thresholds (GT units) for the mAA.

    Args:
        spec: a ``Path`` or the name of an existing file (e.g. IMC's ``thresholds.txt``) holding numbers
            separated by ``;``, ``,``, whitespace or newlines (``#`` starts a comment); or such a list
            as a string (``"0.1;0.2,0.5"``); or a sequence / array of numbers; or one number.

    Returns:
        float64 ``[T]``, sorted ascending (duplicates are kept: each one weighs in the mean).

    Raises:
        FileNotFoundError: ``spec`` is a ``Path`` that does not exist.
        ValueError: no numbers, a token that is not a number, or a non-finite / non-positive value.
    """
    source = "thresholds"
    if isinstance(spec, Path) or (isinstance(spec, str) and _is_file(spec.strip())):
        path = Path(spec if isinstance(spec, Path) else spec.strip())
        text = path.read_text(encoding="utf-8-sig")
        source = f"thresholds file {path}"
    elif isinstance(spec, str):
        text = spec
    else:
        values = np.asarray(spec, dtype=np.float64).ravel()
        text = None
    if text is not None:
        text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        tokens = [tok for tok in re.split(r"[;,\s\[\]()]+", text) if tok]
        try:
            values = np.array([float(tok) for tok in tokens], dtype=np.float64)
        except ValueError:
            bad = next(tok for tok in tokens if not _is_float(tok))
            hint = " (and no file by that name exists)" if source == "thresholds" and len(tokens) == 1 else ""
            raise ValueError(f"{source}: {bad!r} is not a number{hint}") from None
    if values.size == 0:
        raise ValueError(f"{source}: no threshold given")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{source}: thresholds must be finite and > 0, got {values.tolist()}")
    return np.sort(values)


def _is_file(text: str) -> bool:
    if not text or "\n" in text:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. a name too long to be a path
        return False


def _is_float(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def _check_pose(name: str, pose) -> bool:
    """True for a usable pose, False for None / non-finite; ValueError for a wrongly shaped one."""
    if pose is None:
        return False
    try:
        R, t = pose
    except (TypeError, ValueError):
        raise ValueError(f"pose of {name!r} must be (R [3,3], t [3]) or None") from None
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if R.size != 9 or t.size != 3:
        raise ValueError(f"pose of {name!r}: R must hold 9 numbers and t 3, got shapes {R.shape} and {t.shape}")
    return bool(np.all(np.isfinite(R)) and np.all(np.isfinite(t)))


def camera_centers(poses: PoseDict) -> dict[str, np.ndarray]:
    """Camera centres ``C = -R.T @ t`` (float64 ``[3]``, world units) of the registered images.

    Images mapped to ``None`` or to a non-finite pose are left out.

    Raises:
        ValueError: a pose that is not ``(R [3,3], t [3])``.
    """
    out = {}
    for name, pose in poses.items():
        if _check_pose(name, pose):
            R = np.asarray(pose[0], dtype=np.float64).reshape(3, 3)
            t = np.asarray(pose[1], dtype=np.float64).reshape(3)
            out[name] = -R.T @ t
    return out


def _umeyama_batch(src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None):
    """Batched Umeyama: src, dst ``[M, K, 3]``, w ``[M, K]`` -> s ``[M]``, R ``[M,3,3]``, t ``[M,3]``,
    valid ``[M]`` bool (False where src or dst points coincide), D ``[M, 3]`` singular values of the
    cross-covariance (rank tells collinearity)."""
    M, K, _ = src.shape
    if w is None:
        w = np.full((M, K), 1.0 / K)
    else:
        w = w / w.sum(axis=1, keepdims=True)
    mu_s = np.einsum("mk,mkd->md", w, src)
    mu_d = np.einsum("mk,mkd->md", w, dst)
    xs = src - mu_s[:, None, :]
    xd = dst - mu_d[:, None, :]
    var_s = np.einsum("mk,mkd,mkd->m", w, xs, xs)
    var_d = np.einsum("mk,mkd,mkd->m", w, xd, xd)
    cov = np.einsum("mk,mki,mkj->mij", w, xd, xs)  # Sigma_xy of Umeyama: E[(dst - mu_d)(src - mu_s)^T]
    U, D, Vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    sign[sign == 0] = 1.0
    S = np.ones((M, 3))
    S[:, 2] = sign
    R = U @ (S[:, :, None] * Vt)
    ref_s = var_s + np.einsum("md,md->m", mu_s, mu_s)
    ref_d = var_d + np.einsum("md,md->m", mu_d, mu_d)
    valid = (
        (var_s > 1e-18 * ref_s)
        & (var_d > 1e-18 * ref_d)
        & (D[:, 0] > 1e-9 * np.sqrt(var_s * var_d))
        & np.all(np.isfinite(D), axis=1)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(valid, (D * S).sum(axis=1) / np.where(valid, var_s, 1.0), np.nan)
    valid &= np.isfinite(s) & (s > 0)
    t = mu_d - s[:, None] * np.einsum("mij,mj->mi", R, mu_s)
    return s, R, t, valid, D


def estimate_similarity(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ≈ s * R @ src + t`` (Umeyama 1991, "Least-squares estimation of
    transformation parameters between two point patterns", IEEE TPAMI 13(4)).

    Minimises ``sum_i w_i |dst_i - (s R src_i + t)|^2`` with ``R`` a proper rotation (det +1; a
    reflection is never returned) and ``s > 0``.

    Args:
        src, dst: float ``[N, 3]`` corresponding points, ``N >= 3``.
        weights: optional non-negative ``[N]``; at least 3 must be positive. Uniform when None.

    Returns:
        ``(s, R, t)``: ``s`` float, ``R`` float64 ``[3, 3]``, ``t`` float64 ``[3]``.

    Raises:
        ValueError: shapes differ or are not ``[N, 3]``, ``N < 3``, non-finite values, bad weights, or a
            degenerate configuration (points coincide, or src / dst collinear so that the rotation
            is not determined).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"src and dst must both be [N, 3], got {src.shape} and {dst.shape}")
    if src.shape[0] < 3:
        raise ValueError(f"a similarity needs at least 3 point pairs, got {src.shape[0]}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("src and dst must be finite")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != src.shape[0] or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be {src.shape[0]} finite non-negative numbers")
        if np.count_nonzero(w) < 3:
            raise ValueError("at least 3 weights must be positive")
        w = w[None]
    s, R, t, valid, D = _umeyama_batch(src[None], dst[None], w)
    if not valid[0]:
        raise ValueError("degenerate point sets: the src or dst points coincide")
    if D[0, 1] <= 1e-9 * D[0, 0]:
        raise ValueError("degenerate point sets: src or dst points are collinear, the rotation is not determined")
    return float(s[0]), R[0], t[0]


def _triplets(n: int, max_iters: int, rng: np.random.Generator) -> np.ndarray:
    """Index triplets ``[M, 3]`` (intp): all of them when C(n,3) <= max_iters, else max_iters distinct ones."""
    total = math.comb(n, 3)
    if total <= _FULL_ENUM_LIMIT:
        idx = np.fromiter(
            itertools.chain.from_iterable(itertools.combinations(range(n), 3)), dtype=np.intp, count=3 * total
        ).reshape(total, 3)
        if total <= max_iters:
            return idx
        return idx[np.sort(rng.choice(total, size=max_iters, replace=False))]
    chosen = np.empty((0, 3), dtype=np.intp)
    while chosen.shape[0] < max_iters:
        draw = np.sort(rng.integers(0, n, size=(2 * max_iters, 3)), axis=1)
        draw = draw[(draw[:, 0] != draw[:, 1]) & (draw[:, 1] != draw[:, 2])]
        chosen = np.concatenate([chosen, draw])
        _, first = np.unique(chosen, axis=0, return_index=True)
        chosen = chosen[np.sort(first)]
    return chosen[:max_iters]


def _transform(s, R, t, pts):
    return s * pts @ R.T + t


def _hypotheses(pred: np.ndarray, gt: np.ndarray, rng_seed: int, max_iters: int):
    """Similarity hypotheses from triplets plus the all-camera fit: s ``[M]``, R ``[M,3,3]``, t ``[M,3]``,
    or None when every one is degenerate."""
    rng = np.random.default_rng(rng_seed)
    trip = _triplets(pred.shape[0], max_iters, rng)
    s, R, t, valid, _ = _umeyama_batch(pred[trip], gt[trip])
    s0, R0, t0, valid0, _ = _umeyama_batch(pred[None], gt[None])
    s = np.concatenate([s0, s])
    R = np.concatenate([R0, R])
    t = np.concatenate([t0, t])
    valid = np.concatenate([valid0, valid])
    if not np.any(valid):
        return None
    return s[valid], R[valid], t[valid]


def _score(pred, gt, hyp, thresholds: np.ndarray):
    """Inlier counts ``[M, T]`` (int) and inlier error sums ``[M, T]`` of every hypothesis."""
    s, R, t = hyp
    M, N, T = s.shape[0], pred.shape[0], thresholds.shape[0]
    counts = np.empty((M, T), dtype=np.int64)
    sums = np.empty((M, T))
    step = max(1, _CHUNK_ELEMS // N)
    for a in range(0, M, step):
        b = min(M, a + step)
        moved = s[a:b, None, None] * np.einsum("mij,nj->mni", R[a:b], pred) + t[a:b, None, :]
        err = np.linalg.norm(moved - gt[None], axis=2)  # [m, N]
        for q, th in enumerate(thresholds):
            inl = err < th
            counts[a:b, q] = inl.sum(axis=1)
            sums[a:b, q] = np.where(inl, err, 0.0).sum(axis=1)
    return counts, sums


def _select_and_refine(pred, gt, hyp, counts: np.ndarray, sums: np.ndarray, threshold: float):
    """Best hypothesis (most inliers, then smallest inlier error sum), refined on its inliers."""
    best = int(np.lexsort((sums, -counts))[0])
    s, R, t = float(hyp[0][best]), hyp[1][best], hyp[2][best]
    err = np.linalg.norm(_transform(s, R, t, pred) - gt, axis=1)
    inl = err < threshold
    count, total = int(inl.sum()), float(err[inl].sum())
    for _ in range(_REFINE_ROUNDS):
        if count < 3:
            break
        s2, R2, t2, valid, _ = _umeyama_batch(pred[inl][None], gt[inl][None])
        if not valid[0]:
            break
        s2, R2, t2 = float(s2[0]), R2[0], t2[0]
        err2 = np.linalg.norm(_transform(s2, R2, t2, pred) - gt, axis=1)
        inl2 = err2 < threshold
        count2, total2 = int(inl2.sum()), float(err2[inl2].sum())
        if count2 < count or (count2 == count and total2 > total):
            break
        same = np.array_equal(inl2, inl)
        s, R, t, err, inl, count, total = s2, R2, t2, err2, inl2, count2, total2
        if same:
            break
    return s, R, t, inl, err


def _check_centres(pred, gt, threshold=None):
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[1] != 3 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt centres must both be [N, 3], got {pred.shape} and {gt.shape}")
    if pred.shape[0] < 3:
        raise ValueError(f"registration needs at least 3 cameras, got {pred.shape[0]}")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(gt))):
        raise ValueError("camera centres must be finite")
    if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be finite and > 0, got {threshold}")
    return pred, gt


def register_centers(
    pred: np.ndarray,
    gt: np.ndarray,
    threshold: float,
    rng_seed: int = 0,
    max_iters: int = DEFAULT_MAX_ITERS,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Robustly register predicted camera centres onto GT centres (IMC 2024/2025 style).

    Hypotheses are Umeyama similarities of triplets of corresponding centres, all ``C(N, 3)`` triplets
    when that is at most ``max_iters``, else ``max_iters`` distinct triplets drawn with
    ``np.random.default_rng(rng_seed)`` (deterministic), plus the least-squares fit of all cameras.
    Each is scored by the number of cameras whose transformed predicted centre lies strictly within
    ``threshold`` of its GT centre, ties broken by the smaller sum of those inliers' errors. The best is
    re-estimated on its inliers, up to a few rounds while the inlier count does not drop.

    Args:
        pred: float ``[N, 3]`` predicted camera centres (reconstruction frame), ``N >= 3``.
        gt: float ``[N, 3]`` GT centres of the same cameras, same order (GT units, e.g. metres).
        threshold: inlier distance in GT units, > 0.
        rng_seed: seed of the triplet sampling.
        max_iters: number of triplet hypotheses at most.

    Returns:
        ``(s, R, t, inliers)`` with ``gt ≈ s * R @ pred + t``: ``s`` float, ``R`` float64 ``[3, 3]``,
        ``t`` float64 ``[3]``, ``inliers`` bool ``[N]`` (registered error < threshold).

    Raises:
        ValueError: bad shapes, ``N < 3``, non-finite values, ``threshold <= 0``, or no non-degenerate
            hypothesis (e.g. all predicted centres coincide).
    """
    pred, gt = _check_centres(pred, gt, threshold)
    hyp = _hypotheses(pred, gt, rng_seed, max_iters)
    if hyp is None:
        raise ValueError("cannot register: every camera triplet is degenerate (coincident centres)")
    th = np.array([float(threshold)])
    counts, sums = _score(pred, gt, hyp, th)
    s, R, t, inl, _ = _select_and_refine(pred, gt, hyp, counts[:, 0], sums[:, 0], float(threshold))
    return s, R, t, inl


# --------------------------------------------------------------------------------------------------
# Metric
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Outcome of :func:`mean_average_accuracy`.

    Attributes:
        thresholds: float64 ``[T]`` ascending, GT units.
        accuracies: float64 ``[T]``, fraction of GT cameras accurate at each threshold (registration
            redone per threshold).
        mAA: mean of ``accuracies``, in [0, 1].
        n_gt: GT images that have a GT pose (the denominator).
        n_registered: of those, images with a predicted pose.
        n_missing: ``n_gt - n_registered`` (counted as failures).
        errors: image name -> centre error (GT units) after the registration at the largest threshold;
            ``inf`` for unregistered images, or for all when fewer than 3 could be registered.
    """

    thresholds: np.ndarray
    accuracies: np.ndarray
    mAA: float
    n_gt: int
    n_registered: int
    n_missing: int
    errors: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly copy: lists and plain floats; an infinite error becomes ``None``."""
        return {
            "mAA": float(self.mAA),
            "thresholds": [float(x) for x in self.thresholds],
            "accuracies": [float(x) for x in self.accuracies],
            "n_gt": int(self.n_gt),
            "n_registered": int(self.n_registered),
            "n_missing": int(self.n_missing),
            "errors": {k: (float(v) if math.isfinite(v) else None) for k, v in self.errors.items()},
        }

    def table(self) -> str:
        """Markdown table ``threshold | accuracy`` followed by an mAA line."""
        lines = ["| threshold | accuracy |", "|---:|---:|"]
        lines += [f"| {th:g} | {acc:.4f} |" for th, acc in zip(self.thresholds, self.accuracies)]
        lines.append("")
        lines.append(
            f"**mAA = {self.mAA:.4f}** ({self.n_registered}/{self.n_gt} images registered, {self.n_missing} missing)"
        )
        return "\n".join(lines)


def mean_average_accuracy(
    gt: PoseDict,
    pred: PoseDict,
    thresholds: ThresholdSpec,
    *,
    rng_seed: int = 0,
    max_iters: int = DEFAULT_MAX_ITERS,
) -> EvalResult:
    """IMC 2024/2025 mAA of registered camera centres (Kaggle "Image Matching Challenge 2025"
    evaluation; github.com/ubc-vision/image-matching-benchmark style).

    For each threshold ``th`` the predicted centres of the GT images that have a prediction are
    registered onto their GT centres with :func:`register_centers` (``threshold=th``), and the
    accuracy is ``#{GT cameras with registered error < th} / n_gt``. Predicted images absent from
    ``gt`` are ignored; GT images that are missing from ``pred`` or unregistered (``None``) stay in the
    denominator as failures; GT images whose GT pose is ``None`` are not evaluated. With fewer than 3
    registered cameras no similarity can be estimated and every accuracy is 0 (as in IMC).

    Args:
        gt, pred: pose dictionaries ``{name: (R float [3,3], t float [3]) or None}``, world-to-camera.
        thresholds: anything :func:`read_thresholds` accepts (GT units).
        rng_seed, max_iters: triplet sampling of the registration (deterministic for a given seed).

    Returns:
        :class:`EvalResult`.

    Raises:
        ValueError: no GT image has a pose, a malformed pose, or bad thresholds.
    """
    thr = read_thresholds(thresholds)
    gt_names = sorted(n for n, p in gt.items() if _check_pose(n, p))
    if not gt_names:
        raise ValueError("the ground truth holds no image with a pose")
    gt_c = camera_centers({n: gt[n] for n in gt_names})
    reg_names = [n for n in gt_names if n in pred and _check_pose(n, pred[n])]
    pred_c = camera_centers({n: pred[n] for n in reg_names})
    n_gt, n_reg = len(gt_names), len(reg_names)

    accuracies = np.zeros(thr.shape[0])
    errors = {n: math.inf for n in gt_names}
    if n_reg >= 3:
        P = np.stack([pred_c[n] for n in reg_names])
        G = np.stack([gt_c[n] for n in reg_names])
        hyp = _hypotheses(P, G, rng_seed, max_iters)
        if hyp is not None:
            counts, sums = _score(P, G, hyp, thr)
            err = None
            for q, th in enumerate(thr):
                _, _, _, inl, err = _select_and_refine(P, G, hyp, counts[:, q], sums[:, q], float(th))
                accuracies[q] = inl.sum() / n_gt
            for n, e in zip(reg_names, err):
                errors[n] = float(e)
    return EvalResult(
        thresholds=thr,
        accuracies=accuracies,
        mAA=float(accuracies.mean()),
        n_gt=n_gt,
        n_registered=n_reg,
        n_missing=n_gt - n_reg,
        errors=errors,
    )


def evaluate_files(
    gt_csv: str | Path,
    pred_csv: str | Path,
    thresholds: ThresholdSpec,
    *,
    dataset: str | None = None,
    scene: str | None = None,
    rng_seed: int = 0,
    max_iters: int = DEFAULT_MAX_ITERS,
) -> EvalResult:
    """mAA of the poses in ``pred_csv`` against ``gt_csv`` (see :func:`read_poses_csv` for the format,
    :func:`read_thresholds` for ``thresholds``, :func:`mean_average_accuracy` for the metric).

    ``dataset`` / ``scene``, when given, select the rows of that scene in both files.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: malformed CSV (file and line named), bad thresholds, or no GT pose.
    """
    gt = read_poses_csv(gt_csv, dataset=dataset, scene=scene)
    pred = read_poses_csv(pred_csv, dataset=dataset, scene=scene)
    return mean_average_accuracy(gt, pred, thresholds, rng_seed=rng_seed, max_iters=max_iters)
