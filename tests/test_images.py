"""Image reading: bit depths, alpha, EXIF orientation and focal length; phone formats (MPO, HEIC); the pixel cap
and reduced decoding of large photos; duplicates; the keypoint pixel convention."""

from __future__ import annotations

import shutil
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from backend.config import ImagesConfig
from backend.io.images import header_problem, load_rgb, run_images, validate_image


def _checker(w=64, h=48):
    y, x = np.mgrid[0:h, 0:w]
    return (((x // 8 + y // 8) % 2) * 200 + 20).astype(np.uint8)


def test_16bit_grayscale_png_becomes_8bit_rgb(tmp_path):
    arr16 = (_checker().astype(np.uint16) * 257)
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    out = tmp_path / "out"
    out.mkdir()
    info = validate_image(tmp_path / "g16.png", out, ImagesConfig())
    img = np.asarray(Image.open(out / "g16.png"))
    assert img.dtype == np.uint8 and img.shape == (48, 64, 3)
    assert np.abs(img[..., 0].astype(int) - _checker()).max() <= 1
    assert info.conversion


def test_rgba_is_composited_onto_the_background(tmp_path):
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 32:, 3] = 255  # right half opaque red, left half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    for bg, value in [("white", 255), ("black", 0)]:
        out = tmp_path / bg
        out.mkdir()
        validate_image(tmp_path / "a.png", out, ImagesConfig(background=bg))
        img = np.asarray(Image.open(out / "a.png"))
        assert tuple(img[10, 5]) == (value, value, value)
        assert tuple(img[10, 50]) == (255, 0, 0)


def test_exif_orientation_and_focal_length(tmp_path):
    img = Image.fromarray(np.stack([_checker()] * 3, -1))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "TestMake"
    exif.get_ifd(0x8769)[0xA405] = 28  # 35 mm equivalent focal length
    exif.get_ifd(0x8769)[0x920A] = 4.2
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    out.mkdir()
    info = validate_image(tmp_path / "rot.jpg", out, ImagesConfig())
    assert (info.width, info.height) == (48, 64)  # portrait after applying the orientation
    # 35 mm equivalent against the 43.27 mm diagonal of the 36 x 24 mm frame: 28 / 43.27 * hypot(48, 64) = 51.77
    assert info.focal_source == "exif" and info.focal_px == pytest.approx(51.768, abs=1e-3)
    assert info.make == "TestMake" and info.exif_focal_mm == pytest.approx(4.2)
    assert Image.open(out / "rot.jpg").size == (48, 64)


def test_focal_prior_without_exif(tmp_path):
    Image.fromarray(_checker(100, 50)).save(tmp_path / "a.png")
    Image.fromarray(_checker(100, 50) + 1).save(tmp_path / "b.png")  # not byte-identical (that would be skipped)
    res = run_images(tmp_path, tmp_path / "run", ImagesConfig())
    assert [i["focal_px"] for i in res["images"]] == [pytest.approx(120.0)] * 2
    assert all(i["focal_source"] == "prior" and i["conversion"] for i in res["images"])  # L -> RGB


# ---- focal prior from the 35 mm equivalent ------------------------------------------------------------------------

def _exif_jpeg(path, w, h, f35=None, orientation=None):
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    if f35 is not None:
        exif.get_ifd(0x8769)[0xA405] = f35
    Image.new("RGB", (w, h), (90, 120, 150)).save(path, exif=exif)


@pytest.mark.parametrize("w, h, f35, expected", [
    (400, 300, 26, 300.439),   # 4:3 phone: 26 / 43.27 * 500
    (360, 240, 50, 499.961),   # 3:2: about 50 / 36 * 360 = 500 (the two conventions agree only here)
    (300, 400, 26, 300.439),   # portrait: the diagonal does not care
])
def test_focal_from_35mm_equivalent_uses_the_diagonal(tmp_path, w, h, f35, expected):
    _exif_jpeg(tmp_path / "a.jpg", w, h, f35)
    out = tmp_path / "out"
    out.mkdir()
    info = validate_image(tmp_path / "a.jpg", out, ImagesConfig())
    assert info.focal_source == "exif" and info.focal_px == pytest.approx(expected, abs=1e-3)


def test_focal_without_35mm_tag_falls_back_to_the_prior(tmp_path):
    _exif_jpeg(tmp_path / "a.jpg", 400, 300, f35=0)  # present but 0 (unknown): the prior
    out = tmp_path / "out"
    out.mkdir()
    info = validate_image(tmp_path / "a.jpg", out, ImagesConfig())
    assert info.focal_source == "prior" and info.focal_px == pytest.approx(480.0)


# ---- phone formats --------------------------------------------------------------------------------------------------

def _marked(w=64, h=48) -> Image.Image:
    """Dark grey image with a white 10x10 block in the top-left corner (shows the orientation)."""
    a = np.full((h, w, 3), 40, np.uint8)
    a[:10, :10] = 255
    return Image.fromarray(a)


def test_mpo_phone_photo_uses_its_first_frame(tmp_path):
    """Dual-frame / Ultra HDR JPEGs open as MPO in Pillow: accepted, first frame, copied byte for byte."""
    src = tmp_path / "in"
    src.mkdir()
    gain_map = Image.new("RGB", (32, 24), (0, 255, 0))
    _marked().save(src / "plain.jpg", format="MPO", save_all=True, append_images=[gain_map], quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    _marked().save(src / "rot.jpg", format="MPO", save_all=True, append_images=[gain_map], exif=exif,
                   quality=95)
    with Image.open(src / "plain.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    res = run_images(src, tmp_path / "run", ImagesConfig())
    got = {i["name"]: i for i in res["images"]}
    assert res["skipped"] == []
    assert (got["plain.jpg"]["width"], got["plain.jpg"]["height"]) == (64, 48)
    assert got["plain.jpg"]["conversion"] == ""
    assert (tmp_path / "run/images/plain.jpg").read_bytes() == (src / "plain.jpg").read_bytes()
    assert (got["rot.jpg"]["width"], got["rot.jpg"]["height"]) == (48, 64)
    assert got["rot.jpg"]["conversion"] == "EXIF orientation 6 applied"
    a, _, _ = load_rgb(tmp_path / "run/images/plain.jpg")
    assert a.shape == (48, 64, 3) and a[3, 3].min() > 200 and a[3, 60].max() < 80 and a[30, 30, 1] < 80  # frame 0
    r, _, _ = load_rgb(tmp_path / "run/images/rot.jpg")
    assert r.shape == (64, 48, 3) and r[3, 44].min() > 200 and r[3, 3].max() < 80  # rotated 90 degrees clockwise


def test_heic_is_read_oriented_and_stored_as_jpeg(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    assert pillow_heif.__version__ == "1.8.1"
    exif = Image.Exif()
    exif[0x0112] = 6  # iPhone portrait shot: stored landscape, shown rotated 90 degrees clockwise
    exif.get_ifd(0x8769)[0xA405] = 26
    src = tmp_path / "in"
    src.mkdir()
    _marked().save(src / "IMG_0001.HEIC", format="HEIF", exif=exif.tobytes(), quality=95)
    _marked().save(src / "IMG_0002.heic", format="HEIF", quality=95)
    _marked(80, 60).save(src / "IMG_0002.jpg", quality=95)  # same stem as a HEIC: the HEIC gets another name
    res = run_images(src, tmp_path / "run", ImagesConfig())
    got = {i["name"]: i for i in res["images"]}
    assert sorted(got) == ["IMG_0001.jpg", "IMG_0002.jpg", "IMG_0002_heic.jpg"] and res["skipped"] == []
    one = got["IMG_0001.jpg"]
    assert (one["width"], one["height"]) == (48, 64) and "HEIF -> JPEG" in one["conversion"]
    assert one["focal_source"] == "exif" and one["focal_px"] == pytest.approx(26 / 43.27 * 80, abs=1e-3)
    assert one["source"].endswith("IMG_0001.HEIC")
    with Image.open(tmp_path / "run/images/IMG_0001.jpg") as im:
        assert im.format == "JPEG" and im.size == (48, 64)
        a = np.asarray(im.convert("RGB"))
    assert a[3, 44].min() > 200 and a[3, 3].max() < 80  # the white corner moved to the top right
    assert (got["IMG_0002_heic.jpg"]["width"], got["IMG_0002_heic.jpg"]["height"]) == (64, 48)
    assert (got["IMG_0002.jpg"]["width"], got["IMG_0002.jpg"]["height"]) == (80, 60)


# ---- pixel cap and reduced decoding -----------------------------------------------------------------------------

def one_colour_png(path, w: int, h: int, value: int = 128, rows: int | None = None) -> None:
    """A grayscale PNG of one colour, written row by row (never ``w * h`` bytes in memory): 13000 x 13000 is
    190 KB on disk but 169 MP decoded. ``rows``: write only that many rows of data (a header-only bomb)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + bytes([value]) * w
    data = b"".join([comp.compress(row) for _ in range(h if rows is None else rows)] + [comp.flush()])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_pixel_bomb_png_is_refused_from_its_header(tmp_path):
    one_colour_png(tmp_path / "bomb.png", 13000, 13000)
    assert (tmp_path / "bomb.png").stat().st_size < 300_000
    out = tmp_path / "out"
    out.mkdir()
    t = time.perf_counter()
    with pytest.raises(ValueError) as e:
        validate_image(tmp_path / "bomb.png", out, ImagesConfig())
    assert time.perf_counter() - t < 0.5  # nothing decoded (decoding 169 MP takes seconds and 169 MB+)
    msg = str(e.value)
    assert msg == ("image is 169 MP (13000x13000 px), above the 150 MP limit: downscale it, e.g. to 8000 px on the "
                   "long side, and add it again")
    assert header_problem((tmp_path / "bomb.png").read_bytes()) == msg
    assert list(out.iterdir()) == []
    # far beyond: Pillow's own guard fires inside Image.open; its "decompression bomb DOS attack" text never shows
    one_colour_png(tmp_path / "giant.png", 40000, 40000, rows=10)
    with pytest.raises(ValueError) as e:
        validate_image(tmp_path / "giant.png", out, ImagesConfig())
    assert "1600 MP" in str(e.value) and "150 MP limit" in str(e.value)
    assert "DOS" not in str(e.value) and "bomb" not in str(e.value).lower()
    assert header_problem(tmp_path / "giant.png") == str(e.value)
    # at the limit: fine
    assert header_problem(_png_bytes_header(12247, 12247)) == ""


def _png_bytes_header(w, h) -> bytes:
    """Only the signature and IHDR of a w x h PNG (enough for a header check)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF))


def test_large_jpeg_is_decoded_at_half_size_in_draft_mode(tmp_path, monkeypatch):
    """A 108 MP (12000 x 9000) phone photo: the JPEG decoder scales it by 1/2 (draft mode), so the full-size pixels
    never exist in memory; it is stored at 6000 x 4500."""
    Image.new("L", (12000, 9000), 120).save(tmp_path / "big.jpg", quality=80)
    calls = []
    real = JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((mode, size))
        return real(self, mode, size)

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    out = tmp_path / "out"
    out.mkdir()
    info = validate_image(tmp_path / "big.jpg", out, ImagesConfig())
    assert calls == [("RGB", (6000, 4500))]
    assert (info.width, info.height) == (6000, 4500)
    assert info.conversion.startswith("12000x9000 px (108 MP) stored at half size (above 50 MP)")
    assert info.focal_px == pytest.approx(1.2 * 6000)
    with Image.open(out / "big.jpg") as im:
        assert im.size == (6000, 4500)


def test_large_png_is_stored_at_half_size(tmp_path):
    one_colour_png(tmp_path / "wide.png", 10000, 5200)  # 52 MP
    out = tmp_path / "out"
    out.mkdir()
    info = validate_image(tmp_path / "wide.png", out, ImagesConfig())
    assert (info.width, info.height) == (5000, 2600) and "stored at half size" in info.conversion
    with Image.open(out / "wide.png") as im:
        assert im.size == (5000, 2600) and im.getpixel((10, 10)) == (128, 128, 128)


# ---- duplicates ---------------------------------------------------------------------------------------------------

def test_byte_identical_photos_are_used_once(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_checker(64, 48)).save(src / "a.jpg", quality=90)
    shutil.copy(src / "a.jpg", src / "b_copy.jpg")
    shutil.copy(src / "a.jpg", src / "c_copy.jpg")
    Image.fromarray(_checker(64, 48)).save(src / "d.jpg", quality=70)  # same picture, other bytes: kept
    res = run_images(src, tmp_path / "run", ImagesConfig())
    assert [i["name"] for i in res["images"]] == ["a.jpg", "d.jpg"]
    assert res["skipped"] == [
        {"name": "b_copy.jpg", "reason": "identical to a.jpg (the same photo twice: only a.jpg is used)"},
        {"name": "c_copy.jpg", "reason": "identical to a.jpg (the same photo twice: only a.jpg is used)"},
    ]
