"""Dense points and a mesh on the CPU (backend/dense/triangulate.py) from the church sample's model: the densified
model, its cloud and its mesh read back by pycolmap and Open3D; PatchMatch without CUDA says so before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli

pycolmap = pytest.importorskip("pycolmap")


@pytest.fixture(scope="module")
def church(church_run):
    return church_run


def test_patchmatch_without_cuda_says_what_to_do_before_any_work(church):
    if getattr(pycolmap, "has_cuda", False):
        pytest.skip("this pycolmap has CUDA: PatchMatch runs (a GPU machine's check)")
    res = run_cli("densify", str(church), "--method", "patchmatch", "--quiet")
    assert res.returncode == 1 and "CUDA" in res.stderr and "--method triangulate" in res.stderr
    assert not (church / "dense").exists()


def test_densify_on_the_cpu_multiplies_the_points_and_writes_a_mesh(church):
    import open3d as o3d

    res = run_cli("densify", str(church), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads((church / "dense" / "dense.json").read_text())
    before, after = d["before"], d["after"]
    print(f"densify church: {before['points']} -> {after['points']} points, track length "
          f"{before['mean_track_length']} -> {after['mean_track_length']}, reprojection error "
          f"{before['mean_reprojection_error_px']} -> {after['mean_reprojection_error_px']} px, {d['seconds']}")
    assert after["points"] >= 2.5 * before["points"]
    assert after["mean_reprojection_error_px"] <= 1.5 and after["mean_track_length"] >= 2.0
    model = pycolmap.Reconstruction(church / "dense" / "sparse")  # the densified model, same cameras and poses
    sparse = pycolmap.Reconstruction(church / "sparse" / "0")
    assert model.num_points3D() == after["points"] and model.num_reg_images() == sparse.num_reg_images()
    for i, im in sparse.images.items():
        if im.has_pose:
            a, b = im.cam_from_world(), model.images[i].cam_from_world()
            assert np.allclose(np.asarray(a.translation), np.asarray(b.translation), atol=1e-9)
    cloud = o3d.io.read_point_cloud(str(church / "dense" / "points.ply"))
    assert len(cloud.points) == after["points"]
    mesh = o3d.io.read_triangle_mesh(str(church / "dense" / "mesh.ply"))
    assert len(mesh.triangles) > 1000 and len(mesh.triangles) == d["mesh"]["triangles"]
    # the mesh lies where the points are: Poisson's closed surface is trimmed to the cloud
    lo, hi = np.percentile(np.asarray(cloud.points), [1, 99], axis=0)
    gap = np.asarray(o3d.geometry.PointCloud(mesh.vertices).compute_point_cloud_distance(cloud))
    assert np.percentile(gap, 90) < 0.05 * np.linalg.norm(hi - lo)
