"""AdaLAM (Cavalli et al., "Handcrafted Outlier Detection Revisited", ECCV 2020; github.com/cavalli1234/AdaLAM)
through ``kornia.feature.match_adalam``: nearest-neighbour candidates filtered by local affine consistency around
confident seeds. Works with any features: L2 distances for float descriptors, Hamming for binary ones; keypoints
with scales and orientations (SIFT, ORB, AKAZE) also get AdaLAM's scale and orientation checks, the others are
checked on their positions only. No learned weights."""

from __future__ import annotations

import numpy as np
import torch

from .base import Matcher, no_matches
from .nearest_neighbor import similarity_matrix


class AdaLAM(Matcher):
    default_conf = {"area_ratio": 100, "search_expansion": 4, "ransac_iters": 128, "min_inliers": 6,
                    "min_confidence": 200, "orientation_difference_threshold": 30.0, "scale_rate_threshold": 1.5}
    features = None
    descriptor_kinds = ("float", "binary")
    uses_gpu = True
    licence = "BSD-3-Clause (AdaLAM), Apache-2.0 (kornia)"
    reference = "Cavalli et al., ECCV 2020; kornia.feature.match_adalam"

    @torch.inference_mode()
    def match(self, f0, f1):
        from kornia.feature import laf_from_center_scale_ori, match_adalam
        from kornia.feature.adalam.core import AdalamConfig

        if len(f0["keypoints"]) < 2 or len(f1["keypoints"]) < 2:
            return no_matches()
        device = self.device or torch.device("cpu")
        oriented = all("scales" in f and "oris" in f for f in (f0, f1))

        def lafs(f):
            xy = torch.from_numpy(np.ascontiguousarray(f["keypoints"], np.float32)).to(device)[None]
            n = xy.shape[1]
            if oriented:
                scale = torch.from_numpy(f["scales"].astype(np.float32)).to(device).view(1, n, 1, 1)
                ori = torch.from_numpy(np.degrees(f["oris"]).astype(np.float32)).to(device).view(1, n, 1)
            else:  # one scale and orientation for all: the scale and orientation checks pass trivially
                scale, ori = torch.ones(1, n, 1, 1, device=device), torch.zeros(1, n, 1, device=device)
            return laf_from_center_scale_ori(xy, scale, ori)

        sim, to_distance = similarity_matrix(f0["descriptors"], f1["descriptors"], self.descriptor_kind, device)
        rows = torch.arange(sim.shape[0], device=device)[:, None].expand_as(sim)
        cols = torch.arange(sim.shape[1], device=device)[None].expand_as(sim)
        dm = to_distance(rows, cols, sim)
        c = self.conf
        cfg = AdalamConfig(area_ratio=c["area_ratio"], search_expansion=c["search_expansion"],
                           ransac_iters=c["ransac_iters"], min_inliers=c["min_inliers"],
                           min_confidence=c["min_confidence"],
                           orientation_difference_threshold=c["orientation_difference_threshold"],
                           scale_rate_threshold=c["scale_rate_threshold"], detected_scale_rate_threshold=5,
                           refit=True, force_seed_mnn=True, device=device)
        w0, h0 = (int(v) for v in f0["image_size"])
        w1, h1 = (int(v) for v in f1["image_size"])
        # the descriptors only give AdaLAM their count here: the distances come in dm (L2 or Hamming)
        d0 = torch.zeros(sim.shape[0], 1, device=device)
        d1 = torch.zeros(sim.shape[1], 1, device=device)
        dists, idx = match_adalam(d0, d1, lafs(f0), lafs(f1), cfg, hw1=(h0, w0), hw2=(h1, w1), dm=dm)
        if len(idx) == 0:
            return no_matches()
        # dists is the inverse of the local RANSAC's confidence (at most 1 / min_confidence): higher confidence,
        # higher score
        conf = 1.0 / dists.float().clamp(min=1e-12)
        score = (1 - c["min_confidence"] / conf.clamp(min=c["min_confidence"])).clamp(0, 1)
        m, sc = idx.cpu().numpy().astype(np.int32).reshape(-1, 2), score.cpu().numpy().astype(np.float32).ravel()
        return one_to_one(m, sc)


def one_to_one(matches: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep, for every keypoint of either image, only its highest-scoring match (AdaLAM may map several keypoints
    of one image to one of the other). ``matches`` int32 [M, 2], ``scores`` float32 [M]; returns the kept rows in
    their original order."""
    order = np.argsort(-scores, kind="stable")
    keep = np.zeros(len(matches), bool)
    seen0, seen1 = set(), set()
    for k in order:
        a, b = int(matches[k, 0]), int(matches[k, 1])
        if a not in seen0 and b not in seen1:
            keep[k] = True
            seen0.add(a)
            seen1.add(b)
    return matches[keep], scores[keep]
