"""LightGlue (Lindenberger, Sarlin & Pollefeys, "LightGlue: Local Feature Matching at Light Speed", ICCV 2023;
github.com/cvg/LightGlue) through ``kornia.feature.LightGlue`` with the official weights for ALIKED and for DISK,
with adaptive depth (early stopping) and width (point pruning)."""

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


class LightGlue(Matcher):
    """LightGlue with kornia's model. ``cpu_attention``: ``"sdpa"`` (cross-attention through
    :func:`use_sdpa_cross_attention` on the CPU) or ``"kornia"`` (kornia's einsum path, as before); CUDA always
    takes kornia's own fused path. After each :meth:`match`, :attr:`last_stats` holds the pair's adaptive depth and
    width (:func:`run_lightglue`)."""

    default_conf = {"depth_confidence": 0.95, "width_confidence": 0.99, "filter_threshold": 0.1,
                    "cpu_attention": "sdpa"}
    features = {"aliked-n16": "aliked-lightglue", "aliked-n16rot": "aliked-lightglue",
                "aliked-n32": "aliked-lightglue", "disk": "disk-lightglue"}
    uses_gpu = True
    licence = "Apache-2.0 (code and weights)"
    reference = "Lindenberger et al., ICCV 2023; github.com/cvg/LightGlue"

    @classmethod
    def weight_names(cls, conf, extractor):
        return [cls.features[extractor]]

    def _init(self):
        from kornia.feature import LightGlue as KorniaLightGlue

        c = self.conf
        model = KorniaLightGlue(None, input_dim=128, depth_confidence=c["depth_confidence"],
                                width_confidence=c["width_confidence"], filter_threshold=c["filter_threshold"],
                                mp=self.device.type == "cuda")
        model = load_lightglue_state(model, self.features[self.extractor]).eval().to(self.device)
        self.model = set_cpu_attention(model, c["cpu_attention"], self.device)
        self.last_stats: dict = {}

    def match(self, f0, f1):
        return run_lightglue(self.model, f0, f1, self.device, self.last_stats)
