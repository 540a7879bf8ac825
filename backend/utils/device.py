"""The device the networks run on."""

from __future__ import annotations


def get_device():
    """CUDA when present, else CPU (a ``torch.device``). torch is imported here, not with the module, so that the
    mapping child, which only reads ``features.h5``, starts without it (2 s of imports on this machine)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
