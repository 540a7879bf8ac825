"""The errors the pipeline raises on purpose, by what the user can do about them.

Each stage's failure keeps its type: ``run.json`` records ``error_type`` (the class name), and the app and the API
map the type, never the message's wording, to what the user can do.
"""

from __future__ import annotations

import errno


class InputError(ValueError):
    """The input cannot be reconstructed (for example fewer than two usable images, or not a folder): only a new
    run with other photos can succeed."""


class MissingWeightsError(FileNotFoundError):
    """A weight file is absent or its checksum does not match the manifest."""


class NoSpaceError(OSError):
    """The disk (or the user's quota) is full. Recorded as this type for any ``OSError`` with ``ENOSPC`` or
    ``EDQUOT`` (:func:`error_type`)."""


class MappingError(RuntimeError):
    """Verification or mapping failed, or pycolmap crashed; the message says what to try."""


class NothingReconstructedError(MappingError):
    """Mapping ran but placed no photo: the photos do not overlap enough, or the matches are too weak."""


class MappingCrashError(MappingError):
    """The mapping child process died (pycolmap aborted, e.g. SIGABRT); the stages before it are kept."""


KNOWN_TYPES = ("InputError", "MissingWeightsError", "NothingReconstructedError", "MappingCrashError", "MappingError",
               "NoSpaceError", "MemoryError", "OutOfMemoryError")
"""The types the app, the API and the CLI give advice for (``backend.messages.HINTS``)."""


def error_type(e: BaseException) -> str:
    """The type recorded for ``e`` (``run.json`` ``error_type``, ``progress.json``): the first class of its MRO
    that is one of :data:`KNOWN_TYPES` (so a Ray task's ``RayTaskError(MissingWeightsError)`` is a
    ``MissingWeightsError``), ``NoSpaceError`` for a full disk whatever raised it, ``MemoryError`` for PyTorch's CPU
    allocator (it raises a plain ``RuntimeError`` whose text is its only mark), else its class name."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "NoSpaceError"
    for cls in type(e).__mro__:
        if cls.__name__ in KNOWN_TYPES:
            return cls.__name__
    if isinstance(e, RuntimeError) and "not enough memory" in str(e):
        return "MemoryError"
    return type(e).__name__
