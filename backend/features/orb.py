"""ORB (Rublee et al., "ORB: an efficient alternative to SIFT or SURF", ICCV 2011) through OpenCV
(``cv2.ORB_create``): FAST corners on an image pyramid with Harris ranking, 256-bit rBRIEF binary descriptors,
matched by Hamming distance. The IMC 2024 baseline write-ups use it as the cheapest classical option."""

from __future__ import annotations

import math

import numpy as np

from .base import Extractor, empty_features, to_gray


class ORB(Extractor):
    default_conf = {"max_keypoints": 4096, "scale_factor": 1.2, "n_levels": 8, "fast_threshold": 20,
                    "edge_threshold": 31}
    descriptor_kind = "binary"
    default_matcher = "nn-ratio"
    licence = "Apache-2.0 (OpenCV)"
    reference = "Rublee et al., ICCV 2011; OpenCV"

    def _init(self):
        import cv2

        c = self.conf
        self.orb = cv2.ORB_create(nfeatures=int(c["max_keypoints"]), scaleFactor=float(c["scale_factor"]),
                                  nlevels=int(c["n_levels"]), edgeThreshold=int(c["edge_threshold"]),
                                  fastThreshold=int(c["fast_threshold"]))

    def extract(self, image):
        return keypoints_to_dict(*self.orb.detectAndCompute(to_gray(image), None), dim=32)


def keypoints_to_dict(kps, desc, dim: int) -> dict[str, np.ndarray]:
    """OpenCV ``KeyPoint`` list and descriptors [N, dim] uint8 -> the contract's dict (OpenCV already puts pixel
    centres at integers; ``size`` is a diameter, so the scale is half of it; angles in degrees, clockwise in
    image coordinates with y down, become radians)."""
    if desc is None or len(kps) == 0:
        return empty_features(dim, "binary")
    return {
        "keypoints": np.array([k.pt for k in kps], np.float32).reshape(-1, 2),
        "scores": np.array([k.response for k in kps], np.float32),
        "descriptors": np.ascontiguousarray(desc, dtype=np.uint8),
        "scales": np.array([k.size / 2 for k in kps], np.float32),
        "oris": np.array([math.radians(k.angle) if k.angle >= 0 else 0.0 for k in kps], np.float32),
    }
