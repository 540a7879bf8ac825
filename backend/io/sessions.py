"""Per-session scratch folders inside the runs root, never in the system temp folder.

A page that needs files for a browser session (the Two-view page's uploaded photos, their validated copies, an
uploaded ground-truth file) keeps them in ``<runs root>/.sessions/<prefix><random>/``: created 0700 (only the
server's user can enter it), beside the runs it may be large like, and removed when the session ends.

Streamlit has no reliable session-end hook, so removal is layered:

1. :class:`SessionFolder` removes its folder when it is garbage-collected: stored in ``st.session_state``, it goes
   when Streamlit drops the session (``server.disconnectedSessionTTL`` after the tab closed), and at interpreter
   exit (``weakref.finalize`` runs at exit);
2. a page removes its folder itself when the work it held is replaced (a new pair uploaded);
3. :func:`remove_stale`, called at page start, removes folders unused for :data:`MAX_AGE_S` (a server killed with
   SIGKILL runs no finaliser). A folder is "used" when :meth:`SessionFolder.touch` last ran: pages touch it on every
   run, so only folders of sessions gone for hours go; a long-idle tab whose folder went gets a new one, and the
   uploads are written again from the browser's copy.

Runs are folders named by run id (letters, digits, ``_``, ``-``), so ``.sessions`` is never taken for a run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path

SESSIONS_DIR = ".sessions"
MAX_AGE_S = 2 * 3600  # a session folder untouched this long belongs to a session that ended


def sessions_root() -> Path:
    """``<runs root>/.sessions`` (``$SFM_RUNS_DIR/.sessions``, else ``<repo>/runs/.sessions``); not created here."""
    from ..jobs import runs_root

    return runs_root() / SESSIONS_DIR


def remove_stale(max_age_s: float = MAX_AGE_S, now: float | None = None) -> list[str]:
    """Remove the session folders not touched for ``max_age_s`` seconds (by their modification time).

    Returns:
        The names of the folders removed (none when the sessions root does not exist). Errors (a folder removed
        meanwhile by another process) are ignored.
    """
    root = sessions_root()
    now = time.time() if now is None else now
    gone = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return gone
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False) and now - e.stat(follow_symlinks=False).st_mtime > max_age_s:
                shutil.rmtree(e.path, ignore_errors=True)
                gone.append(e.name)
        except OSError:
            continue
    return gone


class SessionFolder:
    """A private scratch folder ``<runs root>/.sessions/<prefix><random>/`` (0700), removed when this object is
    garbage-collected, at interpreter exit, or by :meth:`remove` (module doc).

    Attributes:
        path: the folder (exists until removed).

    Raises:
        OSError: the folder cannot be created (runs root not writable).
    """

    def __init__(self, prefix: str = "session-"):
        root = sessions_root()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))  # mkdtemp: 0700, a name nobody else has
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    @property
    def alive(self) -> bool:
        """The folder is there and has not been removed by :meth:`remove`."""
        return self._finalizer.alive and self.path.is_dir()

    def touch(self) -> None:
        """Mark the folder as in use now (:func:`remove_stale` leaves it alone for :data:`MAX_AGE_S`)."""
        try:
            os.utime(self.path)
        except OSError:
            pass

    def remove(self) -> None:
        """Remove the folder and everything in it now (idempotent)."""
        self._finalizer()
