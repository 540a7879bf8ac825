"""DISK (Tyszkiewicz, Fua & Trulls, "DISK: Learning local features with policy gradient", NeurIPS 2020;
github.com/cvlab-epfl/disk) through ``kornia.feature.DISK`` with the depth-supervised weights
(``disk-depth-save.pth``, as LightGlue's DISK matcher was trained on)."""

from __future__ import annotations

import torch

from ..io.weights import weight_path
from ..utils.tensors import image_to_batch
from .base import Extractor


class DISK(Extractor):
    default_conf = {"max_keypoints": 2048, "nms_window_size": 5, "detection_threshold": 0.0}
    descriptor_kind = "float"
    default_matcher = "lightglue"
    uses_gpu = True
    licence = "Apache-2.0 (code and weights)"
    reference = "Tyszkiewicz et al., NeurIPS 2020; github.com/cvlab-epfl/disk"

    @classmethod
    def weight_names(cls, conf):
        return ["disk"]

    def _init(self):
        from kornia.feature import DISK as KorniaDISK

        model = KorniaDISK()
        state = torch.load(weight_path("disk"), map_location="cpu", weights_only=True)
        model.load_state_dict(state["extractor"] if "extractor" in state else state)
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def extract(self, image):
        c = self.conf
        t = image_to_batch(image, self.device)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            # DISK's U-Net needs sides divisible by 16; padding keeps every keypoint in the original frame
            f = self.model(t, n=c["max_keypoints"], window_size=c["nms_window_size"],
                           score_threshold=c["detection_threshold"], pad_if_not_divisible=True)[0]
        kp = f.keypoints.float().cpu().numpy()
        h, w = image.shape[:2]
        keep = (kp[:, 0] <= w - 1) & (kp[:, 1] <= h - 1)
        return {
            "keypoints": kp[keep],
            "scores": f.detection_scores.float().cpu().numpy()[keep],
            "descriptors": torch.nn.functional.normalize(f.descriptors.float(), dim=-1).cpu().numpy()[keep],
        }
