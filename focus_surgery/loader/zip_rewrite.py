"""A converted zip checkpoint written by copying what the conversion did not change.

A stem conversion changes one storage of hundreds. ``write_copying`` writes the output archive from the input's:

* ``data.pkl`` is pickled again (``pickler.dumps``, the loader's faithful writer), each storage the content still
  holds unchanged (the very storage the loader read, ``LoadStats.keys``) under its ORIGINAL key;
* each storage the conversion made is a new record (a key the input does not use);
* each kept storage is written from the bytes the content holds (in the mmap modes the input's own mapping, never a
  copy) through a small buffer, its CRC-32 computed as it streams: equal to its record's as read, it is that record's
  copy; else it was changed in place since the read and is written as it is now (its header's CRC-32 set right) once
  the input's record is checked, and a file that is corrupt, or changed since the read under an mmap read, refuses
  the write; where the file was replaced or written since the read, every kept record of it is checked too; a kept
  storage that is the input's own mapped record, none of its pages written since (``private_pages_reader``), is read
  from the file instead (the same bytes), so the mapping's pages never become resident: memory stays the pickle,
  the new storages and the buffer;
* every other record (``version``, ``byteorder``, ``.data/serialization_id``, ...) is copied byte for byte from the
  input through the same buffer, its CRC-32 computed as it streams and checked against the input's (a mismatch, or a
  CRC-32 other than the read's, refuses the whole write: nothing is put in place); a storage record the conversion
  replaced is checked the same way (read, not copied), so every record of the input is checked whatever the
  loader's mode;
* each record's data starts on a 64-byte boundary as ``torch.save`` aligns it (a ``FB`` padding field), so the
  output memory-maps (``torch.load(mmap=True)``, loader mode ``mmap``); zip64 fields where sizes need them.

Where it does not apply it returns None and the caller writes with ``torch.save`` (``checkpoint_io.torch_save``):
an input that is not a zip checkpoint read by the loader, deflated storage records, a storage record its pickle
does not use (torch.save drops it), a storage not on the CPU, a kept storage pickled with another dtype than it was
read with, or a conversion that made more new storage bytes than it kept (then nothing is gained). ``recording()``
collects what each write did (``Outcome``); ``check_copied`` is the proof's read-back: every copied record of the
written file identical to the input's.
"""

from __future__ import annotations

import contextlib
import contextvars
import mmap
import os
import stat
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy
import torch

from .containers import RECORD_ALIGNMENT, check_records, file_identity
from .crc import crc32
from .errors import CheckpointError
from .pickler import dumps

__all__ = ["Outcome", "check_copied", "copied_views", "recording", "write_copying"]

# one reused buffer: copying a record never holds more of it than this. Also the most one write() is given: on this
# project's ext4 machine, 333 MB written in 2-4 MiB calls took 0.09-1.3 s from run to run, in 1 MiB calls 0.08-0.10 s
COPY_BUFFER_BYTES = 1 << 20
ZIP64_LIMIT = 0xFFFFFFFF  # sizes / offsets from here on need zip64 fields (a module value: tests lower it)
_FLAGS = 0x0800  # UTF-8 names, as torch writes them; sizes and CRC-32 in the local header (no data descriptor)
_RECORDING: contextvars.ContextVar[tuple] = contextvars.ContextVar("focus_surgery_zip_copy", default=())  # open blocks


@dataclass
class Outcome:
    """What one ``write_copying`` did (counts, for the report, the proof and the memory tests).

    Attributes:
        src (str), dst (str): The input and the file written (the temporary of an atomic write).
        records_copied (int), bytes_copied (int): Records copied byte for byte from the input (their data bytes).
        storages_written (int), bytes_written (int): New storage records (the storages the conversion changed).
        pickle_bytes (int): The new ``data.pkl``.
        buffer_bytes (int): The copy buffer (the most of any copied record ever held in memory at once).
        bytes_from_file (int): Kept storages' bytes read from the input file rather than from the content's memory
            (views of the input's mapping that no write reached: their pages never become resident).
        copied_keys (set[str]): The storage keys whose records were copied byte for byte (``copied_views``).
        source_identity (tuple): The input's identity (``LoadStats.identity``) when the write found it as the
            content's read did, else ``()``: a read with this identity holds the very bytes that were copied.
        copied (dict[str, tuple[int, int]]): Each copied record's name -> (CRC-32, size), as in the input.
    """

    src: str
    dst: str
    records_copied: int = 0
    bytes_copied: int = 0
    storages_written: int = 0
    bytes_written: int = 0
    pickle_bytes: int = 0
    buffer_bytes: int = 0
    bytes_from_file: int = 0
    copied: dict = field(default_factory=dict, repr=False)
    copied_keys: set = field(default_factory=set, repr=False)
    source_identity: tuple = ()

    def to_dict(self) -> dict[str, Any]:
        """The report's ``write`` field."""
        keys = ("records_copied", "bytes_copied", "storages_written", "bytes_written", "pickle_bytes")
        return {"path": "zip-copy", **{k: getattr(self, k) for k in keys}}


@contextlib.contextmanager
def recording() -> Iterator[list[Outcome]]:
    """Within this block, each ``write_copying`` that wrote appends its ``Outcome`` to the yielded list (and to those
    of the blocks around it)."""
    outcomes: list[Outcome] = []
    token = _RECORDING.set((*_RECORDING.get(), outcomes))
    try:
        yield outcomes
    finally:
        _RECORDING.reset(token)


class _NotApplicable(Exception):
    """The archive cannot be copied record by record: write it with ``torch.save`` instead."""


def _pickled(content: Any, like: Any) -> tuple[bytes, dict[str, str], dict[str, torch.UntypedStorage]]:
    """(the new pickle, {kept original key: its key}, {new key: new storage}): storages the loader read keep their
    record key; every other storage gets a key the input does not use, in the order the pickle meets them."""
    from torch.serialization import location_tag, normalize_storage_type

    read = like.stats.keys  # _cdata -> (key, storage, dtype)
    taken = {key for key, _, _ in read.values()}
    numbers = [int(k) for k in taken if k.isdigit()]
    next_key = [max(numbers, default=-1) + 1]
    kept: dict[str, str] = {}
    new: dict[str, torch.UntypedStorage] = {}
    ids: dict[int, str] = {}
    dtypes: dict[int, torch.dtype] = {}

    def persistent_id(obj: Any) -> Any:
        if not (isinstance(obj, torch.storage.TypedStorage) or torch.is_storage(obj)):
            return None
        if isinstance(obj, torch.storage.TypedStorage):
            storage, dtype = obj._untyped_storage, obj.dtype
            storage_type, numel = getattr(torch, obj._pickle_storage_type()), obj._size()
        else:
            storage, dtype = obj, torch.uint8
            storage_type, numel = normalize_storage_type(type(obj)), obj.nbytes()
        if storage.device.type != "cpu":
            raise _NotApplicable("a storage not on the CPU")
        if storage.data_ptr() != 0 and dtypes.setdefault(storage.data_ptr(), dtype) != dtype:
            raise _NotApplicable("one storage pickled with two dtypes")  # torch.save refuses it with its own error
        key = ids.get(storage._cdata)
        if key is None:
            original = read.get(storage._cdata)
            if original is not None:
                if original[2] != dtype:
                    raise _NotApplicable(f"storage {original[0]} kept with another dtype than it was read with")
                key = kept[original[0]] = original[0]
            else:
                while str(next_key[0]) in taken:
                    next_key[0] += 1
                key = str(next_key[0])
                taken.add(key)
                new[key] = storage
            ids[storage._cdata] = key
        return ("storage", storage_type, key, location_tag(storage), numel)

    data = dumps(content, persistent_id, like.protocol, like.globals)
    return data, kept, new


def _local_header(name: bytes, offset: int, crc: int, size: int) -> bytes:
    """A local header whose data starts on a ``RECORD_ALIGNMENT`` boundary (torch's ``FB`` padding field)."""
    zip64 = size >= ZIP64_LIMIT
    extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
    used = offset + 30 + len(name) + len(extra) + 4
    extra += struct.pack("<HH", 0x4246, (-used) % RECORD_ALIGNMENT) + b"Z" * ((-used) % RECORD_ALIGNMENT)
    shown = 0xFFFFFFFF if zip64 else size
    head = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 0, _FLAGS, 0, 0, 0, crc, shown, shown, len(name), len(extra)
    )
    return head + name + extra


def _central(entries: list[tuple[bytes, int, int, int]], start: int) -> bytes:
    """The central directory of ``entries`` (name, header offset, CRC-32, size) and its end records (zip64 where
    the counts, sizes or offsets need it), starting at file offset ``start``."""
    parts = []
    for name, offset, crc, size in entries:
        big = [v for v in (size, size, offset) if v >= ZIP64_LIMIT]
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if size >= ZIP64_LIMIT else (size, size)
        where = 0xFFFFFFFF if offset >= ZIP64_LIMIT else offset
        fields = ([size, size] if size >= ZIP64_LIMIT else []) + ([offset] if offset >= ZIP64_LIMIT else [])
        extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if big else b""
        version = 45 if big else 0
        parts.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                version,
                version,
                _FLAGS,
                0,
                0,
                0,
                crc,
                *sizes,
                len(name),
                len(extra),
                0,
                0,
                0,
                0,
                where,
            )
            + name
            + extra
        )
    directory = b"".join(parts)
    count, size = len(entries), len(directory)
    end = b""
    if count >= 0xFFFF or size >= ZIP64_LIMIT or start >= ZIP64_LIMIT:
        at = start + size
        end += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, size, start)
        end += struct.pack("<IIQI", 0x07064B50, 0, at, 1)
    end += struct.pack(
        "<IHHHHIIH",
        0x06054B50,
        0,
        0,
        min(count, 0xFFFF),
        min(count, 0xFFFF),
        min(size, 0xFFFFFFFF),
        min(start, 0xFFFFFFFF),
        0,
    )
    return directory + end


def _input_records(path: Path, handle: Any) -> tuple[list[zipfile.ZipInfo], dict[str, int]]:
    """The input's records and their data offsets, checked as the loader checks them (every size inside the file,
    no overlap, no two of one name), read again: the file is what is copied now, not what was loaded."""
    size = os.fstat(handle.fileno()).st_size
    try:
        with zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise CheckpointError(f"{path}: not a zip archive any more ({error}); convert it again") from None
    if not infos:
        raise CheckpointError(f"{path}: empty zip archive, not a torch checkpoint")
    twice = next((n for n, c in Counter(i.filename for i in infos).items() if c > 1), None)
    if twice is not None:
        raise CheckpointError(f"{path}: zip archive holds two records named {twice!r}; not a torch checkpoint")
    prefix = infos[0].filename.split("/")[0] + "/" if "/" in infos[0].filename else ""  # the archive torch reads
    return infos, check_records(path, handle, infos, size, prefix + "data.pkl")


def _storage_bytes(storage: torch.UntypedStorage) -> memoryview:
    """A new storage's bytes, without a copy (the only place the writer reads a storage's memory)."""
    if storage.nbytes() == 0:
        return memoryview(b"")
    return memoryview(torch.empty((0,), dtype=torch.uint8).set_(storage).numpy()).cast("B")


def write_copying(content: Any, dst: str | os.PathLike, like: Any) -> Outcome | None:
    """Write ``content`` to ``dst`` as a zip checkpoint, copying the input's records it still holds unchanged.

    Args:
        content: What to write (the converted content; its unchanged storages are those the loader read).
        dst: The file to write (an atomic write's temporary: on an error the caller removes it).
        like: The input as read (``loader.Loaded`` of a zip file, with ``stats.keys``).

    Returns:
        (Outcome | None): What was written; None where the archive cannot be copied record by record (nothing
            written: write it with ``torch.save``).

    Raises:
        CheckpointError: The input is corrupt (a copied record fails its CRC-32, a record outside the file,
            overlapping or duplicate records, a storage record the pickle does not use that appeared since the read)
            or changed since it was read.
    """
    stats = getattr(like, "stats", None)
    if getattr(like, "container", None) != "zip" or stats is None or not stats.keys:
        return None
    src = Path(like.path)
    try:
        data, kept, new = _pickled(content, like)
    except _NotApplicable:
        return None
    new_bytes = sum(s.nbytes() for s in new.values())
    kept_bytes = sum(s.nbytes() for k, s, _ in stats.keys.values() if k in kept)
    if not kept or new_bytes > kept_bytes:  # a conversion that changed most of the file: nothing to gain
        return None
    with _open_regular(src) as source:
        infos, offsets = _input_records(src, source)
        prefix = infos[0].filename.split("/")[0] + "/" if "/" in infos[0].filename else ""
        now = {i.filename for i in infos}
        gone = next((n for n in stats.records if n not in now), None)
        if gone is not None:  # e.g. its version record: the archive written would not load
            raise CheckpointError(f"{src}: changed since it was read (record {gone!r} gone); convert it again")
        used = {key for key, _, _ in stats.keys.values()}
        storages = {i.filename[len(prefix) + 5 :]: i for i in infos if i.filename.startswith(prefix + "data/")}
        stray = next((k for k in storages if k not in used), None)
        if stray is not None and f"{prefix}data/{stray}" in stats.records:
            return None  # there when it was read (torch.load reads it too): torch.save writes without it, as before
        if stray is not None:
            raise CheckpointError(
                f"{src}: zip record {prefix}data/{stray} is not a storage of its pickle; re-save it with torch.save"
            )
        sizes = {k: s.nbytes() for k, s, _ in stats.keys.values()}  # by key: one pass, not one per kept storage
        for key in kept:
            info = storages.get(key)
            if info is None or info.file_size != sizes[key]:
                raise CheckpointError(f"{src}: changed since it was read (storage {key}); convert it again")
            if info.compress_type != zipfile.ZIP_STORED:
                return None  # torch never deflates; such an archive is written by torch.save
        outcome = Outcome(str(src), str(dst), buffer_bytes=COPY_BUFFER_BYTES, pickle_bytes=len(data))
        with _open_empty(dst) as out:
            entries: list[tuple[bytes, int, int, int]] = []

            def record(name: str, payload: memoryview | bytes) -> None:
                encoded, crc = name.encode("utf-8"), crc32(payload)
                entries.append((encoded, out.tell(), crc, len(payload)))
                out.write(_local_header(encoded, out.tell(), crc, len(payload)))
                _write(out, payload)

            def copy(info: zipfile.ZipInfo) -> None:
                encoded = info.filename.encode("utf-8")
                entries.append((encoded, out.tell(), info.CRC, info.file_size))
                out.write(_local_header(encoded, out.tell(), info.CRC, info.file_size))
                crc = _stream(source.fileno(), offsets[info.filename], info.file_size, out, buffer)
                if crc != info.CRC:
                    raise CheckpointError(
                        f"{src}: record {info.filename!r} fails its CRC-32 check; the file is corrupt"
                    )
                copied(info, storage=False)

            def copied(info: zipfile.ZipInfo, storage: bool) -> None:  # a record copied byte for byte, CRC checked
                outcome.records_copied += 1
                outcome.bytes_copied += info.file_size
                outcome.copied[info.filename] = (info.CRC, info.file_size)
                if storage:
                    outcome.copied_keys.add(info.filename[len(prefix) + 5 :])

            def _check_input(info: zipfile.ZipInfo) -> None:
                if _stream(source.fileno(), offsets[info.filename], info.file_size, _Discard(), buffer) != info.CRC:
                    raise CheckpointError(
                        f"{src}: record {info.filename!r} fails its CRC-32 check; the file is corrupt"
                    )

            def copy_kept(info: zipfile.ZipInfo, storage: torch.UntypedStorage) -> None:
                # the storage's bytes as the content holds them (in the mmap modes the input's own mapped bytes),
                # CRC-32 checked as they stream: equal to the record as read, they are its copy; else the storage was
                # changed in place since the read (written so, the header's CRC-32 set right) or the file was
                encoded, at = info.filename.encode("utf-8"), out.tell()
                entries.append((encoded, at, info.CRC, info.file_size))
                out.write(_local_header(encoded, at, info.CRC, info.file_size))
                offset = offsets[info.filename]
                if (
                    not changed
                    and info.CRC == read_crc(info)
                    and stats.mapped_at
                    and storage.data_ptr() == stats.mapped_at + offset
                    and pages_unwritten is not None
                    and pages_unwritten(storage.data_ptr(), info.file_size)
                ):  # the file's own bytes, never written in memory: read from the file, they never become resident
                    if _stream(source.fileno(), offset, info.file_size, out, buffer) != info.CRC:
                        raise CheckpointError(
                            f"{src}: record {info.filename!r} fails its CRC-32 check; the file is corrupt"
                        )
                    outcome.bytes_from_file += info.file_size
                    return copied(info, storage=True)
                mapped_from = storage.data_ptr() - stats.mapped_at  # its file offset, if a view of the mapping
                in_mapping = 0 <= mapped_from <= stats.identity[2] - info.file_size if follows else False
                if in_mapping and (changed or mapped_from != offset):
                    # pages of the same file's private mapping that no write reached show the file as it is now:
                    # rewritten where it lies (or moved) since the read, memory is part its new bytes, or past its
                    # new end (a read there is a SIGBUS); an edit in memory is dropped where the file was truncated
                    raise CheckpointError(
                        f"{src}: changed since it was read (the very file the read mapped; record {info.filename!r}); "
                        "convert it again"
                    )
                view, crc = _memory_view(storage), 0
                for start in range(0, len(view), COPY_BUFFER_BYTES):
                    chunk = view[start : start + COPY_BUFFER_BYTES]
                    crc = crc32(chunk, crc)
                    out.write(chunk)
                if crc != info.CRC or info.CRC != read_crc(info) or changed:  # the file too, then
                    if info.CRC != read_crc(info) and crc != read_crc(info):  # memory follows the file (mmap)
                        raise CheckpointError(
                            f"{src}: changed since it was read (record {info.filename!r}); convert it again"
                        )
                    _check_input(info)  # memory read from a corrupt file (mode mmap-nocrc) is refused as corrupt
                if crc == info.CRC == read_crc(info):
                    return copied(info, storage=True)
                end = out.tell()
                out.seek(at + 14)  # the local header's CRC-32 field
                out.write(struct.pack("<I", crc))
                out.seek(end)
                entries[-1] = (encoded, at, crc, info.file_size)
                outcome.storages_written += 1
                outcome.bytes_written += info.file_size

            buffer = memoryview(bytearray(COPY_BUFFER_BYTES))
            pages_unwritten = private_pages_reader(buffer, source.fileno()) if stats.mapped_at else None
            held = {k: s for k, s, _ in stats.keys.values() if k in kept}
            now = file_identity(os.fstat(source.fileno()))
            changed = bool(stats.identity) and now != stats.identity
            follows = bool(stats.mapped_at and stats.identity) and now[:2] == stats.identity[:2]  # the file mapped
            outcome.source_identity = () if changed else stats.identity

            def read_crc(info: zipfile.ZipInfo) -> int:  # the record's CRC-32 when the loader read it
                return stats.records.get(info.filename, info.CRC)

            last_storage = max((n for n, i in enumerate(infos) if i.filename.startswith(prefix + "data/")), default=0)
            for n, info in enumerate(infos):
                name = info.filename[len(prefix) :]
                if name == "data.pkl":
                    record(info.filename, data)
                elif not name.startswith("data/"):
                    if stats.records and stats.records.get(info.filename) != info.CRC:  # e.g. byteorder, since the read
                        raise CheckpointError(f"{src}: changed since it was read (record {name}); convert it again")
                    copy(info)
                elif name[5:] in kept:
                    copy_kept(info, held[name[5:]])
                else:  # a record the conversion replaced (the old stem): checked too, so no corrupt input converts
                    _check_input(info)
                if n == last_storage:  # the new storages where torch puts storages: after the others
                    for key, storage in new.items():
                        record(f"{prefix}data/{key}", _storage_bytes(storage))
                        outcome.storages_written += 1
                        outcome.bytes_written += storage.nbytes()
            _write(out, _central(entries, out.tell()))
    for found in _RECORDING.get():
        found.append(outcome)
    return outcome


def _write(out: Any, payload: memoryview | bytes) -> None:
    """``payload`` written in calls of at most ``COPY_BUFFER_BYTES``."""
    view = memoryview(payload)
    for start in range(0, len(view), COPY_BUFFER_BYTES):
        out.write(view[start : start + COPY_BUFFER_BYTES])


def _open_regular(path: Path) -> Any:
    """``path`` opened to read, refused unless a regular file (a FIFO put there since the read would block the open
    for ever; ``O_NONBLOCK`` makes that open return at once)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file any more (changed since it was read); convert it again")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _open_empty(path: str | os.PathLike) -> Any:
    """``path`` opened to write from its start, truncated only where it is not empty: ext4 flushes a file truncated
    to nothing when it is closed (its replace-by-truncate guard), a second pass over the disk before the fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    if os.fstat(fd).st_size:
        os.ftruncate(fd, 0)
    return os.fdopen(fd, "wb")


def _memory_view(storage: torch.UntypedStorage) -> memoryview:
    """A kept storage's bytes as a flat view (nothing copied; in the mmap modes a view of the input's mapping)."""
    if storage.nbytes() == 0:
        return memoryview(b"")
    return memoryview(torch.empty((0,), dtype=torch.uint8).set_(storage).numpy()).cast("B")


def private_pages_reader(probe: memoryview, fd: int) -> Callable[[int, int], bool] | None:
    """``unwritten(address, nbytes)``: True where no page of that range of a private file mapping was written (made
    the process's own copy) since it was mapped, from ``/proc/self/pagemap`` (Linux); None where that cannot be read
    or does not tell pages apart: ``probe``, written here, must read as a present page of the process's own, and so
    must a page of a private mapping of ``fd`` (the input) once written, as the loader's mapping is.
    A page shared with a written neighbour counts as written (the caller then reads memory: slower, never wrong)."""
    page = mmap.PAGESIZE

    def private(address: int, nbytes: int) -> bool:  # any page of the range the process's own (OSError: unknown)
        first, last = address // page, (address + max(nbytes, 1) - 1) // page
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            raw = os.pread(fd, 8 * (last - first + 1), 8 * first)
        finally:
            os.close(fd)
        if len(raw) != 8 * (last - first + 1):
            raise OSError("short read of /proc/self/pagemap")
        entries = numpy.frombuffer(raw, dtype="=u8")
        own = ((entries >> 63) & 1) & ~((entries >> 61) & 1)  # present, not a file page: a private copy
        return bool((own | ((entries >> 62) & 1)).any())  # swapped: only the process's own pages are

    def unwritten(address: int, nbytes: int) -> bool:
        try:
            return not private(address, nbytes)
        except OSError:
            return False

    def written_file_page_is_own() -> bool:  # a pagemap that only tells mappings apart (all of a file's "file")
        mapping = mmap.mmap(fd, 1, access=mmap.ACCESS_COPY)
        view = numpy.frombuffer(mapping, dtype=numpy.uint8)
        try:
            view[0] ^= 1  # a private copy of the file's page, as an edit in place makes one
            return private(view.ctypes.data, 1)
        finally:
            del view  # the mapping closes only once no view of it is left
            mapping.close()

    try:
        probe[0] ^= 1  # written: this page must now read as the process's own
        if not private(numpy.frombuffer(probe, dtype=numpy.uint8).ctypes.data, 1):
            return None
        return unwritten if written_file_page_is_own() else None
    except (OSError, ValueError):
        return None


def _stream(fd: int, offset: int, size: int, out: Any, buffer: memoryview) -> int:
    """Copy ``size`` bytes at ``offset`` of ``fd`` to ``out`` through ``buffer``; returns their CRC-32."""
    crc, done = 0, 0
    while done < size:
        got = os.preadv(fd, [buffer[: min(len(buffer), size - done)]], offset + done)
        if got <= 0:
            raise CheckpointError("the input became shorter while it was copied; convert it again")
        chunk = buffer[:got]
        crc = crc32(chunk, crc)
        out.write(chunk)
        done += got
    return crc


def check_copied(outcome: Outcome, written: str | os.PathLike) -> dict[str, Any]:
    """The proof's read-back of the whole written archive: every record ``outcome`` copied is in ``written`` with the
    input's size and CRC-32, and its bytes there (read again) have that CRC-32; every other record's bytes have the
    CRC-32 the archive gives them (so a read of ``written`` after this needs no CRC pass of its own).

    Returns:
        (dict): ``records``, ``bytes`` (the copied ones checked), ``other_records``, ``passed``, ``problem``.
    """
    result: dict[str, Any] = {"records": 0, "bytes": 0, "other_records": 0, "passed": False, "problem": ""}
    with open(written, "rb") as handle:
        try:
            infos, offsets = _input_records(Path(written), handle)
        except CheckpointError as error:
            result["problem"] = str(error)
            return result
        by_name = {info.filename: info for info in infos}
        buffer = memoryview(bytearray(COPY_BUFFER_BYTES))
        for name, (crc, size) in outcome.copied.items():
            info = by_name.get(name)
            if info is None or info.file_size != size or info.CRC != crc:
                result["problem"] = f"copied record {name!r} differs from the input's"
                return result
            if _stream(handle.fileno(), offsets[name], size, _Discard(), buffer) != crc:
                result["problem"] = f"copied record {name!r} fails its CRC-32 check in the written file"
                return result
            result["records"] += 1
            result["bytes"] += size
        for info in infos:
            if info.filename in outcome.copied:
                continue
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                result["problem"] = f"written record {info.filename!r} is not stored as written"
                return result
            if _stream(handle.fileno(), offsets[info.filename], info.file_size, _Discard(), buffer) != info.CRC:
                result["problem"] = f"written record {info.filename!r} fails its CRC-32 check"
                return result
            result["other_records"] += 1
    result["passed"] = True
    return result


def copied_views(outcome: Outcome, original: Any, written: Any) -> Callable[[torch.Tensor, torch.Tensor], bool] | None:
    """``proven(a, b)`` for ``sources.compare.identical_by_copy``: True where ``a`` (a tensor of the input, as the read
    with stats ``original`` made it) and ``b`` (of the written file, read with stats ``written``) view the same storage
    key, whose record this write copied byte for byte (CRC-32 checked as it streamed and in the written file by
    ``check_copied``); the caller checks dtype, shape, strides and offset. None where ``original`` did not read the
    very version of the input that was copied (another identity: it may hold other bytes)."""
    if not outcome.source_identity or getattr(original, "identity", None) != outcome.source_identity:
        return None
    if not isinstance(getattr(written, "keys", None), dict):
        return None
    before, after, keys = original.keys, written.keys, outcome.copied_keys

    def proven(a: torch.Tensor, b: torch.Tensor) -> bool:
        read, back = before.get(a.untyped_storage()._cdata), after.get(b.untyped_storage()._cdata)
        return read is not None and back is not None and read[0] == back[0] and read[0] in keys

    return proven


class _Discard:
    def write(self, _: Any) -> None:
        pass
