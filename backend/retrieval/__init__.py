"""Pair selection: global descriptors and neighbour search (:mod:`.global_descriptors`).

:data:`GLOBAL_DESCRIPTORS` is the registry of the global-descriptor networks, as the extractor and matcher ones are:
the CLI's ``--retrieval``, the app's list, the API's ``retrieval_model`` field, the weights a run records and the
docs come from it. Importing this package loads no model and no torch.
"""

from __future__ import annotations

# name -> (weight name in weights/manifest.json, descriptor size, what it is)
GLOBAL_DESCRIPTORS: dict[str, tuple[str, int | None, str]] = {
    "dinov2-small": ("dinov2-small", None, "DINOv2 ViT-S/14 (Oquab et al., 2023): [CLS, GeM(patch tokens)]"),
    "dinov2-base": ("dinov2-base", None, "DINOv2 ViT-B/14 (Oquab et al., 2023): [CLS, GeM(patch tokens)]"),
    "efficientnet-lite0": ("efficientnet-lite0", 1280, "EfficientNet-Lite0 (Tan & Le, 2019), GeM of the last map"),
}
RETRIEVAL_CHOICES = ("auto", *GLOBAL_DESCRIPTORS)  # "auto": DINOv2-small when its weights are installed


def descriptor_weight_names() -> tuple[str, ...]:
    """The weight names of every registered global descriptor (a run records their sha256)."""
    return tuple(w for w, _, _ in GLOBAL_DESCRIPTORS.values())
