"""Matchers: one file per method behind one registry (the contract is :mod:`backend.matchers.base`; the stage
that matches the selected pairs into ``matches.h5`` is :mod:`backend.matchers.match`).

A matcher declares the features it accepts; :func:`check_combination` refuses a combination that cannot work and
names the ones that can. Importing this package loads no model.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> (module in this package, class name)
MATCHERS: dict[str, tuple[str, str]] = {
    "lightglue": ("lightglue", "LightGlue"),
    "lighterglue": ("lighterglue", "LighterGlue"),
    "nn-ratio": ("nearest_neighbor", "NearestNeighborRatio"),
    "adalam": ("adalam", "AdaLAM"),
}


def matcher_class(name: str):
    """The :class:`~backend.matchers.base.Matcher` subclass registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.
    """
    if name not in MATCHERS:
        raise ValueError(f"unknown matcher {name!r}; choose one of {', '.join(MATCHERS)}")
    module, cls = MATCHERS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def matchers_for(extractor: str) -> list[str]:
    """The registered matchers that accept features of ``extractor``, in registry order.

    Raises:
        ValueError: ``extractor`` is not registered.
    """
    from ..features import extractor_class

    kind = extractor_class(extractor).descriptor_kind
    return [m for m in MATCHERS if matcher_class(m).supports(extractor, kind)]


def check_combination(extractor: str, matcher: str) -> None:
    """Raise ``ValueError`` when ``matcher`` cannot match ``extractor``'s features, naming what can.

    Raises:
        ValueError: unknown names, or an unsupported combination (e.g. LightGlue on SIFT: no SIFT weights here).
    """
    from ..features import EXTRACTORS

    ok = matchers_for(extractor)
    if matcher not in ok:
        matcher_class(matcher)  # unknown name -> its own message
        can = [e for e in EXTRACTORS if matcher in matchers_for(e)]
        raise ValueError(f"matcher {matcher!r} cannot match {extractor!r} features; for {extractor} choose "
                         f"{' or '.join(ok)}; {matcher} works with {', '.join(can)}")


def matcher_conf(name: str, **options: Any) -> dict[str, Any]:
    """``default_conf`` of matcher ``name`` updated with those ``options`` whose keys it knows (None ignored)."""
    cls = matcher_class(name)
    return {**cls.default_conf, **{k: v for k, v in options.items() if k in cls.default_conf and v is not None}}


def load_matcher(name: str, extractor: str, device: Any = None, **options: Any):
    """Build matcher ``name`` for ``extractor``'s features with :func:`matcher_conf` on ``device``.

    Raises:
        ValueError: unknown name or option, or an unsupported combination.
        MissingWeightsError: a weight file is missing or corrupt.
    """
    from ..features import extractor_class

    check_combination(extractor, name)
    return matcher_class(name)(matcher_conf(name, **options), extractor, extractor_class(extractor).descriptor_kind,
                               device)
