"""Content keys: the sha256 of a file's bytes and of a JSON-able value. One implementation for the photos, the
weight files, the ONNX manifests, the stage hashes and the cache keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex sha256 (64 characters) of a file's bytes (``hashlib.file_digest``, read in blocks).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def json_sha256(value, length: int = 64) -> str:
    """The first ``length`` hex characters of the sha256 of ``value`` as JSON (keys sorted; what JSON cannot
    hold written as ``str``): the same value gives the same key in every process and on every machine."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]
