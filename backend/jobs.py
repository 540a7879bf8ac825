"""Background runs for the app: a process-wide job manager around :class:`backend.pipeline.Pipeline`.

One run = one folder ``<runs root>/<run_id>/`` (:mod:`backend.runs`: the root, the ids, the lock). The manager

- starts ``Pipeline(...).run(until=...)`` in a background thread (the pipeline itself runs pycolmap in a
  spawned child), so the Streamlit server stays responsive;
- never starts a run twice: a module-level dict of jobs guarded by a lock returns the job that is already
  running for a run id (a page refresh, a second tab, a double click), and an exclusive ``flock`` on
  ``<run>/.job.lock``, held for the life of the job, stops a second server process (released by the kernel
  if this process dies);
- cancels through the pipeline's cancel event (:func:`cancel`), also when asked by another server process
  through the file ``<run>/cancel.request``;
- writes the pipeline's ``progress(stage, done, total, message)`` into ``<run>/progress.json`` at most four
  times a second (atomic replace; a small flusher thread writes the latest state), which pages poll;
- runs at most ``$SFM_MAX_JOBS`` (default 1) pipelines at once per process: the others wait, ``queued``, on a
  condition (no polling) that a finished run or a cancel wakes; a queued run that is cancelled never starts. Each
  run has a daemon thread (not a ``ThreadPoolExecutor``, whose workers Python joins at exit: a server asked to stop
  would wait for every running and queued run; measured in review), so a stopped server leaves its runs
  "interrupted", and they resume when it starts again.

Nothing here imports streamlit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .config import PipelineConfig
from .errors import error_type
from .messages import (HINTS, friendly_error, input_failure, legacy_error_type,  # noqa: F401 - jobs' API
                       scrub_paths)
from .owners import make_private_dir, remove_run, require_owner
from .pipeline import Pipeline, PipelineError, RunOptions
from .progress import PROGRESS_JSON, WRITE_INTERVAL, ProgressWriter, read_json, read_progress  # noqa: F401
from .runs import (LOCK_FILE, MAPPING_THREADS_ENV, REPO_ROOT, REQUEST_JSON, RUNS_ENV,  # noqa: F401 - jobs' API
                   SAMPLE_IMAGES, SAMPLE_RUN_ID, JobError, _try_lock, build_config, locked_elsewhere,
                   new_run_id, run_dir_for, run_exists, runs_root, server_mapping_threads, valid_run_id)
from .stages import stage_names
from .utils.text import write_json_atomic

log = logging.getLogger(__name__)

CANCEL_FILE = "cancel.request"


# ---- jobs ------------------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One background run of the pipeline on a run folder."""

    run_id: str
    run_dir: Path
    until: str | None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued, running, done, paused, failed, cancelled
    error: str | None = None
    error_stage: str | None = None
    error_type: str | None = None  # see backend/errors.py
    started: float = field(default_factory=time.time)
    finished: float | None = None
    thread: threading.Thread | None = None  # a daemon thread: a server that stops leaves the run "interrupted"

    @property
    def alive(self) -> bool:
        """Queued or running."""
        return self.thread is not None and self.thread.is_alive()


_JOBS: dict[str, Job] = {}
_JOBS_LOCK = threading.Lock()
_SLOTS = threading.Condition()  # guards _RUNNING; notified when a slot frees or a queued job is cancelled
_RUNNING = 0


def max_jobs() -> int:
    """Pipelines this process runs at once: ``$SFM_MAX_JOBS`` (default 1)."""
    return max(1, int(os.environ.get("SFM_MAX_JOBS", "1") or 1))


def _take_slot(job: "Job") -> bool:
    """Wait, without polling, until a slot is free (True) or the job is cancelled while it waits (False)."""
    global _RUNNING
    with _SLOTS:
        while _RUNNING >= max_jobs() and not job.cancel_event.is_set():
            _SLOTS.wait()
        if job.cancel_event.is_set():
            return False
        _RUNNING += 1
        return True


def _free_slot() -> None:
    global _RUNNING
    with _SLOTS:
        _RUNNING -= 1
        _SLOTS.notify_all()


def _wake_queued() -> None:
    """Let the queued jobs look at their cancel events again."""
    with _SLOTS:
        _SLOTS.notify_all()


def get_job(run_id: str) -> Job | None:
    """This process's job for ``run_id`` (running or finished), or None."""
    with _JOBS_LOCK:
        return _JOBS.get(run_id)


def queue_position(run_id: str) -> int:
    """How many queued jobs of this process were started before ``run_id``'s (0 when not queued)."""
    with _JOBS_LOCK:
        job = _JOBS.get(run_id)
        if job is None or job.state != "queued":
            return 0
        return sum(1 for j in _JOBS.values() if j.alive and j.state == "queued" and j.started < job.started)


def start_run(run_dir: Path, images_dir: Path, config: PipelineConfig, until: str | None = None, *,
              dataset: str = "", scene: str = "", force: bool = False) -> Job:
    """Run the pipeline on ``images_dir`` into ``run_dir`` in a background thread, up to stage ``until``
    (all stages when None). Finished stages with unchanged inputs and config are reused.

    A second call while the run is still working returns the existing :class:`Job` (no duplicates).

    Raises:
        JobError: another server process is computing this run, or ``until`` is not a stage.
    """
    run_dir = Path(run_dir)
    if until is not None and until not in stage_names():
        raise JobError(f"unknown stage {until!r}: use one of {', '.join(stage_names())}")
    run_id = run_dir.name
    with _JOBS_LOCK:
        job = _JOBS.get(run_id)
        if job is not None and job.alive:
            return job
        make_private_dir(run_dir)
        fd = _try_lock(run_dir)
        if fd is None:
            raise JobError(f"Run {run_id} is being computed by another app process; open it again in a minute.")
        try:
            (run_dir / CANCEL_FILE).unlink(missing_ok=True)
            write_json_atomic(run_dir / REQUEST_JSON, {
                "run_id": run_id, "images_dir": str(images_dir), "config": config.to_dict(),
                "dataset": dataset, "scene": scene, "until": until,
            })
            job = Job(run_id=run_id, run_dir=run_dir, until=until)
            writer = ProgressWriter(run_dir, run_id, until)
            writer.flush(force=True)
            job.thread = threading.Thread(
                target=_work, args=(job, writer, Path(images_dir), config, dataset, scene, force, fd),
                name=f"sfm-run-{run_id}", daemon=True)
            _JOBS[run_id] = job
            job.thread.start()
        except BaseException:
            os.close(fd)
            raise
        return job


def _resolve_images_dir(text: str) -> Path:
    p = Path(text)
    return p if p.is_absolute() else (REPO_ROOT / p)


def continue_run(run_dir: Path, until: str | None = None) -> Job:
    """Resume a run (paused after a stage, failed, cancelled or interrupted) with the config and inputs it
    started with, up to ``until`` (all remaining stages when None).

    Raises:
        JobError: the folder holds no run that can be resumed, or it is busy elsewhere.
    """
    run_dir = Path(run_dir)
    req = read_json(run_dir / REQUEST_JSON)
    rec = read_json(run_dir / "run.json")
    src = req if req.get("config") else rec
    if not src.get("config") or not src.get("images_dir"):
        raise JobError(f"Run {run_dir.name} has no recorded inputs to resume from; start a new run instead.")
    images_dir = _resolve_images_dir(src["images_dir"])
    if not images_dir.is_dir():
        raise JobError(f"The photos of run {run_dir.name} are no longer on the server; start a new run.")
    cfg = PipelineConfig.from_dict(src["config"])
    return start_run(run_dir, images_dir, cfg, until, dataset=req.get("dataset", ""), scene=req.get("scene", ""))


def resume_interrupted(max_age_s: float = 86400.0, owned_only: bool = True) -> list[str]:
    """Resume the runs that a server stop (a crash, SIGKILL, a reboot) left half done: status ``interrupted``
    (no process holds their lock), started to run every stage (not paused stage by stage), touched in the last
    ``max_age_s`` seconds, and, with ``owned_only``, started from the app or the API (they have an owner; a command
    line run is the command line's). Called when the API server starts and by the app's first session. Finished
    stages are reused, so the run ends as it would have without the stop. Returns the ids resumed.

    Two server processes sharing the runs folder may both call it: the run's lock lets one of them start it.
    """
    from .owners import has_owner

    root = runs_root()
    if not root.is_dir():
        return []
    resumed = []
    now = time.time()
    for d in sorted(root.iterdir()):
        if not (d.is_dir() and valid_run_id(d.name)) or (owned_only and not has_owner(d)):
            continue
        req = d / REQUEST_JSON
        try:
            if not req.is_file() or now - max(p.stat().st_mtime for p in d.iterdir()) > max_age_s:
                continue
        except (OSError, ValueError):
            continue
        if read_json(req).get("until") is not None:
            continue  # stage by stage: the user goes on by hand
        state = run_state(d)
        if state["status"] != "interrupted" or not state.get("resumable", True):
            continue
        try:
            continue_run(d)
            resumed.append(d.name)
        except JobError:
            pass
    return resumed


def cancel(run_id: str) -> bool:
    """Ask run ``run_id`` to stop (the running stage stops at its next step; finished stages are kept).

    Returns True when a job of this process was running; otherwise, when the run is locked by another
    process, leaves a cancel request in its folder that that process picks up, and returns True too.
    """
    job = get_job(run_id)
    if job is not None and job.alive:
        job.cancel_event.set()
        _wake_queued()  # a queued job stops waiting at once; a running one stops at the stage's next step
        return True
    if valid_run_id(run_id):
        d = runs_root() / run_id
        if d.is_dir() and locked_elsewhere(d):
            (d / CANCEL_FILE).write_text(str(time.time()))
            return True
    return False


def delete_run(run_id: str, held: list[str | None], timeout: float = 120) -> None:
    """Cancel run ``run_id`` if it is working, wait for it to stop, then remove its folder (leaving a tombstone, so
    viewers who have it open are told it was deleted). Only the owner may: ``held`` are the caller's owner secrets.

    Raises:
        JobError: not a run id, or the run is still stopping after ``timeout`` s (nothing removed; try again).
        backend.owners.NotOwnerError: no secret in ``held`` owns the run, or it has no owner.
    """
    d = run_dir_for(run_id)
    require_owner(d, held, "delete")
    if cancel(run_id):
        wait(run_id, timeout=timeout)
        if run_state(d)["status"] in ("running", "queued"):
            raise JobError("the run is still stopping; try deleting it again in a minute")
    remove_run(runs_root(), run_id)


def server_executor() -> tuple[str, str | None]:
    """The executor of the app's and the API's runs: ``$SFM_EXECUTOR`` (``local``, the default, or ``ray``) and
    ``$SFM_RAY_ADDRESS`` (the cluster, e.g. ``auto`` on a Ray head node; unset: a one-machine Ray).

    Raises:
        JobError: ``$SFM_EXECUTOR`` is neither ``local`` nor ``ray``.
    """
    executor = os.environ.get("SFM_EXECUTOR", "local").strip() or "local"
    if executor not in ("local", "ray"):
        raise JobError(f"SFM_EXECUTOR={executor!r} is not an executor: set it to local or ray")
    return executor, os.environ.get("SFM_RAY_ADDRESS") or None


def _work(job: Job, writer: ProgressWriter, images_dir: Path, config: PipelineConfig, dataset: str, scene: str,
          force: bool, lock_fd: int) -> None:
    stop_flusher = threading.Event()

    def flusher():
        while not stop_flusher.wait(WRITE_INTERVAL):
            writer.flush()
            if (job.run_dir / CANCEL_FILE).exists() and not job.cancel_event.is_set():
                job.cancel_event.set()  # asked by another server process
                _wake_queued()

    ft = threading.Thread(target=flusher, name=f"sfm-progress-{job.run_id}", daemon=True)
    ft.start()
    slot = False
    try:
        slot = _take_slot(job)
        if not slot:
            job.state = "cancelled"
            job.error = "cancelled by the user before it started"
            return
        job.state = "running"
        writer.set(state="running", started=time.time())
        executor, address = server_executor()
        pipe = Pipeline(RunOptions(images_dir, job.run_dir, dataset, scene, executor, address), config,
                        progress=writer, cancel=job.cancel_event)
        record = pipe.run(until=job.until, force=force)
        job.state = record.get("status", "done")
    except PipelineError as e:
        job.state = "cancelled" if job.cancel_event.is_set() else "failed"
        job.error, job.error_stage, job.error_type = e.message, e.stage, e.error_type
    except Exception as e:  # noqa: BLE001 - anything else becomes a readable error on the page
        job.state = "cancelled" if job.cancel_event.is_set() else "failed"
        job.error, job.error_type = f"{type(e).__name__}: {e}", error_type(e)
        log.exception("run %s failed outside its stages", job.run_id)
        _mark_record_failed(job.run_dir, job.error, job.error_type)
    finally:
        if slot:
            _free_slot()
        job.finished = time.time()
        stop_flusher.set()
        ft.join()
        writer.set(state=job.state, finished=job.finished, error=job.error, error_stage=job.error_stage,
                   error_type=job.error_type)
        writer.flush(force=True)
        try:
            (job.run_dir / CANCEL_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        os.close(lock_fd)


def _mark_record_failed(run_dir: Path, error: str, kind: str) -> None:
    p = Path(run_dir) / "run.json"
    rec = read_json(p)
    if rec and rec.get("status") == "running":
        rec["status"] = "failed"
        rec["error"], rec["error_type"] = error, kind
        try:
            write_json_atomic(p, rec)
        except OSError:
            pass


# ---- what the pages show -----------------------------------------------------------------------------------------

def _iso_to_epoch(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def next_stage(record: dict) -> str | None:
    """The first stage of ``record`` (a ``run.json``) that is not done; None when all are."""
    stages = record.get("stages", {}) if record else {}
    for s in stage_names():
        if stages.get(s, {}).get("status") != "done":
            return s
    return None


def run_state(run_dir: Path) -> dict:
    """Everything a page needs about a run's status.

    Returns a dict with ``run_id``, ``exists``, ``status`` (``new``, ``queued``, ``running``, ``paused``, ``done``,
    ``failed``, ``cancelled``, ``interrupted``), ``record`` (run.json), ``progress`` (progress.json), ``error``
    (readable plain-text message or None), ``error_type`` (the failure's type, :mod:`backend.errors`, or None),
    ``resumable`` (False when the failure is in the photos themselves,
    see :func:`input_failure`), ``next_stage``, ``elapsed`` (s, the run's total: the time of every stage that
    ran, over all its continuations, the running one up to now),
    ``queue_position``, ``where`` (``"here"``/``"elsewhere"``/None for a working run), ``stages`` (per stage:
    status, done, total, message, seconds, counts).
    """
    run_dir = Path(run_dir)
    run_id = run_dir.name
    rec = read_json(run_dir / "run.json")
    prog = read_progress(run_dir)
    job = get_job(run_id)
    exists = bool(rec or prog or (run_dir / REQUEST_JSON).exists())
    where = None
    if job is not None and job.alive:
        status, where = job.state, "here"
    elif locked_elsewhere(run_dir):
        status, where = "running", "elsewhere"
    elif rec.get("status"):
        status = rec["status"]
        if status == "running":
            status = "interrupted"
    elif prog.get("state") in ("failed", "cancelled"):
        status = prog["state"]
    else:
        status = "new" if not exists else "interrupted"
    error = None
    kind = None
    resumable = True
    if status in ("failed", "cancelled", "interrupted"):
        failed = [(s, v) for s, v in rec.get("stages", {}).items() if v.get("status") in ("failed", "cancelled")]
        if failed:
            stage, r = failed[-1]
            kind = "Cancelled" if r.get("status") == "cancelled" else \
                r.get("error_type") or legacy_error_type(stage, r.get("error"))
            error = friendly_error(stage, r.get("error"), kind)
            resumable = not input_failure(kind)
        elif prog.get("error"):
            kind = "Cancelled" if status == "cancelled" else \
                prog.get("error_type") or legacy_error_type(prog.get("error_stage"), prog.get("error"))
            error = friendly_error(prog.get("error_stage"), prog.get("error"), kind)
            resumable = not input_failure(kind)
        elif rec.get("error"):
            kind = rec.get("error_type") or legacy_error_type(None, rec.get("error"))
            error = friendly_error(None, rec.get("error"), kind)
        elif status == "cancelled":
            kind = "Cancelled"
            error = friendly_error(None, None, kind)
        if status == "interrupted":
            error = ("The run stopped while it was working (the server restarted, or the command line was "
                     "interrupted). Finished stages are kept: press Resume to go on.")
    now = time.time()
    stages = {}
    for s in stage_names():
        r = rec.get("stages", {}).get(s, {})
        p = prog.get("stages", {}).get(s, {})
        st = r.get("status") or ("pending" if p == {} else "running")
        secs = r.get("seconds")
        if st == "running":
            t0 = _iso_to_epoch(r.get("started")) or p.get("started")
            secs = round(now - t0, 1) if t0 and status in ("running",) else secs
            if status not in ("running", "queued"):
                st = "stopped"
        stages[s] = {"status": st, "done": p.get("done"), "total": p.get("total"), "message": p.get("message", ""),
                     "seconds": secs, "counts": r.get("counts", {})}
    # the sum over stages, not the time since progress.json's start: each continuation of a stage-by-stage run
    # writes a new progress.json, and the pauses between continuations are the user's, not the run's
    elapsed = sum((v.get("seconds") or 0) for v in stages.values() if v["status"] != "pending")
    return {
        "run_id": run_id, "exists": exists, "status": status, "record": rec, "progress": prog, "error": error,
        "error_type": kind, "resumable": resumable,
        "next_stage": next_stage(rec), "elapsed": elapsed, "queue_position": queue_position(run_id),
        "where": where, "stages": stages,
    }


def stage_done(state_or_record: dict, stage: str) -> bool:
    """True when ``stage`` is finished in a :func:`run_state` result or a ``run.json``."""
    rec = state_or_record.get("record", state_or_record)
    return rec.get("stages", {}).get(stage, {}).get("status") == "done"


def wait(run_id: str, timeout: float | None = None) -> Job | None:
    """Block until this process's job for ``run_id`` ends (for tests and scripts); returns the job."""
    job = get_job(run_id)
    if job is not None and job.thread is not None:
        job.thread.join(timeout)
    return job
