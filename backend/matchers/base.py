"""The matcher contract: what every method in :mod:`backend.matchers` provides.

A matcher is one file with one :class:`Matcher` subclass and one entry in :data:`backend.matchers.MATCHERS`. It
declares which features it accepts (by extractor name, or by descriptor kind) and maps two images' features to
index pairs and scores; the matching stage (:mod:`backend.matchers.match`) does the pairs, caching and h5 layout.
As kornia's LightGlue, whose ``features`` table names the extractors each set of weights was trained for.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np


class Matcher:
    """Base class of matchers.

    Class attributes:
        default_conf: every option with its default (only these keys are accepted).
        features: extractor name -> variant (e.g. which weights), for learned matchers trained on given
            features; ``None`` when the matcher works on any features of :attr:`descriptor_kinds`.
        descriptor_kinds: the descriptor kinds accepted when :attr:`features` is ``None``.
        licence, reference: for the method table of docs/methods.md (generated).

    Instance attribute ``batch_size``: pairs the matching stage hands :meth:`match_batch` at a time (1 unless the
    method batches, as LightGlue with its ``batch_size`` option).
    """

    default_conf: ClassVar[dict[str, Any]] = {}
    features: ClassVar[dict[str, str] | None] = None
    descriptor_kinds: ClassVar[tuple[str, ...]] = ("float", "binary")
    uses_gpu: ClassVar[bool] = False
    batch_size: int = 1
    licence: ClassVar[str] = ""
    reference: ClassVar[str] = ""

    def __init__(self, conf: dict[str, Any] | None, extractor: str, descriptor_kind: str, device: Any = None):
        """Build the matcher for features of extractor ``extractor`` (kind ``descriptor_kind``) on ``device``.

        Raises:
            ValueError: an unknown option, or features this matcher does not accept.
            MissingWeightsError: a weight file is missing or fails its sha256 check.
        """
        unknown = set(conf or {}) - set(self.default_conf)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no option {', '.join(sorted(unknown))}")
        if not self.supports(extractor, descriptor_kind):
            raise ValueError(f"{type(self).__name__} cannot match {extractor} features")
        self.conf = {**self.default_conf, **(conf or {})}
        self.extractor = extractor
        self.descriptor_kind = descriptor_kind
        self.device = device
        self._init()

    @classmethod
    def supports(cls, extractor: str, descriptor_kind: str) -> bool:
        """Whether features of extractor ``extractor`` with descriptors of ``descriptor_kind`` can be matched."""
        if cls.features is not None:
            return extractor in cls.features
        return descriptor_kind in cls.descriptor_kinds

    @classmethod
    def weight_names(cls, conf: dict[str, Any], extractor: str) -> list[str]:
        """Names in ``weights/manifest.json`` of the files loaded for ``extractor`` (part of every match key)."""
        return []

    def _init(self) -> None:
        """Load the model (called once by ``__init__``)."""

    def match(self, f0: dict[str, np.ndarray], f1: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Match two images' features.

        Args:
            f0, f1: as :func:`backend.features.extract.read_features` returns them: ``keypoints`` float32 [N, 2]
                (original-image pixels, centres at integers), ``scores`` [N], ``descriptors`` [N, D] (float32, or
                uint8 packed bits), ``image_size`` (W, H), optionally ``scales`` and ``oris`` [N].

        Returns:
            ``(matches int32 [M, 2], scores float32 [M])``: indices into f0's and f1's keypoints, each index at
            most once per side, and a confidence in [0, 1] (higher is better).
        """
        raise NotImplementedError

    def match_batch(self, pairs: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Match several pairs, ``[(f0, f1), ...]`` as :meth:`match` takes them, into one ``(matches, scores)`` per
        pair, in order. The matching stage hands a matcher :attr:`batch_size` pairs at a time; this default matches
        them one by one (a model that batches, as LightGlue on a GPU, overrides it)."""
        return [self.match(f0, f1) for f0, f1 in pairs]


def no_matches() -> tuple[np.ndarray, np.ndarray]:
    """``(int32 [0, 2], float32 [0])``."""
    return np.zeros((0, 2), np.int32), np.zeros((0,), np.float32)
