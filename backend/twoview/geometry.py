"""Two-view geometry of one image pair from its matches: robust estimation, model selection, relative pose.

Estimators (``estimator``):

- ``"poselib"`` (default): PoseLib's LO-RANSAC with non-linear refinement (Larsson and contributors,
  https://github.com/PoseLib/PoseLib; the estimator glue-factory uses for its pose AUC tables):
  ``estimate_relative_pose`` (5-point essential matrix, intrinsics known), ``estimate_fundamental`` (7-point) and
  ``estimate_homography`` (4-point).
- ``"opencv"``: OpenCV's USAC with MAGSAC++ scoring (Barath et al., CVPR 2020): ``findEssentialMat`` on points
  normalised by each camera's intrinsics, ``findFundamentalMat``, ``findHomography``; ``recoverPose`` for R, t.

Model selection follows COLMAP's two-view geometry rule (``colmap/estimators/two_view_geometry.cc``): the epipolar
model (E with intrinsics, F without) is estimated together with a homography; when the homography explains more
than :data:`MAX_H_INLIER_RATIO` of the epipolar inliers, the pair is "planar or rotation-only" and ``model`` is
``"H"``. With intrinsics, the two are told apart by the homography itself: ``K1^-1 H K0`` is a rotation (all three
singular values equal) exactly when the camera only turned; within :data:`ROTATION_ONLY_SPREAD` of each other, the
verdict is ``"rotation-only"``, else ``"planar"``.

Conventions: keypoints are (x, y) float pixels of the stored images, pixel centres at integers (the features
stage's convention); ``K`` is 3x3 in the same pixels. The relative pose maps camera 0's frame to camera 1's:
``x1 = R @ x0 + t`` (``cam1_from_cam0``), ``t`` of unit length (its scale is unknown from two views).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ESTIMATORS = ("poselib", "opencv")
MAX_H_INLIER_RATIO = 0.8  # COLMAP's TwoViewGeometryOptions.max_H_inlier_ratio
ROTATION_ONLY_SPREAD = 0.05  # largest / smallest singular value of K1^-1 H K0, minus 1
MIN_INLIERS = 15  # COLMAP's TwoViewGeometryOptions.min_num_inliers: fewer and the pair is not verified
CONFIDENCE = 0.9999
MAX_ITERATIONS = 10000


@dataclass
class TwoViewGeometry:
    """The verified two-view geometry of one pair.

    ``model``: ``"E"``, ``"F"`` or ``"H"`` (the selected model; ``""`` when none was found). ``matrix``: that model,
    float64 [3, 3] (``None`` when none). ``inliers``: bool [M] over the matches, the selected model's inliers.
    ``E``/``F``/``H``: each model estimated (or ``None``). ``num_inliers``: per model name, its inlier count.
    ``verdict``: ``"general"`` (a 3D scene seen from two places), ``"planar"``, ``"rotation-only"``,
    ``"planar or rotation-only"`` (no intrinsics to tell them apart) or ``"not verified"`` (fewer than
    :data:`MIN_INLIERS` inliers). ``R`` float64 [3, 3] and ``t`` float64 [3] (unit length): ``cam1_from_cam0``
    from the essential matrix, ``None`` without intrinsics. ``h_inlier_ratio``: homography inliers / epipolar
    inliers. ``threshold_px``: the RANSAC threshold used. ``estimator``: ``"poselib"`` or ``"opencv"``.
    """

    model: str
    matrix: np.ndarray | None
    inliers: np.ndarray
    verdict: str
    estimator: str
    threshold_px: float
    E: np.ndarray | None = None
    F: np.ndarray | None = None
    H: np.ndarray | None = None
    R: np.ndarray | None = None
    t: np.ndarray | None = None
    num_inliers: dict[str, int] = field(default_factory=dict)
    h_inlier_ratio: float = 0.0

    @property
    def inlier_ratio(self) -> float:
        """Inliers of the selected model / matches (0 when there are no matches)."""
        return float(self.inliers.mean()) if len(self.inliers) else 0.0

    def to_dict(self) -> dict:
        """JSON-ready summary (lists of floats; no per-match arrays)."""
        def mat(x):
            return None if x is None else np.asarray(x, float).round(8).tolist()
        return {"model": self.model, "verdict": self.verdict, "estimator": self.estimator,
                "inliers": int(self.inliers.sum()), "inlier_ratio": round(self.inlier_ratio, 4),
                "num_inliers": dict(self.num_inliers), "h_inlier_ratio": round(self.h_inlier_ratio, 4),
                "threshold_px": round(float(self.threshold_px), 4), "matrix": mat(self.matrix),
                "R": mat(self.R), "t": mat(self.t)}


def skew(v: np.ndarray) -> np.ndarray:
    """The cross-product matrix [3, 3] of a 3-vector: ``skew(a) @ b == np.cross(a, b)``."""
    x, y, z = np.asarray(v, float).reshape(3)
    return np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]], float)


def fundamental_from_pose(R: np.ndarray, t: np.ndarray, K0: np.ndarray, K1: np.ndarray) -> np.ndarray:
    """F [3, 3] with ``x1^T F x0 = 0`` for the pose ``x1 = R x0 + t`` and intrinsics ``K0``, ``K1`` (pixels)."""
    E = skew(t) @ np.asarray(R, float)
    return np.linalg.inv(np.asarray(K1, float)).T @ E @ np.linalg.inv(np.asarray(K0, float))


def _camera(K: np.ndarray) -> dict:
    K = np.asarray(K, float)
    return {"model": "PINHOLE", "width": int(round(2 * K[0, 2])) or 1, "height": int(round(2 * K[1, 2])) or 1,
            "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}


def _mask(info: dict, n: int) -> np.ndarray:
    m = np.asarray(info.get("inliers", []), bool).reshape(-1)
    return m if len(m) == n else np.zeros(n, bool)


def _poselib(p0, p1, K0, K1, threshold):
    import poselib

    n = len(p0)
    out: dict = {}
    ransac = {"max_epipolar_error": float(threshold), "max_iterations": MAX_ITERATIONS,
              "success_prob": CONFIDENCE, "seed": 0}
    if K0 is not None and K1 is not None:
        pose, info = poselib.estimate_relative_pose(p0, p1, _camera(K0), _camera(K1), ransac)
        mask = _mask(info, n)
        if mask.sum() >= 5:
            R, t = np.asarray(pose.R, float), np.asarray(pose.t, float)
            t = t / max(np.linalg.norm(t), 1e-12)
            out["E"] = (skew(t) @ R, mask, R, t)
    else:
        F, info = poselib.estimate_fundamental(p0, p1, ransac)
        mask = _mask(info, n)
        if mask.sum() >= 7:
            out["F"] = (np.asarray(F, float), mask)
    H, info = poselib.estimate_homography(p0, p1, {**ransac, "max_reproj_error": float(threshold)})
    mask = _mask(info, n)
    if mask.sum() >= 4:
        out["H"] = (np.asarray(H, float), mask)
    return out


def _opencv(p0, p1, K0, K1, threshold):
    import cv2

    out: dict = {}
    if K0 is not None and K1 is not None:
        K0, K1 = np.asarray(K0, float), np.asarray(K1, float)
        q0 = cv2.undistortPoints(p0.reshape(-1, 1, 2), K0, None).reshape(-1, 2)
        q1 = cv2.undistortPoints(p1.reshape(-1, 1, 2), K1, None).reshape(-1, 2)
        f = (K0[0, 0] + K0[1, 1] + K1[0, 0] + K1[1, 1]) / 4
        try:
            E, mask = cv2.findEssentialMat(q0, q1, np.eye(3), cv2.USAC_MAGSAC, CONFIDENCE, threshold / f,
                                           MAX_ITERATIONS)
        except cv2.error:
            E, mask = None, None
        if E is not None and mask is not None and E.shape == (3, 3):
            mask = mask.reshape(-1).astype(bool)
            _, R, t, pmask = cv2.recoverPose(E, q0, q1, np.eye(3), mask=mask.astype(np.uint8).copy())
            t = t.reshape(3) / max(np.linalg.norm(t), 1e-12)
            if mask.sum() >= 5:
                out["E"] = (np.asarray(E, float), mask, np.asarray(R, float), t)
    else:
        try:
            F, mask = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, threshold, CONFIDENCE, MAX_ITERATIONS)
        except cv2.error:
            F, mask = None, None
        if F is not None and mask is not None and F.shape == (3, 3):
            mask = mask.reshape(-1).astype(bool)
            if mask.sum() >= 7:
                out["F"] = (np.asarray(F, float), mask)
    try:
        H, mask = cv2.findHomography(p0, p1, cv2.USAC_MAGSAC, threshold, maxIters=MAX_ITERATIONS,
                                     confidence=CONFIDENCE)
    except cv2.error:
        H, mask = None, None
    if H is not None and mask is not None:
        mask = mask.reshape(-1).astype(bool)
        if mask.sum() >= 4:
            out["H"] = (np.asarray(H, float), mask)
    return out


def rotation_only(H: np.ndarray, K0: np.ndarray, K1: np.ndarray) -> bool:
    """Whether the homography ``H`` (x1 ~ H x0, pixels) is a pure rotation ``K1 R K0^-1``: the singular values of
    ``K1^-1 H K0`` agree within :data:`ROTATION_ONLY_SPREAD`."""
    s = np.linalg.svd(np.linalg.inv(np.asarray(K1, float)) @ np.asarray(H, float) @ np.asarray(K0, float),
                      compute_uv=False)
    return bool(s[-1] > 0 and s[0] / s[-1] - 1 <= ROTATION_ONLY_SPREAD)


def estimate_two_view(kpts0: np.ndarray, kpts1: np.ndarray, K0: np.ndarray | None = None,
                      K1: np.ndarray | None = None, threshold_px: float = 1.0,
                      estimator: str = "poselib") -> TwoViewGeometry:
    """Verify matched points and estimate the pair's two-view geometry (module doc: models, selection rule).

    Args:
        kpts0, kpts1: float [M, 2] matched keypoints (row i of each is one match), pixels of image 0 and image 1.
        K0, K1: intrinsics float [3, 3] (pixels), both or neither. With them the essential matrix and the relative
            pose are estimated; without them the fundamental matrix (no pose).
        threshold_px: RANSAC inlier threshold in pixels (epipolar distance for E/F, transfer error for H).
        estimator: ``"poselib"`` or ``"opencv"`` (:data:`ESTIMATORS`).

    Returns:
        :class:`TwoViewGeometry`; ``model`` is ``""`` and ``verdict`` ``"not verified"`` when no model reaches
        :data:`MIN_INLIERS` inliers (fewer than 8 matches always gives that).

    Raises:
        ValueError: an unknown estimator, arrays of different or wrong shapes, only one of K0 / K1, or a
            non-positive threshold.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    p0 = np.ascontiguousarray(np.asarray(kpts0, np.float64).reshape(-1, 2))
    p1 = np.ascontiguousarray(np.asarray(kpts1, np.float64).reshape(-1, 2))
    if len(p0) != len(p1):
        raise ValueError(f"kpts0 and kpts1 must hold the same number of matched points ({len(p0)} != {len(p1)})")
    if (K0 is None) != (K1 is None):
        raise ValueError("give the intrinsics of both images or of neither")
    if not threshold_px > 0:
        raise ValueError("threshold_px must be positive")
    n = len(p0)
    none = TwoViewGeometry("", None, np.zeros(n, bool), "not verified", estimator, float(threshold_px))
    if n < 8:
        return none
    est = (_poselib if estimator == "poselib" else _opencv)(p0, p1, K0, K1, float(threshold_px))
    g = none
    g.num_inliers = {k: int(v[1].sum()) for k, v in est.items()}
    epi = "E" if "E" in est else ("F" if "F" in est else "")
    if "E" in est:
        g.E, _, g.R, g.t = est["E"]
        g.F = fundamental_from_pose(g.R, g.t, K0, K1)
    if "F" in est:
        g.F = est["F"][0]
    if "H" in est:
        g.H = est["H"][0]
    n_epi = g.num_inliers.get(epi, 0)
    n_h = g.num_inliers.get("H", 0)
    g.h_inlier_ratio = n_h / n_epi if n_epi else (float("inf") if n_h else 0.0)
    if max(n_epi, n_h) < MIN_INLIERS:
        return g
    if epi and g.h_inlier_ratio <= MAX_H_INLIER_RATIO:
        g.model, g.matrix, g.inliers, g.verdict = epi, est[epi][0], est[epi][1], "general"
    else:
        g.model, g.matrix, g.inliers = "H", est["H"][0], est["H"][1]
        if K0 is not None:
            g.verdict = "rotation-only" if rotation_only(g.H, K0, K1) else "planar"
        else:
            g.verdict = "planar or rotation-only"
    return g
