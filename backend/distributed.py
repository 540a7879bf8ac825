"""Run the heavy stages (features, matching) on a Ray cluster: ``--executor ray [--ray-address ADDRESS]``.

The stages stay what they are locally: :func:`backend.features.extract.run_features` and
:func:`backend.matchers.match.run_matching` decide what to compute (the content keys of the run folder's caches),
and this process writes every result into ``features.h5`` / ``matches.h5`` exactly as the local executor does, so
resume, the app and the later stages do not know which executor ran. Only the computation moves:

- **features**: batches of images (their file bytes, read here) go to Ray tasks, which decode and extract with
  :func:`backend.features.extract.features_of`, the function the local loop runs;
- **matching**: batches of pairs, with the features of the images they touch (read here from ``features.h5``), go
  to Ray tasks, which run the matcher's ``match``.

Each worker process loads a model once and keeps it for the next tasks (a per-process cache keyed by the
method and its options), so a model is loaded once per worker, not per task. Tasks are Ray Core tasks with
retries: when a node dies, Ray reruns its tasks elsewhere and nothing written is lost (results are written as they
arrive). At most ``2 x workers`` batches are in flight, so the head's memory does not grow with the collection.
Mapping stays on the head node.

No shared file system is needed: inputs travel in Ray's object store. Every node needs the same checkout at the
same path (code and ``weights/``), as ``setup/ec2_bootstrap.sh --ray-head`` / ``--ray-worker ADDRESS`` install
it; the workers import ``backend`` from there.

Ray: https://docs.ray.io (Ray Core tasks, ``ray.wait``, ``ray.cancel``, fault tolerance by task retries).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .config import FeaturesConfig, MatchingConfig
from .io.weights import REPO_ROOT

IMAGES_PER_TASK = 4
PAIRS_PER_TASK = 32
TASK_RETRIES = 5  # reruns of a task whose worker or node died

NO_PROGRESS_CHECK_SECONDS = 10.0  # how often a stage waiting on the cluster checks that it can still run tasks
_MODELS: dict[str, tuple[tuple, object]] = {}  # per worker process: kind -> (key, model); one model per kind
_INIT_LOCK = threading.Lock()


def _cached_model(kind: str, name: str, options: dict, extractor: str = "", threads: int | None = None):
    """The model of a worker process, loaded on its first task and kept for the next ones (one per kind: a task
    with another method or options replaces it); ``threads`` sets torch's intra-op threads (None: Ray's default,
    the task's CPUs). The model runs on CUDA only when Ray gave this task a GPU (``gpus_per_task``): a CPU task on
    a GPU node stays on the CPU."""
    import ray
    import torch

    from .features import load_extractor
    from .matchers import load_matcher

    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
    key = (name, extractor, repr(sorted(options.items())), device.type)
    held = _MODELS.get(kind)
    if held is None or held[0] != key:
        _MODELS.pop(kind, None)
        model = (load_extractor(name, device, **options) if kind == "features"
                 else load_matcher(name, extractor, device, **options))
        _MODELS[kind] = (key, model)
    return _MODELS[kind][1]


def _extract_batch(cfg: FeaturesConfig, items: list[tuple[str, bytes, int]], threads: int | None) -> list[tuple]:
    """Ray task body: ``items`` = [(name, file bytes, upright quarter-turns)] -> [(name, data, attrs, seconds)]."""
    from .features.extract import features_of, method_options
    from .io.images import load_rgb

    model = _cached_model("features", cfg.name, method_options(cfg), threads=threads)
    out = []
    for name, blob, turns in items:
        img, sx, sy = load_rgb(io.BytesIO(blob), cfg.resize)
        t0 = time.perf_counter()
        data, attrs = features_of(model, cfg, img, sx, sy, turns)
        out.append((name, data, attrs, time.perf_counter() - t0))
    return out


def _match_batch(cfg: MatchingConfig, extractor: str, feats: dict[str, dict], pairs: list[tuple[str, str]],
                 threads: int | None) -> list[tuple]:
    """Ray task body: match ``pairs`` from ``feats`` (name -> features as :func:`read_features` returns them)
    -> [((name0, name1), matches int32 [M, 2], scores float32 [M], seconds)]."""
    from .matchers.match import method_options

    model = _cached_model("matching", cfg.name, method_options(cfg), extractor, threads)
    for f in feats.values():  # float descriptors travel as float16 (as stored), the matcher takes float32
        if f["descriptor_kind"] != "binary":
            f["descriptors"] = f["descriptors"].astype(np.float32)
    out = []
    for n0, n1 in pairs:
        t0 = time.perf_counter()
        m, s = model.match(feats[n0], feats[n1])
        out.append(((n0, n1), m, s, time.perf_counter() - t0))
    return out


class RayExecutor:
    """Ray as the executor of the features and matching stages (see the module docstring).

    Args:
        address: the cluster to join (``ray start --head`` prints it, e.g. ``10.0.0.5:6379``); ``"auto"`` finds a
            cluster started on this machine; None joins the cluster of ``$RAY_ADDRESS`` or one started on this
            machine, else starts a one-machine Ray inside this process (useful to try it, not faster than local).
            Ray is started or joined on first use, so a stage with nothing to compute never touches it.
        cpus_per_task: CPUs Ray reserves per task (1: one task per core of each node).
        gpus_per_task: GPUs per task (0 on CPU clusters; e.g. 0.5 shares a GPU between two workers).
        images_per_task, pairs_per_task: batch sizes.
        torch_threads: torch's intra-op threads in each task (None: ``cpus_per_task``). Floating-point sums
            depend on how work is split between threads, so features and matches are bit-identical to the local
            executor's when both use the same number of threads (the local executor uses
            ``torch.get_num_threads()``); with another number, a few keypoints at near-ties can differ.

    The stage methods raise ImportError when Ray is not installed (``requirements.txt`` pins ``ray==2.60.0``),
    ConnectionError when no cluster answers at ``address``, and RuntimeError when no alive node can run a task
    (no CPUs, or no GPUs with ``gpus_per_task``).
    """

    def __init__(self, address: str | None = None, cpus_per_task: float = 1, gpus_per_task: float = 0,
                 images_per_task: int = IMAGES_PER_TASK, pairs_per_task: int = PAIRS_PER_TASK,
                 torch_threads: int | None = None):
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.images_per_task = images_per_task
        self.pairs_per_task = pairs_per_task
        self.torch_threads = torch_threads or max(1, int(cpus_per_task))
        self.ray = None

    def _connect(self):
        """Start or join Ray (once per process) and make the remote functions."""
        if self.ray is not None:
            return
        import ray

        with _INIT_LOCK:
            if not ray.is_initialized():
                # workers import backend from the same checkout path on every node
                env = {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}
                ray.init(address=self.address, runtime_env=env, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR", configure_logging=False, ignore_reinit_error=True)
        opts = {"num_cpus": self.cpus_per_task, "num_gpus": self.gpus_per_task, "max_retries": TASK_RETRIES}
        self._extract = ray.remote(_extract_batch).options(**opts)
        self._match = ray.remote(_match_batch).options(**opts)
        self.ray = ray

    def workers(self) -> int:
        """How many tasks the alive nodes can run at once (0 when none can run one)."""
        res = self.ray.cluster_resources()  # the alive nodes' totals
        n = res.get("CPU", 0) / self.cpus_per_task if self.cpus_per_task else float("inf")
        if self.gpus_per_task:
            n = min(n, res.get("GPU", 0) / self.gpus_per_task)
        return int(n) if n != float("inf") else 1

    def describe(self) -> dict:
        """The cluster as this run saw it: alive nodes and their CPUs/GPUs."""
        self._connect()
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {"nodes": len(nodes), "cpus": int(sum(n["Resources"].get("CPU", 0) for n in nodes)),
                "gpus": int(sum(n["Resources"].get("GPU", 0) for n in nodes))}

    def _run(self, submit, batches: list, cancel: threading.Event | None) -> Iterator:
        """Submit ``batches`` with at most 2 x workers in flight; yield each result item as its batch finishes
        (completion order). On ``cancel`` the batches in flight are cancelled and InterruptedError raised; the
        same happens to them when the consumer stops early (the generator is closed)."""
        self._connect()
        ray = self.ray
        workers = self.workers()
        if workers < 1:
            raise RuntimeError("the Ray cluster has no alive node that can run a task (no CPUs"
                               + (", or no GPUs" if self.gpus_per_task else "") + "): start a worker node with "
                               "ray start --address HEAD:6379, or use --executor local")
        pending: list = []
        nxt = 0
        last_check = time.monotonic()
        try:
            while nxt < len(batches) or pending:
                if cancel is not None and cancel.is_set():
                    raise InterruptedError("cancelled")
                while nxt < len(batches) and len(pending) < 2 * workers:
                    pending.append(submit(batches[nxt]))
                    nxt += 1
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                if ready:
                    last_check = time.monotonic()
                elif time.monotonic() - last_check > NO_PROGRESS_CHECK_SECONDS:
                    last_check = time.monotonic()
                    workers = self.workers()
                    if workers < 1:
                        raise RuntimeError("every Ray node that could run the tasks is gone; what was written is "
                                           "kept: start a worker node and run the same command again")
                for ref in ready:
                    yield from ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def extract(self, images_dir: Path, names: list[str], cfg: FeaturesConfig, turns: dict[str, int],
                cancel: threading.Event | None = None) -> Iterator[tuple[str, dict, dict, float]]:
        """Yield ``(name, data, attrs, seconds)`` for every image of ``names`` (in ``images_dir``), in the order
        the tasks finish; ``data``/``attrs`` as :func:`backend.features.extract.features_of` returns them.

        Raises:
            InterruptedError: ``cancel`` was set.
            OSError: an image cannot be read here.
            ray.exceptions.RayTaskError: a task failed in a worker (the cause is in the message).
        """
        batches = [names[i:i + self.images_per_task] for i in range(0, len(names), self.images_per_task)]

        def submit(batch):
            items = [(n, (Path(images_dir) / n).read_bytes(), int(turns.get(n, 0))) for n in batch]
            return self._extract.remote(cfg, items, self.torch_threads)

        yield from self._run(submit, batches, cancel)

    def match(self, feats_path: Path, pairs: list[tuple[str, str]], cfg: MatchingConfig, extractor: str,
              cancel: threading.Event | None = None) -> Iterator[tuple[tuple[str, str], np.ndarray, np.ndarray, float]]:
        """Yield ``((name0, name1), matches int32 [M, 2], scores float32 [M], seconds)`` for every pair, in the
        order the tasks finish; each task gets the features (from ``feats_path``) of the images its pairs touch.

        Raises:
            InterruptedError: ``cancel`` was set.
            KeyError: an image has no features in ``feats_path``.
            ray.exceptions.RayTaskError: a task failed in a worker.
        """
        from .features.extract import read_features

        batches = [pairs[i:i + self.pairs_per_task] for i in range(0, len(pairs), self.pairs_per_task)]

        def submit(batch):
            feats = {}
            for n in sorted({n for p in batch for n in p}):
                f = read_features(feats_path, n)
                if f["descriptor_kind"] != "binary":  # stored as float16: send that, not the float32 copy
                    f["descriptors"] = f["descriptors"].astype(np.float16)
                feats[n] = f
            return self._match.remote(cfg, extractor, feats, batch, self.torch_threads)

        yield from self._run(submit, batches, cancel)

    def shutdown(self) -> None:
        """Leave the cluster (a cluster started by ``ray start`` keeps running)."""
        if self.ray is not None:
            self.ray.shutdown()
            self.ray = None
