"""The mapping child process: verification and mapping run in ``python -m backend.mapping.child JOB.json``, because
some pycolmap calls abort the whole process (SIGABRT) instead of raising. :func:`run_in_child` starts it, relays its
progress, records its peak memory, and turns a crash into :class:`~backend.errors.MappingError`; the stages before it
are kept.

The child's stderr (COLMAP's own log lines, any traceback) is appended to the run's ``mapping.log``.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

from ..config import MappingConfig, VerificationConfig
from ..errors import MappingCrashError, MappingError
from ..utils.colmap import no_colmap_log_files
from .cameras import metadata_camera_groups
from .database import build_database
from .scene_mapping import map_scenes
from .verification import verify

def _child_main(job_file: str) -> int:
    """Entry point of the mapping child (``python -m backend.mapping.child JOB.json``).

    Reads its arguments from the JSON job file and writes one JSON message per line on stdout:
    ``["progress", stage, done, total, message]``, then ``["done", result]`` or ``["error", message]``.
    """
    job = json.loads(Path(job_file).read_text())
    out = sys.stdout
    sys.stdout = sys.stderr  # anything else that prints must not corrupt the message stream

    def send(*msg):
        out.write(json.dumps(msg) + "\n")
        out.flush()

    def report(stage, done, total, msg):
        send("progress", stage, done, total, msg)

    try:
        import pycolmap

        no_colmap_log_files()
        if not os.environ.get("SFM_COLMAP_VERBOSE"):
            pycolmap.logging.minloglevel = 2  # errors only; progress comes through the messages
        mcfg = MappingConfig(**job["cfg"])
        vcfg = VerificationConfig(**job["verification_cfg"])
        rd = Path(job["run_dir"])
        names, images, pairs = job["names"], job["images"], [tuple(p) for p in job["pairs"]]
        result: dict = {}
        if "verification" in job["stages"]:
            groups = metadata_camera_groups(images, names) if mcfg.camera_mode == "auto" else None
            build_database(rd, names, images, pairs, mcfg, job["min_matches"], report, groups=groups)
            result.update(verify(rd, vcfg, report))
        if "mapping" in job["stages"]:
            if os.environ.get("SFM_FAULT_INJECT") == "abort-mapping":  # tests: behave like a pycolmap abort
                os.abort()
            result.update(map_scenes(rd, names, images, pairs, mcfg, vcfg, job["min_matches"], report,
                                     job.get("split")))
        send("done", result)
    except MappingError as e:
        send("error", str(e))
    except Exception as e:  # noqa: BLE001 - forwarded to the parent as a readable message
        send("error", f"{type(e).__name__}: {e}")
        traceback.print_exc()
    return 0


def _start_child(job_file: Path, log_path: Path) -> tuple[subprocess.Popen, queue.Queue]:
    """Start ``python -m backend.mapping.child JOB_FILE`` (stderr appended to ``log_path``) and a thread that puts
    each JSON line it prints on the returned queue (None at its end)."""
    repo_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = repo_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "ab") as log:
        p = subprocess.Popen([sys.executable, "-m", "backend.mapping.child", str(job_file)], cwd=repo_root,
                             env=env, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
    messages: queue.Queue = queue.Queue()

    def reader():
        for line in p.stdout:
            try:
                messages.put(json.loads(line))
            except json.JSONDecodeError:
                pass
        messages.put(None)

    threading.Thread(target=reader, daemon=True).start()
    return p, messages


def _follow(p: subprocess.Popen, messages: queue.Queue, progress, cancel) -> tuple[dict | None, str | None, float]:
    """Pass the child's progress on until it ends; returns ``(result, error, peak resident MB)``.

    Raises:
        MappingError: ``cancel`` was set (the child is terminated first).
    """
    import psutil

    try:
        ps = psutil.Process(p.pid)
    except psutil.Error:
        ps = None
    peak, result, error, eof = 0.0, None, None, False
    while not eof:
        try:
            msg = messages.get(timeout=0.2)
        except queue.Empty:
            msg = ()
        if ps is not None:
            try:
                peak = max(peak, ps.memory_info().rss / 2**20)
            except psutil.Error:
                pass
        if msg is None:
            eof = True
        elif msg:
            if msg[0] == "progress" and progress:
                progress(*msg[1:])
            elif msg[0] == "done":
                result = msg[1]
            elif msg[0] == "error":
                error = msg[1]
        if cancel is not None and cancel.is_set():
            p.terminate()
            p.wait(10)
            raise MappingError("cancelled")
    return result, error, peak


def run_in_child(
    run_dir: Path,
    names: list[str],
    images: dict,
    pairs: list[tuple[str, str]],
    cfg: MappingConfig,
    min_matches: int,
    stages: list[str],
    progress: Callable[[str, int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
    split: dict | None = None,
    verification: VerificationConfig | None = None,
) -> dict:
    """Run ``stages`` (``"verification"``, ``"mapping"``) in a child Python process; mapping maps the groups of
    ``split`` (:meth:`backend.mapping.scenes.SceneSplit.to_dict`; None: one scene) with
    :func:`.scene_mapping.map_scenes`; ``verification``: how pairs are verified (the default config when None).

    The child is a plain subprocess (``python -m backend.mapping.child``), not ``multiprocessing``, so it works
    from any caller (scripts without a ``__main__`` guard, Streamlit, threads) and a pycolmap abort (SIGABRT) only
    ends the child. Returns the merged result dicts of the stages, plus ``child_peak_rss_mb``. Progress arrives as
    ``progress(stage, done, total, msg)``.

    Raises:
        MappingCrashError: the child died (e.g. SIGABRT in pycolmap).
        MappingError: pycolmap raised, or ``cancel`` was set.
    """
    run_dir = Path(run_dir)
    job_file = run_dir / "mapping_job.json"
    job_file.write_text(json.dumps({
        "run_dir": str(run_dir), "names": names, "images": images, "pairs": [list(p) for p in pairs],
        "cfg": vars(cfg).copy(),
        "verification_cfg": vars(verification or VerificationConfig()).copy(), "min_matches": min_matches,
        "stages": stages, "split": split,
    }))
    log_path = run_dir / "mapping.log"
    p, messages = _start_child(job_file, log_path)
    result, error, peak = _follow(p, messages, progress, cancel)
    code = p.wait()
    if error is None and result is None:
        sig = f"signal {-code}" if code < 0 else f"exit code {code}"
        raise MappingCrashError(
            f"pycolmap crashed ({sig}) during {'/'.join(stages)}. The stages before it are kept; try another "
            f"preset, more keypoints or another camera mode, and look at the Matches page for weak pairs "
            f"(details: {log_path.name}).")
    if error is not None:
        raise MappingError(error)
    result["child_peak_rss_mb"] = round(peak, 1)
    return result


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
