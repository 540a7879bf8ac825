"""Image reading: bit depths, alpha, EXIF orientation and focal length; the keypoint pixel convention."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.config import ImagesConfig
from backend.features import scale_keypoints, to_colmap_keypoints
from backend.images import run_images, validate_image


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
    assert info.focal_source == "exif" and info.focal_px == pytest.approx(28 / 36 * 64)
    assert info.make == "TestMake" and info.exif_focal_mm == pytest.approx(4.2)
    assert Image.open(out / "rot.jpg").size == (48, 64)


def test_focal_prior_without_exif(tmp_path):
    Image.fromarray(_checker(100, 50)).save(tmp_path / "a.png")
    Image.fromarray(_checker(100, 50)).save(tmp_path / "b.png")
    res = run_images(tmp_path, tmp_path / "run", ImagesConfig())
    assert [i["focal_px"] for i in res["images"]] == [pytest.approx(120.0)] * 2
    assert all(i["focal_source"] == "prior" and i["conversion"] for i in res["images"])  # L -> RGB


def test_keypoint_pixel_convention():
    # the centre of resized pixel 0 of a 2x downscale covers original pixels 0 and 1: centre 0.5
    k = scale_keypoints(np.array([[0.0, 0.0], [9.0, 4.0]]), 2.0, 2.0)
    np.testing.assert_allclose(k, [[0.5, 0.5], [18.5, 8.5]])
    np.testing.assert_allclose(to_colmap_keypoints(k), [[1.0, 1.0], [19.0, 9.0]])
