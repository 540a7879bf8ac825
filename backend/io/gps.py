"""GPS in EXIF, and a model aligned to it: the geo-referenced poses people with drone or phone photos expect.

Reading: the EXIF GPS block (tags GPSLatitudeRef/GPSLatitude, GPSLongitudeRef/GPSLongitude, GPSAltitudeRef/
GPSAltitude; Exif 2.3, section 4.6.6) of each photo, as WGS84 latitude and longitude in degrees and altitude in
metres above sea level (None when the photo gives none).

Aligning (:func:`georeference`): the registered photos with GPS give target camera centres in a local East-North-Up
frame (ENU, metres) about a stated origin, the mean of their latitudes, longitudes and altitudes
(``pycolmap.GPSTransform``, WGS84 ellipsoid). A similarity (scale, rotation, translation) from the model's frame to
ENU is estimated robustly by ``pycolmap.align_reconstruction_to_locations`` (LO-RANSAC over the camera centres,
inlier threshold :data:`MAX_ERROR_M`). Each photo's residual is the distance between its aligned camera centre and
its GPS position (metres). Photos without altitude are given the others' mean altitude (or 0) and say so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

MAX_ERROR_M = 10.0  # RANSAC inlier threshold on camera centres (m): phone GPS is good to about 5 m
MIN_PHOTOS = 3  # registered photos with GPS needed to align
_TAG_GPS_IFD = 0x8825


def _degrees(value) -> float:
    d, m, s = (float(x) for x in value)
    return d + m / 60.0 + s / 3600.0


def read_exif_gps(img) -> list | None:
    """``[latitude (deg, north positive), longitude (deg, east positive), altitude (m) or None]`` from the EXIF GPS
    block of a Pillow image, None when it has no (readable, finite, in range) position."""
    try:
        gps = img.getexif().get_ifd(_TAG_GPS_IFD)
        if not gps or 2 not in gps or 4 not in gps:
            return None
        lat, lon = _degrees(gps[2]), _degrees(gps[4])
        if str(gps.get(1, "N")).upper().startswith("S"):
            lat = -lat
        if str(gps.get(3, "E")).upper().startswith("W"):
            lon = -lon
        alt = None
        if 6 in gps:
            alt = float(gps[6]) * (-1.0 if gps.get(5) in (1, b"\x01") else 1.0)
    except Exception:  # noqa: BLE001 - a broken GPS block must not lose the photo
        return None
    if not (np.isfinite(lat) and np.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        return None
    if alt is not None and not np.isfinite(alt):
        alt = None
    return [lat, lon, alt]


@dataclass
class Georef:
    """A model aligned to its photos' GPS.

    Attributes:
        origin: ``[latitude, longitude, altitude]`` of the ENU frame's origin (deg, deg, m).
        scale: metres per model unit; ``rotation`` [3, 3] and ``translation`` [3] with ``scale`` map a model point
            ``X`` to ENU: ``scale * rotation @ X + translation``.
        residuals: per photo with GPS ``{"image", "residual_m", "inlier", "enu", "gps"}``.
        rmse_m: root mean square residual of the inliers (m); ``inliers``: how many.
        note: what the page shows (missing altitudes, outliers).
    """

    origin: list[float]
    scale: float
    rotation: list[list[float]]
    translation: list[float]
    residuals: list[dict] = field(default_factory=list)
    rmse_m: float = 0.0
    inliers: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Model points ``X`` float64 [N, 3] in ENU metres."""
        return self.scale * np.asarray(X, float) @ np.asarray(self.rotation).T + np.asarray(self.translation)


def enu_to_wgs84(enu: np.ndarray, origin: list[float]) -> np.ndarray:
    """ENU points float64 [N, 3] (m) about ``origin`` -> ``[latitude, longitude, altitude]`` float64 [N, 3]."""
    import pycolmap

    t = pycolmap.GPSTransform(pycolmap.GPSTransformEllipsoid.WGS84)
    return np.asarray(t.enu_to_ellipsoid(np.asarray(enu, float).reshape(-1, 3), *origin))


def georeference(rec, gps: dict[str, list], max_error_m: float = MAX_ERROR_M) -> Georef | None:
    """Align the pycolmap Reconstruction ``rec`` to the GPS positions ``gps`` (``{image name: [lat, lon, alt or
    None]}``, :func:`read_exif_gps`). Returns None when fewer than :data:`MIN_PHOTOS` registered photos have a
    position, or when no similarity has :data:`MIN_PHOTOS` inliers (the positions do not fit the model)."""
    import pycolmap

    registered = {im.name: im for im in rec.images.values() if im.has_pose}
    names = [n for n in sorted(gps) if n in registered and gps[n] is not None]
    if len(names) < MIN_PHOTOS:
        return None
    alts = [gps[n][2] for n in names if gps[n][2] is not None]
    fill = float(np.mean(alts)) if alts else 0.0
    lla = np.array([[gps[n][0], gps[n][1], gps[n][2] if gps[n][2] is not None else fill] for n in names])
    origin = [float(lla[:, 0].mean()), float(lla[:, 1].mean()), float(lla[:, 2].mean())]
    t = pycolmap.GPSTransform(pycolmap.GPSTransformEllipsoid.WGS84)
    enu = np.asarray(t.ellipsoid_to_enu(lla, *origin))
    ransac = pycolmap.RANSACOptions()
    ransac.max_error = float(max_error_m)
    sim = pycolmap.align_reconstruction_to_locations(rec, names, enu, MIN_PHOTOS, ransac)
    if sim is None:
        return None
    R = np.asarray(sim.rotation.matrix())
    geo = Georef(origin, float(sim.scale), R.tolist(), np.asarray(sim.translation, float).tolist())
    errs = []
    for n, target, raw in zip(names, enu, (gps[n] for n in names)):
        pose = registered[n].cam_from_world()
        C = -np.asarray(pose.rotation.matrix()).T @ np.asarray(pose.translation)
        e = float(np.linalg.norm(geo.apply(C[None])[0] - target))
        errs.append(e)
        geo.residuals.append({"image": n, "residual_m": round(e, 3), "inlier": e <= max_error_m,
                              "enu": [round(float(v), 3) for v in target], "gps": raw})
    ok = [e for e in errs if e <= max_error_m]
    geo.inliers = len(ok)
    geo.rmse_m = round(float(np.sqrt(np.mean(np.square(ok)))), 3) if ok else float("nan")
    missing = len(names) - len(alts)
    geo.note = (f"aligned to the GPS of {len(names)} registered photos ({geo.inliers} within {max_error_m:g} m; "
                f"RMSE {geo.rmse_m:g} m); ENU origin {origin[0]:.6f}, {origin[1]:.6f}, {origin[2]:.1f} m"
                + (f"; {missing} photo(s) without altitude were given {fill:.1f} m" if missing else ""))
    if geo.inliers < MIN_PHOTOS:
        return None
    return geo


GEO_DIR = "geo"


def write_geo(run_dir, rec, gps: dict[str, list]) -> dict:
    """Align model ``rec`` to ``gps`` (:func:`georeference`) and write, into ``<run>/geo/``:

    - ``georef.json``: :class:`Georef` (origin, similarity, residuals, note);
    - ``poses_enu.csv``: ``image_name,rotation_matrix,translation_vector,east,north,up`` per registered photo:
      ``cam_from_world`` with the world being the ENU frame in metres (R row-major ``;``-separated, t in metres, so
      ``x_cam = R X_enu + t``; the camera frame scaled to metres, which changes no projection) and the camera
      centre in ENU;
    - ``cameras_wgs84.csv``: ``image_name,latitude,longitude,altitude,gps_latitude,gps_longitude,gps_altitude,
      residual_m`` per registered photo (the aligned camera centre in WGS84, its EXIF position, their distance).

    Returns counts ``{"georeferenced": photos written, "gps_photos", "rmse_m"}``; ``georeferenced`` 0 (and no
    folder) when the model cannot be aligned (fewer than :data:`MIN_PHOTOS` registered photos with GPS).
    """
    import csv
    import json
    import shutil
    from pathlib import Path

    out = Path(run_dir) / GEO_DIR
    shutil.rmtree(out, ignore_errors=True)
    n_gps = sum(1 for v in gps.values() if v is not None)
    geo = georeference(rec, gps) if n_gps else None
    if geo is None:
        return {"georeferenced": 0, "gps_photos": n_gps}
    out.mkdir()
    (out / "georef.json").write_text(json.dumps(geo.to_dict(), indent=1))
    Rs, t, s = np.asarray(geo.rotation), np.asarray(geo.translation), geo.scale
    by_name = {r["image"]: r for r in geo.residuals}
    rows_enu, rows_wgs = [], []
    for im in sorted((i for i in rec.images.values() if i.has_pose), key=lambda i: i.name):
        pose = im.cam_from_world()
        Rc, tc = np.asarray(pose.rotation.matrix()), np.asarray(pose.translation)
        R2 = Rc @ Rs.T
        t2 = s * tc - R2 @ t
        C = -R2.T @ t2
        rows_enu.append([im.name, ";".join(f"{v:.9g}" for v in R2.ravel()), ";".join(f"{v:.6f}" for v in t2),
                         *(f"{v:.4f}" for v in C)])
        lat, lon, alt = enu_to_wgs84(C[None], geo.origin)[0]
        r = by_name.get(im.name)
        g = r["gps"] if r else [None, None, None]
        rows_wgs.append([im.name, f"{lat:.8f}", f"{lon:.8f}", f"{alt:.3f}",
                         *("" if v is None else f"{v:.8f}" for v in g[:2]),
                         "" if g[2] is None else f"{g[2]:.3f}", "" if r is None else f"{r['residual_m']:.3f}"])
    with open(out / "poses_enu.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "rotation_matrix", "translation_vector", "east", "north", "up"])
        w.writerows(rows_enu)
    with open(out / "cameras_wgs84.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "latitude", "longitude", "altitude", "gps_latitude", "gps_longitude",
                    "gps_altitude", "residual_m"])
        w.writerows(rows_wgs)
    return {"georeferenced": len(rows_enu), "gps_photos": n_gps, "rmse_m": geo.rmse_m}
