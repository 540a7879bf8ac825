"""Weight files: where they live, and checks that they are the ones we expect.

Every network weight sits under ``weights/`` (or ``$SFM_WEIGHTS_DIR``) and is
described in ``weights/manifest.json`` with its sha256 and where setup fetches it
from. Nothing here downloads: a missing or corrupt file raises
:class:`MissingWeightsError` naming the setup command that installs it.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from ..errors import MissingWeightsError  # noqa: F401 - raised here, importable from here as before
from ..utils.hashing import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_HINT = "bash setup/setup.sh   (or: .venv/bin/python setup/fetch_weights.py)"


def weights_dir() -> Path:
    """Folder holding the weights: ``$SFM_WEIGHTS_DIR`` if set, else ``<repo>/weights``."""
    return Path(os.environ.get("SFM_WEIGHTS_DIR", REPO_ROOT / "weights"))


@lru_cache(maxsize=1)
def manifest() -> dict:
    """The parsed ``weights/manifest.json`` (always read from the repository)."""
    return json.loads((REPO_ROOT / "weights" / "manifest.json").read_text())


@lru_cache(maxsize=None)
def _verified(path: str, size: int, mtime: float, expected: str) -> bool:
    # cached per (path, size, mtime): a file is hashed once per process
    return file_sha256(Path(path)) == expected


def weight_path(name: str, verify: bool = True) -> Path:
    """Path of the single-file weight ``name`` from the manifest (e.g. ``"aliked-n16"``).

    Raises:
        KeyError: ``name`` is not in the manifest.
        MissingWeightsError: the file is missing or its sha256 differs; the message says how to install it.
    """
    entry = manifest()[name]
    path = weights_dir() / entry["file"]
    if not path.is_file():
        raise MissingWeightsError(f"Weight file {path} ({name}) is missing. Install the weights with: {SETUP_HINT}")
    if verify:
        st = path.stat()
        if not _verified(str(path), st.st_size, st.st_mtime, entry["sha256"]):
            raise MissingWeightsError(
                f"Weight file {path} ({name}) does not match its sha256 {entry['sha256'][:12]}...: "
                f"delete it and reinstall with: {SETUP_HINT}"
            )
    return path


def weight_dir(name: str, verify: bool = True) -> Path:
    """Folder of the multi-file weight ``name`` (a Hugging Face model folder such as ``"dinov2-small"``).

    The folder must hold every file listed in the manifest and a ``SHA256SUMS`` written by setup
    (``<sha256>  <file>`` lines); with ``verify`` each file is checked against it.

    Raises:
        MissingWeightsError: a file is missing or does not match ``SHA256SUMS``.
    """
    entry = manifest()[name]
    folder = weights_dir() / entry["dir"]
    sums_file = folder / "SHA256SUMS"
    missing = [f for f in entry["files"] if not (folder / f).is_file()]
    if missing or not sums_file.is_file():
        raise MissingWeightsError(
            f"Model folder {folder} ({name}) is incomplete (missing: {', '.join(missing) or 'SHA256SUMS'}). "
            f"Install it with: {SETUP_HINT} (needs the Hugging Face hub) or see docs/setup.md, "
            "'Adding DINOv2 weights by hand'."
        )
    if verify:
        sums = {}
        for line in sums_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0]
        for f in entry["files"]:
            p = folder / f
            st = p.stat()
            if f not in sums or not _verified(str(p), st.st_size, st.st_mtime, sums[f]):
                raise MissingWeightsError(f"{p} does not match {sums_file}: reinstall it with: {SETUP_HINT}")
    return folder


def is_available(name: str) -> bool:
    """True when weight ``name`` is installed and verifies."""
    try:
        if "dir" in manifest()[name]:
            weight_dir(name)
        else:
            weight_path(name)
        return True
    except (MissingWeightsError, KeyError):
        return False


def checksums(names: list[str]) -> dict[str, str]:
    """sha256 per installed weight (for ``run.json``); multi-file weights give their model file's sum."""
    out = {}
    for name in names:
        entry = manifest()[name]
        if "dir" in entry:
            sums = weights_dir() / entry["dir"] / "SHA256SUMS"
            if sums.is_file():
                for line in sums.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1].endswith(".safetensors"):
                        out[name] = parts[0]
        else:
            out[name] = entry["sha256"]
    return out
