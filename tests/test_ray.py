"""The Ray executor on a real local multi-node cluster (``ray.cluster_utils.Cluster``: a head that runs no tasks
and two worker nodes, all on this machine): the same features and matches as the local executor, a worker node
removed mid-run, cancel, and the CLI end to end with ``--executor ray``."""

from __future__ import annotations

import json
import shutil
import threading

import h5py
import numpy as np
import pytest

from backend.config import get_preset
from backend.options import apply_overrides
from backend.features.extract import run_features
from backend.matchers.match import run_matching

from conftest import run_cli, scene_dir

pytestmark = pytest.mark.scenes

ray = pytest.importorskip("ray", reason="Ray is in requirements.txt; run setup/setup.sh")


@pytest.fixture(scope="module")
def cluster():
    """A head node with no CPUs (tasks run on workers only) and two worker nodes with one CPU each."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": 200 * 2**20,
        # notice a removed node within seconds
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    workers = [c.add_node(num_cpus=1, object_store_memory=200 * 2**20) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def executor(cluster):
    import torch

    from backend.distributed import RayExecutor

    c, _ = cluster
    # the same torch threads as the local executor in this process, so results are bit-identical
    ex = RayExecutor(c.address, images_per_task=2, pairs_per_task=4, torch_threads=torch.get_num_threads())
    yield ex


def _run_folder(root, name, n=8):
    d = root / name
    (d / "images").mkdir(parents=True)
    for p in sorted((scene_dir("temple_ring_middlebury") / "images").iterdir())[:n]:
        shutil.copy(p, d / "images" / p.name)
    return d, sorted(p.name for p in (d / "images").iterdir())


def _h5_arrays(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, o: out.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def _assert_same(a, b):
    da, db = _h5_arrays(a), _h5_arrays(b)
    assert sorted(da) == sorted(db)
    different = [k for k in da if da[k].shape != db[k].shape or not np.array_equal(da[k], db[k])]
    assert not different, f"{len(different)} arrays differ, e.g. {different[:3]}"


CONFIGS = {
    "xfeat+nn-ratio": get_preset("fast"),
    "aliked+lightglue": apply_overrides(get_preset("fast"), features="aliked-n16", matcher="lightglue", resize=480,
                                        max_keypoints=512),
}


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_ray_executor_gives_the_local_results(tmp_path, executor, method):
    cfg = CONFIGS[method]
    local, names = _run_folder(tmp_path, "local", 6)
    dist, _ = _run_folder(tmp_path, "ray", 6)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    run_features(local, names, cfg.features)
    counts = run_features(dist, names, cfg.features, executor=executor)
    assert counts["executor"] == "ray" and counts["computed"] == len(names)
    _assert_same(local / "features.h5", dist / "features.h5")
    run_matching(local, pairs, cfg.matching)
    mcounts = run_matching(dist, pairs, cfg.matching, executor=executor)
    assert mcounts["computed"] == len(pairs) and mcounts["matches_mean"] > 50
    _assert_same(local / "matches.h5", dist / "matches.h5")
    # the entries carry the same content keys: a local rerun of the Ray run folder recomputes nothing
    assert run_features(dist, names, cfg.features)["reused"] == len(names)
    assert run_matching(dist, pairs, cfg.matching)["reused"] == len(pairs)


def test_a_worker_node_removed_mid_run_loses_nothing(tmp_path, cluster):
    import torch

    from backend.distributed import RayExecutor

    c, workers = cluster
    cfg = get_preset("fast")
    local, names = _run_folder(tmp_path, "local", 10)
    dist, _ = _run_folder(tmp_path, "ray", 10)
    run_features(local, names, cfg.features)
    ex = RayExecutor(c.address, images_per_task=1, torch_threads=torch.get_num_threads())
    removed = []

    def progress(done, total, msg):
        # first image written: both workers are busy (4 tasks in flight, one image each, each takes about a second
        # here), so the removed node takes at least one running task with it, which Ray reruns on the other
        if done == 1 and not removed:
            c.remove_node(workers[1])
            removed.append(workers[1])

    try:
        counts = run_features(dist, names, cfg.features, progress, executor=ex)
        assert removed, "the node was never removed"
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 2, "the removed node is still alive"
        assert counts["computed"] == len(names)
        _assert_same(local / "features.h5", dist / "features.h5")
    finally:
        if removed:  # the tests after this one get their two workers back
            workers[1] = c.add_node(num_cpus=1, object_store_memory=200 * 2**20)
            c.wait_for_nodes()


def test_cancel_stops_the_ray_stage_and_a_rerun_resumes(tmp_path, executor):
    cfg = get_preset("fast")
    dist, names = _run_folder(tmp_path, "ray", 12)
    cancel = threading.Event()

    def progress(done, total, msg):
        if done >= 2:
            cancel.set()

    with pytest.raises(InterruptedError):
        run_features(dist, names, cfg.features, progress, cancel, executor=executor)
    with h5py.File(dist / "features.h5", "r") as f:
        written = sorted(f)
    assert 2 <= len(written) < len(names), "cancel did not stop the stage early"
    # what was written is complete and kept: the rerun (here the local executor) computes only the rest
    counts = run_features(dist, names, cfg.features)
    assert counts["reused"] == len(written) and counts["computed"] == len(names) - len(written)


def test_cli_reconstructs_with_the_ray_executor(tmp_path, cluster):
    c, _ = cluster
    out = tmp_path / "run"
    res = run_cli("reconstruct", str(scene_dir("temple_ring_middlebury") / "images"), "--out", str(out),
                  "--preset", "fast", "--quiet", "--executor", "ray", "--ray-address", c.address)
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads((out / "run.json").read_text())
    assert rec["stages"]["features"]["counts"]["executor"] == "ray"
    assert rec["stages"]["matching"]["counts"]["executor"] == "ray"
    assert rec["summary"]["registered_images"] == rec["summary"]["images"] == 19
    gt = scene_dir("temple_ring_middlebury")
    ev = run_cli("evaluate", str(gt / "gt.csv"), str(out / "poses.csv"), "--thresholds", str(gt / "thresholds.txt"),
                 "--json")
    assert json.loads(ev.stdout)["mAA"] >= 0.9


def test_ray_address_needs_the_ray_executor(tmp_path):
    res = run_cli("reconstruct", str(scene_dir("temple_ring_middlebury") / "images"), "--out", str(tmp_path / "r"),
                  "--ray-address", "127.0.0.1:6379")
    assert res.returncode == 2 and "--executor ray" in res.stderr


def test_app_and_api_runs_use_ray_when_the_server_says_so(tmp_path, cluster, monkeypatch):
    """The jobs layer (what the app and the API start) takes its executor from $SFM_EXECUTOR / $SFM_RAY_ADDRESS."""
    from backend import jobs

    c, _ = cluster
    monkeypatch.setenv("SFM_EXECUTOR", "ray")
    monkeypatch.setenv("SFM_RAY_ADDRESS", c.address)
    run, _ = _run_folder(tmp_path, "job", 6)
    job = jobs.start_run(run, run / "images", get_preset("fast"), until="matching")
    jobs.wait(job.run_id, timeout=600)
    rec = json.loads((run / "run.json").read_text())
    assert rec["stages"]["matching"]["status"] == "done", job.error
    assert rec["stages"]["features"]["counts"]["executor"] == "ray"
    assert rec["stages"]["matching"]["counts"]["executor"] == "ray"
    monkeypatch.setenv("SFM_EXECUTOR", "dask")
    with pytest.raises(jobs.JobError, match="local or ray"):
        jobs.server_executor()
