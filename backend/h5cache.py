"""HDF5 files as a resumable per-stage cache (as in hloc): a file remembers the config that wrote it, and a
changed config empties it."""

from __future__ import annotations

from pathlib import Path

import h5py


def config_key(cfg: object) -> str:
    """A stable text key of a stage config dataclass (its fields, sorted)."""
    return repr(sorted(vars(cfg).items()))


def cached_keys(path: Path, cfg: object) -> set[str]:
    """Open (or create) ``path``; if it was written with another config, delete its contents. Returns the set of
    entries it holds (HDF5 paths of depth 1 and 2, e.g. ``"a.jpg"`` and ``"a.jpg/b.jpg"``) that can be reused.

    Raises:
        OSError: the file exists but is not HDF5 (delete it to start over).
    """
    key = config_key(cfg)
    with h5py.File(path, "a") as f:
        if f.attrs.get("config") != key:
            for k in list(f.keys()):
                del f[k]
            f.attrs["config"] = key
        out = set()
        for k, v in f.items():
            out.add(k)
            if isinstance(v, h5py.Group):
                out.update(f"{k}/{k2}" for k2, v2 in v.items() if isinstance(v2, h5py.Group))
        return out
