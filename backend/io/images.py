"""Stage 1: read and validate the input photos.

Reads JPEG (also multi-picture JPEGs, which Pillow opens as ``MPO``: dual-frame and Ultra HDR phone photos; the
first frame is used), PNG (8- and 16-bit, grayscale, palette, RGBA composited onto the configured background)
and HEIC/HEIF (iPhone photos, through ``pillow-heif``; written into the run as JPEG), applies the EXIF
orientation, and reads the EXIF focal length. Every usable image is written into ``<run>/images/``
(byte-identical when no conversion is needed), and ``<run>/images.json`` lists the images with their size and
focal-length prior, and every skipped file with the reason (byte-identical duplicates are skipped too).

Pixel limits (checked from the file header, before anything is decoded): an image of more than
:data:`MAX_PIXELS` (150 MP) is refused; one of more than :data:`REDUCE_ABOVE_PIXELS` (50 MP) is decoded and
stored at half size (JPEG: decoded at 1/2 scale by the decoder itself, so the full-size pixels never exist in
memory; PNG/HEIF: decoded, then halved).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from ..config import ImagesConfig

try:  # HEIC/HEIF (iPhone photos); pinned in requirements.txt
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - the pinned stack has it
    HEIF_SUPPORTED = False

HEIF_EXTENSIONS = {".heic", ".heif"}
SUPPORTED_EXTENSIONS = {".jpg", ".jpeg", ".png"} | HEIF_EXTENSIONS
SUPPORTED_TEXT = "JPEG, PNG or HEIC"
IMAGES_JSON = "images.json"

MAX_PIXELS = 150_000_000
"""Largest image accepted (pixels, width x height, as stored in the file): above it the image is refused from its
header, without decoding it (a 13000 x 13000 PNG of one colour is 190 KB but would need 0.5 GB decoded)."""
REDUCE_ABOVE_PIXELS = 50_000_000
"""Images with more pixels are decoded and stored at half size (a 108 MP 12000 x 9000 photo becomes 6000 x 4500):
the features never look at more than 4096 px on the long side, and a full-size decode would cost 3 bytes per
pixel."""
DOWNSCALE_HINT_PX = 8000  # the long side suggested to the user for a refused image
# Pillow's own decompression-bomb guard (in Image.open) warns above MAX_IMAGE_PIXELS (default 89 MP) and refuses
# above twice that, with a text about "DOS attacks" that must not reach a user. Our limit is checked from the header
# first; Pillow's guard is moved above it (warns above 300 MP, refuses above 600 MP, both caught here) so that no
# accepted image ever triggers it elsewhere in the process.
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS

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

    ``name``: the file name in the run folder (the source's name; a HEIC/HEIF source is stored as ``<stem>.jpg``).
    ``width``/``height`` in px of the image as stored in the run folder (after EXIF orientation; half the source's
    size for sources above :data:`REDUCE_ABOVE_PIXELS`).
    ``focal_px``: focal-length prior in px; ``focal_source`` is ``"exif"`` (from FocalLengthIn35mmFilm, see
    :func:`focal_prior_px`) or ``"prior"`` (``default_focal_factor * max(width, height)``).
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
    # quarter-turns counter-clockwise the content shows against the collection (ImagesConfig.upright "auto", see
    # backend/io/upright.py); retrieval and the extractor see the photo turned back
    upright_turns: int = 0


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
    if mode in ("I;16", "I;16B", "I;16L"):  # integer arithmetic: 4 bytes per pixel, not 8 (x / 257, rounded)
        arr8 = ((np.asarray(img).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB"), f"{mode} -> 8-bit RGB"
    if mode in ("I", "F"):
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


FRAME_35MM_DIAGONAL_MM = 43.27  # diagonal of the 36 x 24 mm frame


def focal_prior_px(f35_mm: float | None, width: int, height: int, default_factor: float) -> tuple[float, str]:
    """Focal-length prior in px of a ``width`` x ``height`` px image.

    With the EXIF FocalLengthIn35mmFilm tag (0xA405, mm), ``f_px = f35 / 43.27 * hypot(width, height)``: the
    tag is defined by the angle of view (CIPA DC-004 / Exif 2.3: the focal length that gives the same *diagonal*
    angle of view on a 36 x 24 mm frame, whose diagonal is 43.27 mm), so the image diagonal is the right reference
    whatever the aspect ratio (``f35 / 36 * max(width, height)`` would be right only for 3:2 images, and 4% short
    for the 4:3 of most phones). Without it (or with 0), ``default_factor * max(width, height)`` (COLMAP's prior).

    Returns:
        ``(focal_px, source)`` with ``source`` ``"exif"`` or ``"prior"``.
    """
    if f35_mm and f35_mm > 0:
        return f35_mm / FRAME_35MM_DIAGONAL_MM * math.hypot(width, height), "exif"
    return default_factor * max(width, height), "prior"


def pixel_limit_problem(width: int, height: int) -> str:
    """The reason shown to the user when a ``width`` x ``height`` px image is above :data:`MAX_PIXELS`, else ''."""
    if width * height <= MAX_PIXELS:
        return ""
    return (f"image is {width * height / 1e6:.0f} MP ({width}x{height} px), above the {MAX_PIXELS // 10**6} MP "
            f"limit: downscale it, e.g. to {DOWNSCALE_HINT_PX} px on the long side, and add it again")


def _bomb_reason(e: Exception) -> str:
    """Pillow's decompression-bomb error (an image far above our limit) in the words of :func:`pixel_limit_problem`."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{int(m.group(1)) / 1e6:.0f} MP" if m else f"more than {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} MP"
    return (f"image is {size}, above the {MAX_PIXELS // 10**6} MP limit: downscale it, e.g. to "
            f"{DOWNSCALE_HINT_PX} px on the long side, and add it again")


def _open(src) -> Image.Image:
    """``Image.open`` (reads the header only) without Pillow's decompression-bomb warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(src)


def header_problem(src: Union[bytes, BinaryIO, Path]) -> str:
    """Why an image would be refused from its header alone (more than :data:`MAX_PIXELS`), else ''.

    Reads only the header (no pixel is decoded). A file whose header cannot be read gives '' here: the images
    stage reports it with its reason.

    Args:
        src: the file's bytes, a binary file object (read from its current position, rewound afterwards) or a
            path.
    """
    import io

    f = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
    pos = f.tell() if hasattr(f, "tell") else None
    try:
        with _open(f) as img:
            return pixel_limit_problem(*img.size)
    except Image.DecompressionBombError as e:
        return _bomb_reason(e)
    except Exception:  # noqa: BLE001 - not readable as an image: the images stage says why
        return ""
    finally:
        if pos is not None:
            try:
                f.seek(pos)
            except (OSError, ValueError):
                pass


def stored_name(path: Path) -> str:
    """The name of ``path``'s copy in the run folder: the same name, except ``<stem>.jpg`` for HEIC/HEIF."""
    p = Path(path)
    return f"{p.stem}.jpg" if p.suffix.lower() in HEIF_EXTENSIONS else p.name


def validate_image(path: Path, out_dir: Path, cfg: ImagesConfig, out_name: str | None = None) -> ImageInfo:
    """Read one image, write its validated copy into ``out_dir`` and return its :class:`ImageInfo`.

    The size is checked from the header first (more than :data:`MAX_PIXELS`: refused, nothing decoded). JPEG
    (and MPO: its first frame) is copied byte for byte when nothing has to change; an image above
    :data:`REDUCE_ABOVE_PIXELS` is decoded at half size (JPEG: by the decoder, so peak memory is that of the
    half-size image) and re-encoded; HEIC/HEIF is decoded (its orientation applied) and written as JPEG.

    Args:
        path: source image.
        out_dir: the run's ``images/`` folder.
        cfg: background colour for transparency and the default focal factor.
        out_name: the file name in ``out_dir`` (default :func:`stored_name`).

    Raises:
        ValueError: the file is empty, not an image, of an unsupported format, above the pixel limit, too small,
            or truncated/corrupt (the message is the reason shown to the user).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    name = out_name or stored_name(path)
    reduced = False
    try:
        with _open(path) as img:
            fmt = img.format
            w0, h0 = img.size
            too_big = pixel_limit_problem(w0, h0)
            if too_big:
                raise ValueError(too_big)
            if fmt not in ("JPEG", "MPO", "PNG", "HEIF"):
                raise ValueError(f"unsupported image format {fmt} (use {SUPPORTED_TEXT})")
            if w0 * h0 > REDUCE_ABOVE_PIXELS and isinstance(img, JpegImageFile):
                img.draft("RGB", (w0 // 2, h0 // 2))  # DCT scaling: the decoder writes the half-size image only
                reduced = img.size != (w0, h0)
            img.load()  # decode fully: truncated or corrupt data fails here
            make, model, focal, f35, orientation = _exif_fields(img)
            sixteen = fmt == "PNG" and _is_16bit_png(path)
            oriented = ImageOps.exif_transpose(img) if orientation != 1 else img
            rgb, conversion = _to_rgb8(oriented, cfg.background)
            if sixteen and not conversion:
                conversion = "16-bit -> 8-bit RGB"
            if w0 * h0 > REDUCE_ABOVE_PIXELS and not reduced:
                rgb, reduced = rgb.reduce(2), True
    except UnidentifiedImageError:
        hint = "" if HEIF_SUPPORTED or path.suffix.lower() not in HEIF_EXTENSIONS else \
            " (HEIC needs the pillow-heif package on the server)"
        raise ValueError(f"not an image (the file is not a readable {SUPPORTED_TEXT} image){hint}") from None
    except Image.DecompressionBombError as e:
        raise ValueError(_bomb_reason(e)) from None
    except (OSError, SyntaxError):  # Pillow's text ("image file is truncated (3 bytes not processed)") says less
        raise ValueError("corrupt or truncated image: the file is damaged or incomplete; copy or export it "
                         "again") from None
    notes = []
    if fmt == "HEIF":
        notes.append("HEIF -> JPEG")
    if orientation != 1:
        notes.append(f"EXIF orientation {orientation} applied")
    if reduced:
        notes.append(f"{w0}x{h0} px ({w0 * h0 / 1e6:.0f} MP) stored at half size (above "
                     f"{REDUCE_ABOVE_PIXELS // 10**6} MP)")
    conversion = ", ".join(c for c in [*notes, conversion] if c)
    w, h = rgb.size
    if min(w, h) < 16:
        raise ValueError(f"image too small ({w}x{h} px)")
    dst = out_dir / name
    if conversion:
        if fmt == "PNG":
            rgb.save(dst, "PNG")
        else:
            rgb.save(dst, "JPEG", quality=95, subsampling=0)
    elif path.resolve() != dst.resolve():
        shutil.copyfile(path, dst)
    focal_px, source = focal_prior_px(f35, w, h, cfg.default_focal_factor)
    return ImageInfo(
        name=name,
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
            skipped.append(SkippedFile(p.name, f"unsupported file type '{p.suffix or 'none'}' "
                                               f"(use {SUPPORTED_TEXT})"))
    return files, skipped


def _stored_names(files: list[Path]) -> dict[Path, str]:
    """Run-folder name of each file: its own, or ``<stem>.jpg`` for HEIC/HEIF, made unique (case-insensitively)
    against every other file's name (``IMG_1.heic`` beside ``IMG_1.jpg`` becomes ``IMG_1_heic.jpg``)."""
    used = {p.name.lower() for p in files if p.suffix.lower() not in HEIF_EXTENSIONS}
    out = {}
    for p in files:
        name = stored_name(p)
        if p.suffix.lower() in HEIF_EXTENSIONS:
            stem, k = Path(name).stem, 1
            if name.lower() in used:
                name = f"{stem}_heic.jpg"
            while name.lower() in used:
                k += 1
                name = f"{stem}_heic{k}.jpg"
            used.add(name.lower())
        out[p] = name
    return out


def _duplicates(files: list[Path]) -> dict[Path, str]:
    """``{file: name of the first (by name) byte-identical file}`` for every later copy; only files of equal size
    are hashed."""
    by_size: dict[int, list[Path]] = {}
    for p in files:
        try:
            by_size.setdefault(p.stat().st_size, []).append(p)
        except OSError:
            pass
    out: dict[Path, str] = {}
    for size, group in by_size.items():
        if len(group) < 2 or size == 0:
            continue
        first: dict[str, str] = {}
        for p in group:
            try:
                digest = file_sha256(p)
            except OSError:
                continue
            if digest in first:
                out[p] = first[digest]
            else:
                first[digest] = p.name
    return out


def run_images(
    images_dir: Path,
    run_dir: Path,
    cfg: ImagesConfig,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Validate every image in ``images_dir`` into ``run_dir/images`` and write ``run_dir/images.json``; with
    ``cfg.upright == "auto"`` also find each photo's quarter-turn against the others (``upright_turns``, see
    :mod:`backend.io.upright`).

    Returns the parsed ``images.json``: ``{"images": [ImageInfo...], "skipped": [SkippedFile...]}``. Of
    byte-identical files the first by name is used; the others are skipped as ``identical to <name>``.

    Raises:
        InputError: fewer than two usable images (the message lists why files were skipped).
    """
    out_dir = Path(run_dir) / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = list_candidates(Path(images_dir))
    names = _stored_names(files)
    copies = _duplicates(files)
    infos: list[ImageInfo] = []
    for i, p in enumerate(files):
        try:
            if p in copies:
                raise ValueError(f"identical to {copies[p]} (the same photo twice: only {copies[p]} is used)")
            infos.append(validate_image(p, out_dir, cfg, names[p]))
        except ValueError as e:
            skipped.append(SkippedFile(p.name, str(e)))
        if progress:
            progress(i + 1, len(files), p.name)
    if cfg.upright == "auto" and len(infos) >= 2:
        from .upright import estimate_upright

        found = estimate_upright([out_dir / i.name for i in infos], progress)
        for i in infos:
            i.upright_turns = found[i.name]["turns"]
    result = {"images": [asdict(i) for i in infos], "skipped": [asdict(s) for s in skipped]}
    (Path(run_dir) / IMAGES_JSON).write_text(json.dumps(result, indent=1))
    if len(infos) < 2:
        why = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
        raise InputError(
            f"{len(infos)} usable image(s): a reconstruction needs at least 2 {SUPPORTED_TEXT} photos "
            f"of the same scene" + (f" (skipped: {why})" if why else "")
        )
    return result


def load_images_json(run_dir: Path) -> dict:
    """The ``images.json`` of a run."""
    return json.loads((Path(run_dir) / IMAGES_JSON).read_text())


def upright_turns(run_dir: Path) -> dict[str, int]:
    """``{name: quarter-turns}`` of the photos found turned (``ImageInfo.upright_turns`` != 0) in a run's
    ``images.json``; {} when none is (or the run predates the field)."""
    return {i["name"]: int(i.get("upright_turns", 0)) for i in load_images_json(run_dir)["images"]
            if int(i.get("upright_turns", 0)) % 4}


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


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 (64 characters) of a file's bytes: the content key of an input photo for the caches, so that a
    photo replaced by another of the same name, size and modification time is still seen as changed.

    Raises:
        OSError: the file cannot be read.
    """
    from .weights import sha256_of  # one implementation for photos and weight files

    return sha256_of(path, chunk)
