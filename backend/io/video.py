"""Frames of a video as photos: a phone video (``.mp4``, ``.mov``, ``.m4v``) becomes frames sampled by time and
sharpness, read with OpenCV's video reader (FFmpeg).

The video is cut into equal intervals of ``1 / per_second`` seconds (2 frames a second by default; longer
intervals when that would give more than ``max_frames``); in each interval up to :data:`CANDIDATES` evenly spaced
frames are decoded and the sharpest kept, sharpness being the variance of the Laplacian of the frame in gray at
most 640 px wide (motion blur and defocus lower it: Pech-Pacheco et al. 2000, "Diatom autofocusing in brightfield
microscopy"). Kept frames are written as JPEG ``<video stem>_<frame number, 6 digits>.jpg``, so their names sort
in time; the images stage then validates them like photos, and the retrieval stage pairs each frame with the next
``sequential_overlap`` frames of its video (``--video-sequential``, on by default) besides retrieval's pairs.

Every decision is recorded (:class:`VideoFrames`): which frames were kept, at what time, their sharpness against
the interval's median, and which intervals gave no frame (an unreadable stretch).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mov", ".m4v"}
CANDIDATES = 6  # frames decoded and scored per interval
SHARPNESS_WIDTH = 640  # px: frames are scored at most this wide
JPEG_QUALITY = 95


@dataclass
class VideoFrames:
    """What :func:`extract_frames` kept of one video.

    Attributes:
        video: the video's file name.
        fps: frames per second the container states; ``frames_total``: frames it states (0: unknown);
            ``duration_s``: seconds.
        interval_s: the sampling interval (s); one frame is kept per interval.
        kept: per kept frame ``{"name", "frame", "time_s", "sharpness", "interval_median"}`` (sharpness: variance
            of the Laplacian, gray levels squared), in time order.
        empty_intervals: intervals in which no frame could be decoded.
        note: one sentence for the Images page.
    """

    video: str
    fps: float
    frames_total: int
    duration_s: float
    interval_s: float
    kept: list[dict] = field(default_factory=list)
    empty_intervals: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def sharpness(bgr: np.ndarray) -> float:
    """Variance of the Laplacian of ``bgr`` (uint8 [H, W, 3], OpenCV's BGR order) in gray, at most
    :data:`SHARPNESS_WIDTH` px wide: higher is sharper."""
    import cv2

    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    if gray.shape[1] > SHARPNESS_WIDTH:
        scale = SHARPNESS_WIDTH / gray.shape[1]
        gray = cv2.resize(gray, (SHARPNESS_WIDTH, max(1, round(gray.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def extract_frames(path: Path, out_dir: Path, *, per_second: float = 2.0, max_frames: int = 300,
                   progress: Callable[[int, int, str], None] | None = None) -> VideoFrames:
    """Write the sharpest frame of each interval of the video ``path`` into ``out_dir`` (created).

    Args:
        per_second: frames kept per second of video (the interval is ``1 / per_second`` s) ...
        max_frames: ... unless that gives more than this many: then the interval is ``duration / max_frames``.
        progress: ``progress(done, total, message)`` over the video's frames.

    Returns:
        :class:`VideoFrames` (also what to show the user).

    Raises:
        ValueError: the file is not a video OpenCV can read, states no frame rate, or gives no frame at all; the
            message says what to do.
    """
    import cv2

    path, out_dir = Path(path), Path(out_dir)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError("not a readable video (OpenCV/FFmpeg cannot open it): save it as MP4 (H.264) or MOV")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if not np.isfinite(fps) or fps <= 0:
            raise ValueError("the video states no frame rate: re-encode it as MP4 (H.264)")
        duration = total / fps if total > 0 else 0.0
        interval = 1.0 / per_second
        if duration > 0 and duration / interval > max_frames:
            interval = duration / max_frames
        step = max(1, int(round(interval * fps)))  # frames per interval
        stride = max(1, step // CANDIDATES)  # decode every stride-th frame of an interval
        out_dir.mkdir(parents=True, exist_ok=True)
        res = VideoFrames(path.name, round(fps, 3), total, round(duration, 3), round(step / fps, 4))
        best: tuple[float, int, np.ndarray] | None = None
        scores: list[float] = []
        index = 0

        def keep():
            nonlocal best, scores
            if best is None:
                res.empty_intervals += 1
            else:
                s, k, frame = best
                name = f"{path.stem}_{k:06d}.jpg"
                cv2.imwrite(str(out_dir / name), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                res.kept.append({"name": name, "frame": k, "time_s": round(k / fps, 3), "sharpness": round(s, 1),
                                 "interval_median": round(float(np.median(scores)), 1)})
            best, scores = None, []

        while True:
            if index and index % step == 0:
                keep()
            if not cap.grab():
                break
            if index % step % stride == 0:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    s = sharpness(frame)
                    scores.append(s)
                    if best is None or s > best[0]:
                        best = (s, index, frame)
            index += 1
            if progress and index % 30 == 0:
                progress(index, max(total, index), f"{path.name}: frame {index}")
        if best is not None or scores:
            keep()
    finally:
        cap.release()
    if not res.kept:
        raise ValueError("no frame could be decoded from the video: re-encode it as MP4 (H.264)")
    if not total:
        res.frames_total, res.duration_s = index, round(index / fps, 3)
    res.note = (f"{len(res.kept)} frames kept of {res.frames_total} ({res.duration_s:g} s at {res.fps:g} fps): the "
                f"sharpest of every {res.interval_s:g} s (variance of the Laplacian)"
                + (f"; {res.empty_intervals} interval(s) gave no readable frame" if res.empty_intervals else ""))
    log.info("%s", res.note)
    return res


def is_video(path: Path) -> bool:
    """True when ``path``'s extension is one of :data:`VIDEO_EXTENSIONS`."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS
