"""Logging: every backend module logs to ``logging.getLogger(__name__)`` (children of the ``backend`` logger);
:func:`run_log` copies a run's records into its run folder, :func:`configure` sets what reaches stderr."""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ThisThread(logging.Filter):
    """Only the records of one thread: the server runs several runs at once, each in a thread of its own."""

    def __init__(self):
        super().__init__()
        self.ident = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.ident


@contextlib.contextmanager
def run_log(path: Path, level: int = logging.INFO):
    """Within the block, append the ``backend`` logger's records of this thread at ``level`` or above (tracebacks
    included) to ``path`` (a run folder's ``run.log``)."""
    logger = logging.getLogger("backend")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_ThisThread())
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


class _NoTracebacks(logging.Filter):
    """Leave out the records that carry a traceback (a stage's failure: the command says so in one line and the
    traceback is in the run's ``run.log``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


def configure(verbose: bool = False) -> None:
    """Show the ``backend`` logger's records on stderr: INFO and above, tracebacks included, with ``verbose`` (the
    CLI's ``--verbose``), else warnings and errors without tracebacks."""
    logger = logging.getLogger("backend")
    for h in list(logger.handlers):
        if getattr(h, "sfm_stderr", False):  # configured before (a second command in the same process)
            logger.removeHandler(h)
    handler = logging.StreamHandler()
    handler.sfm_stderr = True
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        handler.addFilter(_NoTracebacks())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
