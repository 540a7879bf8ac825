"""Background runs for the app: a process-wide job manager around :class:`backend.pipeline.Pipeline`.

One run = one folder ``<runs root>/<run_id>/`` (root: ``$SFM_RUNS_DIR``, else ``<repo>/runs``). The manager

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
- runs at most ``$SFM_MAX_JOBS`` (default 1) pipelines at once per process: the others wait, ``queued``.

Nothing here imports streamlit.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .config import PipelineConfig, apply_overrides, get_preset
from .owners import make_private_dir, remove_run, require_owner
from .pipeline import STAGES, Pipeline, PipelineError, RunOptions, _write_json_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS_ENV = "SFM_RUNS_DIR"
PROGRESS_JSON = "progress.json"
REQUEST_JSON = "request.json"
LOCK_FILE = ".job.lock"
CANCEL_FILE = "cancel.request"
SAMPLE_RUN_ID = "sample-church"
SAMPLE_IMAGES = REPO_ROOT / "samples" / "church_imc2024" / "images"
WRITE_INTERVAL = 0.25  # s between progress.json writes (<= 4 per second)
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

STAGE_TITLES = {
    "images": "Images",
    "retrieval": "Pairs (retrieval)",
    "features": "Features",
    "matching": "Matches",
    "verification": "Verification (two-view geometry)",
    "scenes": "Scenes (groups and outliers)",
    "mapping": "Mapping (SfM)",
    "exports": "Exports",
}


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

def build_config(preset: str = "balanced", *, retrieval_model: str | None = None, num_neighbors: int | None = None,
                 resize: int | None = None, max_keypoints: int | None = None, features: str | None = None,
                 matcher: str | None = None, camera_mode: str | None = None,
                 min_matches: int | None = None, mapper: str | None = None,
                 upright: str | None = None, disambiguate: str | None = None, scenes: str | None = None,
                 min_scene_size: int | None = None) -> PipelineConfig:
    """The config of ``preset`` with the app's advanced options applied (None keeps the preset's value).

    Raises:
        ValueError: unknown preset, an option out of range, or features and matcher that cannot work together.
    """
    return apply_overrides(get_preset(preset), retrieval_model=retrieval_model, num_neighbors=num_neighbors,
                           resize=resize, max_keypoints=max_keypoints, features=features, matcher=matcher,
                           camera_mode=camera_mode, min_matches=min_matches, mapper=mapper, upright=upright,
                           disambiguate=disambiguate, scenes=scenes, min_scene_size=min_scene_size,
                           mapping_threads=server_mapping_threads())


MAPPING_THREADS_ENV = "SFM_MAPPING_THREADS"


def server_mapping_threads() -> int | None:
    """The server's ``$SFM_MAPPING_THREADS``: threads of mapping for every run the app and the API start (unset:
    the preset's, all cores). ``1`` gives every run of the same photos the same model (README, ``--mapping-threads``)
    and keeps one run from taking every core of a shared server.

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


# ---- progress.json ---------------------------------------------------------------------------------------------

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
            "stages": {},
        }

    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None:
        with self._lock:
            cur = self.state["stage"]
            # the mapping child reports sub-steps ("database", or "verification" again during a second mapping
            # pass): they belong to the pipeline's current stage, which only moves forward within a run
            if cur is not None and (stage not in STAGES or STAGES.index(stage) < STAGES.index(cur)):
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
            _write_json_atomic(self.path, data)
        except OSError:
            pass  # the folder was removed; nothing to report to


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
    started: float = field(default_factory=time.time)
    finished: float | None = None
    thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


_JOBS: dict[str, Job] = {}
_JOBS_LOCK = threading.Lock()
_SLOTS = threading.BoundedSemaphore(max(1, int(os.environ.get("SFM_MAX_JOBS", "1") or 1)))


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
    if until is not None and until not in STAGES:
        raise JobError(f"unknown stage {until!r}: use one of {', '.join(STAGES)}")
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
            _write_json_atomic(run_dir / REQUEST_JSON, {
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
            if (job.run_dir / CANCEL_FILE).exists():
                job.cancel_event.set()

    ft = threading.Thread(target=flusher, name=f"sfm-progress-{job.run_id}", daemon=True)
    ft.start()
    acquired = False
    try:
        while not job.cancel_event.is_set():
            if _SLOTS.acquire(timeout=0.2):
                acquired = True
                break
        if not acquired:
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
        job.error, job.error_stage = e.message, e.stage
    except Exception as e:  # noqa: BLE001 - anything else becomes a readable error on the page
        job.state = "cancelled" if job.cancel_event.is_set() else "failed"
        job.error = f"{type(e).__name__}: {e}"
        _mark_record_failed(job.run_dir, job.error)
    finally:
        if acquired:
            _SLOTS.release()
        job.finished = time.time()
        stop_flusher.set()
        ft.join()
        writer.set(state=job.state, finished=job.finished, error=job.error, error_stage=job.error_stage)
        writer.flush(force=True)
        try:
            (job.run_dir / CANCEL_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        os.close(lock_fd)


def _mark_record_failed(run_dir: Path, error: str) -> None:
    p = Path(run_dir) / "run.json"
    rec = read_json(p)
    if rec and rec.get("status") == "running":
        rec["status"] = "failed"
        rec["error"] = error
        try:
            _write_json_atomic(p, rec)
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
    for s in STAGES:
        if stages.get(s, {}).get("status") != "done":
            return s
    return None


_ABS_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"`,;:()\[\]]+/)+([^\s/'\"`,;:()\[\]]*)")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by its last component (``/srv/runs/x/upload/a.jpg`` ->
    ``a.jpg``; a folder ending in ``/`` -> ``the folder``), for messages shown to users. URLs are left alone."""
    return _ABS_PATH.sub(lambda m: m.group(1) or "the folder", str(text))


def input_failure(stage: str | None, message: str | None) -> bool:
    """True when a failure comes from the photos themselves (fewer than two usable images, no folder): resuming
    the same run cannot succeed, only a new run with other photos can."""
    low = (message or "").lower()
    return stage in ("images", None) and ("usable image" in low or "not a folder" in low)


def friendly_error(stage: str | None, message: str | None) -> str:
    """A one-paragraph message for the page: what failed and what to do (never a stack trace, never a server
    path). Plain text (no markdown): pages escape it, since it can quote file names."""
    msg = (message or "unknown error").strip().splitlines()[0] if (message or "").strip() else "unknown error"
    msg = scrub_paths(msg)
    if "cancelled" in msg:
        return "The run was cancelled. The stages that finished are kept: press Resume to go on from there."
    where = f"The stage '{STAGE_TITLES.get(stage, stage)}' failed" if stage else "The run failed"
    low = msg.lower()
    if "weight" in low and ("missing" in low or "sha256" in low or "install" in low):
        hint = "Install the network weights on the server (bash setup/setup.sh), then press Resume."
    elif "usable image" in low or "at least 2" in low:
        hint = ("Upload at least two JPEG, PNG or HEIC photos of the same scene and start a new run "
                "(the Images page lists the files that were skipped and why).")
    elif stage in ("verification", "mapping") or "pycolmap" in low:
        hint = ("The earlier stages are kept. Try the 'accurate' preset, more keypoints, or per-image cameras, and "
                "look at the Matches page for weak pairs.")
    elif "no space left" in low or "errno 28" in low or "disk quota" in low:
        hint = ("The server's disk is full: delete runs you no longer need (or ask the server's administrator for "
                "space), then press Resume; the finished stages are kept.")
    elif "memory" in low:
        hint = "The server ran out of memory: try the 'fast' preset or fewer keypoints."
    else:
        hint = "The finished stages are kept: press Resume to try again, or start a new run with another preset."
    return f"{where}: {msg}. {hint}"


def run_state(run_dir: Path) -> dict:
    """Everything a page needs about a run's status.

    Returns a dict with ``run_id``, ``exists``, ``status`` (``new``, ``queued``, ``running``, ``paused``, ``done``,
    ``failed``, ``cancelled``, ``interrupted``), ``record`` (run.json), ``progress`` (progress.json), ``error``
    (readable plain-text message or None), ``resumable`` (False when the failure is in the photos themselves,
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
    resumable = True
    if status in ("failed", "cancelled", "interrupted"):
        failed = [(s, v) for s, v in rec.get("stages", {}).items() if v.get("status") in ("failed", "cancelled")]
        if failed:
            error = friendly_error(failed[-1][0], failed[-1][1].get("error"))
            resumable = not input_failure(failed[-1][0], failed[-1][1].get("error"))
        elif prog.get("error"):
            error = friendly_error(prog.get("error_stage"), prog.get("error"))
        elif rec.get("error"):
            error = friendly_error(None, rec.get("error"))
        elif status == "cancelled":
            error = friendly_error(None, "cancelled")
        if status == "interrupted":
            error = ("The run stopped while it was working (the server restarted, or the command line was "
                     "interrupted). Finished stages are kept: press Resume to go on.")
    now = time.time()
    stages = {}
    for s in STAGES:
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
        "resumable": resumable,
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
