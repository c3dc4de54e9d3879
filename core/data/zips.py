"""Uploaded zips, extracted safely: path traversal, links, bombs and oversized archives are refused
before anything is written, and a refused upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

from core.data.dataset import DatasetError
from core.data.folders import (
    IGNORED_NAMES,
    MAX_PATH_DEPTH,
    find_root,
    index_path,
    load_folder,
)
from core.data.images import MAX_IMAGE_BYTES

MAX_ZIP_ENTRIES = 100_000
MAX_ZIP_TOTAL_BYTES = 4 * 1024**3  # uncompressed, all entries together
MAX_ZIP_ENTRY_BYTES = MAX_IMAGE_BYTES  # uncompressed, one entry
MAX_ZIP_RATIO = 100  # uncompressed / compressed, per entry ...
ZIP_RATIO_MIN_BYTES = 1024**2  # ... checked once an entry is larger than this (tiny files compress oddly);
# the same ratio bounds the whole archive: everything unpacked against the zip's own size

# --- zips ------------------------------------------------------------------------------------------


def _safe_parts(name: str) -> list[str] | None:
    """The path components of a zip entry, or None when it would leave the target folder."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts


def _skip_entry(parts: list[str]) -> bool:
    """Entries we do not extract: macOS resource forks, hidden files, desktop junk."""
    return any(p.startswith(".") or p in IGNORED_NAMES for p in parts)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "-", name).strip("-")[:40] or "dataset"


def import_zip(source: Path | str | bytes, data_dir: Path, *, name: str | None = None) -> Path:
    """Extract an uploaded zip safely to data_dir/"uploads"/<name>-<hash> and return the dataset root.

    Checks everything before anything becomes visible: path traversal
    (``..``, absolute names), symlink and other non-regular entries, encrypted
    entries, the number of entries, the total uncompressed size, and each
    entry's compression ratio while streaming it with a hard byte cap (header
    sizes can lie). It extracts into a temporary folder inside `data_dir`,
    requires at least two class folders with images, then renames it into
    place: a rejected zip writes nothing outside `data_dir` and changes no
    earlier dataset. The same zip imported twice returns the same folder. If
    the zip has a single top-level folder, that folder is the root.
    """
    data_dir = Path(data_dir)
    if isinstance(source, (bytes, bytearray, memoryview)):
        blob = io.BytesIO(bytes(source))
        digest = hashlib.sha256(blob.getbuffer()).hexdigest()[:10]
        stem = name or "upload"
    else:
        path = Path(source)
        try:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()[:10]
        except OSError as exc:
            raise DatasetError(f"Cannot read {path.name}: {exc.strerror or exc}") from None
        blob = path
        stem = name or path.stem
    stem = _slug(Path(stem).stem if stem.lower().endswith(".zip") else stem)
    uploads = data_dir / "uploads"
    dest = uploads / f"{stem}-{digest}"
    if dest.is_dir():
        return find_root(dest)
    archive_bytes = _check_entry_count(blob)
    try:
        zf = zipfile.ZipFile(blob)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise DatasetError("This is not a zip file (or it is damaged). Upload a .zip of class folders.") from None
    uploads.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=uploads))
    tmp_index = None
    try:
        with zf:
            _extract_checked(zf, tmp, archive_bytes)
        # The whole dataset is checked before it becomes visible: a zip that unpacks but holds no
        # usable dataset leaves nothing behind. Its image index moves with it (same relative names).
        tmp_root = find_root(tmp)
        tmp_index = index_path(tmp_root, data_dir)
        load_folder(tmp_root, ref=str(tmp_root), data_dir=data_dir, shown_as="the zip")
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not merely the same upload finishing first in another session
                raise
        try:
            os.replace(tmp_index, index_path(dest / tmp_root.relative_to(tmp), data_dir))
        except OSError:
            pass  # only costs a second check of the images
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp_index is not None:
            tmp_index.unlink(missing_ok=True)
    return find_root(dest)


def _check_entry_count(blob: Path | io.BytesIO) -> int:
    """Refuse a zip that declares more than `MAX_ZIP_ENTRIES` entries, from its end-of-central-directory
    record alone, before `zipfile` parses (and keeps in memory) the whole central directory.
    Returns the archive's size in bytes."""
    try:
        f = blob.open("rb") if isinstance(blob, Path) else blob
        try:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (1 << 16) - 22))
            tail = f.read()
            at = tail.rfind(b"PK\x05\x06")
            count = struct.unpack_from("<H", tail, at + 10)[0] if at >= 0 and len(tail) >= at + 22 else 0
            locator = tail.rfind(b"PK\x06\x07", 0, max(at, 0))
            if count == 0xFFFF and locator >= 0:  # zip64: the count is in the zip64 record
                f.seek(struct.unpack_from("<Q", tail, locator + 8)[0])
                record = f.read(56)
                if record[:4] == b"PK\x06\x06" and len(record) == 56:
                    count = struct.unpack_from("<Q", record, 32)[0]
        finally:
            f.seek(0)
            if isinstance(blob, Path):
                f.close()
    except (OSError, struct.error, ValueError):
        raise DatasetError("This is not a zip file (or it is damaged). Upload a .zip of class folders.") from None
    if count > MAX_ZIP_ENTRIES:
        raise DatasetError(f"The zip has {count:,} entries; the limit is {MAX_ZIP_ENTRIES:,}.")
    return size


def _extract_checked(zf: zipfile.ZipFile, target: Path, archive_bytes: int) -> None:
    """Extract every acceptable entry of `zf` under `target`, enforcing the zip limits, or raise `DatasetError`.

    Expansion is bounded per entry (`MAX_ZIP_ENTRY_BYTES`, `MAX_ZIP_RATIO` against its compressed
    size) and for the whole archive (`MAX_ZIP_TOTAL_BYTES`, `MAX_ZIP_RATIO` against
    `archive_bytes`, the zip's real size: many small entries of zeros stay under the per-entry check).
    """
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise DatasetError(f"The zip has {len(infos):,} entries; the limit is {MAX_ZIP_ENTRIES:,}.")
    declared = sum(i.file_size for i in infos)
    if declared > MAX_ZIP_TOTAL_BYTES:
        raise DatasetError(
            f"The zip would unpack to {declared / 1024**3:.1f} GB; the limit is {MAX_ZIP_TOTAL_BYTES / 1024**3:.0f} GB."
        )
    for info in infos:  # check every name before writing anything
        if _safe_parts(info.filename) is None:
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} points outside the dataset folder.")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} is a symbolic link.")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded (most zip tools)
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} is not a regular file.")
        if info.flag_bits & 0x1:
            raise DatasetError("The zip is password-protected; upload an unencrypted zip.")
        if len(_safe_parts(info.filename)) > MAX_PATH_DEPTH + 1:
            raise DatasetError(
                f"Rejected: the zip entry {info.filename[:80]!r}… nests folders more than {MAX_PATH_DEPTH} levels deep."
            )
    total = 0
    for info in infos:
        parts = _safe_parts(info.filename)
        if not parts or info.is_dir() or _skip_entry(parts):
            continue
        out = target.joinpath(*parts)
        if not out.resolve().is_relative_to(target.resolve()):
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} points outside the dataset folder.")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # an earlier entry is a file where this one needs a folder
            raise DatasetError(f"Rejected: the zip entry {info.filename!r} lies under a name that is also a file in the zip.") from None
        except OSError as exc:  # e.g. a folder name too long for this file system
            raise DatasetError(f"Could not extract {info.filename} from the zip: {exc.strerror or exc}.") from None
        written = 0
        try:
            with zf.open(info) as src, open(out, "xb") as dst:
                while chunk := src.read(1024 * 1024):
                    written += len(chunk)
                    total += len(chunk)
                    if written > MAX_ZIP_ENTRY_BYTES:
                        raise DatasetError(
                            f"Rejected: {info.filename!r} unpacks to more than {MAX_ZIP_ENTRY_BYTES // 1024**2} MB."
                        )
                    if written > ZIP_RATIO_MIN_BYTES and written > MAX_ZIP_RATIO * max(info.compress_size, 1):
                        raise DatasetError(
                            f"Rejected: {info.filename!r} is compressed more than {MAX_ZIP_RATIO}:1 "
                            "(a possible zip bomb)."
                        )
                    if total > MAX_ZIP_TOTAL_BYTES:
                        raise DatasetError(
                            f"Rejected: the zip unpacks to more than {MAX_ZIP_TOTAL_BYTES / 1024**3:.0f} GB."
                        )
                    dst.write(chunk)
        except FileExistsError:
            raise DatasetError(f"Rejected: the zip holds {info.filename!r} twice.") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError,
                zlib.error, lzma.LZMAError) as exc:  # zlib/lzma: a corrupt compressed stream
            raise DatasetError(f"The zip is damaged or uses an unsupported feature ({info.filename}: {exc}).") from None
        except OSError as exc:  # a corrupt bzip2 stream ("Invalid data stream"), or the disk is full
            raise DatasetError(f"Could not extract {info.filename} from the zip: {exc.strerror or exc}.") from None
        # Checked per entry, after each one's own limits: it overshoots by one entry at most.
        if total > ZIP_RATIO_MIN_BYTES and total > MAX_ZIP_RATIO * archive_bytes:
            raise DatasetError(
                f"Rejected: the zip ({archive_bytes / 1024:,.0f} KB) unpacks to more than {MAX_ZIP_RATIO} "
                "times its size (a possible zip bomb)."
            )
