"""Mutual nearest neighbours with Lowe's ratio test (Lowe, IJCV 2004), for any features: L2 distance for float
descriptors, Hamming distance for binary ones (as OpenCV's ``BFMatcher(NORM_HAMMING)``). With the defaults it is
COLMAP's exhaustive SIFT matcher rule (``max_ratio`` 0.8, ``max_distance`` 0.7 on unit descriptors, cross-check).
No learned weights; one matrix product per pair (torch, on CUDA when present); only each row's two nearest
columns become distances."""

from __future__ import annotations

import numpy as np
import torch

from .base import Matcher, no_matches


def similarity_matrix(d0: np.ndarray, d1: np.ndarray, kind: str, device: torch.device):
    """One matrix product [N0, N1] whose larger values are nearer, and the map from a similarity to a distance.

    ``kind == "float"``: descriptors [N, D] float, similarity ``a . b``; distance
    ``sqrt(|a|^2 + |b|^2 - 2 a . b)`` (L2). ``"binary"``: descriptors [N, B] uint8 packed bits, similarity the
    product of the bits as +-1; distance the Hamming distance divided by the bit count, in [0, 1].

    Returns ``(S float32 [N0, N1], to_distance(i, j, s) -> float32 tensor)`` for row indices ``i``, column
    indices ``j`` and their similarities ``s``.
    """
    if kind == "binary":
        b0 = torch.from_numpy(np.unpackbits(d0, axis=1)).to(device).float().mul_(2).sub_(1)  # bits as +-1
        b1 = torch.from_numpy(np.unpackbits(d1, axis=1)).to(device).float().mul_(2).sub_(1)
        n = b0.shape[1]
        return b0 @ b1.T, lambda i, j, s: (n - s) * (0.5 / n)
    t0 = torch.from_numpy(np.ascontiguousarray(d0, np.float32)).to(device)
    t1 = torch.from_numpy(np.ascontiguousarray(d1, np.float32)).to(device)
    n0, n1 = (t0 * t0).sum(1), (t1 * t1).sum(1)
    return t0 @ t1.T, lambda i, j, s: (n0[i] + n1[j] - 2 * s).clamp(min=0).sqrt()


@torch.inference_mode()
def mutual_nn_ratio(sim: torch.Tensor, to_distance, ratio: float, max_distance: float | None,
                    mutual: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Matches from a similarity matrix [N0, N1] (see :func:`similarity_matrix`): each row's nearest column, kept
    when its distance is below ``ratio`` times the second nearest's (Lowe's test; a lone column passes), below
    ``max_distance`` (None: no limit), and, with ``mutual``, when the row is also the column's nearest. Only the
    two nearest columns of each row are turned into distances.

    Returns ``(matches int32 [M, 2], scores float32 [M])`` with score = 1 - distance ratio.
    """
    n0, n1 = sim.shape
    if n0 == 0 or n1 == 0:
        return no_matches()
    k = min(2, n1)
    vals, idx = sim.topk(k, dim=1, largest=True)
    rows = torch.arange(n0, device=sim.device)
    j = idx[:, 0]
    best = to_distance(rows, j, vals[:, 0])
    second = to_distance(rows, idx[:, 1], vals[:, 1]) if k == 2 else torch.full_like(best, float("inf"))
    r = best / second.clamp(min=1e-12)
    keep = r < ratio
    if max_distance is not None:
        keep &= best < max_distance
    if mutual:
        keep &= sim.argmax(dim=0)[j] == rows
    i = torch.nonzero(keep).squeeze(1)
    m = torch.stack([i, j[i]], 1).cpu().numpy().astype(np.int32)
    return m, (1 - r[i]).clamp(0, 1).float().cpu().numpy().astype(np.float32)


class NearestNeighborRatio(Matcher):
    # max_distance applies to float descriptors (L2 on unit vectors, COLMAP's 0.7); max_hamming to binary ones
    # (share of differing bits)
    default_conf = {"ratio": 0.8, "max_distance": 0.7, "max_hamming": 0.25, "mutual": True}
    features = None
    descriptor_kinds = ("float", "binary")
    uses_gpu = True
    licence = "ours (no weights)"
    reference = "Lowe, IJCV 2004 (ratio test); COLMAP's SIFT matching rule"

    def match(self, f0, f1):
        if len(f0["descriptors"]) == 0 or len(f1["descriptors"]) == 0:
            return no_matches()
        device = self.device or torch.device("cpu")
        sim, to_distance = similarity_matrix(f0["descriptors"], f1["descriptors"], self.descriptor_kind, device)
        limit = self.conf["max_hamming"] if self.descriptor_kind == "binary" else self.conf["max_distance"]
        return mutual_nn_ratio(sim, to_distance, self.conf["ratio"], limit, self.conf["mutual"])
