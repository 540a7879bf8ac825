#!/usr/bin/env python3
"""Bring image data into the data folder: a local folder, a local .zip, or a .zip at an http(s) URL.

Used by ``setup/ec2_bootstrap.sh`` (``--data``, ``--kaggle``); standard library only, so it runs with any
Python 3.8+ before the project's virtualenv exists.

    python3 setup/ec2/import_data.py --data-dir DIR [--into NAME] [--scenes a,b] SOURCE

* folder ``SRC/``     -> ``DIR/<name of SRC>/`` (regular files copied; unchanged files are skipped)
* ``X.zip``           -> ``DIR/<top folder>/`` when every entry sits in one top folder, else ``DIR/X/``
* ``http(s)://.../X.zip`` -> downloaded once to ``DIR/.downloads/X.zip``, then extracted as above
* ``--into NAME``     extract or copy into ``DIR/NAME/`` as is (no top-folder detection)
* ``--scenes a,b``    (zips only) extract only entries below a folder named ``a`` or ``b`` (at any depth),
                      plus the files at the top of the zip (labels, thresholds)

A zip is checked before anything is written: an entry with an absolute path, a ``..`` component, a
symlink, a drive letter or encryption makes the whole zip refused (exit 1). Files already present with the
same size and CRC-32 are left alone, so importing the same source twice changes nothing.

Exit status: 0 done (one summary line on stdout), 1 refused or failed (reason on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

USER_AGENT = "sfm-explorer-ec2-bootstrap/1 (python-urllib)"
URL_TIMEOUT_S = 60
JUNK_PREFIXES = ("__MACOSX/",)
FREE_SPACE_MARGIN = 512 * 1024 * 1024  # keep this much free after extracting


class Refused(Exception):
    """The source is unusable or unsafe; the message says why."""


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _crc32_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return crc & 0xFFFFFFFF


# ----------------------------------------------------------------------------- zip checks


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why this entry is unsafe to extract, or None."""
    name = info.filename
    if "\x00" in name:
        return "NUL byte in the name"
    if name.startswith(("/", "\\")):
        return "absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "drive letter"
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        return "'..' component (path traversal)"
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        return "symbolic link"
    if info.flag_bits & 0x1:
        return "encrypted entry"
    return None


def _wanted(name: str, scenes: set[str]) -> bool:
    if not scenes:
        return True
    parts = name.rstrip("/").split("/")
    if len(parts) == 1 and not name.endswith("/"):
        return True  # files at the top (labels, thresholds, sample submission)
    return any(p in scenes for p in parts[:-1]) or (name.endswith("/") and parts[-1] in scenes)


def _folders(names: list[str], depth: int = 2) -> list[str]:
    found = set()
    for n in names:
        parts = n.split("/")[:-1]
        for d in range(1, min(depth, len(parts)) + 1):
            found.add("/".join(parts[:d]))
    return sorted(found)


def import_zip(zpath: Path, data_dir: Path, into: str | None, scenes: set[str]) -> str:
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Refused(f"{zpath} is not a readable zip ({exc})") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.filename.startswith(JUNK_PREFIXES)]
        bad = [(i.filename, why) for i in infos if (why := _entry_problem(i))]
        if bad:
            shown = "; ".join(f"{n!r}: {why}" for n, why in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise Refused(f"refusing {zpath}: unsafe entries, nothing was extracted: {shown}{more}")
        if not infos:
            raise Refused(f"{zpath} is empty")

        shown = None  # the folder named in the summary
        if into:
            dest = data_dir / into
        else:
            tops = {i.filename.split("/", 1)[0] for i in infos}
            single_top = len(tops) == 1 and all("/" in i.filename for i in infos)
            dest = data_dir if single_top else data_dir / zpath.stem
            if single_top:
                shown = data_dir / tops.pop()
        shown = shown or dest
        picked = [i for i in infos if _wanted(i.filename, scenes)]
        if scenes:
            present = {p for i in infos for p in i.filename.rstrip("/").split("/")[:-1]}
            absent = sorted(scenes - present)
            if absent:
                raise Refused(
                    f"--scenes {','.join(absent)}: no such folder in {zpath.name}; "
                    f"its folders: {', '.join(_folders([i.filename for i in infos])[:40])}"
                )

        dest_resolved = dest.resolve()
        for i in picked:  # second guard: the final path must stay inside the destination
            target = (dest / i.filename).resolve()
            if target != dest_resolved and dest_resolved not in target.parents:
                raise Refused(f"refusing {zpath}: entry {i.filename!r} would be written outside {dest}")

        todo = []
        for i in picked:
            if i.is_dir():
                continue
            target = dest / i.filename
            if target.is_file() and target.stat().st_size == i.file_size and _crc32_of(target) == i.CRC:
                continue
            if target.exists() and not target.is_file():
                raise Refused(f"cannot extract {i.filename!r}: {target} exists and is not a regular file")
            todo.append(i)

        need = sum(i.file_size for i in todo)
        data_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(data_dir).free
        if need and need + FREE_SPACE_MARGIN > free:
            raise Refused(f"{zpath.name} needs {human(need)} but only {human(free)} is free in {data_dir}")

        for i in picked:
            if i.is_dir():
                (dest / i.filename).mkdir(parents=True, exist_ok=True)
        for i in todo:
            target = dest / i.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, zf.open(i) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    files = sum(1 for i in picked if not i.is_dir())
    what = f" (only folders {','.join(sorted(scenes))} and top-level files)" if scenes else ""
    if not todo:
        return f"{shown}/ unchanged ({files} files from {zpath.name} already in place){what}"
    return f"{shown}/: extracted {len(todo)} of {files} files ({human(need)}) from {zpath.name}{what}"


# ----------------------------------------------------------------------------- folders


def import_folder(src: Path, data_dir: Path, into: str | None) -> str:
    src_r = src.resolve()
    dest = data_dir / (into or src_r.name)
    dest_r = dest.resolve()
    if dest_r == src_r:
        return f"{dest}/ is the source itself; nothing to copy"
    if src_r in dest_r.parents:
        raise Refused(f"refusing {src}: the destination {dest} is inside it (the copy would recurse)")
    if dest_r in src_r.parents:
        raise Refused(f"refusing {src}: it is inside the destination {dest}")
    copied = same = skipped = 0
    size = 0
    for root, dirs, files in os.walk(src_r):  # never follows directory symlinks
        rel_root = Path(root).relative_to(src_r)
        for d in list(dirs):
            if (Path(root) / d).is_symlink():
                dirs.remove(d)
                skipped += 1
        (dest / rel_root).mkdir(parents=True, exist_ok=True)
        for name in files:
            s = Path(root) / name
            if not s.is_file():  # broken link, fifo, socket
                skipped += 1
                continue
            t = dest / rel_root / name
            st = s.stat()
            if t.is_file():
                tt = t.stat()
                if tt.st_size == st.st_size and int(tt.st_mtime) == int(st.st_mtime):
                    same += 1
                    continue
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=t.parent)
            os.close(fd)
            try:
                shutil.copy2(s, tmp)
                os.replace(tmp, t)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            copied += 1
            size += st.st_size
    note = f"; skipped {skipped} links or special files" if skipped else ""
    if copied == 0:
        return f"{dest}/ unchanged ({same} files already in place){note}"
    return f"{dest}/: copied {copied} files ({human(size)}), {same} already in place{note}"


# ----------------------------------------------------------------------------- URLs


def download(url: str, data_dir: Path) -> Path:
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "download.zip"
    dest = data_dir / ".downloads" / name
    if dest.is_file():
        print(f"    {url}: already downloaded to {dest} (delete it to download again)", flush=True)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest.parent)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=URL_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else str(exc)
        raise Refused(f"download of {url} failed: {reason}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"    downloaded {url} -> {dest} ({human(dest.stat().st_size)})", flush=True)
    return dest


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="folder, .zip file, or http(s) URL of a .zip")
    ap.add_argument("--data-dir", type=Path, required=True, help="where the data goes")
    ap.add_argument("--into", help="name of the folder to create in the data dir (default: from the source)")
    ap.add_argument("--scenes", default="", help="comma-separated folder names to extract from a zip (default: all)")
    args = ap.parse_args(argv)
    scenes = {s.strip() for s in args.scenes.split(",") if s.strip()}
    if args.into is not None and (not args.into or "/" in args.into or args.into in (".", "..")):
        ap.error(f"--into must be a plain folder name (got {args.into!r})")
    data_dir: Path = args.data_dir
    src = args.source
    try:
        if re.match(r"^https?://", src, re.IGNORECASE):
            path = download(src, data_dir)
            if not zipfile.is_zipfile(path):
                raise Refused(f"{src} is not a .zip (saved as {path}); only folders and .zip files can be imported")
            msg = import_zip(path, data_dir, args.into, scenes)
        elif "://" in src:
            raise Refused(f"{src}: only http:// and https:// URLs are supported")
        else:
            path = Path(src).expanduser()
            if path.is_dir():
                if scenes:
                    raise Refused("--scenes applies to zips only")
                msg = import_folder(path, data_dir, args.into)
            elif path.is_file():
                if not zipfile.is_zipfile(path):
                    raise Refused(f"{path} is neither a folder nor a .zip file")
                msg = import_zip(path, data_dir, args.into, scenes)
            else:
                raise Refused(f"{path}: no such file or folder")
    except Refused as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ERROR: importing {src} failed: {exc}", file=sys.stderr)
        return 1
    print(f"    data: {msg}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
