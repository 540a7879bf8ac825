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

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import ImagesConfig
from ..errors import InputError  # noqa: F401 - raised here, importable from here as before
from ..utils.hashing import file_sha256  # noqa: F401 - a photo's content key; importable from here as before
from ..utils.memory import RELEASE_ABOVE_BYTES, release_memory  # noqa: F401 - importable from here as before
from .decode import load_rgb  # noqa: F401 - the photos' decoder, importable from here as before
from .gps import read_exif_gps
from .limits import (HEIF_SUPPORTED, MAX_DECODE_BYTES, MAX_PIXELS, REDUCE_ABOVE_PIXELS, DecodeSize,  # noqa: F401
                     _bomb_reason, _open, _read_head, _reduced_by_decoder, decode_limit_problem, decode_size,
                     header_problem, pixel_limit_problem)
from .upright import estimate_upright
from .video import is_video

HEIF_EXTENSIONS = {".heic", ".heif"}
SUPPORTED_EXTENSIONS = {".jpg", ".jpeg", ".png"} | HEIF_EXTENSIONS
SUPPORTED_TEXT = "JPEG, PNG or HEIC"
VIDEO_FRAMES_DIR = "video_frames"  # <run>/video_frames/: the frames kept of each video (backend/io/video.py)
IMAGES_JSON = "images.json"

STRIP_ROWS = 256  # rows converted at a time (a 12000 px wide RGBA strip is 12 MB)

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
    # EXIF GPS: [latitude, longitude (deg, WGS84), altitude (m) or None], None without one (backend/io/gps.py)
    gps: list | None = None


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
            gps = read_exif_gps(img)
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
        gps=gps,
    )


def list_candidates(images_dir: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Files in ``images_dir`` (not recursive) with a photo's or a video's extension, and the others as skipped.

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
        elif p.suffix.lower() in SUPPORTED_EXTENSIONS or is_video(p):
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

    Returns the parsed ``images.json``: ``{"images": [ImageInfo...], "skipped": [SkippedFile...]}``, and
    ``"videos": [VideoFrames...]`` when the folder holds videos (each becomes its sharpest frames,
    :mod:`backend.io.video`; the frames are then validated as photos). Of byte-identical files the first by name
    is used; the others are skipped as ``identical to <name>``.

    Raises:
        InputError: fewer than two usable images (the message lists why files were skipped).
    """
    out_dir = Path(run_dir) / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = list_candidates(Path(images_dir))
    files, videos = _frames_of_videos(files, Path(run_dir) / VIDEO_FRAMES_DIR, skipped, progress)
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
    if videos:
        result["videos"] = [v.to_dict() for v in videos]
    (Path(run_dir) / IMAGES_JSON).write_text(json.dumps(result, indent=1))
    if len(infos) < 2:
        why = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
        raise InputError(
            f"{len(infos)} usable image(s): a reconstruction needs at least 2 {SUPPORTED_TEXT} photos "
            f"of the same scene" + (f" (skipped: {why})" if why else "")
        )
    return result


def _frames_of_videos(files: list[Path], frames_dir: Path, skipped: list[SkippedFile],
                      progress: Callable[[int, int, str], None] | None) -> tuple[list[Path], list]:
    """``files`` with each video replaced by its kept frames (written into ``frames_dir/<video stem>/``), and
    the :class:`~backend.io.video.VideoFrames` of each video. A video that cannot be read is added to
    ``skipped`` with the reason."""
    from .video import extract_frames

    photos, videos = [], []
    for p in files:
        if not is_video(p):
            photos.append(p)
            continue
        d = frames_dir / p.stem
        shutil.rmtree(d, ignore_errors=True)  # a re-run of the stage samples again
        try:
            v = extract_frames(p, d, progress=progress)
        except ValueError as e:
            skipped.append(SkippedFile(p.name, str(e)))
            continue
        videos.append(v)
        photos += [d / k["name"] for k in v.kept]
    return photos, videos


def load_images_json(run_dir: Path) -> dict:
    """The ``images.json`` of a run."""
    return json.loads((Path(run_dir) / IMAGES_JSON).read_text())


def upright_turns(run_dir: Path) -> dict[str, int]:
    """``{name: quarter-turns}`` of the photos found turned (``ImageInfo.upright_turns`` != 0) in a run's
    ``images.json``; {} when none is (or the run predates the field)."""
    return {i["name"]: int(i.get("upright_turns", 0)) for i in load_images_json(run_dir)["images"]
            if int(i.get("upright_turns", 0)) % 4}



