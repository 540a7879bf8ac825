"""Safe saving of uploaded photos (JPEG/PNG/HEIC files, or zips of them) and videos (MP4/MOV, at most
:data:`Limits.max_videos` of :data:`Limits.max_video_bytes` each) into a run's ``upload/`` folder.

Nothing the user sends is ever used as a path: every saved file gets a sanitised name (ASCII letters,
digits, ``.``, ``_``, ``-``, accents transliterated; no folders; de-duplicated) inside the destination
folder. Zip entries are read as bytes and written under their sanitised base name, so an entry such as
``../../etc/passwd`` or ``/abs/x.jpg`` never lands outside the folder (such entries are skipped and listed).
Zip bombs are bounded: at most :data:`Limits.max_files` images, :data:`Limits.max_image_bytes` per image and
:data:`Limits.max_total_bytes` in all, each checked while decompressing (the sizes a zip header claims are
not trusted), plus a compression-ratio cap. Pixel bombs are refused here from the image header (above
:data:`backend.io.images.MAX_PIXELS`, nothing decoded), and again by the images stage.

Everything that is not saved is returned in ``skipped`` with a reason a user can act on.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO, Iterable, Union

from .limits import MAX_PIXELS, header_problem
from .video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".heic", ".heif"}
# the first box of an MP4 / MOV (ISO base media, QuickTime): what a video's bytes 4-8 say
_VIDEO_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"}
UPLOAD_JSON = "upload.json"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# ISO base media 'ftyp' brands of HEIF still images (HEVC-coded: iPhone, many Android phones)
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_HEAD = 16  # bytes looked at to tell the kind of a file
_CHUNK = 1 << 20
_TYPES = "JPEG, PNG or HEIC"
# letters that NFKD does not decompose into a base letter and combining marks
_TRANSLIT = str.maketrans({"ø": "o", "Ø": "O", "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe",
                           "Œ": "OE", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "Th", "ł": "l",
                           "Ł": "L", "ı": "i", "ħ": "h", "Ħ": "H", "ŋ": "ng", "Ŋ": "Ng"})


@dataclass(frozen=True)
class Limits:
    """Upload limits (bytes). The page states them; ``.streamlit/config.toml`` caps one upload at
    ``server.maxUploadSize`` MB before any of this runs."""

    max_files: int = 500  # images per run
    max_image_bytes: int = 50 * 2**20  # one photo (also one photo inside a zip)
    max_total_bytes: int = 2 * 2**30  # all photos of a run, after unzipping
    max_zip_entries: int = 5000  # entries looked at in one zip
    max_ratio: float = 200.0  # uncompressed / compressed size of one zip entry (JPEG/PNG barely compress)
    max_videos: int = 4  # videos per run (each becomes at most 300 frames: backend/io/video.py)
    max_video_bytes: int = 400 * 2**20  # one video (under the app's 500 MB per upload)

    def describe(self) -> str:
        return (f"{_TYPES} photos (up to {self.max_image_bytes // 2**20} MB and {MAX_PIXELS // 10**6} MP each) or "
                f"zips of them, or up to {self.max_videos} MP4/MOV videos (up to {self.max_video_bytes // 2**20} MB "
                f"each); at most {self.max_files} photos and {self.max_total_bytes / 2**30:g} GB in all")


DEFAULT_LIMITS = Limits()


@dataclass
class UploadResult:
    """``saved``: sanitised file names written into the folder; ``skipped``: ``{"name", "reason"}`` each, with
    the name as the user gave it (for display only); ``renamed``: original -> saved name where they differ;
    ``refused_photos``: of the skipped files named like photos (a JPEG/PNG/HEIC extension; zip members included),
    the sanitised name each would have been saved under (:func:`sanitize_name`, not de-duplicated), in order:
    ``submission.csv`` lists them as unregistered outliers (one row per photo sent)."""

    saved: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    total_bytes: int = 0
    refused_photos: list[str] = field(default_factory=list)

    def enough(self) -> bool:
        """True when a reconstruction can start: two photos or more, or a video (which gives many frames)."""
        videos = sum(1 for n in self.saved if PurePosixPath(n).suffix.lower() in VIDEO_EXTENSIONS)
        return videos > 0 or len(self.saved) >= 2

    def to_dict(self) -> dict:
        return asdict(self)


Source = Union[bytes, bytearray, BinaryIO]


_DRIVE = re.compile(r"^[A-Za-z]:$")


def _is_path(parts: list[str]) -> bool:
    """Whether a name split at ``/`` and ``\\`` reads as a file path (folders, then the file): every folder is
    empty, ``.``, ``..``, a leading drive (``C:``) or a name without ``:``. A URL or a link written into a file name
    (``[a](http://x).png``) is no path."""
    folders = parts[:-1]
    return bool(folders) and all(":" not in p or (i == 0 and _DRIVE.match(p)) for i, p in enumerate(folders))


def sanitize_name(name: str, max_len: int = 100) -> str:
    """A safe file name from an untrusted one. A name that reads as a file path (``../x/IMG 1.jpg``,
    ``C:\\Users\\me\\a.jpg``: :func:`_is_path`) gives its last component, so no client folder (nor its user name)
    reaches a file name; any other ``/`` or ``\\`` is a character like the others below, so that
    ``[link](http://evil.invalid).png`` stays readable as ``link_http_evil.invalid.png``. The name is then
    transliterated to ASCII (NFKD, combining marks dropped, and ``ø``->``o``, ``ß``->``ss``, ``æ``->``ae`` and
    the like: ``ünï cøde (1).JPG`` -> ``uni_code_1.jpg``), other characters than ASCII letters, digits, ``.``,
    ``_``, ``-`` replaced by ``_`` (runs of them by one; so never a separator), runs of dots by one and no leading
    dot (so never ``..``),
    extension lower-cased, at most ``max_len`` characters (the extension is kept), never empty (``image``).
    Uniqueness within a folder is the caller's (:func:`save_uploads` appends ``_1``, ``_2``...)."""
    parts = re.split(r"[\\/]", str(name))
    base = parts[-1] if _is_path(parts) else str(name)
    base = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", base).translate(_TRANSLIT))
    base = "".join(c for c in base if not unicodedata.combining(c))
    base = "".join(c if (c.isascii() and (c.isalnum() or c in "._-")) else "_" for c in base)
    base = re.sub(r"\.{2,}", ".", re.sub(r"_+", "_", base)).lstrip(".")
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    ext = ext[:10].lower()
    stem = stem.strip("_-.") or "image"
    stem = stem[: max(1, max_len - len(ext) - 1)].rstrip(".") or "image"
    return f"{stem}.{ext}" if ext else stem


def _display(name: str) -> str:
    """A user-given name for messages only (never a path): printable, bounded."""
    s = "".join(c if c.isprintable() else "?" for c in str(name))
    return s if len(s) <= 120 else s[:117] + "..."


def _kind(head: bytes) -> str:
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "heif"
    return ""


def _unsafe_member(name: str) -> str:
    """Why a zip member name is refused ('' when fine): absolute paths, drive letters, ``..`` components."""
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute path inside the zip (not extracted)"
    parts = re.split(r"[\\/]", name)
    if any(p == ".." for p in parts):
        return "path with '..' inside the zip (not extracted)"
    return ""


class _Saver:
    def __init__(self, dest: Path, limits: Limits, result: UploadResult, existing: set[str]):
        self.dest = dest
        self.limits = limits
        self.res = result
        self.used = {n.lower() for n in existing}

    def skip(self, name: str, reason: str, photo: str | None = None) -> None:
        """Record a refused file; ``photo``: its own name (a zip member's base name) when it was refused as a
        photo (listed in ``refused_photos`` when the name has a photo's extension; see :class:`UploadResult`)."""
        self.res.skipped.append({"name": _display(name), "reason": reason})
        if photo is not None and PurePosixPath(re.split(r"[\\/]", photo)[-1]).suffix.lower() in IMAGE_EXTENSIONS:
            self.res.refused_photos.append(sanitize_name(photo))

    def _unique(self, name: str) -> str:
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        cand, i = name, 1
        while cand.lower() in self.used:
            cand = f"{stem}_{i}.{ext}" if ext else f"{stem}_{i}"
            i += 1
        self.used.add(cand.lower())
        return cand

    def room(self) -> tuple[bool, str]:
        if len(self.res.saved) >= self.limits.max_files:
            return False, f"more than {self.limits.max_files} photos: the rest were not saved"
        if self.res.total_bytes >= self.limits.max_total_bytes:
            return False, f"the photos exceed {self.limits.max_total_bytes / 2**30:g} GB in all: not saved"
        return True, ""

    def save(self, shown: str, data: bytes) -> None:
        """Save image bytes under a sanitised unique name (after the checks)."""
        ok, why = self.room()
        if not ok:
            self.skip(shown, why, shown)
            return
        ext = PurePosixPath(re.split(r"[\\/]", shown)[-1]).suffix.lower()
        kind = _kind(data[:_HEAD])
        if ext not in IMAGE_EXTENSIONS:
            self.skip(shown, f"unsupported file type '{ext or 'none'}' (use {_TYPES} photos, or a zip of them)")
            return
        if not data:
            self.skip(shown, "empty file (0 bytes)", shown)
            return
        if kind not in ("jpeg", "png", "heif"):
            self.skip(shown, f"not a {_TYPES} image although named '{ext}' (the content does not match)", shown)
            return
        if len(data) > self.limits.max_image_bytes:
            self.skip(shown, f"larger than {self.limits.max_image_bytes // 2**20} MB", shown)
            return
        if self.res.total_bytes + len(data) > self.limits.max_total_bytes:
            self.skip(shown, f"the photos exceed {self.limits.max_total_bytes / 2**30:g} GB in all: not saved", shown)
            return
        too_big = header_problem(data)  # pixel count from the header only
        if too_big:
            self.skip(shown, too_big, shown)
            return
        name = self._unique(sanitize_name(shown))
        if not name.lower().endswith(tuple(IMAGE_EXTENSIONS)):
            new_ext = {"png": "png", "heif": "heic"}.get(kind, "jpg")
            name = self._unique(f"{PurePosixPath(name).stem}.{new_ext}")
        target = self.dest / name
        # defence in depth: the name has no separators, but check the resolved parent anyway
        if target.resolve().parent != self.dest.resolve():
            self.skip(shown, "unsafe file name", shown)
            return
        target.write_bytes(data)
        self.res.saved.append(name)
        self.res.total_bytes += len(data)
        short = re.split(r"[\\/]", shown)[-1]
        if name != short:
            self.res.renamed[_display(shown)] = name

    def save_video(self, shown: str, src: "Source") -> None:
        """Save a video (MP4/MOV, checked by its first box) in chunks, at most ``max_video_bytes``; the images
        stage turns it into frames (:mod:`backend.io.video`)."""
        if sum(1 for n in self.res.saved if PurePosixPath(n).suffix.lower() in VIDEO_EXTENSIONS) \
                >= self.limits.max_videos:
            self.skip(shown, f"more than {self.limits.max_videos} videos: the rest were not saved")
            return
        fileobj = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray)) else src
        try:
            fileobj.seek(0)
        except (OSError, ValueError, AttributeError):
            pass
        head = fileobj.read(_HEAD)
        if head[4:8] not in _VIDEO_BOXES:
            self.skip(shown, "not an MP4 or MOV video although named so (the content does not match)")
            return
        name = self._unique(sanitize_name(shown))
        target = self.dest / name
        if target.resolve().parent != self.dest.resolve():
            self.skip(shown, "unsafe file name")
            return
        size, cap = len(head), self.limits.max_video_bytes
        room = self.limits.max_total_bytes - self.res.total_bytes
        with open(target, "wb") as f:
            f.write(head)
            while size <= min(cap, room):
                chunk = fileobj.read(_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                size += len(chunk)
        if size > min(cap, room):
            target.unlink()
            self.used.discard(name.lower())
            self.skip(shown, f"larger than {cap // 2**20} MB" if size > cap else
                      f"the uploads exceed {self.limits.max_total_bytes / 2**30:g} GB in all: not saved")
            return
        self.res.saved.append(name)
        self.res.total_bytes += size
        short = re.split(r"[\\/]", shown)[-1]
        if name != short:
            self.res.renamed[_display(shown)] = name

    def save_zip(self, shown: str, fileobj: BinaryIO) -> None:
        try:
            zf = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            self.skip(shown, f"not a readable zip file ({e})")
            return
        with zf:
            infos = zf.infolist()
            if len(infos) > self.limits.max_zip_entries:
                self.skip(shown, f"zip with {len(infos)} entries: only the first {self.limits.max_zip_entries} "
                                 "were looked at")
                infos = infos[: self.limits.max_zip_entries]
            for info in infos:
                member = info.filename
                label = f"{_display(shown)}: {_display(member)}"
                if info.is_dir():
                    continue
                base = re.split(r"[\\/]", member)[-1]
                if member.startswith("__MACOSX/") or base.startswith("."):
                    self.skip(label, "hidden or system metadata file")
                    continue
                why = _unsafe_member(member)
                if why:
                    self.skip(label, why)
                    continue
                if info.flag_bits & 0x1:
                    self.skip(label, "encrypted zip entry (zip without a password)", base)
                    continue
                ext = PurePosixPath(base).suffix.lower()
                if ext == ".zip":
                    self.skip(label, "zip inside a zip (upload it separately)")
                    continue
                if ext not in IMAGE_EXTENSIONS:
                    self.skip(label, f"unsupported file type '{ext or 'none'}' (use {_TYPES})")
                    continue
                ok, why = self.room()
                if not ok:
                    self.skip(label, why, base)
                    continue
                if info.file_size > self.limits.max_image_bytes:
                    self.skip(label, f"larger than {self.limits.max_image_bytes // 2**20} MB", base)
                    continue
                if info.compress_size and info.file_size / max(info.compress_size, 1) > self.limits.max_ratio:
                    self.skip(label, "suspicious compression ratio (possible zip bomb): not extracted", base)
                    continue
                data = self._read_bounded(zf, info)
                if data is None:
                    self.skip(label, f"larger than {self.limits.max_image_bytes // 2**20} MB when decompressed "
                                     "(the zip header understated it)", base)
                    continue
                if isinstance(data, str):
                    self.skip(label, data, base)
                    continue
                self._save_member(label, base, data)

    def _save_member(self, label: str, base: str, data: bytes) -> None:
        before = len(self.res.skipped)
        self.save(base, data)
        # report the zip-qualified name in a skip reason
        if len(self.res.skipped) > before:
            self.res.skipped[-1]["name"] = label

    def _read_bounded(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
        """The member's bytes, reading at most ``max_image_bytes`` (+1 to detect more); None when larger;
        a string (the reason) when unreadable."""
        cap = self.limits.max_image_bytes
        buf = io.BytesIO()
        try:
            with zf.open(info) as f:
                while True:
                    chunk = f.read(min(_CHUNK, cap + 1 - buf.tell()))
                    if not chunk:
                        break
                    buf.write(chunk)
                    if buf.tell() > cap:
                        return None
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as e:
            return f"cannot be read from the zip ({e})"
        return buf.getvalue()


def _read_all(src: Source, cap: int) -> bytes | None:
    """Bytes of an upload, or None when longer than ``cap``."""
    if isinstance(src, (bytes, bytearray)):
        return bytes(src) if len(src) <= cap else None
    if hasattr(src, "seek"):
        try:
            src.seek(0)
        except (OSError, ValueError):
            pass
    data = src.read(cap + 1)
    return None if len(data) > cap else data


def save_uploads(files: Iterable[tuple[str, Source]], dest: Path, limits: Limits = DEFAULT_LIMITS) -> UploadResult:
    """Save uploaded photos and zips of photos into ``dest`` (created).

    Args:
        files: ``(name as the user gave it, bytes or a binary file object)`` per upload; the name is used only
            to pick the kind (by extension and content) and, sanitised, as the saved file's name.
        dest: destination folder (e.g. ``<run>/upload``).
        limits: see :class:`Limits`.

    Returns:
        :class:`UploadResult`; also written to ``dest/../upload.json`` for the Images page.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    res = UploadResult()
    saver = _Saver(dest, limits, res, {p.name for p in dest.iterdir()})
    for shown, src in files:
        shown = str(shown)
        ext = PurePosixPath(re.split(r"[\\/]", shown)[-1]).suffix.lower()
        if isinstance(src, (bytes, bytearray)):
            head = bytes(src[:_HEAD])
        else:
            try:
                src.seek(0)
                head = src.read(_HEAD)
                src.seek(0)
            except (OSError, ValueError, AttributeError):
                head = b""
        if ext == ".zip" or _kind(head) == "zip" and ext not in IMAGE_EXTENSIONS:
            fileobj = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray)) else src
            saver.save_zip(shown, fileobj)
            continue
        if ext in VIDEO_EXTENSIONS:
            saver.save_video(shown, src)
            continue
        data = _read_all(src, limits.max_image_bytes)
        if data is None:
            if ext in IMAGE_EXTENSIONS:
                saver.skip(shown, f"larger than {limits.max_image_bytes // 2**20} MB", shown)
            else:
                saver.skip(shown, f"unsupported file type '{ext or 'none'}' (use {_TYPES} photos, or a zip of them)")
            continue
        saver.save(shown, data)
    write_upload_json(dest.parent, res)
    return res


def write_upload_json(run_dir: Path, res: UploadResult) -> None:
    (Path(run_dir) / UPLOAD_JSON).write_text(json.dumps(res.to_dict(), indent=1))


def read_upload_json(run_dir: Path) -> dict:
    """``upload.json`` of a run ({} when the run did not come from an upload)."""
    p = Path(run_dir) / UPLOAD_JSON
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
