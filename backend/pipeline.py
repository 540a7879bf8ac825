"""The whole pipeline: images -> pairs -> features -> matches -> verification -> scenes -> mapping -> exports.

Each stage reads the previous stages' files from the run folder and writes its own; ``run.json`` records the
config, library versions, weight checksums, and per stage its status, config hash, wall time, peak memory,
counts and error. A finished stage whose hash (its config and the hashes of its inputs) is unchanged is not
recomputed, so a crashed or cancelled run resumes where it stopped.

The hashes chain the *content* of the inputs: images (the sha256 of every photo's bytes and the images config)
-> retrieval and features -> matching -> verification (with the mapping config) -> scenes -> mapping -> exports. Within a
stage, ``features.h5`` and ``matches.h5`` reuse an image's or a pair's entry only when it carries the content key
it would get now (see :mod:`backend.io.h5cache`); ``force`` recomputes every stage and every entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from .config import PipelineConfig

STAGES = ["images", "retrieval", "features", "matching", "verification", "scenes", "mapping", "exports"]
RUN_JSON = "run.json"

Progress = Callable[[str, int, int, str], None]
"""``progress(stage, done, total, message)``: called often while a stage works."""


class PipelineError(RuntimeError):
    """A stage failed; ``stage`` names it. Earlier stages' results stay in the run folder."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


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
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def _write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename, so readers see the old file or the
    new one, never half of one; on a full disk (or any error) the temporary file is removed and the error raised."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=_json_default))
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


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
        self._fingerprint: str | None = None  # see _input_fingerprint
        self._weight_sums: dict[tuple, dict] = {}
        self._force = False  # set while run_stage(force=True) runs a stage
        self._ray = None  # the RayExecutor of executor="ray", made by the first stage that needs it

    # ---- run.json -------------------------------------------------------------------------------------------
    def _save(self):
        with self._lock:
            _write_json_atomic(self.run_dir / RUN_JSON, self.record)

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
        fw, mw = self._method_weights()
        names = [*fw, *mw, "efficientnet-lite0", "dinov2-small", "dinov2-base"]
        r["weights"] = checksums(names)
        r.setdefault("stages", {})
        r.setdefault("summary", {})
        r["status"] = "running"
        self._save()

    def _input_fingerprint(self) -> str:
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

    def _method_weights(self) -> tuple[list[str], list[str]]:
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
        """The hash each stage's result must carry to be reused: its config, the weights it uses and the hashes of
        the stages it reads (so a change anywhere upstream reruns everything downstream)."""
        c = self.cfg
        h = {"images": _hash(self._input_fingerprint(), c.stage_hash("images"))}
        h["retrieval"] = _hash(h["images"], c.stage_hash("retrieval"),
                               self._weights("dinov2-small", "dinov2-base", "efficientnet-lite0"))
        fw, mw = self._method_weights()
        h["features"] = _hash(h["images"], c.stage_hash("features"), self._weights(*fw))
        h["matching"] = _hash(h["retrieval"], h["features"], c.stage_hash("matching"), self._weights(*mw))
        h["verification"] = _hash(h["matching"], c.stage_hash("mapping"))
        h["scenes"] = _hash(h["verification"], c.stage_hash("scenes"))
        h["mapping"] = _hash(h["scenes"])
        h["exports"] = _hash(h["mapping"], self.record.get("dataset"), self.record.get("scene"))
        return h

    def is_done(self, stage: str) -> bool:
        s = self.record.get("stages", {}).get(stage, {})
        return s.get("status") == "done" and s.get("hash") == self.stage_hashes()[stage]

    # ---- stages ---------------------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        from .io.images import load_images_json

        return [i["name"] for i in load_images_json(self.run_dir)["images"]]

    def _stage_images(self, report):
        from .io.images import run_images

        res = run_images(self.opt.images_dir, self.run_dir, self.cfg.images, lambda d, t, m: report(d, t, m))
        return {"images": len(res["images"]), "skipped": len(res["skipped"]),
                "skipped_files": [f"{s['name']}: {s['reason']}" for s in res["skipped"]]}

    def _stage_retrieval(self, report):
        from .retrieval.global_descriptors import run_retrieval

        return run_retrieval(self.run_dir, self._names(), self.cfg.retrieval, report, self.cancel)

    def _stage_features(self, report):
        from .features.extract import run_features

        # the images options that decide pixels (RGBA composited onto the background) are part of every entry's key
        decode = {"background": self.cfg.images.background}
        return run_features(self.run_dir, self._names(), self.cfg.features, report, self.cancel, decode=decode,
                            force=self._force, executor=self._executor())

    def _stage_matching(self, report):
        from .matchers.match import run_matching
        from .retrieval.global_descriptors import read_pairs

        pairs = [(a, b) for a, b, _ in read_pairs(self.run_dir)]
        return run_matching(self.run_dir, pairs, self.cfg.matching, report, self.cancel, force=self._force,
                            executor=self._executor())

    def _executor(self):
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

    def _child(self, stages: list[str]):
        from .io.images import load_images_json
        from .mapping.reconstruction import run_in_child
        from .mapping.scenes import read_split
        from .retrieval.global_descriptors import read_pairs

        images = {i["name"]: i for i in load_images_json(self.run_dir)["images"]}
        pairs = [(a, b) for a, b, _ in read_pairs(self.run_dir)]
        split = read_split(self.run_dir) if "mapping" in stages else None
        return run_in_child(self.run_dir, list(images), images, pairs, self.cfg.mapping,
                            self.cfg.matching.min_matches, stages,
                            lambda st, d, t, m: self.progress(st, d, t, m), self.cancel,
                            split=split.to_dict() if split else None)

    def _stage_verification(self, report):
        return self._child(["verification"])

    def _stage_scenes(self, report):
        from .mapping.scenes import run_scenes

        return run_scenes(self.run_dir, self._names(), self.cfg.scenes, report)

    def _stage_mapping(self, report):
        res = self._child(["mapping"])
        (self.run_dir / "mapping.json").write_text(json.dumps(res, indent=1))
        models = res.get("models", [])
        if not models:
            verified = self.record.get("stages", {}).get("verification", {}).get("counts", {}).get("verified_pairs")
            dropped = res.get("deregistered_outside_models") or []
            why = (f"{len(dropped)} image(s) were placed but then removed as implausible "
                   f"({dropped[0]['image']}: {dropped[0]['reason']})" if dropped else
                   f"no two images had enough verified matches to start a model ({verified or 0} verified pairs)")
            raise RuntimeError(
                f"nothing was reconstructed: {why}. Try photos with more overlap (every part of the scene in at "
                "least three photos, taken a few steps apart), the accurate preset, or more keypoints"
                + self._unregistered_exports())
        best = models[0] if models else {}
        return {
            "models": len(models),
            "registered_images": best.get("registered_images", 0),
            "points": best.get("points", 0),
            "mean_reprojection_error": best.get("mean_reprojection_error"),
            "mean_track_length": best.get("mean_track_length"),
            "model_sizes": [m["registered_images"] for m in models],
            "deregistered": best.get("deregistered", []),
            "focal_rescued": best.get("focal_rescued", []),
            "stopped_at_time_bound": res.get("stopped_at_time_bound", []),
            "fold": res.get("fold"),
            "cameras": res.get("cameras"),
            "scenes": len(res.get("scenes", [])),
            "scene_sizes": [len(sc["images"]) for sc in res.get("scenes", [])],
            "outliers": len(res.get("outliers", [])),
            "child_peak_rss_mb": res.get("child_peak_rss_mb"),
        }

    def _unregistered_exports(self) -> str:
        """After a mapping that placed no photo: write the poses files and ``submission.csv`` with every photo
        unregistered, so that an IMC submission over many collections stays complete. Returns a sentence for the
        error message (empty when the files could not be written)."""
        try:
            self._stage_exports(report=None)
        except (OSError, ValueError, RuntimeError):  # the error being raised is what matters
            return ""
        return " (poses.csv and submission.csv list every photo as unregistered)"

    def _stage_exports(self, report):
        from .io.export import run_exports

        return run_exports(self.run_dir, self._names(), self.record["dataset"], self.record["scene"])

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
        i = STAGES.index(stage)
        for prev in STAGES[:i]:
            if not self.is_done(prev):
                raise PipelineError(stage, f"stage '{prev}' must finish first")
        # a stage that reruns invalidates everything after it
        for later in STAGES[i + 1:]:
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
            with _PeakMemory() as mem:
                counts = getattr(self, f"_stage_{stage}")(report)
            rec["status"] = "done"
        except Exception as e:  # noqa: BLE001 - recorded and re-raised as PipelineError
            cancelled = self.cancel.is_set()
            rec["status"] = "cancelled" if cancelled else "failed"
            rec["error"] = "cancelled by the user" if cancelled else str(e)
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            self.record["status"] = rec["status"]
            self._save()
            raise PipelineError(stage, rec["error"]) from e
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
        if stage == "images":
            s["images"], s["skipped"] = counts["images"], counts["skipped"]
        elif stage == "retrieval":
            s["pairs"] = counts["pairs"]
            s["retrieval_model"] = counts["model"]
            s["retrieval_fallback"] = counts["fallback_reason"]
        elif stage == "features":
            s["keypoints"] = counts["keypoints_total"]
            s["keypoints_mean"] = counts["keypoints_mean"]
        elif stage == "matching":
            s["matches"] = counts["matches_total"]
        elif stage == "verification":
            s["verified_pairs"] = counts.get("verified_pairs")
            s["inliers"] = counts.get("inliers_total")
        elif stage == "mapping":
            for k in ["registered_images", "points", "mean_reprojection_error", "mean_track_length", "models",
                      "scenes", "outliers"]:
                s[k] = counts.get(k)

    def run(self, until: str | None = None, force: bool = False) -> dict:
        """Run every stage up to and including ``until`` (default: all). Returns ``run.json``'s content. With
        ``force`` every stage is recomputed, the cached entries of ``features.h5`` and ``matches.h5`` included.

        Raises:
            PipelineError: a stage failed; ``run.json`` records which and why.
        """
        self._init_record()
        last = STAGES.index(until) if until else len(STAGES) - 1
        for stage in STAGES[: last + 1]:
            if self.cancel.is_set():
                self.record["status"] = "cancelled"
                self._save()
                raise PipelineError(stage, "cancelled by the user")
            self.run_stage(stage, force=force)
        self.record["status"] = "done" if last == len(STAGES) - 1 else "paused"
        self.record["total_seconds"] = round(sum(
            self.record["stages"][s].get("seconds", 0) for s in STAGES[: last + 1]), 2)
        self._save()
        return self.record
