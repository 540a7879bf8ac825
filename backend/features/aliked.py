"""ALIKED (Zhao et al., "ALIKED: A Lighter Keypoint and Descriptor Extraction Network via Deformable
Transformation", IEEE TIM 2023; github.com/Shiaoming/ALIKED) through ``kornia.feature.ALIKED`` with the official
weights. Variants: ``aliked-n16`` (the LightGlue one), ``aliked-n16rot`` (trained with in-plane rotations),
``aliked-n32`` (larger), ``aliked-t16`` (tiny; 64-d descriptors, so LightGlue's ALIKED weights do not fit it).
"""

from __future__ import annotations

import numpy as np
import torch

from ..io.weights import weight_path
from .base import Extractor

DIMS = {"aliked-t16": 64, "aliked-n16": 128, "aliked-n16rot": 128, "aliked-n32": 128}


class ALIKED(Extractor):
    default_conf = {"model_name": "aliked-n16", "max_keypoints": 2048, "detection_threshold": 0.01, "nms_radius": 2}
    descriptor_kind = "float"
    default_matcher = "lightglue"
    uses_gpu = True
    licence = "BSD-3-Clause (code and weights)"
    reference = "Zhao et al., IEEE TIM 2023; github.com/Shiaoming/ALIKED"

    @classmethod
    def weight_names(cls, conf):
        return [conf.get("model_name", cls.default_conf["model_name"])]

    def _init(self):
        from kornia.feature import ALIKED as KorniaALIKED

        c = self.conf
        if c["model_name"] not in DIMS:
            raise ValueError(f"unknown ALIKED model {c['model_name']!r}; choose one of {', '.join(DIMS)}")
        model = KorniaALIKED(model_name=c["model_name"], max_num_keypoints=c["max_keypoints"],
                             detection_threshold=c["detection_threshold"], nms_radius=c["nms_radius"])
        state = torch.load(weight_path(c["model_name"]), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        learned = {n for n, _ in model.named_parameters()}
        if any(k in learned for k in missing) or unexpected:
            raise RuntimeError(f"ALIKED weights do not fit the model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def extract(self, image):
        t = torch.from_numpy(np.ascontiguousarray(image).copy()).to(self.device).permute(2, 0, 1)[None]
        t = t.float().div_(255.0)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            feats = self.model(t)[0]
        return {
            "keypoints": feats.keypoints.float().cpu().numpy(),
            "scores": feats.keypoint_scores.float().cpu().numpy(),
            "descriptors": feats.descriptors.float().cpu().numpy(),
        }
