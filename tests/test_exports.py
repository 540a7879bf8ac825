"""Exports for other tools (backend/exports/), each read back by a reader other than our writer: pycolmap for
COLMAP's text model, the database and the undistorted workspace, jsonschema and Open3D for nerfstudio's
transforms.json and its points, with the camera centres of every format checked against the model to 1e-6.

The model is the church sample's (the bundled scene), reconstructed once per session by the CLI."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from conftest import run_cli

pycolmap = pytest.importorskip("pycolmap")


@pytest.fixture(scope="module")
def church(church_run):
    return church_run


def _centres(rec) -> dict[str, np.ndarray]:
    """Camera centre (model frame) of every registered image: -R^T t."""
    out = {}
    for im in rec.images.values():
        if im.has_pose:
            p = im.cam_from_world()
            R, t = np.asarray(p.rotation.matrix()), np.asarray(p.translation)
            out[im.name] = -R.T @ t
    return out


def _export(run_dir, fmt, out):
    res = run_cli("export", str(run_dir), "--format", fmt, "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_colmap_text_and_the_database_open_in_pycolmap(church, tmp_path):
    model = pycolmap.Reconstruction(church / "sparse" / "0")
    out = _export(church, "colmap-text", tmp_path / "txt")
    text = pycolmap.Reconstruction(out / "sparse")  # COLMAP's text reader
    assert (out / "sparse" / "images.txt").is_file() and text.num_reg_images() == model.num_reg_images() >= 5
    a, b = _centres(model), _centres(text)
    assert set(a) == set(b) and max(np.abs(a[n] - b[n]).max() for n in a) < 1e-6
    assert text.num_points3D() == model.num_points3D()
    db = pycolmap.Database.open(str(out / "database.db"))  # the GUI's project: photos, keypoints, matches
    try:
        names = {im.name for im in db.read_all_images()}
        assert set(a) <= names and db.num_matches() > 0 and db.num_keypoints() > 0
    finally:
        db.close()
    # model.zip carries the database too, beside the binary models
    with zipfile.ZipFile(church / "model.zip") as z:
        assert "database.db" in z.namelist() and "sparse/0/images.bin" in z.namelist()


def test_nerfstudio_transforms_follow_the_documented_schema_and_round_trip_the_cameras(church, tmp_path):
    import jsonschema
    import open3d as o3d

    model = pycolmap.Reconstruction(church / "sparse" / "0")
    out = _export(church, "nerfstudio", tmp_path / "ns")
    tf = json.loads((out / "transforms.json").read_text())
    intrinsics = ["w", "h", "fl_x", "fl_y", "cx", "cy", "camera_model"]
    matrix = {"type": "array", "minItems": 4, "maxItems": 4,
              "items": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number"}}}
    frame = {"type": "object", "required": ["file_path", "transform_matrix"],
             "properties": {"file_path": {"type": "string"}, "transform_matrix": matrix,
                            "camera_model": {"enum": ["PINHOLE", "OPENCV", "OPENCV_FISHEYE"]},
                            "w": {"type": "integer"}, "h": {"type": "integer"}}}
    # nerfstudio's data format (docs.nerf.studio, "Data conventions"): intrinsics at the top or in every frame
    schema = {"type": "object", "required": ["frames"],
              "properties": {"frames": {"type": "array", "minItems": 1, "items": frame},
                             "applied_transform": {"type": "array", "minItems": 3, "maxItems": 3},
                             "ply_file_path": {"type": "string"}},
              "anyOf": [{"required": intrinsics},
                        {"properties": {"frames": {"items": {"required": intrinsics}}}}]}
    jsonschema.validate(tf, schema)
    A = np.asarray(tf["applied_transform"], float)
    assert np.allclose(A[:3, :3] @ A[:3, :3].T, np.eye(3))  # a rotation: the model's frame, turned
    expected = _centres(model)
    got = {}
    for f in tf["frames"]:
        assert (out / f["file_path"]).is_file()
        c2w = np.asarray(f["transform_matrix"], float)
        got[f["file_path"].split("/", 1)[1]] = A[:3, :3].T @ (c2w[:3, 3] - A[:3, 3])
        # the camera looks down its -z axis (OpenGL): its forward direction is the model's viewing direction
        name = f["file_path"].split("/", 1)[1]
        im = next(i for i in model.images.values() if i.name == name)
        R = np.asarray(im.cam_from_world().rotation.matrix())
        assert np.allclose(A[:3, :3].T @ (-c2w[:3, 2]), R[2], atol=1e-9)
    assert set(got) == set(expected)
    assert max(np.abs(got[n] - expected[n]).max() for n in got) < 1e-6
    pc = o3d.io.read_point_cloud(str(out / tf["ply_file_path"]))
    pts = np.asarray(pc.points) @ A[:3, :3]  # back into the model's frame
    xyz = np.array([p.xyz for p in model.points3D.values()])
    assert len(pts) == len(xyz) == model.num_points3D() > 100 and np.asarray(pc.colors).shape == (len(xyz), 3)
    assert np.abs(np.sort(pts, axis=0) - np.sort(xyz, axis=0)).max() < 1e-6


def test_undistorted_workspace_has_pinhole_cameras_and_its_photos(church, tmp_path):
    from PIL import Image

    model = pycolmap.Reconstruction(church / "sparse" / "0")
    out = _export(church, "undistorted", tmp_path / "und")
    und = pycolmap.Reconstruction(out / "sparse")
    assert und.num_reg_images() == model.num_reg_images()
    for im in und.images.values():
        if not im.has_pose:
            continue
        cam = und.cameras[im.camera_id]
        assert cam.model.name == "PINHOLE"
        with Image.open(out / "images" / im.name) as photo:
            assert photo.size == (cam.width, cam.height)
    a, b = _centres(model), _centres(und)
    assert set(a) == set(b) and max(np.abs(a[n] - b[n]).max() for n in a) < 1e-6
    assert (out / "stereo" / "patch-match.cfg").is_file()  # COLMAP's dense stereo reads it


def test_export_refuses_what_it_cannot_do_before_writing(church, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    res = run_cli("export", str(church), "--format", "nerfstudio", "--out", str(taken))
    assert res.returncode == 2 and "not empty" in res.stderr and (taken / "mine.txt").read_text() == "keep me"
    res = run_cli("export", str(church), "--format", "nerfstudio", "--model", "9")
    assert res.returncode == 2 and "no model 9" in res.stderr and "its models are 0" in res.stderr
    res = run_cli("export", str(tmp_path), "--format", "colmap-text")
    assert res.returncode == 2 and "not a run folder" in res.stderr
