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

_MODELS: dict[tuple, object] = {}  # per worker process: (kind, name, options) -> loaded model


def _cached_model(kind: str, name: str, options: dict, extractor: str = "", threads: int | None = None):
    """The model of a worker process, loaded on its first task and kept for the next ones; ``threads`` sets
    torch's intra-op threads (None: Ray's default, the task's CPUs)."""
    import torch

    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)

    from .features import load_extractor
    from .matchers import load_matcher

    key = (kind, name, extractor, repr(sorted(options.items())))
    if key not in _MODELS:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        _MODELS[key] = (load_extractor(name, device, **options) if kind == "features"
                        else load_matcher(name, extractor, device, **options))
    return _MODELS[key]


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
            cluster started on this machine; None starts a one-machine Ray inside this process (useful to try
            it, not faster than local).
        cpus_per_task: CPUs Ray reserves per task (1: one task per core of each node).
        gpus_per_task: GPUs per task (0 on CPU clusters; e.g. 0.5 shares a GPU between two workers).
        images_per_task, pairs_per_task: batch sizes.
        torch_threads: torch's intra-op threads in each task (None: ``cpus_per_task``). Floating-point sums
            depend on how work is split between threads, so features and matches are bit-identical to the local
            executor's when both use the same number of threads (the local executor uses
            ``torch.get_num_threads()``); with another number, a few keypoints at near-ties can differ.

    Raises:
        ImportError: Ray is not installed (``pip install ray==2.60.0``, as ``requirements.txt`` pins it).
        ConnectionError: no cluster answers at ``address``.
    """

    def __init__(self, address: str | None = None, cpus_per_task: float = 1, gpus_per_task: float = 0,
                 images_per_task: int = IMAGES_PER_TASK, pairs_per_task: int = PAIRS_PER_TASK,
                 torch_threads: int | None = None):
        import ray

        self.ray = ray
        self.images_per_task = images_per_task
        self.pairs_per_task = pairs_per_task
        self.torch_threads = torch_threads or max(1, int(cpus_per_task))
        if not ray.is_initialized():
            # workers import backend from the same checkout path on every node
            env = {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}
            ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", configure_logging=False)
        opts = {"num_cpus": cpus_per_task, "num_gpus": gpus_per_task, "max_retries": TASK_RETRIES}
        self._extract = ray.remote(_extract_batch).options(**opts)
        self._match = ray.remote(_match_batch).options(**opts)

    @property
    def workers(self) -> int:
        """How many tasks the cluster runs at once now (its CPUs; at least 1)."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def describe(self) -> dict:
        """The cluster as this run saw it: alive nodes and their CPUs/GPUs."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {"nodes": len(nodes), "cpus": int(sum(n["Resources"].get("CPU", 0) for n in nodes)),
                "gpus": int(sum(n["Resources"].get("GPU", 0) for n in nodes))}

    def _run(self, submit, batches: list, cancel: threading.Event | None) -> Iterator:
        """Submit ``batches`` with at most 2 x workers in flight; yield each result item as its batch finishes
        (completion order). On ``cancel``, the batches in flight are cancelled and InterruptedError raised."""
        ray = self.ray
        pending: list = []
        nxt = 0
        try:
            while nxt < len(batches) or pending:
                while nxt < len(batches) and len(pending) < 2 * self.workers:
                    pending.append(submit(batches[nxt]))
                    nxt += 1
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                if cancel is not None and cancel.is_set():
                    raise InterruptedError("cancelled")
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
            feats = {n: read_features(feats_path, n) for n in sorted({n for p in batch for n in p})}
            return self._match.remote(cfg, extractor, feats, batch, self.torch_threads)

        yield from self._run(submit, batches, cancel)

    def shutdown(self) -> None:
        """Leave the cluster (a cluster started by ``ray start`` keeps running)."""
        self.ray.shutdown()
