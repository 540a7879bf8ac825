"""ALIKED (Zhao et al., "ALIKED: A Lighter Keypoint and Descriptor Extraction Network via Deformable
Transformation", IEEE TIM 2023; github.com/Shiaoming/ALIKED) through ``kornia.feature.ALIKED`` with the official
weights. Variants: ``aliked-n16`` (the LightGlue one), ``aliked-n16rot`` (trained with in-plane rotations),
``aliked-n32`` (larger), ``aliked-t16`` (tiny; 64-d descriptors, so LightGlue's ALIKED weights do not fit it).
"""

from __future__ import annotations

import torch

from ..io.weights import weight_path
from ..utils.tensors import image_to_batch
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
        KorniaALIKED = _aliked_class()

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
        t = image_to_batch(image, self.device)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            feats = self.model(t)[0]
        return {
            "keypoints": feats.keypoints.float().cpu().numpy(),
            "scores": feats.keypoint_scores.float().cpu().numpy(),
            "descriptors": feats.descriptors.float().cpu().numpy(),
        }


def _aliked_class():
    """kornia's ``ALIKED`` with the dense feature map L2-normalised as ``x * rsqrt(max(sum(x^2), eps^2))`` over the
    channels, in place, instead of ``F.normalize`` (the same values within 2e-7, eps 1e-12 as there; on a
    (1, 128, 768, 1024) map 0.29 s against 0.60-0.67 s on 2 CPU cores; church's extraction 2.44 -> 1.79 s per photo
    before the in-place step, with the same keypoints). The rest of
    ``extract_dense_map`` is kornia 0.9's own."""
    from kornia.feature import ALIKED as KorniaALIKED
    from kornia.feature.aliked.aliked import InputPadder

    class FastNormALIKED(KorniaALIKED):
        def extract_dense_map(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """``(feature_map float [B, dim, H, W] L2-normalised over dim, score_map float [B, 1, H, W])`` as
            kornia's."""
            padder = InputPadder(image.shape[-2], image.shape[-1], 2**5)
            image = padder.pad(image)
            x1 = self.block1(image)
            x2 = self.block2(self.pool2(x1))
            x3 = self.block3(self.pool4(x2))
            x4 = self.block4(self.pool4(x3))
            x1 = self.gate(self.conv1(x1))
            x2 = self.gate(self.conv2(x2))
            x3 = self.gate(self.conv3(x3))
            x4 = self.gate(self.conv4(x4))
            x1234 = torch.cat([x1, self.upsample2(x2), self.upsample8(x3), self.upsample32(x4)], dim=1)
            score_map = torch.sigmoid(self.score_head(x1234))
            x = x1234.float()  # fp16 under CUDA autocast: sum the squares in fp32, as F.normalize's norm does
            inv = torch.rsqrt((x * x).sum(1, keepdim=True).clamp_min(1e-24))
            # in place outside autograd (x1234 is not read again): no second map of H x W x 128 floats to allocate
            feature_map = (x * inv if torch.is_grad_enabled() else x.mul_(inv)).to(x1234.dtype)
            return padder.unpad(feature_map), padder.unpad(score_map)

    return FastNormALIKED
