"""Peak resident memory per upload path (issue 24, item 2): what one photo costs the process that reads it.

    python -m bench.memory [--paths images,twoview,api] [--cases rgba16,rgb8_144mp,...] [--out DIR]

Each case (:data:`CASES`) is one photo given with a normal photo beside it (a 12 MP JPEG), through each path, each
in a fresh process:

- ``images``: the images stage (:func:`backend.io.images.run_images`, the balanced preset's images config, upright
  ``auto`` included), as the app's and the CLI's runs read uploads;
- ``twoview``: the Two-view page's work (:func:`backend.twoview.pair.prepare_image` on both photos, then
  :func:`~backend.twoview.pair.match_prepared` with the page's two default methods, ALIKED + LightGlue with the
  global similarity and SIFT + ratio test, and the page's previews), after a warm-up match of two normal photos so
  the models are loaded, then :func:`backend.io.images.release_memory` as the page does;
- ``api``: ``POST /v1/match`` (default method, similarity on) on a loopback ``python -m backend serve``, after a
  warm-up match of two normal photos.

Peak: the kernel's high-water mark of the process's resident set (``VmHWM``, reset to the current RSS just before
the photo by writing 5 to ``/proc/<pid>/clear_refs``, so a warm-up's peak does not count; ``ru_maxrss`` where /proc
has none), and psutil's RSS sampled every 10 ms as a cross-check. ``base`` is the RSS before the photo (after
imports and warm-up), ``after`` the RSS once the path has returned (and released its memory). Prints a markdown
table and writes ``<out>/memory.json``.

The test photos are made here (:func:`write_blank_png`, :func:`write_photo`): all-zero PNGs compress about 1000:1,
so a 12,200 x 12,200 16-bit RGBA PNG is about 1.2 MB on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SFM_DATA_DIR", REPO.parent / "shared" / "data"))
NORMAL_SOURCE = DATA / "fox_instant_ngp" / "images"  # a 1920 x 1080 frame, upscaled to a 12 MP "phone photo"

_COLOUR_TYPES = {"L": (0, 1), "RGB": (2, 3), "LA": (4, 2), "RGBA": (6, 4)}  # PNG colour type, channels

CASES = {
    # name: (kind, width, height, bit depth, colour)
    "photo_12mp": ("jpeg", 4032, 3024, 8, "RGB"),  # a phone photo: the reference
    "rgba16": ("png", 12_200, 12_200, 16, "RGBA"),  # the 149 MP 16-bit RGBA PNG: 1.19 GB of samples
    "rgb8_144mp": ("png", 12_000, 12_000, 8, "RGB"),  # the 144 MP RGB PNG: 432 MB of samples
    "rgb8_100mp": ("png", 10_000, 10_000, 8, "RGB"),  # the largest 8-bit RGB PNG accepted: 300 MB of samples
    "rgba16_37mp": ("png", 6_100, 6_100, 16, "RGBA"),  # the largest square 16-bit RGBA PNG accepted: 298 MB
    "jpeg_108mp": ("jpeg", 12_000, 9_000, 8, "RGB"),  # a 108 MP phone photo (decoded at half size)
    "heic_48mp": ("heic", 8064, 6048, 8, "RGB"),  # an iPhone Pro 48 MP HEIC (encoding it takes 1.5 min)
    "heic_100mp": ("heic_blank", 10_000, 10_000, 8, "RGB"),  # the largest HEIC accepted, black (60 KB; 35 s to make)
}
PATHS = ("images", "twoview", "api")


def write_blank_png(path: Path, width: int, height: int, bit_depth: int = 8, colour: str = "RGB") -> Path:
    """Write an all-zero PNG of ``width`` x ``height`` px without holding its pixels in memory.

    Args:
        path: the file to write.
        bit_depth: 8 or 16 bits per sample.
        colour: ``"L"``, ``"RGB"``, ``"LA"`` or ``"RGBA"``.

    Returns:
        ``path``. The file is about ``width * height * channels * bit_depth / 8 / 1000`` bytes (zlib level 9 on
        zeros), e.g. 1.2 MB for 12,200 x 12,200 16-bit RGBA.

    Raises:
        ValueError: an unknown ``colour`` or ``bit_depth``.
    """
    if colour not in _COLOUR_TYPES or bit_depth not in (8, 16):
        raise ValueError(f"colour must be one of {list(_COLOUR_TYPES)} and bit_depth 8 or 16")
    ctype, channels = _COLOUR_TYPES[colour]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = bytes(1 + width * channels * bit_depth // 8)  # filter byte 0 ("None") and the samples
    z = zlib.compressobj(9)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, ctype, 0, 0, 0)))
        buf = bytearray()
        for _ in range(height):
            buf += z.compress(row)
            if len(buf) > 1 << 20:
                f.write(chunk(b"IDAT", bytes(buf)))
                buf.clear()
        buf += z.flush()
        f.write(chunk(b"IDAT", bytes(buf)))
        f.write(chunk(b"IEND", b""))
    return Path(path)


def write_photo(path: Path, width: int = 4032, height: int = 3024, frame: int = 0, fmt: str = "JPEG") -> Path:
    """A "phone photo" of ``width`` x ``height`` px: fox frame number ``frame`` resized, saved as ``fmt`` (``"JPEG"``
    quality 90, or ``"HEIF"`` quality 80). Returns ``path``."""
    from PIL import Image

    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    src = sorted(NORMAL_SOURCE.iterdir())[frame]
    with Image.open(src) as im:
        im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(
            path, fmt, quality=90 if fmt == "JPEG" else 80)
    return Path(path)


def make_case(name: str, folder: Path) -> Path:
    """The photo of case ``name`` (:data:`CASES`; ``"companion"``: the normal photo given beside each case, another
    12 MP frame) in ``folder`` (made once)."""
    kind, w, h, bits, colour = CASES.get(name, ("jpeg", 4032, 3024, 8, "RGB"))
    p = Path(folder) / f"{name}.{ {'png': 'png', 'heic': 'heic', 'heic_blank': 'heic'}.get(kind, 'jpg')}"
    if not p.exists():
        if kind == "png":
            write_blank_png(p, w, h, bits, colour)
        elif kind == "heic_blank":
            import pillow_heif
            from PIL import Image

            pillow_heif.register_heif_opener()
            Image.new("RGB", (w, h)).save(p, "HEIF", quality=50)
        else:
            write_photo(p, w, h, frame=1 if name == "companion" else 0, fmt="HEIF" if kind == "heic" else "JPEG")
    return p


# ---- measuring --------------------------------------------------------------------------------------------------

def _rss_mb(pid: int | None = None) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _hwm_mb(pid: int) -> float | None:
    """The kernel's peak RSS (VmHWM) of ``pid`` in MB, None where /proc has none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak RSS (VmHWM) of ``pid`` to its current RSS (``/proc/<pid>/clear_refs``, Linux 4.0+, own
    processes only). Returns False where that is not possible."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mb(pid: int | None = None) -> float:
    """Peak RSS in MB of ``pid`` (default this process) since start or :func:`reset_peak`: VmHWM, else (this
    process only) ``ru_maxrss``."""
    hwm = _hwm_mb(os.getpid() if pid is None else pid)
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Sampler:
    """psutil RSS of ``pid`` (and its children) every ``interval`` s in a thread; ``peak`` in MB."""

    def __init__(self, pid: int, interval: float = 0.01):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(True))
                self.peak = max(self.peak, rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


PAGE_METHODS = "aliked-n16:lightglue,sift:nn-ratio"  # the Two-view page's defaults


def _child(path_kind: str, photo: str, normal: str, work: str, methods: str = PAGE_METHODS,
           similarity: str = "1") -> dict:
    """In a fresh process: ``base`` RSS, then the path on ``photo`` + ``normal``; peak from ru_maxrss. ``methods``:
    ``features:matcher`` pairs, comma-separated; ``similarity`` "1": the first also computes the global
    similarity."""
    import shutil

    from backend.io.images import InputError, release_memory, run_images

    work_dir = Path(work)
    out: dict = {}
    if path_kind == "images":
        from backend.config import get_preset

        cfg = get_preset("balanced").images
        src = work_dir / "upload"
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, src / Path(photo).name)
        shutil.copy(normal, src / ("normal_" + Path(normal).name))
        reset_peak(os.getpid())
        out["base_mb"] = _rss_mb()
        try:
            res = run_images(src, work_dir / "run", cfg)
            out["outcome"] = "; ".join([f"{i['name']}: {i['width']}x{i['height']}" for i in res["images"]]
                                       + [f"{s['name']}: {s['reason']}" for s in res["skipped"]])
        except InputError as e:
            out["outcome"] = str(e)
        release_memory()
    elif path_kind == "twoview":
        from backend.twoview.pair import match_prepared, prepare_image, preview_image

        models: dict = {}
        pairs = [tuple(m.split(":")) for m in methods.split(",")]

        def page_run(a: str, b: str, tag: str) -> str:
            try:
                ims = [prepare_image(Path(p), work_dir / tag, f"image{i}.jpg") for i, p in enumerate((a, b))]
            except ValueError as e:
                return f"refused: {e}"
            res = [match_prepared(ims[0], ims[1], f, m, similarity=j == 0 and similarity == "1", models=models)
                   for j, (f, m) in enumerate(pairs)]
            previews = [preview_image(im) for im in ims]
            del previews
            return "; ".join(f"{r.features}: {int(r.inliers.sum())} inliers" for r in res)

        page_run(normal, normal, "warmup")
        release_memory()
        reset_peak(os.getpid())
        out["base_mb"] = _rss_mb()
        out["outcome"] = page_run(photo, normal, "case")
        release_memory()
    else:
        raise ValueError(path_kind)
    out["peak_mb"] = peak_mb()
    out["after_mb"] = _rss_mb()
    return out


def measure_in_child(path_kind: str, photo: Path, normal: Path, env: dict | None = None,
                     timeout: float = 900, methods: str = PAGE_METHODS, similarity: bool = True) -> dict:
    """Run one in-process path (``images`` or ``twoview``) in a fresh ``python -m bench.memory child`` process.

    ``methods`` and ``similarity``: the two-view matching done (default: the Two-view page's).

    Returns:
        ``{"base_mb", "peak_mb", "after_mb", "sampled_peak_mb", "outcome", "seconds"}``: RSS in MB (2**20 bytes)
        before the photo, the kernel's peak (:func:`peak_mb`), RSS after the path returned, psutil's sampled peak
        over the whole child (imports and warm-up included), and what the path did (the stored sizes or the
        refusal).

    Raises:
        RuntimeError: the child failed (its stderr's end in the message).
    """
    with tempfile.TemporaryDirectory(prefix="sfm-bench-memory-") as work:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "bench.memory", "child", path_kind, str(photo), str(normal),
                                 work, methods, "1" if similarity else "0"], cwd=REPO,
                                env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with Sampler(proc.pid) as s:
            stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{path_kind} child failed ({proc.returncode}): {stderr[-2000:]}")
        out = json.loads(stdout.strip().splitlines()[-1])
        out["sampled_peak_mb"] = s.peak
        out["seconds"] = time.perf_counter() - t
        return out


def measure_api(cases: list[tuple[str, Path]], normal: Path, fields: dict[str, str] | None = None,
                env: dict | None = None) -> dict[str, dict]:
    """``POST /v1/match`` of each ``(name, photo)`` with ``normal`` on a fresh loopback API server per case, after
    a warm-up match of ``normal`` with itself.

    Args:
        fields: form fields of both requests (default: none, the API's default method with the similarity).
        env: extra environment of the server.

    Returns:
        Per case ``{"base_mb", "peak_mb", "after_mb", "sampled_peak_mb", "outcome", "seconds"}``: the server's RSS
        before the request, its peak during it (VmHWM, reset before it), RSS 1 s after, psutil's sampled peak, and
        ``"<HTTP status> <verdict or error>"``.

    Raises:
        RuntimeError: the server did not start.
    """
    import socket
    import urllib.error
    import urllib.request
    import uuid

    def post(base: str, a: Path, b: Path) -> tuple[int, str]:
        boundary = uuid.uuid4().hex
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                        for k, v in (fields or {}).items())
        for field, p in (("image0", a), ("image1", b)):
            body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{p.name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n").encode() + p.read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(f"{base}/v1/match", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(req, timeout=900) as r:
                return r.status, json.loads(r.read()).get("verdict", "")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()).get("error", "")

    out = {}
    for name, photo in cases:
        with tempfile.TemporaryDirectory(prefix="sfm-bench-memory-api-") as work:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server_env = dict(os.environ, SFM_RUNS_DIR=str(Path(work) / "runs"), HF_HUB_OFFLINE="1", **(env or {}))
            with open(Path(work) / "api.log", "w") as log:
                proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port",
                                         str(port)], cwd=REPO, env=server_env, stdout=log, stderr=subprocess.STDOUT)
            base = f"http://127.0.0.1:{port}"
            try:
                deadline = time.time() + 120
                while True:
                    try:
                        with urllib.request.urlopen(f"{base}/openapi.json", timeout=2):
                            break
                    except OSError:
                        if proc.poll() is not None or time.time() > deadline:
                            raise RuntimeError((Path(work) / "api.log").read_text()[-2000:]) from None
                        time.sleep(0.3)
                status, text = post(base, normal, normal)
                if status != 200:
                    raise RuntimeError(f"warm-up match failed: {status} {text}")
                time.sleep(0.5)
                reset_peak(proc.pid)
                before = _rss_mb(proc.pid)
                t = time.perf_counter()
                with Sampler(proc.pid) as s:
                    status, text = post(base, photo, normal)
                time.sleep(1.0)
                out[name] = {"base_mb": before, "peak_mb": _hwm_mb(proc.pid) or s.peak,
                             "after_mb": _rss_mb(proc.pid), "sampled_peak_mb": s.peak,
                             "outcome": f"{status} {text}", "seconds": time.perf_counter() - t}
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        print(json.dumps(_child(*argv[1:7])))
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.memory")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    a = p.parse_args(argv)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict = {}
    sizes: dict = {}
    with tempfile.TemporaryDirectory(prefix="sfm-bench-memory-photos-") as photos:
        cases = [(c, make_case(c, Path(photos))) for c in a.cases.split(",")]
        sizes = {c: p.stat().st_size for c, p in cases}
        normal = make_case("companion", Path(photos))
        for path_kind in a.paths.split(","):
            if path_kind == "api":
                for name, r in measure_api(cases, normal).items():
                    rows[(path_kind, name)] = r
                continue
            for name, photo in cases:
                rows[(path_kind, name)] = measure_in_child(path_kind, photo, normal)
                print(path_kind, name, json.dumps(rows[(path_kind, name)]), flush=True)
    print("| path | photo | file | RSS before, MB | peak, MB | peak - before, MB | RSS after, MB | s | outcome |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for (path_kind, name), r in rows.items():
        print(f"| {path_kind} | {name} | {sizes[name] / 1e6:.2f} MB | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - r['base_mb']:.0f} | {r['after_mb']:.0f} | {r['seconds']:.1f} | "
              f"{r['outcome'][:200]} |")
    (out_dir / "memory.json").write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
