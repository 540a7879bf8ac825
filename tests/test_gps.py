"""Photos with GPS in EXIF: the model is aligned to it after mapping and its poses exported geo-referenced
(backend/io/gps.py). The GPS tags are written here into copies of the temple ring's photos (exact ground truth),
from the ground-truth camera centres scaled to metres, turned and placed in Berlin, plus noise; one photo gets a
position 300 m off."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, scene_dir

from backend.io.gps import enu_to_wgs84, read_exif_gps

ORIGIN = [52.518630, 13.376198, 40.0]  # the Reichstag, m above sea level
METRES_PER_UNIT = 100.0  # the test's "true" scale: the temple's ring becomes about 50 m across
NOISE_M = 0.3


def _dms(x: float) -> tuple[float, float, float]:
    x = abs(x)
    d = int(x)
    m = int((x - d) * 60)
    return float(d), float(m), (x - d - m / 60) * 3600


def write_gps(src, dst, lat, lon, alt) -> None:
    """A copy of the JPEG ``src`` with an EXIF GPS block (Exif 2.3 tags 1-6)."""
    with Image.open(src) as im:
        exif = im.getexif()
        g = exif.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = ("N" if lat >= 0 else "S"), _dms(lat), ("E" if lon >= 0 else "W"), _dms(lon)
        g[5], g[6] = (b"\x00" if alt >= 0 else b"\x01"), abs(alt)
        im.save(dst, exif=exif.tobytes(), quality=95)


def test_exif_gps_is_read_in_every_hemisphere(tmp_path):
    src = next(iter(sorted((scene_dir("reichstag_imc2020") / "images").iterdir())))
    for lat, lon, alt in ((52.5186, 13.3762, 41.5), (-33.8568, -151.2153, -12.0)):
        write_gps(src, tmp_path / "g.jpg", lat, lon, alt)
        with Image.open(tmp_path / "g.jpg") as im:
            got = read_exif_gps(im)
        assert np.allclose(got, [lat, lon, alt], atol=1e-6)
    with Image.open(src) as im:
        assert read_exif_gps(im) is None  # no GPS block


def test_enu_and_wgs84_round_trip():
    import pycolmap

    enu = np.array([[0.0, 0, 0], [100.0, -50.0, 12.0]])
    lla = enu_to_wgs84(enu, ORIGIN)
    back = pycolmap.GPSTransform(pycolmap.GPSTransformEllipsoid.WGS84).ellipsoid_to_enu(lla, *ORIGIN)
    assert np.allclose(back, enu, atol=1e-6) and np.allclose(lla[0], ORIGIN)
    assert 99.5 < (lla[1, 1] - ORIGIN[1]) * np.cos(np.radians(ORIGIN[0])) * 111_320 < 100.5  # 100 m east


@pytest.mark.scenes
def test_a_model_is_aligned_to_gps_and_exported_geo_referenced(tmp_path):
    from backend.twoview.groundtruth import read_gt_csv

    d = scene_dir("temple_ring_middlebury")
    gt = read_gt_csv(d / "gt.csv")
    rng = np.random.default_rng(0)
    a = np.radians(35.0)
    turn = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    truth, folder = {}, tmp_path / "photos"
    folder.mkdir()
    names = sorted(gt)
    for k, name in enumerate(names):
        R, t, _ = gt[name]
        enu = METRES_PER_UNIT * turn @ (-R.T @ t) + [20.0, -35.0, 8.0]
        truth[name] = enu
        noisy = enu + rng.normal(0, NOISE_M, 3) + ([300.0, 0, 0] if k == 3 else 0)  # one position is wrong
        lat, lon, alt = enu_to_wgs84(noisy[None], ORIGIN)[0]
        write_gps(d / "images" / name, folder / name, lat, lon, alt)
    out = tmp_path / "run"
    res = run_cli("reconstruct", str(folder), "--out", str(out), "--preset", "fast", "--quiet", timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    geo = json.loads((out / "geo" / "georef.json").read_text())
    off = {r["image"]: r for r in geo["residuals"]}[names[3]]
    assert not off["inlier"] and off["residual_m"] > 250  # the wrong position is found and left out
    assert geo["inliers"] >= len(geo["residuals"]) - 1 and geo["rmse_m"] < 3 * NOISE_M
    assert geo["scale"] > 0
    with open(out / "geo" / "cameras_wgs84.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 8
    enu_of = {}
    import pycolmap

    back = pycolmap.GPSTransform(pycolmap.GPSTransformEllipsoid.WGS84)
    for r in rows:
        lla = [[float(r["latitude"]), float(r["longitude"]), float(r["altitude"])]]
        enu_of[r["image_name"]] = back.ellipsoid_to_enu(lla, *geo["origin"])[0]
    # the geo-referenced cameras lie where the truth says, to about the GPS noise (the origin is the GPS mean)
    origin_enu = back.ellipsoid_to_enu([geo["origin"]], *ORIGIN)[0]
    errors = [np.linalg.norm(enu_of[n] + origin_enu - truth[n]) for n in enu_of]
    print(f"GPS: {len(rows)} photos geo-referenced, RMSE {geo['rmse_m']} m, median error to the truth "
          f"{np.median(errors):.2f} m")
    assert np.median(errors) < 3 * NOISE_M
    # poses_enu.csv: world-to-camera in ENU metres, consistent with those positions
    with open(out / "geo" / "poses_enu.csv") as f:
        for r in csv.DictReader(f):
            R = np.array([float(x) for x in r["rotation_matrix"].split(";")]).reshape(3, 3)
            t = np.array([float(x) for x in r["translation_vector"].split(";")])
            assert np.allclose(R @ R.T, np.eye(3), atol=1e-6)
            assert np.allclose(-R.T @ t, enu_of[r["image_name"]], atol=1e-2)
