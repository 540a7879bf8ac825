"""Who a run belongs to, on a server several people share.

A run started from the app or the HTTP API has an *owner secret*: a random token that the app keeps in the browser
session (and a cookie, so a refresh keeps it) and that ``POST /v1/runs`` returns to an API client. Only its SHA-256
is stored, in ``<run>/owner.json``; the secret itself is never written on the server. The rules:

- reading a run (its pages, status and exports) needs its id, which is unguessable (48 random bits), as before;
- listing runs shows only the caller's own (the runs whose owner hash matches a secret the caller holds);
- cancelling, continuing and deleting a run need its owner secret. A run with no ``owner.json`` (made by the command
  line, the bundled sample, or a run from before owners existed) has no owner on the server: nobody can delete it
  through the app or the API; it is removed on the server's disk.

Run folders and the files in them are private to the server's user: :func:`private_umask` is set by every entry
point (the app, the API, the command line), so folders are created 0700 and files 0600, and
:func:`make_private_dir` creates a run folder 0700 whatever the umask. Deleting a run leaves a tombstone (an empty
file named after the id in ``<runs root>/.deleted/``), so a viewer who still has it open, or a link to it, is told
"this run was deleted" instead of "there is no such run".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterable

from .utils.text import write_json_atomic

OWNER_JSON = "owner.json"
TOMBSTONES = ".deleted"
SECRET_BYTES = 24  # 192 random bits, url-safe base64 (32 characters)
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


class NotOwnerError(PermissionError):
    """The caller does not hold the owner secret of a run (or the run has no owner); the message says what to do."""


def new_secret() -> str:
    """A fresh owner secret: 32 url-safe characters (192 random bits)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def valid_secret(secret: str | None) -> bool:
    """True for 16-128 characters of letters, digits, ``-`` and ``_`` (what :func:`new_secret` gives)."""
    return isinstance(secret, str) and bool(_SECRET_RE.match(secret))


def secret_hash(secret: str) -> str:
    """Hex SHA-256 of an owner secret (64 characters): what is stored in ``owner.json``."""
    return hashlib.sha256(secret.encode()).hexdigest()


def private_umask() -> None:
    """Make files and folders created from now on by this process private to its user (umask 077: folders 0700,
    files 0600). Called by the app, the API server and the command line before they write runs."""
    os.umask(0o077)


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make it 0700 (only the server's user can list or enter it)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def set_owner(run_dir: Path, secret: str) -> None:
    """Record ``secret``'s hash as the owner of ``run_dir`` (created 0700 when missing). A run that already has an
    owner keeps it.

    Raises:
        ValueError: ``secret`` is not a valid owner secret (see :func:`valid_secret`).
    """
    if not valid_secret(secret):
        raise ValueError("the owner secret must be 16-128 letters, digits, '-' or '_'")
    run_dir = make_private_dir(run_dir)
    path = run_dir / OWNER_JSON
    if path.exists():
        return
    write_json_atomic(path, {"owner_sha256": secret_hash(secret)})


def owner_hash(run_dir: Path) -> str | None:
    """The stored owner hash of ``run_dir``, None when the run has no owner (or ``owner.json`` is unreadable)."""
    try:
        h = json.loads((Path(run_dir) / OWNER_JSON).read_text()).get("owner_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return h if isinstance(h, str) and len(h) == 64 else None


def has_owner(run_dir: Path) -> bool:
    """True when ``run_dir`` records an owner."""
    return owner_hash(run_dir) is not None


def is_owner(run_dir: Path, held: Iterable[str | None]) -> bool:
    """True when one of the secrets in ``held`` is the owner secret of ``run_dir`` (constant-time compare)."""
    want = owner_hash(run_dir)
    if want is None:
        return False
    return any(valid_secret(s) and hmac.compare_digest(secret_hash(s), want) for s in held)


def require_owner(run_dir: Path, held: Iterable[str | None], action: str = "delete") -> None:
    """Raise unless one of ``held`` owns ``run_dir``.

    Raises:
        NotOwnerError: the run has no owner, or none of ``held`` is its secret; the message says what to do.
    """
    if not has_owner(run_dir):
        raise NotOwnerError(f"this run has no owner on the server (it was made by the command line or is the shared "
                            f"sample), so nobody can {action} it here; remove its folder on the server")
    if not is_owner(run_dir, held):
        raise NotOwnerError(f"only the person who started this run can {action} it: send the owner secret returned "
                            f"when the run was created (header X-Run-Owner), or open it in the browser that "
                            f"started it")


def owned_runs(runs_root: Path, held: Iterable[str | None]) -> list[str]:
    """Ids of the runs under ``runs_root`` owned by one of the secrets in ``held``, newest first (ids start with
    their creation time). Reads one small file per run."""
    hashes = {secret_hash(s) for s in held if valid_secret(s)}
    root = Path(runs_root)
    if not hashes or not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            h = owner_hash(d)
            if h is not None and any(hmac.compare_digest(h, x) for x in hashes):
                out.append(d.name)
    return sorted(out, reverse=True)


def remove_run(runs_root: Path, run_id: str) -> None:
    """Delete the folder of ``run_id`` under ``runs_root`` and leave its tombstone (see :func:`was_deleted`). The
    caller has checked the id (letters, digits, ``-``, ``_``) and the owner."""
    tomb = make_private_dir(Path(runs_root) / TOMBSTONES)
    (tomb / run_id).touch()
    shutil.rmtree(Path(runs_root) / run_id, ignore_errors=True)


def was_deleted(runs_root: Path, run_id: str) -> bool:
    """True when ``run_id`` (a checked id) was deleted through the app or the API."""
    return (Path(runs_root) / TOMBSTONES / run_id).exists()
