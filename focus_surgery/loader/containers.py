"""The two ``torch.save`` containers, read with every size checked against the file before anything is allocated.

* zip (torch >= 1.6): ``<archive>/data.pkl`` plus ``<archive>/data/<key>`` per storage; every record stored or deflated,
  inside the file, not overlapping another; every CRC-32 checked (storages' not in ``"mmap-nocrc"``). Stored storages
  are copied (``"copy"``) or copy-on-write views of one private mapping of the file (``"mmap"``, ``"mmap-nocrc"``).
* legacy (torch < 1.6): magic number, protocol and sys-info pickles, the object pickle, its storage keys, then the raw
  storages, each filled from the file (never uninitialised memory) and declaring no more than what is left of it.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import struct
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .crc import crc32
from .errors import CheckpointError
from .rebuilders import Budgets
from .unpickler import RestrictedUnpickler

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
MAX_PICKLE_BYTES = 64 << 20  # a model's pickle (structure, not weights) is kilobytes to a few megabytes
TENSOR_SLACK_BYTES = 256 << 20  # logical tensor size allowed beyond the file's own size (expanded anchor grids)
OBJECT_SLACK_BYTES = 16 << 20  # objects the unpickler may build beyond four times the file's size
LOAD_MODES = ("copy", "mmap", "mmap-nocrc")
RECORD_ALIGNMENT = 64  # torch.save aligns each record's data to 64 bytes; others are copied, never mapped unaligned
CRC_THREADS = 2  # reads and CRCs release the GIL: they run beside the unpickling (more threads: no gain on 2-4 cores)
# mode mmap: small records' CRC-32s share one job (a job per record costs ~1.8 KB of Python objects, >10x a tiny record)
EARLY_JOB_BYTES = 1 << 20
EARLY_JOB_RECORDS = 256


@dataclass
class LoadStats:
    """What one load did with the file's bytes (counts, for tests and the benchmark; no timing).

    Attributes:
        storages (int): Storage records the pickle used.
        copied_bytes (int): Storage bytes copied into the process's own memory (0 in the mmap modes).
        mapped_bytes (int): Storage bytes handed out as views of the file's mapping.
        crc_bytes (int): Bytes whose CRC-32 was computed (every record in "copy" and "mmap").
        keys (dict): Zip files: each storage read (its ``_cdata``) -> (its record key, the storage, its dtype); the
            storage is held so its address is never reused while this lives (``zip_rewrite`` copies by key).
        records (dict): Zip files: each record's name -> its CRC-32, as the read found them (``zip_rewrite`` tells a
            record there at the read from one that appeared since).
        identity (tuple): Zip files: (device, inode, size, modification time ns, change time ns) of the file read
            (``zip_rewrite`` checks the file's records too where it was replaced or written since; the change time,
            which no call can put back, tells a rewrite whose mtime was restored apart).
        mapped_at (int): The mmap modes: the address of the file's private mapping (byte 0 of the file), else 0
            (``zip_rewrite`` copies a view of it never written since from the file, so it never becomes resident).
    """

    mode: str = "copy"
    storages: int = 0
    copied_bytes: int = 0
    mapped_bytes: int = 0
    crc_bytes: int = 0
    keys: dict = field(default_factory=dict, repr=False)
    records: dict = field(default_factory=dict, repr=False)
    identity: tuple = ()
    mapped_at: int = 0


def file_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """A file's identity and version (device, inode, size, modification and change times): another means replaced
    or written (``cp -p`` puts the mtime back, never the change time)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def budgets_for(file_size: int) -> Budgets:
    """What one file may build: tensors of at most twice its size plus a slack (expanded anchor grids of real
    YOLOv5 files), Python objects and copied values of at most four times its size plus a slack."""
    return Budgets(2 * file_size + TENSOR_SLACK_BYTES, 4 * file_size + OBJECT_SLACK_BYTES)


class BoundedReader:
    """A file handle whose reads never ask for more than the file has left (a pickle's declared string length is
    checked before Python allocates a buffer for it)."""

    def __init__(self, handle: BinaryIO, size: int):
        self._handle, self._size = handle, size

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._handle.tell()
        if n is None or n < 0 or n > left:
            if n is not None and n > left >= 0:
                raise pickle.UnpicklingError(f"a record of {n:,} bytes with {left:,} left in the file (truncated?)")
            n = left
        return self._handle.read(n)

    def readline(self) -> bytes:
        return self._handle.readline(1 << 16)

    def readinto(self, buffer) -> int:
        if len(buffer) > self._size - self._handle.tell():
            raise pickle.UnpicklingError("a record longer than what is left of the file")
        return self._handle.readinto(buffer)

    def tell(self) -> int:
        return self._handle.tell()


def check_records(path: Path, handle: BinaryIO, infos: list[zipfile.ZipInfo], file_size: int, pkl: str) -> dict:
    """Before anything is decompressed: every record stored or deflated (zipfile inflates bzip2 / LZMA without an
    output bound), none declaring more than the file, all but the pickle ``pkl`` together at most the file, every
    record's bytes inside the file, and no two records sharing bytes (each byte of the file is read once).

    Returns:
        (dict[str, int]): Each record's name: the file offset of its data (a stored record's bytes are
            ``file[offset : offset + info.file_size]``, checked to lie in the file).
    """
    total, extents, offsets = 0, [], {}
    for info in infos:
        record = f"{path}: record {info.filename!r}"
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(
                f"{record} uses zip compression method {info.compress_type}; torch writes stored (or deflated) "
                "records: re-save it with torch.save"
            )
        if info.file_size > file_size:
            raise CheckpointError(
                f"{record} unpacks to {info.file_size:,} bytes, more than the whole file ({file_size:,}): a zip bomb "
                "or not a torch checkpoint"
            )
        total += 0 if info.filename == pkl else info.file_size
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{record} has no local header; the file is corrupt")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        offsets[info.filename] = start = info.header_offset + 30 + name_length + extra_length
        end = start + info.compress_size
        if end > file_size or (info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size):
            raise CheckpointError(f"{record} does not fit in the file; the file is corrupt")
        extents.append((info.header_offset, end, info.filename))
    if total > file_size:
        raise CheckpointError(f"{path}: its records unpack to {total:,} bytes, more than the file ({file_size:,})")
    extents.sort()
    for (_, end, name), (start, _, other) in zip(extents, extents[1:]):
        if start < end:
            raise CheckpointError(f"{path}: zip records {name!r} and {other!r} overlap; not a torch checkpoint")
    return offsets


def shown(key: str) -> str:
    """A storage key as a message shows it: as is if a short word (torch writes numbers), else quoted, cut at 40."""
    if len(key) <= 40 and key.replace("_", "").isalnum() and key.isascii():
        return key
    return repr(key if len(key) <= 40 else key[:40] + "...")


def _typed(untyped: torch.UntypedStorage, dtype: torch.dtype) -> torch.storage.TypedStorage:
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _record_bytes(path: Path, handle: BinaryIO, file_size: int, mode: str, stats: LoadStats) -> tuple[Callable, Any]:
    """(``read``, the whole mapping as numpy or None). ``read(offset, nbytes)``: (storage of ``file[offset : offset +
    nbytes]``, its bytes as numpy for the CRC-32, None or ``fill()``); a view of one private (copy-on-write: the file
    is never written) mapping of the file in the mmap modes where the record is aligned, else a fresh storage that
    ``fill()`` reads the record into (the caller runs it beside the unpickling and awaits it before anything is
    returned). Offsets and lengths come from ``check_records`` (inside the file)."""
    fd, mapped, mapped_bytes = handle.fileno(), None, None
    if mode != "copy":
        try:
            mapping = mmap.mmap(fd, file_size, access=mmap.ACCESS_COPY)  # MAP_PRIVATE of the open file
        except (OSError, ValueError):  # no room in an address-space limit (a folder run's child): copy instead
            mapping = None
        if mapping is not None:
            whole = torch.frombuffer(mapping, dtype=torch.uint8)  # keeps the mapping alive while any view lives
            mapped, mapped_bytes = whole.untyped_storage(), whole.numpy()  # numpy: CRC-32s read it without a copy
            stats.mapped_at = mapped.data_ptr()

    def read(offset: int, nbytes: int) -> tuple[torch.UntypedStorage, Any, Callable[[], None] | None]:
        if mapped is not None and offset % RECORD_ALIGNMENT == 0:  # torch aligns every record it writes
            stats.mapped_bytes += nbytes
            return mapped[offset : offset + nbytes], mapped_bytes[offset : offset + nbytes], None
        tensor = torch.empty((nbytes,), dtype=torch.uint8)
        array = tensor.numpy()

        def fill() -> None:  # one copy, kernel to the storage (no Python bytes object in between)
            done = 0
            while done < nbytes:
                got = os.preadv(fd, [array[done:]], offset + done)
                if got <= 0:
                    raise CheckpointError(f"{path}: the file became shorter while it was read; read it again")
                done += got

        stats.copied_bytes += nbytes
        return tensor.untyped_storage(), array, fill

    return read, mapped_bytes


def _filled_crc(fill: Callable[[], None] | None, as_bytes: Any, check: bool) -> int | None:
    """A storage's job in the pool: its bytes read from the file (copied storages), then their CRC-32 if ``check``."""
    if fill is not None:
        fill()
    return crc32(as_bytes) if check else None


def _crcs(whole: Any, extents: list[tuple[int, int]]) -> list[int]:
    """One job of mode mmap's early checksums: the CRC-32 of ``whole[offset : offset + nbytes]`` for each extent."""
    return [crc32(whole[offset : offset + nbytes]) for offset, nbytes in extents]


def load_zip(path: Path, file_size: int, mode: str = "copy", stats: LoadStats | None = None) -> tuple[Any, Any]:
    """Read a zip checkpoint in ``mode`` (``LOAD_MODES``); returns (content, the unpickler that read it).

    ``stats`` counts what was copied, mapped and checksummed.
    """
    stats = stats if stats is not None else LoadStats(mode)
    with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
        infos = archive.infolist()
        if not infos:
            raise CheckpointError(f"{path}: empty zip archive, not a torch checkpoint")
        names = [info.filename for info in infos]
        twice = next((name for name, count in Counter(names).items() if count > 1), None)
        if twice is not None:
            raise CheckpointError(f"{path}: zip archive holds two records named {twice!r}; not a torch checkpoint")
        # torch reads the archive named by the first record's folder; so do we, so that both see the same pickle
        prefix = names[0].split("/")[0] + "/" if "/" in names[0] else ""
        offsets = check_records(path, handle, infos, file_size, prefix + "data.pkl")
        stats.records = {info.filename: info.CRC for info in infos}
        stats.identity = file_identity(os.fstat(handle.fileno()))
        stray = next((n for n in names if not n.startswith(prefix)), None)
        if stray is not None:  # torch refuses these too
            raise CheckpointError(
                f"{path}: zip record {stray!r} lies outside the archive folder {prefix!r}; not a torch checkpoint"
            )
        by_name = {info.filename[len(prefix) :]: info for info in infos}
        pickle_info = by_name.get("data.pkl")
        if pickle_info is None:
            raise CheckpointError(f"{path}: zip archive without {prefix}data.pkl, not a torch checkpoint")
        if pickle_info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{path}: its pickle is {pickle_info.file_size:,} bytes, more than a model's structure needs "
                f"({MAX_PICKLE_BYTES:,}); not a torch checkpoint"
            )
        order = by_name.get("byteorder")
        if order is not None and archive.read(order).strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: big-endian checkpoint; re-save it on a little-endian machine")
        data = archive.read(pickle_info)  # zipfile checks this record's CRC-32
        stats.crc_bytes += len(data)
        unpacked, storages, crcs = [0], {}, []
        record_bytes, mapped_bytes = _record_bytes(path, handle, file_size, mode, stats)
        check_storages = mode != "mmap-nocrc"
        early: set[str] = set()  # mode mmap: every mapped storage record, its CRC-32 started before the unpickling
        early_jobs: list[tuple[list[zipfile.ZipInfo], Any]] = []  # (records, job computing their CRC-32s)

        def check_crc(info: zipfile.ZipInfo, crc: int | None) -> None:
            if crc is not None and crc != info.CRC:
                raise CheckpointError(f"{path}: record {info.filename!r} fails its CRC-32 check; the file is corrupt")

        def load_storage(dtype: torch.dtype, key: str, numel: int, view: Any) -> torch.storage.TypedStorage:
            if view is not None:
                raise pickle.UnpicklingError("storage view in a zip checkpoint")
            if key not in storages:
                info, nbytes = by_name.get(f"data/{key}"), numel * dtype.itemsize
                if info is None:
                    raise CheckpointError(f"{path}: storage {shown(key)} is missing")
                if info.file_size < nbytes:
                    raise CheckpointError(
                        f"{path}: storage {shown(key)} is truncated ({info.file_size:,} of {nbytes:,} bytes)"
                    )
                unpacked[0] += info.file_size
                if unpacked[0] > file_size:
                    raise CheckpointError(f"{path}: its storages unpack to more bytes than the file holds")
                stats.storages += 1
                if info.compress_type == zipfile.ZIP_STORED:
                    raw, as_bytes, fill = record_bytes(offsets[info.filename], info.file_size)
                    if info.filename not in early and (fill is not None or check_storages):  # awaited below
                        crcs.append((info, crc_pool.submit(_filled_crc, fill, as_bytes, check_storages)))
                        stats.crc_bytes += info.file_size if check_storages else 0
                else:  # deflated (torch never writes it): zipfile inflates at most the declared size, checks the CRC
                    raw = torch.frombuffer(bytearray(archive.read(info)), dtype=torch.uint8).untyped_storage()
                    stats.copied_bytes += info.file_size
                    stats.crc_bytes += info.file_size
                storages[key] = _typed(raw, dtype)
                stats.keys[raw._cdata] = (key, raw, dtype)
            if storages[key].dtype != dtype:
                raise pickle.UnpicklingError(f"storage {shown(key)} read with two dtypes")
            return storages[key]

        crc_pool = ThreadPoolExecutor(max_workers=CRC_THREADS, thread_name_prefix="focus-surgery-crc")
        try:
            batch, batch_bytes = [], 0
            for name, info in by_name.items() if check_storages and mapped_bytes is not None else ():
                at = offsets[info.filename]
                if name.startswith("data/") and info.compress_type == zipfile.ZIP_STORED and at % RECORD_ALIGNMENT == 0:
                    early.add(info.filename)
                    batch.append(info)
                    batch_bytes += info.file_size
                    stats.crc_bytes += info.file_size
                    if batch_bytes >= EARLY_JOB_BYTES or len(batch) >= EARLY_JOB_RECORDS:
                        extents = [(offsets[i.filename], i.file_size) for i in batch]
                        early_jobs.append((batch, crc_pool.submit(_crcs, mapped_bytes, extents)))
                        batch, batch_bytes = [], 0
            if batch:
                extents = [(offsets[i.filename], i.file_size) for i in batch]
                early_jobs.append((batch, crc_pool.submit(_crcs, mapped_bytes, extents)))
            unpickler = RestrictedUnpickler(io.BytesIO(data), load_storage, budgets_for(file_size))
            content = unpickler.load()
            for info, job in crcs:  # every storage filled before anything built from it is returned
                check_crc(info, job.result())
            for infos, job in early_jobs:
                for info, crc in zip(infos, job.result(), strict=True):
                    check_crc(info, crc)
        finally:
            crc_pool.shutdown(wait=True, cancel_futures=True)
        read = {f"data/{key}" for key in storages} | {n[len(prefix) :] for n in early} | {"data.pkl", "byteorder"}
        for name, info in by_name.items():  # every record's CRC-32, also of those the load did not need
            if name not in read and (check_storages or not name.startswith("data/")):
                with archive.open(info) as record:  # zipfile checks the CRC-32 at the end of the record
                    while chunk := record.read(1 << 20):
                        stats.crc_bytes += len(chunk)
        return content, unpickler


def load_legacy(path: Path, file_size: int, stats: LoadStats | None = None) -> tuple[Any, RestrictedUnpickler]:
    """Read a pre-1.6 torch checkpoint; returns (content, the unpickler that read it)."""
    stats = stats if stats is not None else LoadStats("copy")
    pending: dict[str, tuple[torch.UntypedStorage, int]] = {}  # key: (storage, element size)
    declared = [0]
    with open(path, "rb") as raw_handle:
        handle = BoundedReader(raw_handle, file_size)

        def load_storage(dtype: torch.dtype, key: str, numel: int, view: Any) -> torch.storage.TypedStorage:
            element = dtype.itemsize
            if key not in pending:
                declared[0] += 8 + numel * element  # every storage's data lies after this point, with an 8-byte count
                if declared[0] > file_size - handle.tell():
                    raise CheckpointError(
                        f"{path}: storage {shown(key)} declares {numel * element:,} bytes, more than the file holds"
                    )
                pending[key] = (torch.UntypedStorage(numel * element).fill_(0), element)  # zeroed, filled below
            base = pending[key][0]
            if view is None:
                return _typed(base, dtype)
            if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int for v in view[1:])):
                raise pickle.UnpicklingError("malformed storage view")
            _, offset, size = view
            if offset < 0 or size < 0 or (offset + size) * element > base.nbytes():
                raise pickle.UnpicklingError("storage view outside its storage")
            return _typed(base[offset * element : (offset + size) * element], dtype)

        unpickler = RestrictedUnpickler(handle, load_storage, budgets_for(file_size))
        if unpickler.load() != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{path}: not a torch checkpoint (wrong magic number)")
        unpickler.load()  # protocol version
        sys_info = unpickler.load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path}: big-endian checkpoint; re-save it on a little-endian machine")
        content = unpickler.load()
        protocol = unpickler.proto  # the content's (Loaded.protocol), not the storage keys' pickle after it
        keys = unpickler.load()
        unpickler.proto = protocol
        # torch writes text keys; anything else is never turned into text (str() of a shared tuple expands it)
        if not isinstance(keys, list) or not all(type(key) is str for key in keys) or len(set(keys)) != len(keys):
            raise CheckpointError(f"{path}: corrupt storage list")
        for key in keys:
            if key not in pending:
                raise CheckpointError(f"{path}: storage {shown(key)} is listed but never used")
            (storage, element), header = pending[key], handle.read(8)
            if len(header) < 8:
                raise CheckpointError(f"{path}: truncated (storage {shown(key)} missing)")
            count, nbytes = struct.unpack("<q", header)[0], storage.nbytes()
            if count * element != nbytes:
                raise CheckpointError(f"{path}: corrupt storage {shown(key)} (size {count} does not match its use)")
            if nbytes > file_size - handle.tell():
                raise CheckpointError(f"{path}: truncated storage {shown(key)}")
            if nbytes:  # straight into the zeroed storage: one copy, no Python bytes in between
                view = torch.empty((0,), dtype=torch.uint8).set_(storage).numpy()
                if handle.readinto(view) != nbytes:
                    raise CheckpointError(f"{path}: truncated storage {shown(key)}")
            stats.storages += 1
            stats.copied_bytes += nbytes
        missing = sorted(set(pending) - set(keys))
        if missing:
            raise CheckpointError(f"{path}: storage {shown(missing[0])} has no data in the file")
    return content, unpickler


def read_container(
    path: Path, file_size: int, mode: str = "copy", stats: LoadStats | None = None
) -> tuple[Any, RestrictedUnpickler, str]:
    """(content, the unpickler that read it, container name) of a ``torch.save`` file; refuses other formats.

    ``mode`` (``LOAD_MODES``) applies to zip files; legacy files are always copied (a storage must exist before its
    place in the file is known; torch does not map them either).
    """
    with open(path, "rb") as handle:
        head = handle.read(512)
    if zipfile.is_zipfile(path):
        return (*load_zip(path, file_size, mode, stats), "zip")
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path}: truncated or corrupt zip archive (no central directory); re-save it")
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise CheckpointError(f"{path}: legacy tar checkpoint (torch < 0.4); load and re-save it with torch 1.x")
    if head[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)")
    return (*load_legacy(path, file_size, stats), "legacy")
