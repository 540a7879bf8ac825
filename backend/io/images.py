"""Stage 1: read and validate the input photos.

Reads JPEG (also multi-picture JPEGs, which Pillow opens as ``MPO``: dual-frame and Ultra HDR phone photos; the
first frame is used), PNG (8- and 16-bit, grayscale, palette, RGBA composited onto the configured background)
and HEIC/HEIF (iPhone photos, through ``pillow-heif``; written into the run as JPEG), applies the EXIF
orientation, and reads the EXIF focal length. Every usable image is written into ``<run>/images/``
(byte-identical when no conversion is needed), and ``<run>/images.json`` lists the images with their size and
focal-length prior, and every skipped file with the reason (byte-identical duplicates are skipped too).

Limits (checked from the file header, before anything is decoded): an image of more than :data:`MAX_PIXELS`
(150 MP) is refused; one of more than :data:`REDUCE_ABOVE_PIXELS` (50 MP) is decoded and stored at half size (JPEG:
decoded at 1/2 scale by the decoder itself, so the full-size pixels never exist in memory; PNG/HEIF: decoded, then
halved); and an image whose decode would take more than :data:`MAX_DECODE_BYTES` (width x height x channels x bytes
per sample, at the size the decoder produces) is refused with what to do (a 16-bit RGBA PNG of 149 MP is 1.2 GB of
samples in a 1.2 MB file). Conversions (16-bit, alpha, palette, CMYK, halving) run in strips of
:data:`STRIP_ROWS` rows, so they add at most the converted image to the decoded one, and the memory of a large
decode is handed back to the operating system afterwards (:func:`release_memory`).
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import re
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from ..config import ImagesConfig
from ..errors import InputError  # noqa: F401 - raised here, importable from here as before
from ..utils.hashing import file_sha256  # noqa: F401 - a photo's content key; importable from here as before
from .decode import load_rgb  # noqa: F401 - the photos' decoder, importable from here as before
from .upright import estimate_upright

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
MAX_DECODE_BYTES = 300_000_000
"""Largest decode accepted, in bytes of samples: width x height x channels x bytes per sample (2 for 16-bit, else
1), read from the header, at the size the decoder produces (a JPEG above :data:`REDUCE_ABOVE_PIXELS` counts at half
size, since it is decoded so). 300 MB is an 8-bit RGB image of 100 MP, the largest camera sensors' class: every
JPEG under the pixel cap fits (decoded at half size above 50 MP), as do 8-bit RGB PNG/HEIC up to 100 MP, 8-bit RGBA
up to 75 MP, 16-bit RGB up to 50 MP and any grayscale image under the pixel cap; what is refused is a PNG or HEIC
that asks for more (the issue's 149 MP 16-bit RGBA PNG: 1.19 GB; a 144 MP RGB PNG: 432 MB). Pillow holds RGB and
RGBA in 4 bytes per pixel (16-bit samples decoded to 8), so an accepted photo costs at most about 400 MB decoded
plus its converted copy (at most a quarter of that when halved); the measured peaks are in bench/NOTES.md."""
STRIP_ROWS = 256  # rows converted at a time (a 12000 px wide RGBA strip is 12 MB)
RELEASE_ABOVE_BYTES = 32 * 2**20  # decodes larger than this hand their memory back to the OS afterwards
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


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the transpose that shows the image upright


def _strip_to_rgb8(strip: Image.Image, mode: str, bg: tuple[int, int, int], scale16: float) -> Image.Image:
    """One strip of an image in PIL ``mode`` as 8-bit RGB (transparency composited onto ``bg``)."""
    if mode in ("I;16", "I;16B", "I;16L"):  # integer arithmetic on the strip only (x / 257, rounded)
        arr8 = ((np.asarray(strip).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode in ("I", "F"):
        arr8 = np.clip(np.round(np.asarray(strip).astype(np.float64) * scale16), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P" and "transparency" in strip.info:
        strip = strip.convert("RGBA")
    if strip.mode in ("RGBA", "LA", "PA"):
        rgba = strip.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, bg + (255,)), rgba).convert("RGB")
    return strip if strip.mode == "RGB" else strip.convert("RGB")


def _to_rgb8(img: Image.Image, background: str, half: bool = False) -> tuple[Image.Image, str]:
    """Convert any PIL mode to 8-bit RGB, halved (``Image.reduce(2)``, box average) when ``half``. Returns the image
    and a description of the conversion ("" when ``img`` is returned as it is).

    Works in strips of :data:`STRIP_ROWS` rows, so the memory it adds is the output image plus one strip (converting
    the whole image at once cost up to four full-size copies: RGBA, canvas, composite, RGB)."""
    mode = img.mode
    if mode == "RGB" and not half:
        return img, ""
    bg = (255, 255, 255) if background == "white" else (0, 0, 0)
    scale16 = 1.0
    if mode in ("I", "F"):
        lo, hi = img.getextrema()
        scale16 = 255.0 / 65535.0 if hi > 255 else 1.0
    w, h = img.size
    out = Image.new("RGB", ((w + 1) // 2, (h + 1) // 2) if half else (w, h))
    for y in range(0, h, STRIP_ROWS):  # STRIP_ROWS is even: the halved strips tile the halved image exactly
        rgb = _strip_to_rgb8(img.crop((0, y, w, min(h, y + STRIP_ROWS))), mode, bg, scale16)
        if half:
            rgb = rgb.reduce(2)
        out.paste(rgb, (0, y // 2 if half else y))
        del rgb
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        desc = f"{mode} -> 8-bit RGB"
    elif mode == "P" and "transparency" in img.info:
        desc = f"RGBA(P) composited onto {background}"
    elif mode in ("RGBA", "LA", "PA"):
        desc = f"{mode} composited onto {background}"
    elif mode == "RGB":
        desc = ""
    else:
        desc = f"{mode} -> RGB"
    return out, desc


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


_PNG_COLOUR = {0: (1, "grayscale"), 2: (3, "RGB"), 3: (1, "palette"), 4: (2, "grayscale + alpha"), 6: (4, "RGBA")}


@dataclass
class DecodeSize:
    """What decoding an image takes, from its header alone.

    ``width`` x ``height``: px the decoder produces (a JPEG decoded in draft mode: the reduced size);
    ``channels``: samples per pixel in the file (palette: 1); ``bytes_per_sample``: 2 for 16-bit (or deeper)
    samples, else 1; ``layout``: e.g. ``"16-bit RGBA"``; ``alpha``: the image has a transparency channel.
    """

    width: int
    height: int
    channels: int
    bytes_per_sample: int
    layout: str
    alpha: bool = False

    @property
    def bytes(self) -> int:
        """width x height x channels x bytes per sample (the samples the decode produces at full precision)."""
        return self.width * self.height * self.channels * self.bytes_per_sample


def decode_size(img: Image.Image, head: bytes = b"") -> DecodeSize:
    """:class:`DecodeSize` of an opened (not yet loaded) image.

    Args:
        img: from ``Image.open`` (header read, no pixel decoded); for a JPEG after any ``draft`` call.
        head: the file's first 32 bytes; a PNG's bit depth and colour type are read from its IHDR there
            (Pillow's mode hides them: a 16-bit RGBA PNG opens as ``RGBA``). Without it a PNG counts as 8-bit.
    """
    w, h = img.size
    if img.format == "PNG" and len(head) >= 26 and head[12:16] == b"IHDR":
        bits, ctype = head[24], head[25]
        channels, name = _PNG_COLOUR.get(ctype, (len(img.getbands()), img.mode))
        return DecodeSize(w, h, channels, 2 if bits > 8 else 1, f"{bits}-bit {name}", alpha=ctype in (4, 6))
    bands = img.getbands()
    bits = int(img.info.get("bit_depth", 8) or 8) if img.format == "HEIF" else 8
    return DecodeSize(w, h, len(bands), 2 if bits > 8 else 1, f"{bits}-bit {img.mode}", alpha="A" in bands)


def _fit_long_side(size: DecodeSize, bytes_per_pixel: int) -> int:
    """The long side (px, rounded down to 100) at which ``size``'s image fits :data:`MAX_DECODE_BYTES` with
    ``bytes_per_pixel``."""
    s = math.sqrt(MAX_DECODE_BYTES / (size.width * size.height * bytes_per_pixel))
    return max(100, int(max(size.width, size.height) * min(s, 1.0)) // 100 * 100)


def decode_limit_problem(size: DecodeSize) -> str:
    """The reason shown to the user when decoding ``size`` would take more than :data:`MAX_DECODE_BYTES`, else ''.

    The reason says what to do: save the image as 8-bit (and without transparency) when that is enough, or
    downscale it to a long side that fits (both are given when a 16-bit or transparent image needs both)."""
    if size.bytes <= MAX_DECODE_BYTES:
        return ""
    long_side = max(size.width, size.height)
    fixes = []
    if size.bytes_per_sample > 1 or size.alpha:
        colour = 1 if size.layout.endswith(("grayscale", "grayscale + alpha", " L", " LA")) else 3
        kind = ("8-bit grayscale" if colour == 1 else "8-bit RGB") + (" without transparency" if size.alpha else "")
        fit8 = _fit_long_side(size, colour)
        fixes.append(f"save it as {kind}" if fit8 >= long_side else
                     f"save it as {kind} at up to {fit8} px on the long side")
    fixes.append(f"downscale it to {_fit_long_side(size, size.channels * size.bytes_per_sample)} px on the long "
                 "side")
    return (f"image is {size.width}x{size.height} px, {size.layout}: decoding it takes "
            f"{size.bytes / 1e6:.0f} MB, above the {MAX_DECODE_BYTES // 10**6} MB limit per photo: "
            f"{' or '.join(fixes)}, and add it again")


def _reduced_by_decoder(img: Image.Image) -> bool:
    """Ask a JPEG (or MPO) above :data:`REDUCE_ABOVE_PIXELS` to decode at half size (draft mode: DCT scaling, the
    full-size pixels never exist in memory). Returns whether the decoder will produce the reduced size."""
    w0, h0 = img.size
    if w0 * h0 > REDUCE_ABOVE_PIXELS and isinstance(img, JpegImageFile):
        img.draft("RGB", (w0 // 2, h0 // 2))
        return img.size != (w0, h0)
    return False


def _read_head(src, n: int = 32) -> bytes:
    """The first ``n`` bytes of ``src`` (bytes, a binary file object rewound afterwards, or a path)."""
    if isinstance(src, (bytes, bytearray)):
        return bytes(src[:n])
    if hasattr(src, "read"):
        pos = src.tell()
        try:
            return src.read(n)
        finally:
            src.seek(pos)
    with open(src, "rb") as f:
        return f.read(n)


def header_problem(src: Union[bytes, BinaryIO, Path]) -> str:
    """Why an image would be refused from its header alone, else '': more than :data:`MAX_PIXELS`
    (:func:`pixel_limit_problem`), or a decode of more than :data:`MAX_DECODE_BYTES` (:func:`decode_limit_problem`;
    a large JPEG counts at the half size it is decoded at).

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
        head = _read_head(f)
        with _open(f) as img:
            too_big = pixel_limit_problem(*img.size)
            if too_big:
                return too_big
            _reduced_by_decoder(img)
            return decode_limit_problem(decode_size(img, head))
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

    The size is checked from the header first (more than :data:`MAX_PIXELS`, or a decode of more than
    :data:`MAX_DECODE_BYTES`: refused, nothing decoded). JPEG (and MPO: its first frame) is copied byte for byte
    when nothing has to change; an image above :data:`REDUCE_ABOVE_PIXELS` is decoded at half size (JPEG: by the
    decoder, so peak memory is that of the half-size image; PNG/HEIF: decoded, then halved strip by strip) and
    re-encoded; HEIC/HEIF is decoded (its orientation applied) and written as JPEG. After a decode of more than
    :data:`RELEASE_ABOVE_BYTES` the freed memory is handed back to the OS (:func:`release_memory`).

    Args:
        path: source image.
        out_dir: the run's ``images/`` folder.
        cfg: background colour for transparency and the default focal factor.
        out_name: the file name in ``out_dir`` (default :func:`stored_name`).

    Raises:
        ValueError: the file is empty, not an image, of an unsupported format, above the pixel limit or the decode
            limit (:data:`MAX_DECODE_BYTES`), too small, or truncated/corrupt (the message is the reason shown to
            the user, with what to do).
    """
    large: list[bool] = []
    try:
        return _validate_image(Path(path), out_dir, cfg, out_name, large)
    finally:
        if large:  # the decoded pixels are freed by now: give the pages back to the OS
            release_memory()


def _validate_image(path: Path, out_dir: Path, cfg: ImagesConfig, out_name: str | None,
                    large: list[bool]) -> ImageInfo:
    """:func:`validate_image`'s work; appends True to ``large`` once a decode above
    :data:`RELEASE_ABOVE_BYTES` starts."""
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    name = out_name or stored_name(path)
    head = _read_head(path)
    try:
        with _open(path) as img:
            fmt = img.format
            w0, h0 = img.size
            too_big = pixel_limit_problem(w0, h0)
            if too_big:
                raise ValueError(too_big)
            if fmt not in ("JPEG", "MPO", "PNG", "HEIF"):
                raise ValueError(f"unsupported image format {fmt} (use {SUPPORTED_TEXT})")
            reduced = _reduced_by_decoder(img)
            size = decode_size(img, head)
            too_big = decode_limit_problem(size)
            if too_big:  # PNG and HEIF cannot be decoded reduced: refused before any pixel is decoded
                raise ValueError(too_big)
            if size.bytes > RELEASE_ABOVE_BYTES:
                large.append(True)
            img.load()  # decode fully: truncated or corrupt data fails here
            make, model, focal, f35, orientation = _exif_fields(img)
            sixteen = fmt == "PNG" and size.bytes_per_sample == 2
            half = w0 * h0 > REDUCE_ABOVE_PIXELS and not reduced
            rgb, conversion = _to_rgb8(img, cfg.background, half=half)  # strip by strip
            reduced = reduced or half
            if sixteen and not conversion:
                conversion = "16-bit -> 8-bit RGB"
            if orientation in _TRANSPOSE:  # on the converted (and halved) copy: one transpose, of the smaller image
                rgb = rgb.transpose(_TRANSPOSE[orientation])
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
    if orientation in _TRANSPOSE:
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


def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS, Windows), looked up once."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        try:
            if platform.system() == "Linux" and os.confstr("CS_GNU_LIBC_VERSION"):
                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
                _MALLOC_TRIM.argtypes, _MALLOC_TRIM.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, ValueError, AttributeError):  # not glibc: nothing to trim
            _MALLOC_TRIM = False
    return _MALLOC_TRIM or None


_MALLOC_TRIM = None


def release_memory() -> bool:
    """Collect garbage, then hand the C heap's free pages back to the operating system (glibc ``malloc_trim(0)``).

    Why: a decoded photo is freed to the C allocator, which keeps the pages for reuse (Pillow allocates in 16 MB
    blocks, and after the first large free glibc serves such blocks from its heaps instead of fresh mappings), so
    a server that decoded a large photo kept its peak resident size for good (the Two-view page: 3.2 GB ten minutes
    later). Costs a few ms to a few tens of ms (one full ``gc.collect``); call it after large work, not per call.

    Returns:
        True when ``malloc_trim`` ran (glibc), False where only the garbage collection could run.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


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



