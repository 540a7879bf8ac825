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


def error_type(e: BaseException) -> str:
    """The type recorded for ``e`` (``run.json`` ``error_type``, ``progress.json``): its class name, and
    ``NoSpaceError`` for a full disk whatever raised it."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "NoSpaceError"
    return type(e).__name__
