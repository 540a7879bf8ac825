"""Inspecting a model (backend/views/inspect.py) on the church sample's: tracks and residuals agree with the run's
own keypoints and with COLMAP's reprojection errors; colouring and filtering by track length and error."""

from __future__ import annotations

import numpy as np
import pytest

pycolmap = pytest.importorskip("pycolmap")

from backend.features.extract import read_features  # noqa: E402
from backend.views import inspect  # noqa: E402


@pytest.fixture(scope="module")
def church(church_run):
    return church_run, pycolmap.Reconstruction(church_run / "sparse" / "0")


def test_a_cameras_observations_are_its_own_keypoints_and_errors_match_colmaps(church):
    run_dir, rec = church
    errors = []
    for im in rec.images.values():
        if not im.has_pose:
            continue
        res = inspect.image_residuals(rec, im.name)
        kp = read_features(run_dir / "features.h5", im.name)["keypoints"]
        # the observations are the run's keypoints, in the stored photo's pixels (COLMAP's +0.5 removed)
        assert np.allclose(res["keypoints"], kp[res["keypoint_index"]], atol=1e-3)
        assert len(res["errors"]) == sum(1 for p in im.points2D if p.has_point3D()) > 0
        errors.append(res["errors"])
    e = np.concatenate(errors)
    # COLMAP's mean reprojection error (stored per point at its last refinement) within 30 % of ours
    assert abs(e.mean() - rec.compute_mean_reprojection_error()) < 0.3 * rec.compute_mean_reprojection_error()
    assert np.median(e) < 1.0


def test_a_points_track_lists_every_photo_that_sees_it(church):
    _, rec = church
    arrays = inspect.point_arrays(rec)
    pid = int(arrays["ids"][np.argmax(arrays["track_length"])])
    track = inspect.point_track(rec, pid)
    assert len(track["observations"]) == rec.points3D[pid].track.length() >= 3
    for o in track["observations"]:  # the same observation as the camera's view of it
        res = inspect.image_residuals(rec, o["image"])
        j = int(np.flatnonzero(res["point_ids"] == pid)[0])
        assert np.allclose(res["keypoints"][j], o["keypoint"], atol=0.01)
        assert abs(res["errors"][j] - o["error_px"]) < 0.01
    with pytest.raises(KeyError):
        inspect.point_track(rec, 10**9)


def test_points_are_coloured_and_filtered_by_track_length_and_error(church):
    _, rec = church
    a = inspect.point_arrays(rec)
    keep = inspect.point_filter(a, min_track_length=3, max_error_px=1.0)
    assert 0 < keep.sum() < len(keep)
    assert (a["track_length"][keep] >= 3).all() and (a["error"][keep] <= 1.0).all()
    rgb = inspect.colour_points(a["track_length"], lo=2)
    longest, shortest = np.argmax(a["track_length"]), np.argmin(a["track_length"])
    # viridis: dark purple for the shortest tracks, yellow (high red and green) for the longest
    assert rgb[shortest].sum() < rgb[longest].sum() and rgb[longest][1] > 150
