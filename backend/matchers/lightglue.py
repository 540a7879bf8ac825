"""LightGlue (Lindenberger, Sarlin & Pollefeys, "LightGlue: Local Feature Matching at Light Speed", ICCV 2023;
github.com/cvg/LightGlue) through ``kornia.feature.LightGlue`` with the official weights for ALIKED and for DISK,
with adaptive depth (early stopping) and width (point pruning) one pair at a time, or a batch of pairs at full depth
and width (``batch_size`` > 1, for a GPU: :func:`run_lightglue_batch`)."""

from __future__ import annotations

import types

import numpy as np
import torch
import torch.nn.functional as F

from ..io.weights import weight_path
from .base import Matcher, no_matches

CPU_ATTENTION = ("sdpa", "kornia")

# the official checkpoints and kornia's layout differ in the attention layers' names
_RENAMES = ("self_attn", "cross_attn")


def load_lightglue_state(model: torch.nn.Module, weights: str, prefix: str = "") -> torch.nn.Module:
    """Load the official checkpoint ``weights`` (a manifest name) into kornia's ``LightGlue`` ``model``.

    Keys ``self_attn.{i}.`` / ``cross_attn.{i}.`` become ``transformers.{i}.self_attn.`` (kornia's names); with
    ``prefix`` only keys starting with it are kept, the prefix stripped (XFeat's file also holds its extractor).

    Raises:
        MissingWeightsError: the file is missing or fails its check. RuntimeError: it does not fit the model.
    """
    state = torch.load(weight_path(weights), map_location="cpu", weights_only=True)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # the DISK checkpoint carries log_assignment.{i}.r, a constant 1 that kornia's model does not have
    state = {k: v for k, v in state.items() if not (k.endswith(".r") and bool((v == 1).all()))}
    for i in range(model.conf.n_layers):
        for kind in _RENAMES:
            state = {k.replace(f"{kind}.{i}.", f"transformers.{i}.{kind}."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    learned = {n for n, _ in model.named_parameters()}
    if any(k in learned for k in missing) or unexpected:
        raise RuntimeError(f"{weights} does not fit LightGlue (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def _cross_block_sdpa(self, x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor | None = None):
    """kornia's ``CrossBlock.forward`` with both messages through ``F.scaled_dot_product_attention``.

    kornia 0.9 takes that path on CUDA only; on the CPU it builds the similarity [B, H, M, N] with einsum and two
    full softmaxes (one per direction), 2 x M x N floats per head and layer in memory. Here each direction is one
    fused attention call (PyTorch's CPU flash kernel: blocked, no M x N matrix kept). Same weights, same maths
    (``softmax(q k^T / sqrt(d)) v``; kornia scales q and k by ``d**-0.25`` each); results agree to float32 rounding.

    Args:
        x0: float [B, M, D] descriptors of image 0. x1: float [B, N, D] of image 1.
        mask: optional bool [B, H, M, N] (True: may attend), as kornia's.

    Returns:
        ``(x0, x1)`` updated, shapes unchanged.
    """
    qk0, qk1 = self.to_qk(x0), self.to_qk(x1)
    v0, v1 = self.to_v(x0), self.to_v(x1)
    qk0, qk1, v0, v1 = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2).contiguous() for t in (qk0, qk1, v0, v1))
    m0 = F.scaled_dot_product_attention(qk0, qk1, v1, attn_mask=mask)
    m1 = F.scaled_dot_product_attention(qk1, qk0, v0, attn_mask=None if mask is None else mask.transpose(-1, -2))
    if mask is not None:
        m0, m1 = m0.nan_to_num(), m1.nan_to_num()
    m0, m1 = (self.to_out(t.transpose(1, 2).flatten(start_dim=-2)) for t in (m0, m1))
    return x0 + self.ffn(torch.cat([x0, m0], -1)), x1 + self.ffn(torch.cat([x1, m1], -1))


def use_sdpa_cross_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Make every cross-attention block of a kornia ``LightGlue`` ``model`` use :func:`_cross_block_sdpa` (self
    attention already uses ``scaled_dot_product_attention`` on every device). Returns ``model``."""
    for layer in model.transformers:
        layer.cross_attn.forward = types.MethodType(_cross_block_sdpa, layer.cross_attn)
    return model


def set_cpu_attention(model: torch.nn.Module, choice: str, device: torch.device) -> torch.nn.Module:
    """Apply a matcher's ``cpu_attention`` option to ``model``: ``"sdpa"`` on a CPU device patches it with
    :func:`use_sdpa_cross_attention`; ``"kornia"``, or any CUDA device, leaves kornia's paths.

    Raises:
        ValueError: ``choice`` is not one of :data:`CPU_ATTENTION`.
    """
    if choice not in CPU_ATTENTION:
        raise ValueError(f"cpu_attention must be one of {', '.join(CPU_ATTENTION)}, not {choice!r}")
    return use_sdpa_cross_attention(model) if choice == "sdpa" and device.type == "cpu" else model


@torch.inference_mode()
def run_lightglue(model: torch.nn.Module, f0: dict, f1: dict, device: torch.device,
                  stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One pair through a kornia ``LightGlue`` ``model``: ``(matches int32 [M, 2], scores float32 [M])``.

    ``stats``: when given, filled with the pair's adaptive depth and width (LightGlue's own diagnostics):
    ``layers`` (int, transformer layers run before it stopped; ``model.conf.n_layers`` when it ran them all) and
    ``pruned`` (float in [0, 1], the share of both images' keypoints dropped by point pruning before the last layer).
    """
    if stats is not None:
        stats.clear()
    if len(f0["keypoints"]) == 0 or len(f1["keypoints"]) == 0:
        return no_matches()

    def side(f: dict) -> dict:
        return {
            "keypoints": torch.from_numpy(f["keypoints"]).to(device)[None],
            "descriptors": torch.from_numpy(f["descriptors"]).to(device)[None],
            "image_size": torch.as_tensor(f["image_size"], device=device, dtype=torch.float32)[None],
        }

    out = model({"image0": side(f0), "image1": side(f1)})
    if stats is not None:
        layers = int(out.get("stop", model.conf.n_layers))
        prune = [out[k][0] for k in ("prune0", "prune1") if k in out]
        total = sum(int(p.numel()) for p in prune)
        stats["layers"] = layers
        stats["pruned"] = (sum(int((p < layers).sum()) for p in prune) / total) if total else 0.0
    return (out["matches"][0].cpu().numpy().astype(np.int32),
            out["scores"][0].float().cpu().numpy().astype(np.float32))


def check_batch_size(conf: dict) -> int:
    """``conf["batch_size"]`` as a positive int. Raises ValueError otherwise."""
    bs = conf["batch_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or not 1 <= bs <= 256:
        raise ValueError(f"batch_size must be an integer from 1 to 256, not {bs!r}")
    return bs


def _padded_side(feats: list[dict], device: torch.device, dtype: torch.dtype):
    """Stack one side of a batch: keypoints normalised as kornia's ``normalize_keypoints`` (by the image's
    ``(W, H)``, into [-1, 1]) float [B, L, 2], descriptors [B, L, D] and a validity mask bool [B, L] (False on the
    zero padding up to the longest image, L)."""
    from kornia.feature.lightglue import normalize_keypoints

    length = max(len(f["keypoints"]) for f in feats)
    dim = feats[0]["descriptors"].shape[1]
    kpts = torch.zeros(len(feats), length, 2, device=device)
    desc = torch.zeros(len(feats), length, dim, device=device, dtype=dtype)
    valid = torch.zeros(len(feats), length, dtype=torch.bool, device=device)
    for i, f in enumerate(feats):
        c = len(f["keypoints"])
        size = torch.as_tensor(f["image_size"], device=device, dtype=torch.float32)[None]
        kpts[i, :c] = normalize_keypoints(torch.from_numpy(f["keypoints"]).to(device)[None], size)[0]
        desc[i, :c] = torch.from_numpy(f["descriptors"]).to(device=device, dtype=dtype)
        valid[i, :c] = True
    return kpts, desc, valid


@torch.inference_mode()
def run_lightglue_batch(model: torch.nn.Module, pairs: list[tuple[dict, dict]],
                        device: torch.device) -> list[tuple[np.ndarray, np.ndarray]]:
    """Match a batch of pairs in one pass of a kornia ``LightGlue`` ``model``, at full depth and width.

    Each side is zero-padded to its longest image, and attention masks keep padded points out of every softmax, so
    each pair gets the matches it gets alone with ``depth_confidence = width_confidence = -1`` (all layers, no point
    pruning), up to float rounding. Adaptive depth and width are left out here on purpose: they decide per pair and
    per layer on the host, which would stop the device at every layer (cvg/LightGlue batches the same way). A batch
    with no padding runs without masks (flash attention on CUDA, half precision with the model's ``mp``).

    Args:
        pairs: ``[(f0, f1), ...]``, features as :meth:`backend.matchers.base.Matcher.match` takes them
            (``keypoints`` float32 [N, 2] pixels, ``descriptors`` float32 [N, D], ``image_size`` (W, H)).

    Returns:
        per pair, ``(matches int32 [M, 2], scores float32 [M])`` (empty for a pair with an image without keypoints).
    """
    from kornia.feature.lightglue import filter_matches, sigmoid_log_double_softmax

    out = [no_matches() for _ in pairs]
    live = [k for k, (a, b) in enumerate(pairs) if len(a["keypoints"]) and len(b["keypoints"])]
    if not live:
        return out
    half = device.type != "cpu" and model.conf.mp
    dtype = torch.float16 if half else torch.float32
    kp0, d0, v0 = _padded_side([pairs[k][0] for k in live], device, dtype)
    kp1, d1, v1 = _padded_side([pairs[k][1] for k in live], device, dtype)
    padded = not (bool(v0.all()) and bool(v1.all()))
    m0 = m1 = m01 = None
    if padded:  # [B, 1, L, L']: broadcast over the heads
        m0, m1 = (v[:, None, :, None] & v[:, None, None, :] for v in (v0, v1))
        m01 = v0[:, None, :, None] & v1[:, None, None, :]
    with torch.autocast(enabled=model.conf.mp, device_type=device.type):
        d0, d1 = model.input_proj(d0), model.input_proj(d1)
        pe_dtype = model.posenc.Wr.weight.dtype
        e0, e1 = model.posenc(kp0.to(pe_dtype)), model.posenc(kp1.to(pe_dtype))
        for layer in model.transformers:
            d0, d1 = layer.self_attn(d0, e0, m0), layer.self_attn(d1, e1, m1)
            d0, d1 = layer.cross_attn(d0, d1, m01)
        la = model.log_assignment[-1]
        md0, md1 = la.final_proj(d0), la.final_proj(d1)
        scale = md0.shape[-1] ** 0.25
        sim = torch.einsum("bmd,bnd->bmn", md0 / scale, md1 / scale)
        z0, z1 = la.matchability(d0), la.matchability(d1)
        for i, k in enumerate(live):
            a, b = len(pairs[k][0]["keypoints"]), len(pairs[k][1]["keypoints"])
            scores = sigmoid_log_double_softmax(sim[i:i + 1, :a, :b], z0[i:i + 1, :a], z1[i:i + 1, :b])
            mt0, _, ms0, _ = filter_matches(scores, model.conf.filter_threshold)
            keep = mt0[0] > -1
            idx0 = torch.where(keep)[0]
            out[k] = (torch.stack([idx0, mt0[0][keep]], -1).cpu().numpy().astype(np.int32),
                      ms0[0][keep].float().cpu().numpy().astype(np.float32))
    return out


class LightGlue(Matcher):
    """LightGlue with kornia's model. ``cpu_attention``: ``"sdpa"`` (cross-attention through
    :func:`use_sdpa_cross_attention` on the CPU) or ``"kornia"`` (kornia's einsum path, as before); CUDA always
    takes kornia's own fused path. After each :meth:`match`, :attr:`last_stats` holds the pair's adaptive depth and
    width (:func:`run_lightglue`). ``batch_size`` > 1: the matching stage hands :meth:`match_batch` that many pairs
    at a time, matched at full depth and width (:func:`run_lightglue_batch`; meant for a GPU)."""

    default_conf = {"depth_confidence": 0.95, "width_confidence": 0.99, "filter_threshold": 0.1,
                    "cpu_attention": "sdpa", "batch_size": 1}
    features = {"aliked-n16": "aliked-lightglue", "aliked-n16rot": "aliked-lightglue",
                "aliked-n32": "aliked-lightglue", "disk": "disk-lightglue"}
    uses_gpu = True
    licence = "Apache-2.0 (code and weights)"
    reference = "Lindenberger et al., ICCV 2023; github.com/cvg/LightGlue"

    @classmethod
    def weight_names(cls, conf, extractor):
        return [cls.features[extractor]]

    def _model(self, c: dict) -> torch.nn.Module:
        """kornia's LightGlue for ``self.extractor``'s features (128-d input) with our weights, on the CPU."""
        from kornia.feature import LightGlue as KorniaLightGlue

        model = KorniaLightGlue(None, input_dim=128, depth_confidence=c["depth_confidence"],
                                width_confidence=c["width_confidence"], filter_threshold=c["filter_threshold"],
                                mp=self.device.type == "cuda")
        return load_lightglue_state(model, self.features[self.extractor])

    def _init(self):
        c = self.conf
        model = self._model(c).eval().to(self.device)
        self.batch_size = check_batch_size(c)
        self.model = set_cpu_attention(model, c["cpu_attention"], self.device)
        self.last_stats: dict = {}

    def match(self, f0, f1):
        return run_lightglue(self.model, f0, f1, self.device, self.last_stats)

    def match_batch(self, pairs):
        if self.batch_size == 1:
            return super().match_batch(pairs)
        self.last_stats = {"layers": self.model.conf.n_layers, "pruned": 0.0}
        return run_lightglue_batch(self.model, pairs, self.device)
