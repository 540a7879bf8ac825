"""Local features: one file per method behind one registry (the contract is :mod:`backend.features.base`; the
stage that runs any of them over a run folder and writes ``features.h5`` is :mod:`backend.features.extract`).

Adding an extractor is one file with an :class:`~backend.features.base.Extractor` subclass plus one entry in
:data:`EXTRACTORS`; the pipeline, the CLI, the app and the h5 layout need no change (see the example in
docs/architecture.md).
Importing this package loads no model and no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> (module in this package, class name, options over the class's default_conf). As hloc's confs.
EXTRACTORS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "aliked-n16": ("aliked", "ALIKED", {"model_name": "aliked-n16"}),
    "aliked-n16rot": ("aliked", "ALIKED", {"model_name": "aliked-n16rot"}),
    "aliked-n32": ("aliked", "ALIKED", {"model_name": "aliked-n32"}),
    "aliked-t16": ("aliked", "ALIKED", {"model_name": "aliked-t16"}),
    "disk": ("disk", "DISK", {}),
    "xfeat": ("xfeat", "XFeat", {}),
    "sift": ("sift", "SIFT", {}),
    "orb": ("orb", "ORB", {}),
    "akaze": ("akaze", "AKAZE", {}),
}


def extractor_class(name: str):
    """The :class:`~backend.features.base.Extractor` subclass registered as ``name`` (imports its module).

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.
    """
    if name not in EXTRACTORS:
        raise ValueError(f"unknown features {name!r}; choose one of {', '.join(EXTRACTORS)}")
    module, cls, _ = EXTRACTORS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def extractor_conf(name: str, **options: Any) -> dict[str, Any]:
    """The full options of extractor ``name``: its class's ``default_conf``, the registry entry's overrides, then
    those of ``options`` whose keys the method knows (``max_keypoints`` and the like; others are ignored, so one
    stage config serves every method).

    Raises:
        ValueError: ``name`` is not registered.
    """
    cls = extractor_class(name)
    conf = {**cls.default_conf, **EXTRACTORS[name][2]}
    conf.update({k: v for k, v in options.items() if k in cls.default_conf and v is not None})
    return conf


def load_extractor(name: str, device: Any = None, **options: Any):
    """Build extractor ``name`` with :func:`extractor_conf` ``(name, **options)`` on ``device``.

    Raises:
        ValueError: unknown name or option. MissingWeightsError: a weight file is missing or corrupt.
    """
    return extractor_class(name)(extractor_conf(name, **options), device)
