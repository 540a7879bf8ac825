"""HDF5 files as a resumable, content-keyed cache (as hloc names its outputs after their inputs).

Each entry (an image's group in ``features.h5``, a pair's group ``<image0>/<image1>`` in ``matches.h5``) carries
the attribute ``key``: a hash of everything it was computed from (the image bytes and decode options, the
config, the weights, for a pair the two images' feature keys). A stage reuses an entry only when its key is the
one it would write, so a changed input or option can never serve a stale result.

Writes are atomic per entry, for a process killed at any point (SIGKILL included):

- a writer first records the entries it is about to write in the file attribute ``pending`` and flushes it to
  disk; it removes the attribute when the file is closed cleanly. :func:`open_cache` deletes the entries a
  ``pending`` attribute names (they may be half-written even where their ``key`` is set: HDF5 flushes its
  metadata in no particular order);
- an entry's ``key`` is written after its datasets, so an entry without one is incomplete and deleted too;
- a file HDF5 cannot read (as a kill during a metadata flush can leave it) is deleted, with a logged warning, and
  its stage starts over.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..utils.hashing import json_sha256

KEY_ATTR = "key"
PENDING_ATTR = "pending"
LOCK_WAIT_S = 60.0  # how long a writer waits for readers (the app) that hold the file open
FAULT_ENV = "SFM_FAULT_INJECT"  # tests: "kill-in-h5-write:<file name>:<n>" SIGKILLs in the n-th entry write

log = logging.getLogger(__name__)
_writes: dict[str, int] = {}


class CacheFileError(RuntimeError):
    """A cache file is unreadable and could not be deleted (the message names it)."""


def content_key(*parts) -> str:
    """A stable 32-hex-digit hash of JSON-serialisable ``parts`` (dicts are sorted by key)."""
    return json_sha256(parts, 32)


def config_key(cfg: object) -> dict:
    """The fields of a stage config dataclass as a dict (a part of :func:`content_key`)."""
    return dict(sorted(vars(cfg).items()))


def _open(path: Path, mode: str, wait: float = LOCK_WAIT_S) -> h5py.File:
    """``h5py.File(path, mode)``, retrying while another process holds the file locked (HDF5 file locking: a
    reader blocks writers and the reverse). Raises BlockingIOError after ``wait`` s, OSError if unreadable."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return h5py.File(path, mode)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _discard(path: Path, why: str) -> None:
    log.warning("%s is unreadable (%s); deleting it and recomputing its entries", path, why)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CacheFileError(f"{path} is unreadable ({why}) and cannot be deleted ({e}): delete it by hand") from e


def _entries(f: h5py.File, depth: int) -> Iterator[tuple[str, h5py.Group]]:
    """``(path, group)`` of every group at ``depth`` (1: ``"a"``, 2: ``"a/b"``)."""
    if depth == 1:
        for k, v in f.items():
            if isinstance(v, h5py.Group):
                yield k, v
        return
    for k, v in f.items():
        if isinstance(v, h5py.Group):
            for k2, v2 in v.items():
                if isinstance(v2, h5py.Group):
                    yield f"{k}/{k2}", v2


def _complete(g: h5py.Group, required: tuple[str, ...]) -> bool:
    """An entry is complete when it has its key and every required dataset, all of one length."""
    if KEY_ATTR not in g.attrs:
        return False
    lengths = set()
    for name in required:
        ds = g.get(name)
        if not isinstance(ds, h5py.Dataset) or ds.ndim == 0:
            return False
        lengths.add(ds.shape[0])
    return len(lengths) <= 1


def _clean(f: h5py.File, depth: int, required: tuple[str, ...]) -> dict[str, str]:
    pending = f.attrs.get(PENDING_ATTR)
    if pending is not None:
        for name in json.loads(pending):
            if name in f:
                del f[name]
        del f.attrs[PENDING_ATTR]
    if "config" in f.attrs:  # the file-wide config key of earlier versions: its entries have no key and go below
        del f.attrs["config"]
    keys: dict[str, str] = {}
    for name, g in list(_entries(f, depth)):
        if _complete(g, required):
            keys[name] = str(g.attrs[KEY_ATTR])
        else:
            del f[name]
    # anything else at the top goes: datasets, and in a file of pairs the parents left empty
    for k in list(f.keys()):
        v = f[k]
        if not isinstance(v, h5py.Group):
            del f[k]
        elif depth == 2 and not any(isinstance(x, h5py.Group) for x in v.values()):
            del f[k]
    return keys


def open_cache(path: Path, depth: int, required: tuple[str, ...]) -> dict[str, str]:
    """Open (or create) the cache file ``path``, delete what a killed writer may have left half-written, and
    return ``{entry: key}`` of its complete entries (HDF5 paths at ``depth``: 1 for ``"a.jpg"``, 2 for
    ``"a.jpg/b.jpg"``). An entry is complete when it has the ``key`` attribute and every dataset of ``required``
    (all of one length). An unreadable file is deleted (logged) and ``{}`` returned.

    Raises:
        BlockingIOError: another process kept the file locked for :data:`LOCK_WAIT_S` s.
        PermissionError: the file cannot be opened for writing.
        CacheFileError: the file is unreadable and cannot be deleted.
    """
    path = Path(path)
    for attempt in range(2):
        try:
            with _open(path, "a") as f:
                return _clean(f, depth, required)
        except (BlockingIOError, PermissionError):
            raise  # busy or not ours to write: the file itself may be fine
        except Exception as e:  # noqa: BLE001 - any HDF5 error here means the file is damaged
            if "already open" in str(e):
                raise  # this process holds it open: a bug, not a damaged file
            if attempt:
                raise CacheFileError(f"{path} cannot be created ({e})") from e
            _discard(path, str(e))
    return {}


@contextmanager
def writing(path: Path, entries: list[str]) -> Iterator[h5py.File]:
    """Open ``path`` to write ``entries`` (HDF5 paths) with :func:`write_entry`. Their names are flushed to the file
    first as ``pending`` and cleared on a clean close, so a process killed in between leaves them to be deleted by
    the next :func:`open_cache`. On an exception the entries without a key are deleted.

    Raises:
        BlockingIOError: another process kept the file locked for :data:`LOCK_WAIT_S` s.
        OSError: the file cannot be opened.
    """
    f = _open(Path(path), "a")
    try:
        f.attrs[PENDING_ATTR] = json.dumps(list(entries))
        f.flush()
        ok = False
        try:
            yield f
            ok = True
        finally:
            if not ok:
                for name in entries:
                    if name in f and KEY_ATTR not in f[name].attrs:
                        del f[name]
            f.flush()  # the entries reach the disk before the pending list leaves it
            del f.attrs[PENDING_ATTR]
    finally:
        f.close()


def write_entry(f: h5py.File, name: str, datasets: dict[str, np.ndarray], attrs: dict, key: str) -> None:
    """Write the entry ``name`` (an HDF5 path such as ``"a.jpg"`` or ``"a.jpg/b.jpg"``; an older entry of that name
    is replaced) into ``f``, opened by :func:`writing`: its ``datasets`` (arrays, any shape and dtype h5py takes),
    then ``attrs``, then ``key`` last.

    Raises:
        TypeError, ValueError: a value HDF5 cannot store.
    """
    if name in f:
        del f[name]
    g = f.create_group(name)
    for k, v in datasets.items():
        g.create_dataset(k, data=v)
    for k, v in attrs.items():
        g.attrs[k] = v
    _maybe_fault(f)
    g.attrs[KEY_ATTR] = key


def _maybe_fault(f: h5py.File) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith("kill-in-h5-write:"):
        return
    _, fname, n = spec.split(":")
    base = Path(f.filename).name
    if base != fname:
        return
    _writes[base] = _writes.get(base, 0) + 1
    if _writes[base] == int(n):
        f.flush()  # the half-written entry (datasets, no key) and the pending list reach the disk
        os.kill(os.getpid(), signal.SIGKILL)


def incomplete_entries(path: Path, depth: int, required: tuple[str, ...]) -> list[str]:
    """Read-only check: the entries of ``path`` that :func:`open_cache` would delete (plus ``"<pending>"`` when a
    writer's pending list is still there). [] for a missing file.

    Raises:
        OSError: the file is unreadable.
    """
    path = Path(path)
    if not path.exists():
        return []
    with _open(path, "r") as f:
        bad = ["<pending>"] if PENDING_ATTR in f.attrs else []
        bad += [n for n, g in _entries(f, depth) if not _complete(g, required)]
        return bad
