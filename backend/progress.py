"""``progress.json``: what a working run reports, written at most four times a second (atomic replace), read by the
pages and the API. The pipeline's ``progress(stage, done, total, message)`` callback is a :class:`ProgressWriter`."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from .stages import stage_names
from .utils.text import write_json_atomic

PROGRESS_JSON = "progress.json"
WRITE_INTERVAL = 0.25  # s between progress.json writes (<= 4 per second)


def read_json(path: Path) -> dict:
    """A JSON file's content, {} when missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read_progress(run_dir: Path) -> dict:
    """``<run>/progress.json`` ({} when absent)."""
    return read_json(Path(run_dir) / PROGRESS_JSON)


class ProgressWriter:
    """The pipeline's progress callback: keeps the latest state per stage in memory; :meth:`flush` writes it to
    ``progress.json`` (called by the job's flusher thread at most every :data:`WRITE_INTERVAL` s)."""

    def __init__(self, run_dir: Path, run_id: str, until: str | None):
        self.path = Path(run_dir) / PROGRESS_JSON
        self._lock = threading.Lock()
        self._dirty = True
        self.state = {
            "run_id": run_id, "state": "queued", "stage": None, "until": until, "started": time.time(),
            "updated": time.time(), "finished": None, "pid": os.getpid(), "error": None, "error_stage": None,
            "error_type": None,
            "stages": {},
        }

    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None:
        with self._lock:
            cur = self.state["stage"]
            # the mapping child reports sub-steps ("database", or "verification" again during a second mapping
            # pass): they belong to the pipeline's current stage, which only moves forward within a run
            names = stage_names()
            if cur is not None and (stage not in names or names.index(stage) < names.index(cur)):
                message = f"{stage}: {message}"
                stage = cur
            now = time.time()
            st = self.state["stages"].setdefault(stage, {"started": now})
            st.update(done=int(done), total=int(total), message=str(message)[:200], updated=now)
            self.state["stage"] = stage
            self.state["updated"] = now
            self._dirty = True

    def set(self, **kw) -> None:
        with self._lock:
            self.state.update(kw)
            self.state["updated"] = time.time()
            self._dirty = True

    def flush(self, force: bool = False) -> None:
        with self._lock:
            if not (self._dirty or force):
                return
            data = json.loads(json.dumps(self.state, default=str))
            self._dirty = False
        try:
            write_json_atomic(self.path, data)
        except OSError:
            pass  # the folder was removed; nothing to report to


