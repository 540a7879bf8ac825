"""pycolmap's process-wide settings."""

from __future__ import annotations

def no_colmap_log_files() -> None:
    """Stop COLMAP's glog (inside pycolmap) from writing ``.<host>.<user>.log.<LEVEL>.<date>.<pid>`` files into
    the system temp folder, for the rest of this process; its lines still go to stderr (the mapping child's stderr
    is the run's ``mapping.log``). Done in the process: pycolmap's glog ignores ``GLOG_*`` environment variables."""
    import pycolmap

    lg = pycolmap.logging
    for level in (lg.INFO, lg.WARNING, lg.ERROR, lg.FATAL):
        lg.set_log_destination(level, "")  # "" = no log file for this severity


