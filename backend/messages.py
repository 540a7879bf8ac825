"""What the user reads when a run fails: one plain-text paragraph with what failed and what to do, chosen by the
error's type (``run.json`` ``error_type``; :mod:`backend.errors`), never a stack trace or a server path."""

from __future__ import annotations

import re

from .stages import stage_title

_ABS_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"`,;:()\[\]]+/)+([^\s/'\"`,;:()\[\]]*)")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by its last component (``/srv/runs/x/upload/a.jpg`` ->
    ``a.jpg``; a folder ending in ``/`` -> ``the folder``), for messages shown to users. URLs are left alone."""
    return _ABS_PATH.sub(lambda m: m.group(1) or "the folder", str(text))


_RESUME = "The finished stages are kept: press Resume to try again, or start a new run with another preset."


_MAPPING_HINT = ("The earlier stages are kept. Try the 'accurate' preset, more keypoints, or per-image cameras, and "
                 "look at the Matches page for weak pairs.")


HINTS: dict[str, str] = {
    # error type (run.json error_type; backend/errors.py) -> what the user can do
    "MissingWeightsError": "Install the network weights on the server (bash setup/setup.sh), then press Resume.",
    "InputError": ("Upload at least two JPEG, PNG or HEIC photos of the same scene and start a new run "
                   "(the Images page lists the files that were skipped and why)."),
    "MappingError": _MAPPING_HINT,
    "MappingCrashError": _MAPPING_HINT,
    "NothingReconstructedError": _MAPPING_HINT,
    "NoSpaceError": ("The server's disk is full: delete runs you no longer need (or ask the server's administrator "
                     "for space), then press Resume; the finished stages are kept."),
    "MemoryError": "The server ran out of memory: try the 'fast' preset or fewer keypoints.",
    "OutOfMemoryError": "The GPU ran out of memory: try the 'fast' preset or fewer keypoints.",
}


NOT_RESUMABLE = {"InputError"}  # failures in the photos themselves: only a new run with other photos can succeed


def input_failure(error_type: str | None) -> bool:
    """True when a failure comes from the photos themselves (an ``InputError``: fewer than two usable images, no
    folder): resuming the same run cannot succeed, only a new run with other photos can."""
    return error_type in NOT_RESUMABLE


def friendly_error(stage: str | None, message: str | None, error_type: str | None = None) -> str:
    """A one-paragraph message for the page: what failed and what to do (never a stack trace, never a server
    path). The advice comes from the error's type (:data:`HINTS`; ``run.json`` ``error_type``), never from its
    wording. Plain text (no markdown): pages escape it, since it can quote file names."""
    if error_type == "Cancelled":
        return "The run was cancelled. The stages that finished are kept: press Resume to go on from there."
    msg = (message or "unknown error").strip().splitlines()[0] if (message or "").strip() else "unknown error"
    msg = scrub_paths(msg)
    where = f"The stage '{stage_title(stage)}' failed" if stage else "The run failed"
    return f"{where}: {msg}. {HINTS.get(error_type or '', _RESUME)}"


def legacy_error_type(stage: str | None, message: str | None) -> str | None:
    """The type of a failure recorded before ``run.json`` kept types (layout 1), read once from its message, so that
    an old run still gets the right advice and no useless Resume. Never used for a run that records its type."""
    low = (message or "").lower()
    if not low:
        return None
    if "cancelled" in low:
        return "Cancelled"
    if stage in ("images", None) and ("usable image" in low or "not a folder" in low):
        return "InputError"
    if "weight" in low and ("missing" in low or "sha256" in low or "install" in low):
        return "MissingWeightsError"
    if "no space left" in low or "errno 28" in low or "disk quota" in low:
        return "NoSpaceError"
    if stage in ("verification", "mapping") or "pycolmap" in low:
        return "MappingError"
    if "memory" in low:
        return "MemoryError"
    return None
