"""The extractor contract: what every local-feature method in :mod:`backend.features` provides.

An extractor is one file with one :class:`Extractor` subclass and one entry in
:data:`backend.features.EXTRACTORS`. It maps one image to keypoints and descriptors; everything else (resizing,
scaling back to original pixels, the border mask, ordering, the h5 layout, caching) is done once, by the features
stage (:mod:`backend.features.extract`). Modelled on hloc's ``extractors/`` (a ``default_conf`` per method) and
kornia.feature (small parts that share one output convention).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

DESCRIPTOR_KINDS = ("float", "binary")


class Extractor:
    """Base class of local-feature extractors.

    Subclasses set the class attributes and implement :meth:`_init` (load the model) and :meth:`extract`.

    Class attributes:
        default_conf: every option of the method with its default; the registry entry and the run's config
            override them (only keys present here are accepted).
        descriptor_kind: ``"float"`` (real-valued, L2-normalised; stored as float16) or ``"binary"`` (packed bits,
            uint8 [N, D/8]; compared by Hamming distance).
        default_matcher: the matcher used when the user names only the features (a key of
            :data:`backend.matchers.MATCHERS`).
        uses_gpu: whether the method runs on CUDA when present.
        licence: the licence of the method's code and weights (docs/methods.md, generated).
        reference: the paper or repository the method comes from.
    """

    default_conf: ClassVar[dict[str, Any]] = {}
    descriptor_kind: ClassVar[str] = "float"
    default_matcher: ClassVar[str] = "nn-ratio"
    uses_gpu: ClassVar[bool] = False
    licence: ClassVar[str] = ""
    reference: ClassVar[str] = ""

    def __init__(self, conf: dict[str, Any] | None = None, device: Any = None):
        """Build the method with ``conf`` over :attr:`default_conf` on ``device`` (a ``torch.device`` or None).

        Raises:
            ValueError: ``conf`` has a key the method does not know.
            MissingWeightsError: a weight file is missing or fails its sha256 check.
        """
        unknown = set(conf or {}) - set(self.default_conf)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no option {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(self.default_conf) or 'none'}")
        self.conf = {**self.default_conf, **(conf or {})}
        self.device = device
        self._init()

    @classmethod
    def weight_names(cls, conf: dict[str, Any]) -> list[str]:
        """Names in ``weights/manifest.json`` of the files this method loads with ``conf`` (part of every cache
        key, so new weights recompute the features)."""
        return []

    def _init(self) -> None:
        """Load the model (called once by ``__init__``)."""

    def extract(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Detect and describe one image.

        Args:
            image: uint8 RGB [H, W, 3] (already resized by the stage; never modified).

        Returns:
            ``keypoints`` float32 [N, 2] (x, y) in pixels of ``image``, **pixel centres at integer coordinates**
            (the top-left pixel's centre is (0, 0), OpenCV's convention); ``scores`` float32 [N] (higher is
            stronger; the stage sorts by it); ``descriptors`` [N, D] float32 (kind ``"float"``) or uint8 packed
            bits (kind ``"binary"``); optionally ``scales`` float32 [N] (px of ``image``) and ``oris`` float32 [N]
            (radians, counter-clockwise from +x in image coordinates).
        """
        raise NotImplementedError


def empty_features(dim: int, kind: str = "float") -> dict[str, np.ndarray]:
    """The result of an image with no keypoints: ``keypoints`` [0, 2], ``scores`` [0], ``descriptors`` [0, dim]."""
    dtype = np.uint8 if kind == "binary" else np.float32
    return {"keypoints": np.zeros((0, 2), np.float32), "scores": np.zeros((0,), np.float32),
            "descriptors": np.zeros((0, dim), dtype)}


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 grey [H, W] (ITU-R 601 weights, as OpenCV and COLMAP use)."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
