"""Run folders: where runs live, their ids, the config a server gives them, and the lock that keeps one run
from being worked on twice.

One run = one folder ``<runs root>/<run_id>/`` (root: ``$SFM_RUNS_DIR``, else ``<repo>/runs``). Ids are
unguessable (:func:`new_run_id`) and checked before they become a path (:func:`run_dir_for`). An exclusive
``flock`` on ``<run>/.job.lock``, held for the life of a job, stops a second server process from working on the
same run (released by the kernel if the process dies). The background jobs themselves are :mod:`backend.jobs`.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from datetime import datetime
from pathlib import Path

from .config import PipelineConfig, get_preset
from .options import apply_overrides
from .progress import PROGRESS_JSON

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS_ENV = "SFM_RUNS_DIR"
REQUEST_JSON = "request.json"
LOCK_FILE = ".job.lock"
SAMPLE_RUN_ID = "sample-church"
SAMPLE_IMAGES = REPO_ROOT / "samples" / "church_imc2024" / "images"
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class JobError(RuntimeError):
    """A run cannot be started (busy elsewhere, bad id, nothing to resume); the message says what to do."""


# ---- run ids and folders --------------------------------------------------------------------------------------

def runs_root() -> Path:
    """Folder holding every run: ``$SFM_RUNS_DIR`` if set, else ``<repo>/runs``."""
    return Path(os.environ.get(RUNS_ENV) or (REPO_ROOT / "runs"))


def valid_run_id(run_id: str | None) -> bool:
    """True for ids of letters, digits, ``_`` and ``-`` (1-64 characters, not starting with ``-``/``_``)."""
    return bool(run_id) and isinstance(run_id, str) and bool(_RUN_ID_RE.match(run_id))


def new_run_id() -> str:
    """A fresh, unguessable run id such as ``20261121-073000-3f9a1c2b4d5e`` (48 random bits)."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(6)}"


def run_dir_for(run_id: str) -> Path:
    """The folder of run ``run_id`` (which need not exist).

    Raises:
        JobError: the id has characters other than letters, digits, ``_`` and ``-``.
    """
    if not valid_run_id(run_id):
        raise JobError(f"'{str(run_id)[:80]}' is not a run id: ids are letters, digits, '-' and '_' only "
                       "(for example 20261121-073000-3f9a1c2b4d5e)")
    return runs_root() / run_id


def run_exists(run_id: str) -> bool:
    """True when ``run_id`` is valid and its folder holds a run (``run.json``, ``request.json`` or progress)."""
    if not valid_run_id(run_id):
        return False
    d = runs_root() / run_id
    return any((d / f).exists() for f in ("run.json", REQUEST_JSON, PROGRESS_JSON))


# ---- configuration from the app's options ----------------------------------------------------------------------

def build_config(preset: str = "balanced", **overrides) -> PipelineConfig:
    """The config of ``preset`` with the user's options applied (names of :data:`backend.options.OPTIONS`; None keeps
    the preset's value), mapping with the server's ``$SFM_MAPPING_THREADS`` when it is set.

    Raises:
        ValueError: unknown preset or option, a value out of range or not among the choices, or features and matcher
            that cannot work together (the message says which).
    """
    threads = server_mapping_threads()
    if threads is not None:
        overrides["mapping_threads"] = threads
    return apply_overrides(get_preset(preset), **overrides)


MAPPING_THREADS_ENV = "SFM_MAPPING_THREADS"


def server_mapping_threads() -> int | None:
    """The server's ``$SFM_MAPPING_THREADS``: threads of mapping for every run the app and the API start (unset:
    the preset's, all cores). ``1`` gives every run of the same photos the same model (docs/cli.md,
    ``--mapping-threads``) and keeps one run from taking every core of a shared server.

    Raises:
        ValueError: the variable is set but not a whole number of at least 1 (the message says what to set).
    """
    v = os.environ.get(MAPPING_THREADS_ENV, "").strip()
    if not v:
        return None
    if not v.isdigit() or int(v) < 1:
        raise ValueError(f"{MAPPING_THREADS_ENV}={v!r} is not a whole number of at least 1: set it to the threads "
                         "each run's mapping may use (1 for reproducible models), or unset it for all cores")
    return int(v)


# ---- the lock ------------------------------------------------------------------------------------------------

def _try_lock(run_dir: Path):
    """An open file holding an exclusive flock on ``<run>/.job.lock``, or None when another process holds it."""
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def locked_elsewhere(run_dir: Path) -> bool:
    """True when some process (another server, or a job of this one) holds the run's lock."""
    p = Path(run_dir) / LOCK_FILE
    if not p.exists():
        return False
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases our probe lock
    return False
