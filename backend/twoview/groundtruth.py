"""Ground truth for one image pair, and the errors of an estimate against it.

Sources of a pair's ground truth (:class:`PairGT`):

- an IMC pose CSV (``image_name,rotation_matrix,translation_vector,calibration_matrix``; R row-major and t
  ``;``-separated, world-to-camera, K row-major in pixels), read by :func:`read_gt_csv`; the relative pose of
  a pair is ``R = R1 R0^T``, ``t = t1 - R t0`` (:func:`pair_from_poses`);
- a pair file in the layout of the SuperGlue evaluation (``pairs_with_gt.txt`` of
  magicleap/SuperGluePretrainedNetwork, used for ScanNet-1500 / MegaDepth-1500):
  ``name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)``, row-major, ``x1 = R x0 + t`` (:func:`read_pairs_file`).

Errors (:func:`pose_errors`, :func:`pose_auc`) follow that evaluation (SuperGlue, LoFTR, LightGlue, glue-factory):
the rotation error is the angle of ``R_est^T R_gt``; the translation error the angle between the translation
directions, folded to [0, 90] degrees (an essential matrix fixes t up to sign), and 0 when the ground-truth
baseline is shorter than :data:`MIN_BASELINE` (no direction to measure); the pose error is the larger of the two;
pose AUC at 5/10/20 degrees is the area under the recall-against-error curve up to each threshold.

Checks (:func:`check_pair_gt`, :func:`parse_typed_gt`, :func:`parse_intrinsics`): every source of ground truth and
every intrinsics a user gives are checked before any matching starts: finite numbers, R a rotation (orthonormal,
determinant 1, within :data:`ROTATION_TOL`), focal lengths positive, K's entries at most :data:`MAX_PIXELS` in
magnitude and its last row ``0, 0, 1``, t's entries at most :data:`MAX_TRANSLATION`. The Two-view page, the CLI's
``twoview`` and the pair readers use them; the messages say what to type instead.

Match precision (:func:`epipolar_distance`, :func:`match_precision`): a match is correct when its symmetric
epipolar distance under the ground-truth fundamental matrix is below a threshold in pixels (default
:data:`PRECISION_PX`). The distance is ``sqrt(d0^2 + d1^2)``, ``d1`` the distance in pixels of ``x1`` from the
epipolar line ``F x0`` and ``d0`` that of ``x0`` from ``F^T x1``. It cannot see a match that slides along its
epipolar line, so it is an upper bound on the true precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..evaluation.imc_metric import read_pose_table
from ..utils.text import parse_numbers
from .geometry import fundamental_from_pose

PRECISION_PX = 4.0
MIN_BASELINE = 1e-6
AUC_THRESHOLDS = (5.0, 10.0, 20.0)
ROTATION_TOL = 1e-2  # max |R R^T - I| and |det R - 1| of a rotation typed in or read (3 decimals pass)
MAX_PIXELS = 1e6  # largest |entry| of K in pixels (a focal length or principal point beyond is no camera)
MAX_TRANSLATION = 1e9  # largest |entry| of t in scene units (UTM metres stay below)
K_EXAMPLE = "1200, 1200, 640, 480"


@dataclass
class PairGT:
    """Ground truth of one pair: ``R`` float64 [3, 3], ``t`` float64 [3] (``cam1_from_cam0``, ``x1 = R x0 + t``,
    t in the scene's units), intrinsics ``K0``, ``K1`` float64 [3, 3] in pixels of the stored images (``None``
    where the source has none), and ``source`` (a short text for messages)."""

    R: np.ndarray
    t: np.ndarray
    K0: np.ndarray | None
    K1: np.ndarray | None
    source: str = ""

    def inverse(self) -> "PairGT":
        """The same pair seen from image 1 to image 0 (``x0 = R^T x1 - R^T t``, K swapped)."""
        return PairGT(self.R.T, -self.R.T @ self.t, self.K1, self.K0, self.source)


def check_rotation(R: np.ndarray, what: str = "R") -> np.ndarray:
    """``R`` as float64 [3, 3] when it is a rotation: finite, ``|R R^T - I| <= ROTATION_TOL`` entry-wise and
    ``|det R - 1| <= ROTATION_TOL``.

    Raises:
        ValueError: not 9 finite numbers, or not a rotation (the message starts with ``what``).
    """
    R = np.asarray(R, np.float64)
    if R.size != 9 or not np.all(np.isfinite(R)):
        raise ValueError(f"{what} needs 9 finite numbers (a rotation matrix row-major, e.g. 1,0,0, 0,1,0, 0,0,1), "
                         "not nan or inf")
    R = R.reshape(3, 3)
    ok = np.abs(R).max() <= 1 + ROTATION_TOL  # first: 1e308 entries would make the products below inf - inf
    if not (ok and abs(np.linalg.det(R) - 1) <= ROTATION_TOL and np.abs(R @ R.T - np.eye(3)).max() <= ROTATION_TOL):
        raise ValueError(f"{what} is not a rotation matrix (orthonormal rows, determinant 1, to {ROTATION_TOL:g}); "
                         "check the order (row-major) and give at least 3 decimals, e.g. 1,0,0, 0,1,0, 0,0,1")
    return R


def check_translation(t: np.ndarray, what: str = "t") -> np.ndarray:
    """``t`` as float64 [3] when it holds 3 finite numbers of magnitude at most :data:`MAX_TRANSLATION`.

    Raises:
        ValueError: otherwise (the message starts with ``what``).
    """
    t = np.asarray(t, np.float64).reshape(-1)
    if t.size != 3 or not np.all(np.isfinite(t)) or np.abs(t).max() > MAX_TRANSLATION:
        raise ValueError(f"{what} needs 3 finite numbers of magnitude at most {MAX_TRANSLATION:g} (the translation "
                         "x1 = R x0 + t in any unit, e.g. 1, 0, 0), not nan or inf")
    return t


def check_intrinsics(K: np.ndarray, what: str = "K") -> np.ndarray:
    """``K`` as float64 [3, 3] when it is a pinhole matrix in pixels: finite, focal lengths ``K[0, 0]``,
    ``K[1, 1]`` > 0, every entry at most :data:`MAX_PIXELS` in magnitude, last row ``0, 0, 1``.

    Raises:
        ValueError: otherwise (the message starts with ``what`` and gives an example to type).
    """
    K = np.asarray(K, np.float64)
    hint = f"give fx, fy, cx, cy in pixels, e.g. {K_EXAMPLE}"
    if K.size != 9 or not np.all(np.isfinite(K)):
        raise ValueError(f"{what} needs finite numbers, not nan or inf; {hint}")
    K = K.reshape(3, 3)
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"{what}: the focal lengths fx, fy must be positive (got {K[0, 0]:g}, {K[1, 1]:g}); {hint}")
    if np.abs(K).max() > MAX_PIXELS:
        raise ValueError(f"{what}: values above {MAX_PIXELS:g} px are not a camera's (got {np.abs(K).max():g}); "
                         f"{hint}")
    if np.abs(K[2] - [0, 0, 1]).max() > 1e-9:
        raise ValueError(f"{what}: the last row of K must be 0, 0, 1; {hint}")
    return K


def check_pair_gt(gt: PairGT) -> PairGT:
    """``gt`` when R is a rotation, t finite and both K (where given) pinhole matrices (the checks above); the
    messages start with ``gt.source``.

    Raises:
        ValueError: the first problem found.
    """
    at = f"{gt.source}: " if gt.source else ""
    R = check_rotation(gt.R, f"{at}R")
    t = check_translation(gt.t, f"{at}t")
    K0 = None if gt.K0 is None else check_intrinsics(gt.K0, f"{at}K0")
    K1 = None if gt.K1 is None else check_intrinsics(gt.K1, f"{at}K1")
    return PairGT(R, t, K0, K1, gt.source)


def _typed(text: str, sizes: tuple[int, ...], what: str, example: str) -> np.ndarray:
    try:
        v = parse_numbers(text, what)
    except ValueError:
        v = None
    if v is None or len(v) not in sizes:
        got = "" if v is None else f" (got {len(v)})"
        n = " or ".join(str(k) for k in sizes)
        raise ValueError(f"{what}: type {n} numbers separated by commas{got}, e.g. {example}")
    return v


def parse_intrinsics(text: str, what: str = "K") -> np.ndarray:
    """Checked intrinsics float64 [3, 3] (pixels) from typed text: ``fx, fy, cx, cy`` or the 9 numbers of K
    row-major, separated by commas, ``;`` or spaces.

    Raises:
        ValueError: not 4 or 9 numbers, or not a pinhole matrix (:func:`check_intrinsics`); the message says what
            to type ('fx,fy,cx,cy' and an example).
    """
    v = _typed(text, (4, 9), f"{what} (fx,fy,cx,cy)", K_EXAMPLE)
    K = np.array([[v[0], 0, v[2]], [0, v[1], v[3]], [0, 0, 1]], np.float64) if v.size == 4 else v.reshape(3, 3)
    return check_intrinsics(K, what)


def parse_typed_gt(k0: str, k1: str, r: str, t: str) -> PairGT:
    """Checked :class:`PairGT` (source "typed in") from typed text: ``k0``, ``k1`` as :func:`parse_intrinsics`,
    ``r`` 9 numbers row-major (``x1 = R x0 + t``), ``t`` 3 numbers.

    Raises:
        ValueError: a field that is not numbers, or fails :func:`check_pair_gt`; the message names the field and
            says what to type.
    """
    R = _typed(r, (9,), "R", "1,0,0, 0,1,0, 0,0,1 (row-major)")
    tt = _typed(t, (3,), "t", "1, 0, 0")
    gt = check_pair_gt(PairGT(R.reshape(3, 3), tt, parse_intrinsics(k0, "K0"), parse_intrinsics(k1, "K1")))
    gt.source = "typed in"
    return gt


def read_gt_csv(path: str | Path, label: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray,
                                                                                np.ndarray | None]]:
    """Per image name: ``(R [3, 3], t [3], K [3, 3] or None)`` from an IMC pose CSV (world-to-camera).

    Args:
        path: the CSV (columns ``image_name`` or ``image``, ``rotation_matrix``, ``translation_vector``, optional
            ``calibration_matrix``).
        label: how messages name the file (default its file name; the app passes "the uploaded CSV").

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column or a malformed row: not numbers, R not a rotation, K not a pinhole matrix
            (:func:`check_rotation`, :func:`check_translation`, :func:`check_intrinsics`); the message names the line
            and what to fix.
    """
    out = {}
    for row in read_pose_table(path, label=label or Path(path).name, ground_truth=True):
        if row.R is None:  # an IMC 2025 outlier image: no pose
            continue
        at = f"{label or Path(path).name}:{row.line}"
        R = check_rotation(row.R, f"{at}: rotation_matrix")
        t = check_translation(row.t, f"{at}: translation_vector")
        K = None if row.K is None else check_intrinsics(row.K, f"{at}: calibration_matrix")
        out[row.image] = (R, t, K)
    return out


def pair_from_poses(pose0: tuple, pose1: tuple, source: str = "") -> PairGT:
    """:class:`PairGT` of two world-to-camera poses ``(R [3, 3], t [3], K or None)``."""
    R0, t0, K0 = pose0
    R1, t1, K1 = pose1
    R = np.asarray(R1, float) @ np.asarray(R0, float).T
    return PairGT(R, np.asarray(t1, float) - R @ np.asarray(t0, float), K0, K1, source)


def read_pairs_file(path: str | Path, label: str | None = None) -> dict[tuple[str, str], PairGT]:
    """``{(name0, name1): PairGT}`` from a SuperGlue-style pair file (module doc for the layout). Lines with
    only two names (no ground truth) and blank lines are skipped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line with another number of fields than 2 or 38, fields that are not numbers, or ground
            truth that fails :func:`check_pair_gt` (the message names the line).
    """
    path = Path(path)
    where = label or path.name
    out = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if len(parts) in (0, 2) or line.lstrip().startswith("#"):
            continue
        if len(parts) != 38:
            raise ValueError(f"{where} line {i}: expected 38 fields (name0 name1 rot0 rot1 K0(9) K1(9) "
                             f"T_0to1(16)), found {len(parts)}")
        try:
            v = np.array([float(x) for x in parts[2:]], float)
        except ValueError:
            raise ValueError(f"{where} line {i}: fields after the two names must be numbers") from None
        if v[0] != 0 or v[1] != 0:
            raise ValueError(f"{where} line {i}: rotation flags other than 0 are not supported; give the images "
                             "as stored and flags 0")
        T = v[20:36].reshape(4, 4)
        out[(parts[0], parts[1])] = check_pair_gt(PairGT(T[:3, :3], T[:3, 3], v[2:11].reshape(3, 3),
                                                         v[11:20].reshape(3, 3), f"{where} line {i}"))
    return out


def find_pair(pairs: dict[tuple[str, str], PairGT], name0: str, name1: str) -> PairGT | None:
    """The ground truth of ``(name0, name1)`` from :func:`read_pairs_file`'s dict, inverted when the file lists the
    pair the other way round; ``None`` when absent."""
    if (name0, name1) in pairs:
        return pairs[(name0, name1)]
    if (name1, name0) in pairs:
        return pairs[(name1, name0)].inverse()
    return None


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in degrees between two vectors (0 when either is zero)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return 0.0
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))))


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle in degrees of the rotation ``R_est^T R_gt``."""
    c = (np.trace(np.asarray(R_est, float).T @ np.asarray(R_gt, float)) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def pose_errors(R_est: np.ndarray | None, t_est: np.ndarray | None, gt: PairGT) -> tuple[float, float]:
    """``(rotation error, translation-direction error)`` in degrees (module doc); ``(inf, inf)`` when there is
    no estimate (a failed pair counts as an error above every threshold, as in the SuperGlue evaluation)."""
    if R_est is None or t_est is None:
        return float("inf"), float("inf")
    r = rotation_error_deg(R_est, gt.R)
    if np.linalg.norm(gt.t) < MIN_BASELINE:
        return r, 0.0
    e = angle_deg(np.asarray(t_est, float), gt.t)
    return r, min(e, 180.0 - e)


def pose_auc(errors: list[float] | np.ndarray, thresholds=AUC_THRESHOLDS) -> list[float]:
    """Area under the cumulative recall of ``errors`` (degrees, ``inf`` for failures) up to each threshold,
    normalised to [0, 1] (the ``pose_auc`` of the SuperGlue evaluation)."""
    e = np.sort(np.asarray(errors, float))
    if not len(e):
        return [0.0 for _ in thresholds]
    recall = (np.arange(len(e)) + 1) / len(e)
    e = np.r_[0.0, e]
    recall = np.r_[0.0, recall]
    out = []
    for th in thresholds:
        last = int(np.searchsorted(e, th))
        r = np.r_[recall[:last], recall[last - 1]]
        x = np.r_[e[:last], th]
        out.append(float(np.trapezoid(r, x) / th))
    return out


def epipolar_distance(kpts0: np.ndarray, kpts1: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance float64 [M] in pixels (module doc) of matched points ``kpts0``, ``kpts1``
    float [M, 2] under ``F`` [3, 3] (``x1^T F x0 = 0``)."""
    p0 = np.c_[np.asarray(kpts0, float).reshape(-1, 2), np.ones(len(kpts0))]
    p1 = np.c_[np.asarray(kpts1, float).reshape(-1, 2), np.ones(len(kpts1))]
    l1 = p0 @ np.asarray(F, float).T  # lines in image 1
    l0 = p1 @ np.asarray(F, float)  # lines in image 0
    num = np.abs(np.sum(p1 * l1, axis=1))
    d1 = num / np.maximum(np.hypot(l1[:, 0], l1[:, 1]), 1e-12)
    d0 = num / np.maximum(np.hypot(l0[:, 0], l0[:, 1]), 1e-12)
    return np.sqrt(d0 ** 2 + d1 ** 2)


def match_precision(kpts0: np.ndarray, kpts1: np.ndarray, gt: PairGT,
                    threshold_px: float = PRECISION_PX) -> tuple[float, np.ndarray]:
    """``(precision, correct bool [M])`` of matched points under the ground truth (module doc). Precision is
    NaN when there are no matches.

    Raises:
        ValueError: the ground truth has no intrinsics (an epipolar distance in pixels needs them).
    """
    if gt.K0 is None or gt.K1 is None:
        raise ValueError("the ground truth has no intrinsics (calibration_matrix); match precision needs them")
    F = fundamental_from_pose(gt.R, gt.t, gt.K0, gt.K1)
    correct = epipolar_distance(kpts0, kpts1, F) < threshold_px
    return (float(correct.mean()) if len(correct) else float("nan")), correct
