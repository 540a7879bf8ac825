"""Stage 1: read and validate the input photos.

Reads JPEG and PNG (8- and 16-bit, grayscale, palette, RGBA composited onto the configured background),
applies the EXIF orientation, and reads the EXIF focal length. Every usable image is written into
``<run>/images/`` (byte-identical when no conversion is needed), and ``<run>/images.json`` lists the images
with their size and focal-length prior, and every skipped file with the reason.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import ImagesConfig

SUPPORTED_EXTENSIONS = {".jpg", ".jpeg", ".png"}
IMAGES_JSON = "images.json"

# EXIF tags
_TAG_EXIF_IFD = 0x8769
_TAG_FOCAL = 0x920A
_TAG_FOCAL_35 = 0xA405
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_TAG_ORIENTATION = 0x0112


class InputError(ValueError):
    """The input cannot be reconstructed (for example fewer than two usable images)."""


@dataclass
class ImageInfo:
    """One validated image.

    ``width``/``height`` in px of the image as stored in the run folder (after EXIF orientation).
    ``focal_px``: focal-length prior in px; ``focal_source`` is ``"exif"`` (from FocalLengthIn35mmFilm) or
    ``"prior"`` (``default_focal_factor * max(width, height)``).
    """

    name: str
    width: int
    height: int
    focal_px: float
    focal_source: str
    make: str = ""
    model: str = ""
    exif_focal_mm: float | None = None
    conversion: str = ""  # what was done to the source ("" = byte-identical copy)
    source: str = ""


@dataclass
class SkippedFile:
    name: str
    reason: str


def _exif_fields(img: Image.Image) -> tuple[str, str, float | None, float | None, int]:
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF blocks must not lose the image
        return "", "", None, None, 1
    make = str(exif.get(_TAG_MAKE, "") or "").strip("\x00 ")
    model = str(exif.get(_TAG_MODEL, "") or "").strip("\x00 ")
    orientation = int(exif.get(_TAG_ORIENTATION, 1) or 1)
    focal = f35 = None
    try:
        sub = exif.get_ifd(_TAG_EXIF_IFD)
        if sub.get(_TAG_FOCAL):
            focal = float(sub[_TAG_FOCAL])
        if sub.get(_TAG_FOCAL_35):
            f35 = float(sub[_TAG_FOCAL_35])
    except Exception:  # noqa: BLE001
        pass
    return make, model, focal, f35, orientation


def _to_rgb8(img: Image.Image, background: str) -> tuple[Image.Image, str]:
    """Convert any PIL mode to 8-bit RGB. Returns the image and a description of the conversion."""
    mode = img.mode
    bg = (255, 255, 255) if background == "white" else (0, 0, 0)
    if mode == "RGB":
        return img, ""
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        scale = 255.0 / 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 1.0
        arr8 = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB"), f"{mode} -> 8-bit RGB"
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA(P)"
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, bg + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB"), f"{mode} composited onto {background}"
    if img.mode == "RGBa" or img.mode == "La":
        return img.convert("RGB"), f"{mode} -> RGB"
    return img.convert("RGB"), f"{mode} -> RGB"


def _is_16bit_png(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 25 and head[24] == 16


def validate_image(path: Path, out_dir: Path, cfg: ImagesConfig) -> ImageInfo:
    """Read one image, write its validated copy into ``out_dir`` and return its :class:`ImageInfo`.

    Raises:
        ValueError: the file is empty, not an image, or truncated/corrupt (the message is the reason shown
            to the user).
    """
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            fmt = img.format
            img.load()  # decode fully: truncated or corrupt data fails here
            make, model, focal, f35, orientation = _exif_fields(img)
            sixteen = fmt == "PNG" and _is_16bit_png(path)
            oriented = ImageOps.exif_transpose(img) if orientation != 1 else img
            rgb, conversion = _to_rgb8(oriented, cfg.background)
            if sixteen and not conversion:
                conversion = "16-bit -> 8-bit RGB"
    except UnidentifiedImageError:
        raise ValueError("not an image (the file is not a readable JPEG or PNG)") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"corrupt or truncated image ({e})") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"image too large ({e})") from None
    if fmt not in ("JPEG", "PNG"):
        raise ValueError(f"unsupported image format {fmt} (use JPEG or PNG)")
    if orientation != 1:
        conversion = ", ".join(c for c in [f"EXIF orientation {orientation} applied", conversion] if c)
    w, h = rgb.size
    if min(w, h) < 16:
        raise ValueError(f"image too small ({w}x{h} px)")
    dst = out_dir / path.name
    if conversion:
        if fmt == "JPEG":
            rgb.save(dst, "JPEG", quality=95, subsampling=0)
        else:
            rgb.save(dst, "PNG")
    elif path.resolve() != dst.resolve():
        shutil.copyfile(path, dst)
    if f35:
        focal_px, source = f35 / 36.0 * max(w, h), "exif"
    else:
        focal_px, source = cfg.default_focal_factor * max(w, h), "prior"
    return ImageInfo(
        name=path.name,
        width=w,
        height=h,
        focal_px=float(focal_px),
        focal_source=source,
        make=make,
        model=model,
        exif_focal_mm=focal,
        conversion=conversion,
        source=str(path),
    )


def list_candidates(images_dir: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Files in ``images_dir`` (not recursive) with a supported extension, and the others as skipped.

    Raises:
        InputError: ``images_dir`` is not a folder.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir} is not a folder of images")
    files, skipped = [], []
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            skipped.append(SkippedFile(p.name, "folder (sub-folders are not read)"))
        elif p.suffix.lower() in SUPPORTED_EXTENSIONS:
            files.append(p)
        else:
            skipped.append(SkippedFile(p.name, f"unsupported file type '{p.suffix or 'none'}' (use JPEG or PNG)"))
    return files, skipped


def run_images(
    images_dir: Path,
    run_dir: Path,
    cfg: ImagesConfig,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Validate every image in ``images_dir`` into ``run_dir/images`` and write ``run_dir/images.json``.

    Returns the parsed ``images.json``: ``{"images": [ImageInfo...], "skipped": [SkippedFile...]}``.

    Raises:
        InputError: fewer than two usable images (the message lists why files were skipped).
    """
    out_dir = Path(run_dir) / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = list_candidates(Path(images_dir))
    infos: list[ImageInfo] = []
    for i, p in enumerate(files):
        try:
            infos.append(validate_image(p, out_dir, cfg))
        except ValueError as e:
            skipped.append(SkippedFile(p.name, str(e)))
        if progress:
            progress(i + 1, len(files), p.name)
    result = {"images": [asdict(i) for i in infos], "skipped": [asdict(s) for s in skipped]}
    (Path(run_dir) / IMAGES_JSON).write_text(json.dumps(result, indent=1))
    if len(infos) < 2:
        why = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
        raise InputError(
            f"{len(infos)} usable image(s) in {images_dir}: a reconstruction needs at least 2 JPEG/PNG photos "
            f"of the same scene" + (f" (skipped: {why})" if why else "")
        )
    return result


def load_images_json(run_dir: Path) -> dict:
    """The ``images.json`` of a run."""
    return json.loads((Path(run_dir) / IMAGES_JSON).read_text())


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
            if img.format == "JPEG":
                img.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale when that is still >= target
        img = img.convert("RGB")
        if target and img.size != target:
            img = img.resize(target, Image.Resampling.BILINEAR, reducing_gap=None)
        arr = np.array(img)  # writable copy (torch.from_numpy needs one)
    return arr, w / arr.shape[1], h / arr.shape[0]
