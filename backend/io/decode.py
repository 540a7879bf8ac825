"""Decoding a photo the images stage validated into the run folder (Pillow), at a size a stage asks for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile


def load_rgb(path: Path, max_size: int | None = None) -> tuple[np.ndarray, float, float]:
    """Read an 8-bit RGB image (as validated into the run folder), optionally resized.

    Args:
        path: image file.
        max_size: resize so that the long side is at most this many px (never upscales); None keeps the size.

    Returns:
        ``(image, sx, sy)``: ``image`` uint8 [H, W, 3]; ``sx, sy`` = original size / returned size per axis
        (>= 1), to map pixel coordinates back to the original image.
    """
    with Image.open(path) as img:
        w, h = img.size
        target = None
        if max_size and max(w, h) > max_size:
            s = max_size / max(w, h)
            target = (max(1, round(w * s)), max(1, round(h * s)))
            if isinstance(img, JpegImageFile):  # JPEG and MPO
                img.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale when that is still >= target
        img = img.convert("RGB")
        if target and img.size != target:
            img = img.resize(target, Image.Resampling.BILINEAR, reducing_gap=None)
        arr = np.array(img)  # writable copy (torch.from_numpy needs one)
    return arr, w / arr.shape[1], h / arr.shape[0]
