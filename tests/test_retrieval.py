"""Pair selection and the global descriptors: the DINOv2 code path with a tiny randomly initialised model (real
DINOv2 weights cannot be downloaded here), and the EfficientNet-Lite0 fallback with its real weights."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from backend.config import RetrievalConfig
from backend.retrieval.global_descriptors import read_pairs, resolve_model, run_retrieval, select_pairs
from backend.io.weights import manifest, weights_dir
from conftest import scene_dir


def test_select_pairs_topk_threshold_symmetric():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(30, 8))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    sim = d @ d.T
    cfg = RetrievalConfig(num_neighbors=3, min_score=0.95, exhaustive_below=20)
    pairs = select_pairs(sim, cfg)
    keys = {(i, j) for i, j, _ in pairs}
    assert all(i < j for i, j in keys) and len(keys) == len(pairs)
    for i in range(30):
        order = [j for j in np.argsort(-sim[i]) if j != i][:3]
        for j in order:
            assert (min(i, j), max(i, j)) in keys
    # all pairs below the exhaustive limit
    assert len(select_pairs(sim[:10, :10], cfg)) == 45


def test_select_pairs_bridges_a_tight_group():
    """Nine near-identical frames are each other's 8 nearest neighbours; without bridges they would only pair among
    themselves (fox, first 40 frames: a 31 + 9 split). The bridges join them to their most similar other images."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(2, 16))
    d = np.concatenate([base[0] + 0.3 * rng.normal(size=(31, 16)), base[1] + 0.05 * rng.normal(size=(9, 16))])
    d[31:] += 0.2 * base[0]  # the group is a little similar to the rest
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    sim = d @ d.T
    group = set(range(31, 40))
    for bridges, expect in ((0, 0), (3, 3)):
        cfg = RetrievalConfig(num_neighbors=8, min_score=2.0, exhaustive_below=6, bridge_pairs=bridges)
        cross = [(i, j) for i, j, _ in select_pairs(sim, cfg) if (i in group) != (j in group)]
        assert len(cross) == expect
    # the bridges are the most similar cross pairs
    masked = sim[np.ix_(sorted(group), range(31))]
    assert max(sim[i, j] for i, j in cross) == masked.max()


def _retrieval_run(tmp_path, names_src, monkeypatch):
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    names = []
    for p in names_src:
        shutil.copy(p, run / "images" / p.name)
        names.append(p.name)
    return run, names


@pytest.fixture
def tiny_dinov2_weights(tmp_path, monkeypatch):
    """A weights folder with the real weights plus a tiny random DINOv2 in dinov2-small/."""
    from transformers import Dinov2Config, Dinov2Model

    wd = tmp_path / "weights"
    wd.mkdir()
    for name, entry in manifest().items():
        if "file" in entry and (weights_dir() / entry["file"]).exists():
            (wd / entry["file"]).symlink_to(weights_dir() / entry["file"])
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=224)
    folder = wd / "dinov2-small"
    Dinov2Model(cfg).save_pretrained(folder, safe_serialization=True)
    sums = subprocess.run(["sha256sum", "config.json", "model.safetensors"], cwd=folder, capture_output=True,
                          text=True, check=True).stdout
    (folder / "SHA256SUMS").write_text(sums)
    monkeypatch.setenv("SFM_WEIGHTS_DIR", str(wd))
    return folder


def test_dinov2_code_path_with_tiny_model(tmp_path, monkeypatch, tiny_dinov2_weights):
    assert resolve_model("auto") == ("dinov2-small", "")
    imgs = sorted((scene_dir("temple_ring_middlebury") / "images").iterdir())[:6]
    run, names = _retrieval_run(tmp_path, imgs, monkeypatch)
    counts = run_retrieval(run, names, RetrievalConfig(exhaustive_below=3, num_neighbors=2))
    assert counts["model"] == "dinov2-small" and counts["fallback_reason"] == ""
    pairs = read_pairs(run)
    assert len(pairs) >= 6 and all(a in names and b in names for a, b, _ in pairs)
    # a corrupted model file is refused with the setup hint
    (tiny_dinov2_weights / "model.safetensors").write_bytes(b"broken")
    model, reason = resolve_model("auto")
    assert model == "efficientnet-lite0" and "DINOv2" in reason


def test_fallback_descriptor_finds_neighbours(tmp_path, monkeypatch):
    """Without DINOv2 weights, EfficientNet-Lite0 is used and says so; on the temple ring, each image's nearest
    neighbour by descriptor is an adjacent view. Runs also where DINOv2 is installed: the weights folder it sees holds
    every other weight file, not DINOv2's."""
    wd = tmp_path / "weights"
    wd.mkdir()
    for entry in manifest().values():
        if "file" in entry and (weights_dir() / entry["file"]).exists():
            (wd / entry["file"]).symlink_to(weights_dir() / entry["file"])
    monkeypatch.setenv("SFM_WEIGHTS_DIR", str(wd))
    imgs = sorted((scene_dir("temple_ring_middlebury") / "images").iterdir())
    run, names = _retrieval_run(tmp_path, imgs, monkeypatch)
    counts = run_retrieval(run, names, RetrievalConfig(exhaustive_below=0, num_neighbors=2, min_score=2))
    assert counts["model"] == "efficientnet-lite0" and "DINOv2" in counts["fallback_reason"]
    import h5py

    with h5py.File(run / "retrieval.h5") as f:
        sim = f["similarity"][()]
    np.fill_diagonal(sim, -1)
    nearest = sim.argmax(1)
    adjacent = np.abs(nearest - np.arange(len(names))) <= 2
    assert adjacent.mean() >= 0.8


@pytest.mark.parametrize("bridges", [0, 3])
def test_blocked_selection_equals_the_dense_one(bridges):
    """Above the dense limit pairs are chosen block by block (no [N, N] matrix): the same pairs, tiny blocks here."""
    from backend.retrieval.global_descriptors import select_pairs_blocked

    rng = np.random.default_rng(2)
    base = rng.normal(size=(3, 16))
    d = np.concatenate([base[k] + 0.4 * rng.normal(size=(m, 16)) for k, m in enumerate((40, 25, 9))])
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d = d.astype(np.float32)
    cfg = RetrievalConfig(num_neighbors=5, min_score=0.97, exhaustive_below=6, bridge_pairs=bridges)
    dense = select_pairs(d @ d.T, cfg)
    for block in (74, 200, 10_000):  # 1, 2 and all rows at a time
        blocked = select_pairs_blocked(d, cfg, block_elements=block)
        assert [(i, j) for i, j, _ in blocked] == [(i, j) for i, j, _ in dense]
        assert np.allclose([s for *_, s in blocked], [s for *_, s in dense], atol=1e-5)


def test_capture_order_and_sequential_pairs():
    from backend.retrieval.global_descriptors import capture_order, sequential_pairs

    assert capture_order(["frame_10.jpg", "frame_9.jpg", "frame_100.jpg"]) == \
        ["frame_9.jpg", "frame_10.jpg", "frame_100.jpg"]
    assert capture_order(["0002.jpg", "0001.jpg", "0003.jpg"]) == ["0001.jpg", "0002.jpg", "0003.jpg"]
    assert capture_order(["cam1_0001.jpg", "cam1_0002.jpg", "cam1_0003.jpg"])[0] == "cam1_0001.jpg"
    # several templates (a mixed folder, renamed photos) or no numbers: no sequence
    assert capture_order(["IMG_1.jpg", "DSC_2.jpg", "IMG_3.jpg"]) is None
    assert capture_order(["a.jpg", "b.jpg", "c.jpg"]) is None
    assert capture_order(["x1.jpg", "x01.jpg", "x2.jpg"]) is None  # two names with the same number
    assert sequential_pairs(["a", "b", "c", "d"], 2) == [("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d")]


def test_sequential_pairs_are_added_to_retrieval(tmp_path):
    """fox's numbered frames with sequential 'auto': every frame is paired with its next 3 (plus retrieval's)."""
    images = tmp_path / "images"
    images.mkdir()
    src = scene_dir("fox_instant_ngp") / "images"
    names = sorted(p.name for p in src.iterdir())[:12]
    for n in names:
        shutil.copy(src / n, images / n)
    cfg = RetrievalConfig(model="efficientnet-lite0", num_neighbors=2, exhaustive_below=4, resize=224,
                          sequential="auto", sequential_overlap=3)
    counts = run_retrieval(tmp_path, names, cfg)
    keys = {(a, b) for a, b, _ in read_pairs(tmp_path)}
    for i in range(len(names)):
        for j in range(i + 1, min(len(names), i + 4)):
            assert (names[i], names[j]) in keys
    assert counts["sequential_pairs"] > 0 and counts["dense"]
