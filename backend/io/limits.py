"""How large a photo may be, read from its header before any pixel is decoded: the pixel cap, the decode-size
cap and the reasons shown to a user (with what to do) when a photo is above one. Uploads, the API and the images
stage all check here first, so no request can make the server decode more than :data:`MAX_DECODE_BYTES` per photo.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

try:  # HEIC/HEIF (iPhone photos); pinned in requirements.txt
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - the pinned stack has it
    HEIF_SUPPORTED = False

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
# Pillow's own decompression-bomb guard (in Image.open) warns above MAX_IMAGE_PIXELS (default 89 MP) and refuses
# above twice that, with a text about "DOS attacks" that must not reach a user. Our limit is checked from the header
# first; Pillow's guard is moved above it (warns above 300 MP, refuses above 600 MP, both caught here) so that no
# accepted image ever triggers it elsewhere in the process.
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS


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
