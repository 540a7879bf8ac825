"""LightGlue (Lindenberger, Sarlin & Pollefeys, "LightGlue: Local Feature Matching at Light Speed", ICCV 2023;
github.com/cvg/LightGlue) through ``kornia.feature.LightGlue`` with the official weights for ALIKED and for DISK,
with adaptive depth (early stopping) and width (point pruning)."""

from __future__ import annotations

import numpy as np
import torch

from ..io.weights import weight_path
from .base import Matcher, no_matches

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


@torch.inference_mode()
def run_lightglue(model: torch.nn.Module, f0: dict, f1: dict, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """One pair through a kornia ``LightGlue`` ``model``: ``(matches int32 [M, 2], scores float32 [M])``."""
    if len(f0["keypoints"]) == 0 or len(f1["keypoints"]) == 0:
        return no_matches()

    def side(f: dict) -> dict:
        return {
            "keypoints": torch.from_numpy(f["keypoints"]).to(device)[None],
            "descriptors": torch.from_numpy(f["descriptors"]).to(device)[None],
            "image_size": torch.as_tensor(f["image_size"], device=device, dtype=torch.float32)[None],
        }

    out = model({"image0": side(f0), "image1": side(f1)})
    return (out["matches"][0].cpu().numpy().astype(np.int32),
            out["scores"][0].float().cpu().numpy().astype(np.float32))


class LightGlue(Matcher):
    default_conf = {"depth_confidence": 0.95, "width_confidence": 0.99, "filter_threshold": 0.1}
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
        self.model = load_lightglue_state(model, self.features[self.extractor]).eval().to(self.device)

    def match(self, f0, f1):
        return run_lightglue(self.model, f0, f1, self.device)
