"""Pose accuracy of a reconstruction: the official Image Matching Challenge 2025 score.

This is our own implementation of the metric of the Kaggle "Image Matching Challenge 2025" (the organisers'
``metric.py`` in ``imc25-utils``, parameters ``skip_top_thresholds=2, to_dec=3, inl_cf=0, strict_cf=-1``), checked
against reference scores of the official code (``../shared/data/_metric_fixtures``) to 1e-6. It stays one module
(over the ~500 lines a module here aims at) on purpose: it follows the organisers' single ``metric.py`` section by
section, so that a change upstream can be compared with this file side by side.

One scene
---------
A reconstruction lives in an arbitrary similarity frame, so its camera centres ``C = -R.T @ t`` are registered onto
the ground-truth (GT) centres, once per distance threshold ``th`` (GT units, usually metres):

1. every triplet of cameras with a finite predicted centre (all ``C(n, 3)``, none sampled) gives a similarity
   transform by Horn's closed form (unit quaternions, Horn 1987, scale = ratio of the RMS deviations from the
   centroids); its inliers at a threshold are the cameras whose transformed centre lies closer than ``th``;
2. every inlier set with more than 2 cameras is refined: one similarity fitted on all its cameras (Kabsch SVD with
   the same scale rule), whose inliers are counted again at every threshold;
3. per threshold the refined model with the most inliers wins; ties go to the smaller sum of squared centre errors
   over all cameras, then to the first found.

With ``k_th`` inliers at threshold ``th`` and ``m`` GT cameras in the scene, the accuracy at ``th`` is
``max(0, k_th - 3) / (m - 3)`` (any triplet registers three cameras for free), and the mAA is the mean over the
thresholds after skipping the two tightest (the registration heuristics of earlier years made them unreliable).
Unregistered and missing images count as failures (they stay in ``m``).

Mixed datasets (IMC 2025)
-------------------------
A dataset mixes GT scenes and ``outliers``; a submission assigns each image to a cluster (any name) or to
``outliers``. Each GT scene is matched to the submitted cluster that shares most of its images (mAA breaks ties,
then the cluster listed first); ``clusterness`` = images shared with the chosen clusters / images in the chosen
clusters (a precision), the dataset's mAA = summed free-camera-corrected inliers / summed ``lt * (m - 3)`` (a
recall), and its score is their harmonic mean. Overall figures are the means over datasets.

A second, differently named figure, ``accuracy over all thresholds`` (``accuracy_all_thresholds``), is the mean
over *all* thresholds of registered-within-threshold cameras / GT cameras, with no free cameras subtracted (what
this product called mAA before it implemented the official metric). It is never called mAA.

Conventions
-----------
* Poses are world-to-camera (``cam_from_world``): ``x_cam = R @ X + t`` with ``R`` float64 ``[3, 3]`` and ``t``
  float64 ``[3]``; the camera centre is ``C = -R.T @ t``.
* Pose CSV files (all read by :func:`read_pose_table`): our ``poses.csv`` and IMC training GT
  (``image_name,rotation_matrix,translation_vector[,calibration_matrix]``), IMC 2024 submissions
  (``image_path,dataset,scene,rotation_matrix,translation_vector``; the basename of ``image_path`` is taken) and
  IMC 2025 submissions / GT (``[image_id,]dataset,scene,image,rotation_matrix,translation_vector``). R is 9 numbers
  row-major, t 3 numbers, separated by ``;``; an empty or NaN field means "not registered".
* Ground truth is read strictly (``ground_truth=True``): every row needs a finite pose, R a rotation within
  :data:`GT_ROTATION_TOL`, t's entries at most :data:`GT_MAX_TRANSLATION`, except rows of the scene ``outliers``
  (IMC 2025 gives them ``nan``). A GT with ``nan`` or ``1e308`` poses would otherwise score "0 registered".
* At least :data:`MIN_THRESHOLDS` thresholds: the metric skips the two tightest.

Speed (2 CPU cores): a 50-camera scene takes 0.1-0.8 s; the triplet enumeration is vectorised and streamed in
blocks, so memory stays bounded. Up to :data:`MAX_TRIPLETS` triplets (122 cameras) every triplet is tried; above,
a fixed-seed sample of that many is (``SceneScore.exhaustive`` False): 500 cameras take about 30 s.

Everything here is pure numpy; nothing imports streamlit.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

from ..utils.text import parse_numbers

Pose = tuple[np.ndarray, np.ndarray]
PoseDict = Mapping[str, Union[Pose, None]]
ThresholdSpec = Union[str, Path, Sequence[float], np.ndarray, float]

SKIP_TOP_THRESHOLDS = 2  # the official default: the two tightest thresholds do not count
MIN_THRESHOLDS = SKIP_TOP_THRESHOLDS + 1  # fewer leave no threshold to average: the mAA would be 0 whatever the poses
GT_ROTATION_TOL = 1e-2  # max |R R^T - I| and |det R - 1| of a ground-truth rotation (3 decimals pass)
GT_MAX_TRANSLATION = 1e9  # largest |t| entry of a ground-truth pose (GT units; UTM metres stay below)
TO_DEC = 3  # cameras any triplet registers for free, subtracted per threshold
OUTLIERS = "outliers"  # the scene name of outlier images (GT) and of images called outliers (submission)
DEFAULT_DATASET = "dataset"
DEFAULT_SCENE = "scene"

NAME_COLUMNS = ("image_name", "image", "image_path")  # by priority; image_path is reduced to its basename
ROTATION_COLUMN = "rotation_matrix"
TRANSLATION_COLUMN = "translation_vector"
CALIBRATION_COLUMN = "calibration_matrix"  # optional: K row-major, pixels

_TRIPLET_CHUNK = 4096  # triplets per vectorised block, scaled by 4 M / cameras (bounds memory)
_REFINE_CHUNK = 2048  # refined inlier sets per vectorised block
_RESCORE = 4  # best candidates per threshold and block re-scored with direct errors
_SEEN_LIMIT = 2_000_000  # inlier sets remembered to skip repeated refinements (a speed-up only)


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


@dataclass
class PoseRow:
    """One row of a pose file: ``R`` float64 [3, 3] and ``t`` float64 [3] world-to-camera, or None (unregistered).
    ``dataset`` / ``scene`` are None when the file has no such column; ``K`` float64 [3, 3] (pixels) is the row's
    ``calibration_matrix`` when the file has that column and the field holds 9 finite numbers, else None."""

    image: str
    R: np.ndarray | None
    t: np.ndarray | None
    dataset: str | None = None
    scene: str | None = None
    line: int = 0
    K: np.ndarray | None = None

    @property
    def center(self) -> np.ndarray:
        """Camera centre ``-R.T @ t`` float64 [3]; NaN when unregistered."""
        if self.R is None or self.t is None:
            return np.full(3, np.nan)
        return -self.R.T @ self.t


def _parse_vector(text: str, expected: int, what: str, where: str) -> np.ndarray | None:
    """Numbers of one pose field; None when the field says "not registered" (empty, NaN or infinite)."""
    values = parse_numbers(text, what, where)
    if not values.size or np.any(np.isnan(values)):
        return None
    if values.size != expected:
        raise ValueError(f"{where}: {what} has {values.size} numbers, expected {expected} (got {text.strip()[:80]!r})")
    if not np.all(np.isfinite(values)):
        return None
    return values


def _gt_pose(rot: str, trans: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The pose of a ground-truth row, strictly: ``R`` float64 [3, 3] a rotation within :data:`GT_ROTATION_TOL`,
    ``t`` float64 [3] finite with entries at most :data:`GT_MAX_TRANSLATION`.

    Raises:
        ValueError: an empty, ``nan`` or ``inf`` field, an absurd value, or R not a rotation; the message starts with
            ``where`` (file and line) and says what the row needs.
    """
    out = []
    for text, n, what in ((rot, 9, ROTATION_COLUMN), (trans, 3, TRANSLATION_COLUMN)):
        v = parse_numbers(text, what, where)
        if v.size != n or not np.all(np.isfinite(v)):
            raise ValueError(f"{where}: {what} {text[:80]!r} is not {n} finite numbers: a ground-truth pose needs "
                             "them on every line (empty, nan or inf mean 'not registered', which only images of the "
                             f"scene '{OUTLIERS}' may be)")
        out.append(v)
    R, t = out[0].reshape(3, 3), out[1]
    if np.abs(t).max() > GT_MAX_TRANSLATION:
        raise ValueError(f"{where}: {TRANSLATION_COLUMN} has a value of magnitude {np.abs(t).max():.3g}, above "
                         f"{GT_MAX_TRANSLATION:g}: not a camera position; check the file (units, separators)")
    ok = np.abs(R).max() <= 1 + GT_ROTATION_TOL  # first: 1e308 entries would make the products below inf - inf
    if not (ok and abs(np.linalg.det(R) - 1) <= GT_ROTATION_TOL
            and np.abs(R @ R.T - np.eye(3)).max() <= GT_ROTATION_TOL):
        raise ValueError(f"{where}: {ROTATION_COLUMN} is not a rotation (orthonormal rows, determinant 1, to "
                         f"{GT_ROTATION_TOL:g}); give 9 numbers row-major, world-to-camera")
    return R, t


def _display_name(path: Path, label: str | None) -> str:
    return label if label is not None else str(path)


def read_pose_table(path: str | Path, *, label: str | None = None, ground_truth: bool = False) -> list[PoseRow]:
    """Read any of the pose CSV layouts this product meets (see the module docstring).

    Args:
        path: CSV file.
        label: how messages name the file (default: its path; the app passes "the uploaded CSV" so that no server
            path reaches a user).
        ground_truth: read strictly (:func:`_gt_pose`): every row outside the scene ``outliers`` needs a finite
            pose with R a rotation; False (predictions): empty, ``nan`` or ``inf`` fields mean "not registered".

    Returns:
        The rows in file order. ``dataset``/``scene`` are None when the file lacks those columns.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty file, a required column missing, a malformed row (wrong number of fields or of numbers,
            non-numeric value, empty image name, a field too large for a pose CSV), an image listed twice in one
            dataset, or with ``ground_truth`` a pose that is missing, not finite, absurd or not a rotation; the message
            names the file and the 1-based line number.
    """
    path = Path(path)
    name = _display_name(path, label)
    rows: list[PoseRow] = []
    seen: dict[tuple, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = None
            for row in reader:
                if any(cell.strip() for cell in row):
                    header = [cell.strip().lower() for cell in row]
                    break
            if header is None:
                raise ValueError(f"{name}: empty file, expected a header such as "
                                 "'image_name,rotation_matrix,translation_vector'")
            header_line = reader.line_num
            name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
            missing = [c for c in (ROTATION_COLUMN, TRANSLATION_COLUMN) if c not in header]
            if name_col is None:
                missing.insert(0, "image_name (or image / image_path)")
            if missing:
                raise ValueError(f"{name}:{header_line}: the header lacks the required column(s): "
                                 f"{', '.join(missing)}")
            use_basename = header[name_col] == "image_path"
            rot_col = header.index(ROTATION_COLUMN)
            trans_col = header.index(TRANSLATION_COLUMN)
            k_col = header.index(CALIBRATION_COLUMN) if CALIBRATION_COLUMN in header else None
            ds_col = header.index("dataset") if "dataset" in header else None
            sc_col = header.index("scene") if "scene" in header else None
            for row in reader:
                line = reader.line_num
                where = f"{name}:{line}"
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise ValueError(f"{where}: {len(row)} fields, the header has {len(header)}")
                image = row[name_col].strip()
                if use_basename:
                    image = re.split(r"[\\/]", image)[-1]
                if not image:
                    raise ValueError(f"{where}: empty image name")
                dataset = row[ds_col].strip() if ds_col is not None else None
                scene = row[sc_col].strip() if sc_col is not None else None
                key = (dataset, image)
                if key in seen:
                    raise ValueError(f"{where}: image {image[:80]!r} already appeared on line {seen[key]}")
                seen[key] = line
                if ground_truth and scene != OUTLIERS:
                    R, t = _gt_pose(row[rot_col], row[trans_col], where)
                else:
                    R = _parse_vector(row[rot_col], 9, ROTATION_COLUMN, where)
                    t = _parse_vector(row[trans_col], 3, TRANSLATION_COLUMN, where)
                if R is None or t is None:
                    R = t = None
                K = _parse_vector(row[k_col], 9, CALIBRATION_COLUMN, where) if k_col is not None else None
                rows.append(PoseRow(image, None if R is None else R.reshape(3, 3), t, dataset, scene, line,
                                    None if K is None else K.reshape(3, 3)))
    except csv.Error as e:
        raise ValueError(f"{name}: not a pose CSV ({e}); expected columns such as "
                         "'image_name,rotation_matrix,translation_vector'") from None
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a text CSV file (it is not UTF-8)") from None
    return rows


def read_poses_csv(path: str | Path, *, dataset: str | None = None, scene: str | None = None,
                   label: str | None = None, ground_truth: bool = False) -> dict[str, Pose | None]:
    """Read a pose CSV into ``{image_name: (R, t) or None}`` (see :func:`read_pose_table` for the layouts).

    Args:
        path: CSV file.
        dataset, scene: when given, keep only rows whose ``dataset`` / ``scene`` column equals it.
        label: how messages name the file.
        ground_truth: read strictly (see :func:`read_pose_table`).

    Returns:
        ``R`` float64 [3, 3] (world-to-camera), ``t`` float64 [3]; None for an unregistered image.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_pose_table`; also when an image occurs twice among the rows
            kept (a multi-scene file needs ``dataset``/``scene`` to pick one).
    """
    out: dict[str, Pose | None] = {}
    name = _display_name(Path(path), label)
    for r in read_pose_table(path, label=label, ground_truth=ground_truth):
        if dataset is not None and r.dataset != dataset:
            continue
        if scene is not None and r.scene != scene:
            continue
        if r.image in out:
            raise ValueError(f"{name}:{r.line}: image {r.image[:80]!r} occurs twice "
                             "(a multi-dataset file needs dataset=/scene= to pick one scene)")
        out[r.image] = None if r.R is None else (r.R, r.t)
    return out


MAX_THRESHOLDS = 100
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xef\xbb\xbf", "utf-8-sig"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def decode_text(data: bytes, source: str = "the file") -> str:
    """Text of a small file from its bytes: by its byte-order mark (UTF-8, UTF-16 or UTF-32, little- or big-endian;
    Windows Notepad saves "Unicode" as UTF-16 LE with a mark), else UTF-8. The mark is not part of the text.

    Raises:
        ValueError: the bytes are not text in those encodings (the message starts with ``source`` and says how to
            save the file).
    """
    data = bytes(data)
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(enc.replace("-sig", ""))
            except UnicodeDecodeError:
                break
    else:
        try:
            if b"\x00" not in data:  # UTF-16 without a mark decodes as UTF-8 with NULs: not numbers, say so here
                return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    raise ValueError(f"{source} is not readable text (UTF-8, or UTF-16 with its byte-order mark): save it as plain "
                     "UTF-8 text with one number per line or separated by ';'")


def parse_threshold_text(text: str, source: str = "thresholds") -> np.ndarray:
    """Numbers separated by ``;``, ``,``, whitespace or newlines (``#`` starts a comment) -> float64 [T] ascending.

    Never reads a file: safe for text a user typed (the app's thresholds box and uploaded thresholds files).

    Raises:
        ValueError: no numbers, more than :data:`MAX_THRESHOLDS`, a token that is not a number, or a non-finite /
            negative value, or no positive value; the message starts with ``source``. Zero is allowed: the official
            IMC 2025 ``train_thresholds.csv`` gives ``imc2023_haiper`` the thresholds ``0;0;0.001;...`` (the two
            tightest, which the metric skips).
    """
    text = "\n".join(line.split("#", 1)[0] for line in str(text).splitlines())
    values = parse_numbers(text, source)
    if len(values) > MAX_THRESHOLDS:
        raise ValueError(f"{source}: {len(values)} values, at most {MAX_THRESHOLDS}")
    for v in values:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{source}: '{v:g}' is not a positive number")
    if not len(values):
        raise ValueError(f"{source}: no threshold given")
    if max(values) <= 0:
        raise ValueError(f"{source}: every threshold is 0; give positive distances")
    return np.sort(values)


def check_threshold_count(thresholds: np.ndarray, source: str = "thresholds") -> np.ndarray:
    """``thresholds`` (float64 [T]) when there are at least :data:`MIN_THRESHOLDS` of them.

    Raises:
        ValueError: fewer; the message starts with ``source`` and says why (the official metric skips the
            :data:`SKIP_TOP_THRESHOLDS` tightest, so with fewer the mAA is 0 whatever the poses).
    """
    n = len(thresholds)
    if n < MIN_THRESHOLDS:
        raise ValueError(f"{source}: {n} threshold{'s' if n != 1 else ''} given, at least {MIN_THRESHOLDS} needed: "
                         f"the official IMC 2025 mAA skips the {SKIP_TOP_THRESHOLDS} tightest, so with fewer it would "
                         "be 0 whatever the poses (IMC scenes use 6, e.g. 0.025;0.05;0.1;0.2;0.5;1.0)")
    return thresholds


@dataclass
class ThresholdTable:
    """Thresholds per ``(dataset, scene)``, with a default for scenes not listed (None: no default).

    Attributes:
        by_scene: ``{(dataset, scene): float64 [T] ascending}`` (GT units).
        default: float64 [T] used for any scene not in ``by_scene`` (None: such a scene is an error).
    """

    by_scene: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    default: np.ndarray | None = None

    def get(self, dataset: str, scene: str) -> np.ndarray:
        """Thresholds of one GT scene.

        Raises:
            ValueError: the scene is not listed and there is no default.
        """
        if (dataset, scene) in self.by_scene:
            return self.by_scene[(dataset, scene)]
        real = {k: v for k, v in self.by_scene.items() if k[1] != OUTLIERS}
        if self.default is None and len(real) == 1:  # one-scene thresholds CSV against a file without names
            return next(iter(real.values()))
        if self.default is None:
            raise ValueError(f"no thresholds for dataset {dataset[:60]!r}, scene {scene[:60]!r} in the thresholds "
                             "CSV (it lists " + ", ".join(f"{d}/{s}" for d, s in list(self.by_scene)[:5]) + ")")
        return self.default


def read_thresholds(spec: ThresholdSpec | ThresholdTable) -> ThresholdTable:
    """Thresholds for the metric, from any of: a list of numbers (sequence, array or one number), a text such as
    ``"0.1;0.2,0.5"``, a file of numbers (IMC's ``thresholds.txt``), or the IMC thresholds CSV
    (``dataset,scene,thresholds`` with ``;``-separated numbers per scene).

    A string is read as a file only when it is not a list of numbers and names an existing file (the CLI's
    argument); the app never passes user text here (it uses :func:`parse_threshold_text`).

    Returns:
        A :class:`ThresholdTable` (a list or a file of numbers gives its ``default``).

    Raises:
        FileNotFoundError: ``spec`` is a ``Path`` that does not exist.
        ValueError: no numbers, a non-number, a non-positive value, a file that is not text (:func:`decode_text`), or
            a thresholds CSV whose scenes have different numbers of thresholds (the official metric requires one
            count). Fewer than :data:`MIN_THRESHOLDS` is refused by :func:`score`, not here.
    """
    if isinstance(spec, ThresholdTable):
        return spec
    if isinstance(spec, (str, Path)):
        text = str(spec).strip()
        is_numbers = isinstance(spec, str) and re.fullmatch(r"[0-9eE+\-.;,\s\[\]()]+", text) is not None
        if not is_numbers:
            path = Path(spec)
            if isinstance(spec, str) and not path.is_file():
                raise ValueError(f"thresholds: {text[:80]!r} is neither a list of numbers nor an existing file")
            content = decode_text(path.read_bytes(), f"thresholds file {path}")
            first = next((ln for ln in content.splitlines() if ln.strip()), "")
            if "thresholds" in first.lower() and "scene" in first.lower():
                return _read_threshold_csv(content, str(path))
            return ThresholdTable(default=parse_threshold_text(content, f"thresholds file {path}"))
        return ThresholdTable(default=parse_threshold_text(text))
    values = np.asarray(spec, dtype=np.float64).ravel()
    return ThresholdTable(default=parse_threshold_text(";".join(repr(float(v)) for v in values)))


def _read_threshold_csv(content: str, source: str) -> ThresholdTable:
    table = ThresholdTable()
    reader = csv.reader(content.splitlines())
    header = [c.strip().lower() for c in next(reader)]
    for col in ("dataset", "scene", "thresholds"):
        if col not in header:
            raise ValueError(f"{source}: the header lacks the column {col!r}")
    di, si, ti = header.index("dataset"), header.index("scene"), header.index("thresholds")
    for k, row in enumerate(reader, start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{source}:{k}: {len(row)} fields, the header has {len(header)}")
        table.by_scene[(row[di].strip(), row[si].strip())] = parse_threshold_text(row[ti], f"{source}:{k}")
    if not table.by_scene:
        raise ValueError(f"{source}: no scene listed")
    counts = {len(v) for v in table.by_scene.values()}
    if len(counts) != 1:
        raise ValueError(f"{source}: the scenes have different numbers of thresholds ({sorted(counts)}); the "
                         "official metric needs the same number for every scene")
    return table


def camera_centers(poses: PoseDict) -> dict[str, np.ndarray]:
    """``{name: C}`` with ``C = -R.T @ t`` float64 [3] for every registered image (``None`` entries dropped)."""
    return {n: -np.asarray(p[0], float).T @ np.asarray(p[1], float) for n, p in poses.items() if p is not None}


# --------------------------------------------------------------------------------------------------
# Registration of camera centres (vectorised, exhaustive)
# --------------------------------------------------------------------------------------------------


def _quat_to_rot(q: np.ndarray) -> np.ndarray:
    """Unit quaternions [B, 4] (w, x, y, z) -> rotation matrices [B, 3, 3]."""
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    R = np.empty((q.shape[0], 3, 3))
    R[:, 0, 0] = 1 - 2 * (y * y + z * z)
    R[:, 0, 1] = 2 * (x * y - z * w)
    R[:, 0, 2] = 2 * (x * z + y * w)
    R[:, 1, 0] = 2 * (x * y + z * w)
    R[:, 1, 1] = 1 - 2 * (x * x + z * z)
    R[:, 1, 2] = 2 * (y * z - x * w)
    R[:, 2, 0] = 2 * (x * z - y * w)
    R[:, 2, 1] = 2 * (y * z + x * w)
    R[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return R


def horn_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity transforms ``dst ~ s * R @ src + t`` by Horn's closed form (B. K. P. Horn, "Closed-form solution of
    absolute orientation using unit quaternions", JOSA A 4(4), 1987), batched.

    The rotation is the eigenvector of the largest eigenvalue of Horn's 4x4 matrix; the scale is the ratio of the RMS
    deviations from the centroids (Horn's symmetric scale, as the IMC metric uses), not Umeyama's.

    Args:
        src, dst: float64 [B, K, 3] corresponding points (K >= 3).

    Returns:
        ``(s [B], R [B, 3, 3], t [B, 3])``; NaN for a degenerate set (coincident points).
    """
    cs, cd = src.mean(1), dst.mean(1)
    a, b = src - cs[:, None], dst - cd[:, None]
    S = np.einsum("bki,bkj->bij", a, b)  # S[i, j] = sum a_i b_j
    sxx, sxy, sxz = S[:, 0, 0], S[:, 0, 1], S[:, 0, 2]
    syx, syy, syz = S[:, 1, 0], S[:, 1, 1], S[:, 1, 2]
    szx, szy, szz = S[:, 2, 0], S[:, 2, 1], S[:, 2, 2]
    N = np.empty((S.shape[0], 4, 4))
    N[:, 0, 0] = sxx + syy + szz
    N[:, 1, 1] = sxx - syy - szz
    N[:, 2, 2] = -sxx + syy - szz
    N[:, 3, 3] = -sxx - syy + szz
    N[:, 0, 1] = N[:, 1, 0] = syz - szy
    N[:, 0, 2] = N[:, 2, 0] = szx - sxz
    N[:, 0, 3] = N[:, 3, 0] = sxy - syx
    N[:, 1, 2] = N[:, 2, 1] = sxy + syx
    N[:, 1, 3] = N[:, 3, 1] = szx + sxz
    N[:, 2, 3] = N[:, 3, 2] = syz + szy
    with np.errstate(invalid="ignore", divide="ignore"):
        _, V = np.linalg.eigh(N)
        q = V[:, :, -1]
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        R = _quat_to_rot(q)
        s = np.sqrt((b * b).sum((1, 2)) / (a * a).sum((1, 2)))
    t = cd - s[:, None] * np.einsum("bij,bj->bi", R, cs)
    return s, R, t


def kabsch_similarity(P: np.ndarray, G: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity transforms ``G ~ s * R @ P + t`` over subsets of corresponding points (Kabsch SVD
    rotation with the reflection removed, RMS-ratio scale as :func:`horn_similarity`), batched over subsets.

    Args:
        P, G: float64 [N, 3] predicted and GT centres.
        masks: bool [U, N], the points each transform is fitted on (at least 3 each).

    Returns:
        ``(s [U], R [U, 3, 3], t [U, 3])``; NaN for a degenerate subset.
    """
    w = masks.astype(np.float64)
    cnt = w.sum(1)
    cs = (w @ P) / cnt[:, None]
    cd = (w @ G) / cnt[:, None]
    outer = (G[:, :, None] * P[:, None, :]).reshape(-1, 9)  # g p^T per point
    H = (w @ outer).reshape(-1, 3, 3) - cnt[:, None, None] * cd[:, :, None] * cs[:, None, :]  # sum b a^T
    ssa = w @ (P * P).sum(1) - cnt * (cs * cs).sum(1)
    ssb = w @ (G * G).sum(1) - cnt * (cd * cd).sum(1)
    n = masks.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.isfinite(H).all((1, 2))
        U = np.full((n, 3, 3), np.nan)
        Vt = np.full((n, 3, 3), np.nan)
        if ok.any():
            U[ok], _, Vt[ok] = np.linalg.svd(H[ok])
        R = U @ Vt
        neg = np.linalg.det(np.where(ok[:, None, None], R, np.eye(3))) < 0
        if neg.any():
            R[neg] -= 2 * np.einsum("ui,uj->uij", U[neg, :, 2], Vt[neg, 2, :])
        s = np.sqrt(ssb / ssa)
    t = cd - s[:, None] * np.einsum("uij,uj->ui", R, cs)
    return s, R, t


def _error_features(P: np.ndarray, G: np.ndarray) -> np.ndarray:
    """float64 [18, N]: the per-point terms of ``|s R p + t - g|^2`` expanded, so that the squared errors of B
    transforms are one matrix product ``_error_coefficients(...) @ features`` (see :func:`_squared_errors`)."""
    outer = (G[:, :, None] * P[:, None, :]).reshape(-1, 9)
    return np.concatenate([(P * P).sum(1)[:, None], np.ones((len(P), 1)), (G * G).sum(1)[:, None], P, outer, G],
                          axis=1).T


def _squared_errors(s, R, t, feats) -> np.ndarray:
    """Squared centre errors [B, N] of B transforms (``s`` [B], ``R`` [B,3,3], ``t`` [B,3]) from
    :func:`_error_features`: ``s^2|p|^2 + |t|^2 + |g|^2 + 2 s p.(R^T t) - 2 s <R, g p^T> - 2 t.g``."""
    B = s.shape[0]
    coef = np.empty((B, 18))
    coef[:, 0] = s * s
    coef[:, 1] = (t * t).sum(1)
    coef[:, 2] = 1.0
    coef[:, 3:6] = 2 * s[:, None] * np.einsum("bji,bj->bi", R, t)
    coef[:, 6:15] = -2 * s[:, None] * R.reshape(B, 9)
    coef[:, 15:18] = -2 * t
    return np.maximum(coef @ feats, 0.0)


def _triplet_blocks(n: int, chunk: int, limit: int | None, seed: int):
    """Triplets i < j < k of ``range(n)`` as int [B, 3] blocks of about ``chunk``: all of them in lexicographic
    order when there are at most ``limit`` (or ``limit`` is None), else ``limit`` distinct ones drawn with
    ``seed`` (sorted)."""
    total = n * (n - 1) * (n - 2) // 6
    if limit is not None and total > limit:
        rng = np.random.default_rng(seed)
        picked = np.unique(rng.integers(0, total, size=int(limit * 1.1)))[:limit]
        rng.shuffle(picked)
        picked = np.sort(picked[:limit])
        # unrank lexicographic triplet indices: count of triplets starting below i
        i_starts = np.array([0] + list(np.cumsum([(n - 1 - i) * (n - 2 - i) // 2 for i in range(n - 2)])))
        for lo in range(0, len(picked), chunk):
            idx = picked[lo:lo + chunk]
            i = np.searchsorted(i_starts, idx, side="right") - 1
            rem = idx - i_starts[i]
            out = np.empty((len(idx), 3), dtype=np.int64)
            for u in np.unique(i):
                sel = i == u
                jj, kk = np.triu_indices(n - u - 1, k=1)
                out[sel, 0] = u
                out[sel, 1] = jj[rem[sel]] + u + 1
                out[sel, 2] = kk[rem[sel]] + u + 1
            yield out
        return
    jj, kk = np.triu_indices(n, k=1)
    buf = []
    size = 0
    for i in range(n - 2):
        sel = jj > i
        jk = np.stack([np.full(int(sel.sum()), i), jj[sel], kk[sel]], axis=1)
        buf.append(jk)
        size += len(jk)
        if size >= chunk:
            yield np.concatenate(buf)
            buf, size = [], 0
    if buf:
        yield np.concatenate(buf)


@dataclass
class Registration:
    """Outcome of :func:`register_cameras` for ``n`` cameras and ``r`` thresholds.

    Attributes:
        thresholds: float64 [r] ascending.
        errors: float64 [n, r], centre error of each camera under the best model of each threshold (inf when no
            model was found).
        inliers: int [r], cameras closer than the threshold under that model.
        transforms: per threshold ``(s, R [3,3], t [3])`` mapping predicted centres onto the GT, or None.
        exhaustive: every triplet was tried (False when more than ``max_triplets`` existed and a fixed-seed sample
            was used instead).
    """

    thresholds: np.ndarray
    errors: np.ndarray
    inliers: np.ndarray
    transforms: list
    exhaustive: bool = True


MAX_TRIPLETS = 300_000  # above this many triplets (n > 122 cameras) a fixed-seed sample of this size is used


def register_cameras(pred: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, *,
                     max_triplets: int | None = MAX_TRIPLETS, seed: int = 0) -> Registration:
    """Register predicted camera centres onto GT centres as the official IMC metric does (see the module docstring):
    every triplet, refinement of every distinct inlier set of more than 2 cameras, the most inliers per threshold
    (ties: smallest sum of squared errors, then the first found).

    The official code loops over triplets in Python; here they are processed in vectorised blocks (squared errors of
    a block as one matrix product, inlier sets identified by two exact integer hashes so each distinct set is
    refined once). Up to ``max_triplets`` triplets (all of them for up to 263 cameras) the result is the official
    one; above, a fixed-seed sample of ``max_triplets`` triplets is used and ``exhaustive`` is False.

    Args:
        pred, gt: float64 [n, 3] corresponding centres (rows with a non-finite predicted centre must be removed).
        thresholds: float64 [r] ascending (GT units).
        max_triplets: None for no limit.
        seed: of the triplet sample (only used above ``max_triplets``).

    Returns:
        :class:`Registration`.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    th = np.asarray(thresholds, np.float64)
    n, r = pred.shape[0], th.shape[0]
    th2 = th**2
    best_cnt = np.zeros(r, dtype=np.int64)
    best_sum = np.full(r, np.inf)
    best_err2 = np.full((n, r), np.inf)
    best_T: list = [None] * r
    total = n * (n - 1) * (n - 2) // 6
    exhaustive = max_triplets is None or total <= max_triplets
    if n >= 3:
        # the problem is translation invariant: centre both sets (smaller numbers, better rounding)
        mp, mg = pred.mean(0), gt.mean(0)
        P, G = pred - mp, gt - mg
        feats = _error_features(P, G)
        hw = np.random.default_rng(12345).integers(0, 2**40, size=(n, 2)).astype(np.float64)  # exact sums < 2^53
        seen: set[tuple[float, float]] = set()
        chunk = max(256, min(_TRIPLET_CHUNK * 4, 4_000_000 // max(n, 1)))
        for trip in _triplet_blocks(n, chunk, None if exhaustive else max_triplets, seed):
            s, R, t = horn_similarity(P[trip], G[trip])
            with np.errstate(invalid="ignore"):
                err2 = _squared_errors(s, R, t, feats)  # [B, n]
            err2[~np.isfinite(err2)] = np.inf
            new_b, new_q = [], []
            for q in range(r):
                m = err2 < th2[q]
                cnt = m.sum(1)
                rows = np.nonzero(cnt > 2)[0]
                if rows.size == 0:
                    continue
                h = m[rows].astype(np.float64) @ hw  # [C, 2] exact integer-valued hashes
                _, first = np.unique(h, axis=0, return_index=True)
                for i in first:
                    key = (h[i, 0], h[i, 1])
                    if key in seen:
                        continue
                    if len(seen) < _SEEN_LIMIT:
                        seen.add(key)
                    new_b.append(rows[i])
                    new_q.append(q)
            if not new_b:
                continue
            order = np.lexsort((np.array(new_q), np.array(new_b)))  # triplet order, then threshold order
            b_arr, q_arr = np.array(new_b)[order], np.array(new_q)[order]
            masks = err2[b_arr] < th2[q_arr][:, None]
            _refine_and_update(P, G, th2, masks, best_cnt, best_sum, best_err2, best_T, feats)
        # transforms back to the caller's frame: g = s R (p - mp) + t + mg
        best_T = [None if T is None else (T[0], T[1], T[2] + mg - T[0] * T[1] @ mp) for T in best_T]
    return Registration(thresholds=th, errors=np.sqrt(best_err2), inliers=best_cnt, transforms=best_T,
                        exhaustive=exhaustive)


def _refine_and_update(P, G, th2, masks, best_cnt, best_sum, best_err2, best_T, feats):
    """Refine on each inlier set (in order) and keep, per threshold, the first model with the most inliers and the
    smallest sum of squared errors (the official update rule, applied in one pass per block).

    Candidates are ranked with the expanded squared errors (one matrix product); the few best per threshold are
    then re-scored with directly computed errors, as the official code computes them, before the update."""
    for lo in range(0, masks.shape[0], _REFINE_CHUNK):
        m = masks[lo:lo + _REFINE_CHUNK]
        s, R, t = kabsch_similarity(P, G, m)
        with np.errstate(invalid="ignore"):
            approx = _squared_errors(s, R, t, feats)  # [U, n]
            approx[~np.isfinite(approx)] = np.inf
            cnt = (approx[:, :, None] < th2).sum(1)  # [U, r]
            sums = approx.sum(1)
        short = set()
        for q in range(th2.shape[0]):
            key = np.lexsort((np.arange(len(sums)), sums, -cnt[:, q]))  # most inliers, smallest sum, first
            short.update(int(u) for u in key[:_RESCORE])
        idx = np.array(sorted(short))
        with np.errstate(invalid="ignore"):
            diff = s[idx, None, None] * np.matmul(P[None], R[idx].transpose(0, 2, 1)) + t[idx, None, :] - G[None]
            err2 = (diff * diff).sum(-1)  # [K, n], direct
            dsum = err2.sum(1)
            dcnt = (err2[:, :, None] < th2).sum(1)
        for q in range(th2.shape[0]):
            c = dcnt[:, q]
            ok = ~np.isnan(dsum)
            if not ok.any():
                continue
            top = c[ok].max()
            cand = np.nonzero(ok & (c == top))[0]
            k = cand[np.argmin(dsum[cand])]  # argmin: first of equal sums (idx is in candidate order)
            if top > best_cnt[q] or (top == best_cnt[q] and dsum[k] < best_sum[q]):
                u = idx[k]
                best_cnt[q] = top
                best_sum[q] = dsum[k]
                best_err2[:, q] = err2[k]
                best_T[q] = (float(s[u]), R[u].copy(), t[u].copy())


def maa_on_cameras(
    errors: np.ndarray,
    thresholds: np.ndarray,
    n_gt: int,
    skip_top_thresholds: int = SKIP_TOP_THRESHOLDS,
    to_dec: int = TO_DEC,
) -> float:
    """Official mAA of one registration: mean over thresholds (the ``skip_top_thresholds`` tightest skipped) of
    ``max(0, #{errors < th} - to_dec) / (n_gt - to_dec)``.

    Args:
        errors: float64 [n, r] from :attr:`Registration.errors`.
        thresholds: float64 [r] ascending.
        n_gt: GT cameras of the scene (the denominator, missing and unregistered images included).

    Returns:
        mAA in [0, 1] (0 when no camera counts, e.g. ``n_gt <= to_dec``).
    """
    th = np.asarray(thresholds)[skip_top_thresholds:]
    counts = (np.asarray(errors)[:, skip_top_thresholds:] < th[None]).sum(0)
    num = float(np.maximum(counts - to_dec, 0).sum())
    return 0.0 if num == 0 else num / (len(th) * (n_gt - to_dec))


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


@dataclass
class SceneScore:
    """One GT scene matched to one submitted cluster.

    Attributes:
        dataset, scene: the GT scene; ``cluster``: the submitted cluster it was matched to (None: none shares an
            image, or only ``outliers`` does).
        n_gt: GT images of the scene; ``n_shared``: of them, images in the cluster (registered or not);
        n_registered: shared images with a finite predicted pose; ``cluster_size``: images in the cluster.
        thresholds: float64 [r]; ``inliers``: int [r] registered-within-threshold cameras.
        mAA: the official mAA of the scene; ``accuracy_all_thresholds``: mean over all thresholds of inliers / n_gt.
        errors: image -> centre error (GT units) under the model of the largest threshold (None: not registered).
        transforms: per threshold ``(s, R, t)`` or None (for drawing the aligned centres).
    """

    dataset: str
    scene: str
    cluster: str | None
    n_gt: int
    n_shared: int
    n_registered: int
    cluster_size: int
    thresholds: np.ndarray
    inliers: np.ndarray
    mAA: float
    accuracy_all_thresholds: float
    errors: dict[str, float | None] = field(default_factory=dict)
    transforms: list = field(default_factory=list, repr=False)
    exhaustive: bool = True

    def to_dict(self) -> dict:
        """JSON-friendly copy (no transforms)."""
        return {"cluster": self.cluster, "exhaustive": self.exhaustive, "n_gt": self.n_gt, "n_shared": self.n_shared,
                "n_registered": self.n_registered, "cluster_size": self.cluster_size,
                "thresholds": [float(x) for x in self.thresholds], "inliers": [int(x) for x in self.inliers],
                "mAA": float(self.mAA), "accuracy_all_thresholds": float(self.accuracy_all_thresholds),
                "errors": self.errors}


@dataclass
class DatasetScore:
    """The official figures of one dataset: ``mAA`` (recall), ``clusterness`` (precision), ``score`` (harmonic
    mean), and the matched scenes."""

    dataset: str
    mAA: float
    clusterness: float
    score: float
    scenes: dict[str, SceneScore]

    def to_dict(self) -> dict:
        return {"mAA": float(self.mAA), "clusterness": float(self.clusterness), "score": float(self.score),
                "scenes": {k: v.to_dict() for k, v in self.scenes.items()}}


@dataclass
class Score:
    """Outcome of :func:`score`: means over datasets, and each dataset.

    Attributes:
        mAA, clusterness, score: official IMC 2025 figures in [0, 1].
        accuracy_all_thresholds: mean over GT scenes of :attr:`SceneScore.accuracy_all_thresholds` (not the mAA).
        per_dataset: ``{dataset: DatasetScore}``.
        ignored_images: submitted images absent from the GT (not scored).
    """

    mAA: float
    clusterness: float
    score: float
    accuracy_all_thresholds: float
    per_dataset: dict[str, DatasetScore]
    ignored_images: int = 0

    @property
    def scenes(self) -> list[SceneScore]:
        return [s for d in self.per_dataset.values() for s in d.scenes.values()]

    def to_dict(self) -> dict:
        """``{"mAA", "clusterness", "score", "accuracy_all_thresholds", "per_dataset": {...}, ...}``."""
        return {"mAA": float(self.mAA), "clusterness": float(self.clusterness), "score": float(self.score),
                "accuracy_all_thresholds": float(self.accuracy_all_thresholds),
                "metric": "IMC 2025 (skip_top_thresholds=2, to_dec=3, exhaustive triplets)",
                "per_dataset": {k: v.to_dict() for k, v in self.per_dataset.items()},
                "ignored_images": self.ignored_images}

    def table(self) -> str:
        """Plain-text summary: overall figures, then per scene the inliers per threshold."""
        lines = [f"mAA (IMC 2025) = {self.mAA:.4f}   clusterness = {self.clusterness:.4f}   "
                 f"score = {self.score:.4f}   accuracy over all thresholds = {self.accuracy_all_thresholds:.4f}"]
        for ds in self.per_dataset.values():
            if len(self.per_dataset) > 1:
                lines.append(f"dataset {ds.dataset}: mAA {ds.mAA:.4f}, clusterness {ds.clusterness:.4f}, "
                             f"score {ds.score:.4f}")
            for sc in ds.scenes.values():
                lines.append(f"  scene {sc.scene} -> cluster {sc.cluster}: {sc.n_registered}/{sc.n_gt} registered, "
                             f"mAA {sc.mAA:.4f}")
                for k, (th, c) in enumerate(zip(sc.thresholds, sc.inliers)):
                    skip = "  (skipped)" if k < SKIP_TOP_THRESHOLDS else ""
                    lines.append(f"    threshold {th:g}: {int(c)}/{sc.n_gt} cameras within{skip}")
        if self.ignored_images:
            lines.append(f"{self.ignored_images} submitted image(s) are not in the ground truth and were ignored")
        return "\n".join(lines)


def _harmonic(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _group(rows: list[PoseRow], default_dataset: str, default_scene: str) -> dict[str, dict[str, dict[str, PoseRow]]]:
    """``{dataset: {scene: {image: row}}}`` keeping first-appearance order."""
    out: dict[str, dict[str, dict[str, PoseRow]]] = {}
    for r in rows:
        d = r.dataset if r.dataset is not None else default_dataset
        s = r.scene if r.scene is not None else default_scene
        out.setdefault(d, {}).setdefault(s, {})[r.image] = r
    return out


# One function over ~80 lines on purpose: it follows the official metric.py's scoring loop step by step (match
# scenes to clusters, score each pair, aggregate per dataset), so the two can be read side by side.
def score(gt_rows: list[PoseRow], pred_rows: list[PoseRow], thresholds: ThresholdSpec | ThresholdTable) -> Score:
    """The official IMC 2025 score of a submission (see the module docstring).

    Files without ``dataset``/``scene`` columns (our ``poses.csv``, IMC training GT) form one dataset and one scene
    (or cluster); a submission without a ``dataset`` column takes the dataset of each image from the GT. GT images
    absent from the submission count as unregistered; submitted images absent from the GT are ignored (counted in
    :attr:`Score.ignored_images`).

    Args:
        gt_rows, pred_rows: from :func:`read_pose_table`.
        thresholds: anything :func:`read_thresholds` accepts.

    Returns:
        :class:`Score`.

    Raises:
        ValueError: no GT scene with a pose, a GT scene without thresholds, fewer than :data:`MIN_THRESHOLDS`
            thresholds, or thresholds of unequal counts.
    """
    table = read_thresholds(thresholds)
    for where, th in [("thresholds", table.default)] + [(f"thresholds of {d}/{s}", v)
                                                         for (d, s), v in table.by_scene.items()]:
        if th is not None:  # checked before any registration
            check_threshold_count(th, where)
    gt = _group(gt_rows, DEFAULT_DATASET, DEFAULT_SCENE)
    if not any(s != OUTLIERS for d in gt.values() for s in d):
        raise ValueError("the ground truth holds no scene (only outliers)")
    gt_dataset_of = {}
    for d, scenes in gt.items():
        for s, imgs in scenes.items():
            for im in imgs:
                gt_dataset_of.setdefault(im, d)
    single_ds = next(iter(gt)) if len(gt) == 1 else None
    fixed = []
    ignored = 0
    for r in pred_rows:
        d = r.dataset
        if d is None or (d not in gt and single_ds is not None and all(p.dataset == d for p in pred_rows)):
            d = gt_dataset_of.get(r.image, single_ds)
        if d is None or d not in gt or r.image not in {im for s in gt[d].values() for im in s}:
            ignored += 1
            continue
        fixed.append(PoseRow(r.image, r.R, r.t, d, r.scene if r.scene is not None else DEFAULT_SCENE, r.line))
    pred = _group(fixed, DEFAULT_DATASET, DEFAULT_SCENE)

    counts = set()
    per_dataset: dict[str, DatasetScore] = {}
    all_acc = []
    for d, gt_scenes in gt.items():
        clusters = pred.get(d, {})
        cluster_names = list(clusters)
        results: dict[str, SceneScore] = {}
        shared_sum = user_sum = gt_sum = 0
        num = 0.0
        n_real = 0
        lt = None
        for s, gt_imgs in gt_scenes.items():
            if s == OUTLIERS:
                continue
            n_real += 1
            th = table.get(d, s)
            counts.add(len(th))
            lt = len(th) - SKIP_TOP_THRESHOLDS
            best = None  # (n_shared, mAA, -index) maximal
            cand: list[SceneScore] = []
            for j, c in enumerate(cluster_names):
                if c == OUTLIERS:
                    cand.append(None)
                    continue
                cand.append(_score_pair(d, s, c, gt_imgs, clusters[c], th))
            for j, sc in enumerate(cand):
                key = (0, 0.0) if sc is None else (sc.n_shared, sc.mAA)
                if best is None or key > best[0]:
                    best = (key, j)
            chosen = cand[best[1]] if best is not None else None
            if chosen is None:  # no cluster at all, or the outliers cluster came first among equals
                chosen = _score_pair(d, s, None, gt_imgs, {}, th)  # adds nothing but its free cameras below
            else:
                shared_sum += chosen.n_shared
                user_sum += chosen.cluster_size
                gt_sum += chosen.n_gt
                num += float(np.maximum(chosen.inliers[SKIP_TOP_THRESHOLDS:] - TO_DEC, 0).sum())
            results[s] = chosen
            all_acc.append(chosen.accuracy_all_thresholds)
        if len(counts) > 1:
            raise ValueError(f"the GT scenes have different numbers of thresholds ({sorted(counts)}); the official "
                             "metric needs one count")
        clusterness = 0.0 if user_sum == 0 else shared_sum / user_sum
        den = max(0, (lt or 0) * (gt_sum - n_real * TO_DEC))
        maa = 0.0 if den == 0 else num / den
        per_dataset[d] = DatasetScore(d, maa, clusterness, _harmonic(maa, clusterness), results)
    ds = list(per_dataset.values())
    return Score(
        mAA=float(np.mean([x.mAA for x in ds])),
        clusterness=float(np.mean([x.clusterness for x in ds])),
        score=float(np.mean([x.score for x in ds])),
        accuracy_all_thresholds=float(np.mean(all_acc)) if all_acc else 0.0,
        per_dataset=per_dataset,
        ignored_images=ignored,
    )


def _score_pair(dataset: str, scene: str, cluster: str | None, gt_imgs: dict[str, PoseRow],
                user_imgs: dict[str, PoseRow], th: np.ndarray) -> SceneScore:
    """Register one submitted cluster against one GT scene."""
    shared = [im for im in gt_imgs if im in user_imgs]
    P = np.array([user_imgs[im].center for im in shared]).reshape(-1, 3)
    G = np.array([gt_imgs[im].center for im in shared]).reshape(-1, 3)
    valid = np.all(np.isfinite(P), axis=1) & np.all(np.isfinite(G), axis=1)
    names = [im for im, v in zip(shared, valid) if v]
    reg = register_cameras(P[valid], G[valid], th)
    m = len(gt_imgs)
    maa = maa_on_cameras(reg.errors, th, m)
    acc_all = float(np.mean(reg.inliers / m)) if m else 0.0
    errors: dict[str, float | None] = {im: None for im in gt_imgs}
    for im, e in zip(names, reg.errors[:, -1] if len(names) else []):
        errors[im] = float(e) if math.isfinite(e) else None
    return SceneScore(dataset, scene, cluster, m, len(shared), len(names), len(user_imgs), th, reg.inliers, maa,
                      acc_all, errors, reg.transforms, reg.exhaustive)


def evaluate_files(gt_csv: str | Path, pred_csv: str | Path, thresholds: ThresholdSpec | ThresholdTable, *,
                   gt_label: str | None = None, pred_label: str | None = None) -> Score:
    """Official IMC 2025 score of the poses in ``pred_csv`` against ``gt_csv`` (layouts: :func:`read_pose_table`;
    thresholds: :func:`read_thresholds`; metric: :func:`score`).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: malformed CSV or a ground-truth pose that is missing, not finite, absurd or not a rotation (file
            and line named; the GT is read with ``ground_truth=True``), bad or fewer than :data:`MIN_THRESHOLDS`
            thresholds, or no GT scene.
    """
    gt = read_pose_table(gt_csv, label=gt_label, ground_truth=True)
    return score(gt, read_pose_table(pred_csv, label=pred_label), thresholds)


def mean_average_accuracy(gt: PoseDict, pred: PoseDict, thresholds: ThresholdSpec | ThresholdTable) -> SceneScore:
    """Official mAA of one scene from pose dictionaries ``{name: (R [3,3], t [3]) or None}`` (world-to-camera).
    Predicted images absent from ``gt`` are ignored; GT images missing from ``pred`` count as unregistered.

    Raises:
        ValueError: empty ground truth, or bad or fewer than :data:`MIN_THRESHOLDS` thresholds.
    """
    if not gt:
        raise ValueError("the ground truth holds no image")
    g = [PoseRow(n, None if p is None else np.asarray(p[0], float), None if p is None else np.asarray(p[1], float))
         for n, p in gt.items()]
    u = [PoseRow(n, None if p is None else np.asarray(p[0], float), None if p is None else np.asarray(p[1], float))
         for n, p in pred.items()]
    res = score(g, u, thresholds)
    return next(iter(res.per_dataset.values())).scenes[DEFAULT_SCENE]
