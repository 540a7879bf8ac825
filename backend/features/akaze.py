"""AKAZE (Alcantarilla, Nuevo & Bartoli, "Fast Explicit Diffusion for Accelerated Features in Nonlinear Scale
Spaces", BMVC 2013) through OpenCV (``cv2.AKAZE_create``): keypoints in a nonlinear scale space, 486-bit M-LDB
binary descriptors (61 bytes), matched by Hamming distance."""

from __future__ import annotations

import numpy as np

from .base import Extractor, to_gray
from .orb import keypoints_to_dict


class AKAZE(Extractor):
    default_conf = {"max_keypoints": 4096, "detection_threshold": 0.001}
    descriptor_kind = "binary"
    default_matcher = "nn-ratio"
    licence = "Apache-2.0 (OpenCV)"
    reference = "Alcantarilla et al., BMVC 2013; OpenCV"

    def _init(self):
        import cv2

        # OpenCV 5 moved AKAZE to the contrib module xfeatures2d (hence opencv-contrib-python-headless)
        create = getattr(cv2, "AKAZE_create", None) or cv2.xfeatures2d.AKAZE_create
        self.akaze = create(threshold=float(self.conf["detection_threshold"]))

    def extract(self, image):
        kps, desc = self.akaze.detectAndCompute(to_gray(image), None)
        out = keypoints_to_dict(kps, desc, dim=61)
        if len(out["scores"]) > self.conf["max_keypoints"]:  # AKAZE has no count limit: keep the strongest
            keep = np.argsort(-out["scores"], kind="stable")[: self.conf["max_keypoints"]]
            out = {k: v[keep] for k, v in out.items()}
        return out
