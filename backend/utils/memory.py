"""Handing a large decode's memory back to the operating system (glibc's ``malloc_trim``)."""

from __future__ import annotations

import ctypes
import gc
import os
import platform

RELEASE_ABOVE_BYTES = 32 * 2**20  # decodes larger than this hand their memory back to the OS afterwards


def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS, Windows), looked up once."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        try:
            if platform.system() == "Linux" and os.confstr("CS_GNU_LIBC_VERSION"):
                _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
                _MALLOC_TRIM.argtypes, _MALLOC_TRIM.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, ValueError, AttributeError):  # not glibc: nothing to trim
            _MALLOC_TRIM = False
    return _MALLOC_TRIM or None


_MALLOC_TRIM = None


def release_memory() -> bool:
    """Collect garbage, then hand the C heap's free pages back to the operating system (glibc ``malloc_trim(0)``).

    Why: a decoded photo is freed to the C allocator, which keeps the pages for reuse (Pillow allocates in 16 MB
    blocks, and after the first large free glibc serves such blocks from its heaps instead of fresh mappings), so
    a server that decoded a large photo kept its peak resident size for good (the Two-view page: 3.2 GB ten minutes
    later). Costs a few ms to a few tens of ms (one full ``gc.collect``); call it after large work, not per call.

    Returns:
        True when ``malloc_trim`` ran (glibc), False where only the garbage collection could run.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
