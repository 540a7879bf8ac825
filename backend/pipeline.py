"""Runs the stages declared in :mod:`backend.stages` over one run folder, in order: images -> retrieval ->
features -> matching -> verification -> scenes -> mapping -> exports.

Each stage reads the previous stages' files from the run folder and writes its own; ``run.json`` records the
config, library versions, weight checksums, and per stage its status, hash, wall time, peak memory, counts, and on
failure the error and its type (``error_type``, :mod:`backend.errors`); ``run.log`` keeps each stage's start, end and
the traceback of a failure. A finished stage whose hash is unchanged is not recomputed, so a crashed or cancelled
run resumes where it stopped.

The hashes chain the *content* of the inputs: images (the sha256 of every photo's bytes and the images config)
-> retrieval and features -> matching -> verification (its own section and the two camera fields) -> scenes ->
mapping -> exports. Within a stage, ``features.h5`` and ``matches.h5`` reuse an image's or a pair's entry only when
it carries the content key it would get now (see :mod:`backend.io.h5cache`); ``force`` recomputes every stage and
every entry.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable


from .config import PipelineConfig
from .errors import error_type
from .stages import get_stage, stage_names, stages
from .utils.logs import run_log
from .utils.hashing import json_sha256
from .utils.text import write_json_atomic

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
RUN_LOG = "run.log"  # the run's log: every stage's start and end, and the traceback of a failure
LAYOUT = 2
"""The run folder's layout version (``run.json`` ``layout``). 2: verification has its own config section (issue
26); a stage finished under layout 1 from verification on is run again, and its progress says why."""

Progress = Callable[[str, int, int, str], None]
"""``progress(stage, done, total, message)``: called often while a stage works."""


class PipelineError(RuntimeError):
    """A stage failed; ``stage`` names it, ``error_type`` is the class name of the error that failed it (also in
    ``run.json``; see :mod:`backend.errors`). Earlier stages' results stay in the run folder."""

    def __init__(self, stage: str, message: str, error_type: str = ""):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message
        self.error_type = error_type


class _PeakMemory:
    """Samples this process's resident memory (MB) in a thread; ``peak`` is the maximum seen."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)


def _hash(*parts) -> str:
    return json_sha256(parts, 16)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the results."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ["torch", "kornia", "pycolmap", "transformers", "numpy", "h5py", "pillow"]:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def read_run(run_dir: Path) -> dict:
    """The ``run.json`` of a run folder ({} when absent)."""
    p = Path(run_dir) / RUN_JSON
    return json.loads(p.read_text()) if p.exists() else {}


@dataclass
class RunOptions:
    """Where a run reads from, how it names its outputs, and where its heavy stages compute.

    ``executor``: ``"local"`` (this process) or ``"ray"`` (features and matching as Ray tasks, see
    :mod:`backend.distributed`; ``ray_address`` names the cluster, None starts a one-machine Ray). Not part of any
    stage's config hash: both executors write the same outputs.
    """

    images_dir: Path
    run_dir: Path
    dataset: str = ""
    scene: str = ""
    executor: str = "local"
    ray_address: str | None = None


class Pipeline:
    """Runs the stages of one run folder.

    Args:
        options: input folder, run folder, dataset/scene names for the IMC 2024 CSV.
        config: the pipeline configuration (see :mod:`backend.config`).
        progress: optional callback ``progress(stage, done, total, message)``.
        cancel: optional event; when set, the running stage stops at its next step and the run is ``cancelled``.
    """

    def __init__(self, options: RunOptions, config: PipelineConfig, progress: Progress | None = None,
                 cancel: threading.Event | None = None):
        from .matchers import check_combination

        check_combination(config.features.name, config.matching.name)  # ValueError naming what can work
        self.opt = options
        self.cfg = config
        self.progress = progress or (lambda *a: None)
        self.cancel = cancel or threading.Event()
        self.run_dir = Path(options.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.record = read_run(self.run_dir)
        self._lock = threading.Lock()
        self._fingerprint: str | None = None  # see input_fingerprint
        self._weight_sums: dict[tuple, dict] = {}
        self._force = False  # set while run_stage(force=True) runs a stage
        self._ray = None  # the RayExecutor of executor="ray", made by the first stage that needs it
        self._old_layout: int | None = None  # run.json's layout before this Pipeline wrote it

    # ---- run.json -------------------------------------------------------------------------------------------
    def _save(self):
        with self._lock:
            write_json_atomic(self.run_dir / RUN_JSON, self.record)

    def _init_record(self):
        from .io.weights import checksums

        r = self.record
        r.setdefault("run_id", self.run_dir.name)
        r.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        r["images_dir"] = str(Path(self.opt.images_dir).resolve())
        r["dataset"] = self.opt.dataset or Path(self.opt.images_dir).resolve().parent.name
        r["scene"] = self.opt.scene or r["dataset"]
        r["config"] = self.cfg.to_dict()
        r["versions"] = library_versions()
        import torch

        r["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        r["cpu_count"] = os.cpu_count()
        fw, mw = self.method_weights()
        from .retrieval import descriptor_weight_names

        names = [*fw, *mw, *descriptor_weight_names()]
        r["weights"] = checksums(names)
        r.setdefault("stages", {})
        r.setdefault("summary", {})
        if self._old_layout is None:
            self._old_layout = r.get("layout", 1 if r["stages"] else LAYOUT)
        r["layout"] = LAYOUT
        r["status"] = "running"
        self._save()

    def input_fingerprint(self) -> str:
        """Hash of the input folder's content: the sha256 of every photo's bytes (a photo replaced by another of
        the same name, size and modification time changes it), and name and size of the other files (they are
        only listed as skipped). Computed once per :class:`Pipeline` (a few seconds for 500 photos of 5 MB)."""
        if self._fingerprint is None:
            from .io.images import SUPPORTED_EXTENSIONS, file_sha256

            d = Path(self.opt.images_dir)
            items = []
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    if p.is_file():
                        if p.suffix.lower() in SUPPORTED_EXTENSIONS:
                            items.append((p.name, file_sha256(p)))
                        else:
                            items.append((p.name, p.stat().st_size))
            self._fingerprint = _hash(items)
        return self._fingerprint

    def method_weights(self) -> tuple[list[str], list[str]]:
        """Manifest names of the weights the configured extractor and matcher load."""
        from .features import extractor_class, extractor_conf
        from .features.extract import method_options as feature_options
        from .matchers import matcher_class, matcher_conf
        from .matchers.match import method_options as match_options

        f, m = self.cfg.features, self.cfg.matching
        fw = extractor_class(f.name).weight_names(extractor_conf(f.name, **feature_options(f)))
        mw = matcher_class(m.name).weight_names(matcher_conf(m.name, **match_options(m)), f.name)
        return fw, mw

    def _weights(self, *names: str) -> dict[str, str]:
        """sha256 per installed weight of ``names`` (as in ``run.json``), read once per :class:`Pipeline`."""
        from .io.weights import checksums

        if names not in self._weight_sums:
            self._weight_sums[names] = checksums(list(names))
        return self._weight_sums[names]

    def stage_hashes(self) -> dict[str, str]:
        """The hash each stage's result must carry to be reused (see :mod:`backend.stages`): the hashes of the stages
        it reads, its extra parts, its config and the weights it uses (so a change anywhere upstream reruns
        everything downstream)."""
        h: dict[str, str] = {}
        for st in stages():
            parts = [h[i] for i in st.inputs]
            parts += list(st.extra(self)) if st.extra else []
            parts += [self.cfg.stage_hash(*st.config)] if st.config else []
            parts += [self._weights(*st.weights(self))] if st.weights else []
            h[st.name] = _hash(*parts)
        return h

    def is_done(self, stage: str) -> bool:
        s = self.record.get("stages", {}).get(stage, {})
        return s.get("status") == "done" and s.get("hash") == self.stage_hashes()[stage]

    # ---- what the stages use (backend/stages.py) ------------------------------------------------------------------
    def names(self) -> list[str]:
        """The names of the run's usable photos (``images.json``), in order."""
        from .io.images import load_images_json

        return [i["name"] for i in load_images_json(self.run_dir)["images"]]

    @property
    def force(self) -> bool:
        """True while :meth:`run_stage` recomputes a stage with ``force``: its cache entries are recomputed too."""
        return self._force

    def executor(self):
        """None for the local executor; the run's :class:`~backend.distributed.RayExecutor` (made on first use,
        kept for the next stage) for ``executor="ray"``.

        Raises:
            ValueError: an unknown executor name.
        """
        if self.opt.executor == "local":
            return None
        if self.opt.executor != "ray":
            raise ValueError(f"unknown executor {self.opt.executor!r}; use local or ray")
        if self._ray is None:
            from .distributed import RayExecutor

            self._ray = RayExecutor(self.opt.ray_address)
        return self._ray

    def run_stage(self, stage: str, force: bool = False) -> dict:
        """Run one stage (or reuse it when done with the same hash). Returns its record. With ``force`` the stage
        is recomputed, its per-image / per-pair cache entries included.

        Raises:
            PipelineError: the stage failed or was cancelled; the record says why.
        """
        if not self.record.get("stages"):
            self._init_record()
        hashes = self.stage_hashes()
        if not force and self.is_done(stage):
            self.progress(stage, 1, 1, "reused (unchanged inputs and config)")
            return self.record["stages"][stage]
        names = stage_names()
        i = names.index(stage)
        for prev in names[:i]:
            if not self.is_done(prev):
                raise PipelineError(stage, f"stage '{prev}' must finish first", "StageOrderError")
        old = self.record["stages"].get(stage, {})
        if old.get("status") == "done" and (self._old_layout or LAYOUT) < LAYOUT:
            self.progress(stage, 0, 1, "run again: finished by an older version of the run folder's layout")
        # a stage that reruns invalidates everything after it
        for later in names[i + 1:]:
            self.record["stages"].pop(later, None)
        rec = {"status": "running", "hash": hashes[stage],
               "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.record["stages"][stage] = rec
        self.record["status"] = "running"
        self._save()

        def report(done, total, msg=""):
            self.progress(stage, done, total, msg)

        t0 = time.perf_counter()
        self._force = force
        try:
            with _PeakMemory() as mem, run_log(self.run_dir / RUN_LOG):
                log.info("stage %s started (hash %s)", stage, hashes[stage])
                try:
                    counts = get_stage(stage).run(self, report)
                except Exception:
                    log.exception("stage %s failed", stage)  # the traceback goes to the run's log
                    raise
                log.info("stage %s done in %.2f s", stage, time.perf_counter() - t0)
            rec["status"] = "done"
        except Exception as e:  # noqa: BLE001 - recorded and re-raised as PipelineError
            cancelled = self.cancel.is_set()
            rec["status"] = "cancelled" if cancelled else "failed"
            rec["error"] = "cancelled by the user" if cancelled else str(e)
            rec["error_type"] = "Cancelled" if cancelled else error_type(e)
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            self.record["status"] = rec["status"]
            self._save()
            raise PipelineError(stage, rec["error"], rec["error_type"]) from e
        finally:
            self._force = False
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        peak = mem.peak
        if isinstance(counts, dict) and counts.get("child_peak_rss_mb"):
            rec["child_peak_rss_mb"] = counts.pop("child_peak_rss_mb")
        rec["peak_rss_mb"] = round(peak, 1)
        rec["counts"] = counts
        self._update_summary(stage, counts)
        self.progress(stage, 1, 1, "done")
        self._save()
        return rec

    def _update_summary(self, stage: str, counts: dict):
        s = self.record.setdefault("summary", {})
        for key, count in get_stage(stage).summary:
            s[key] = counts.get(count)

    def run(self, until: str | None = None, force: bool = False) -> dict:
        """Run every stage up to and including ``until`` (default: all). Returns ``run.json``'s content. With
        ``force`` every stage is recomputed, the cached entries of ``features.h5`` and ``matches.h5`` included.

        Raises:
            PipelineError: a stage failed; ``run.json`` records which and why.
        """
        self._init_record()
        names = stage_names()
        last = names.index(until) if until else len(names) - 1
        for stage in names[: last + 1]:
            if self.cancel.is_set():
                self.record["status"] = "cancelled"
                self._save()
                raise PipelineError(stage, "cancelled by the user", "Cancelled")
            self.run_stage(stage, force=force)
        self.record["status"] = "done" if last == len(names) - 1 else "paused"
        self.record["total_seconds"] = round(sum(
            self.record["stages"][s].get("seconds", 0) for s in names[: last + 1]), 2)
        self._save()
        return self.record
