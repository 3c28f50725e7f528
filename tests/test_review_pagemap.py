"""Review of the zip copy's file path (``zip_rewrite.private_pages_reader``) and of what a mapping of the input shows
when the input file itself is rewritten where it lies after the read (as ``torch.save`` over the same path does)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from focus_surgery.checkpoint_io import save_checkpoint
from focus_surgery.errors import CheckpointError
from focus_surgery.loader import read_checkpoint, zip_rewrite
from focus_surgery.loader.containers import file_identity

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the mapping's semantics are Linux's")


def _values() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(1 << 16) for _ in range(4)] + [torch.randn(16, 12, 3, 3)]


def _save(path: Path, width: int) -> None:
    """The same tensors under keys ``width`` characters long: a longer pickle moves every storage record."""
    torch.save({"k" * width + str(i): v for i, v in enumerate(_values())}, path)


def _data(raw: bytes | bytearray, info: zipfile.ZipInfo) -> int:
    n, e = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + n + e


def _moved_records(src: Path, width: int, same_size: bool) -> bytes:
    """An archive of ``src``'s records, every one of them holding what it holds in ``src`` (its serialization id
    too), but the storages at other offsets (a shorter pickle before them); ``same_size``: padded to ``src``'s size
    with a zip comment."""
    other = src.parent / "other"
    other.mkdir()
    _save(other / src.name, width)  # the same archive folder name, so the same record names
    raw, old = bytearray((other / src.name).read_bytes()), src.read_bytes()
    with zipfile.ZipFile(io.BytesIO(old)) as a, zipfile.ZipFile(io.BytesIO(bytes(raw))) as b:
        ours, theirs = a.getinfo("in/.data/serialization_id"), b.getinfo("in/.data/serialization_id")
        start = b.start_dir
    at, size = _data(raw, theirs), theirs.file_size
    raw[at : at + size] = old[_data(old, ours) : _data(old, ours) + size]
    crc = struct.pack("<I", ours.CRC)
    raw[theirs.header_offset + 14 : theirs.header_offset + 18] = crc
    while raw[start : start + 4] == b"PK\x01\x02":  # the central directory's copy of that CRC-32
        n, e, c = struct.unpack("<HHH", raw[start + 28 : start + 34])
        if raw[start + 46 : start + 46 + n] == b"in/.data/serialization_id":
            raw[start + 16 : start + 20] = crc
        start += 46 + n + e + c
    if same_size:
        pad = len(old) - len(raw)
        assert 0 < pad < 0xFFFF and raw[-2:] == b"\x00\x00"
        raw[-2:] = struct.pack("<H", pad)
        raw += b"\x00" * pad
    assert len(raw) == len(old) or not same_size
    return bytes(raw)


def _rewrite_in_place(src: Path, raw: bytes, keep_mtime: bool) -> None:
    st = os.stat(src)
    with open(src, "r+b") as handle:  # the same file (inode): its private mapping shows what is written
        handle.truncate(0)
        handle.write(raw)
    if keep_mtime:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("same_size", [False, True], ids=["shorter", "same size and mtime"])
def test_input_rewritten_in_place_with_its_records_moved_refused(tmp_path: Path, same_size: bool) -> None:
    """Mapped pages no write reached show the file as it is now: a record moved by a rewrite of the same file (each
    record's bytes and CRC-32 as read, only their offsets changed) made every kept storage another slice of the new
    file, which was written as if changed in place (no refusal, the content's edit gone too). Refused now."""
    src = tmp_path / "in.pt"
    _save(src, 300)
    loaded = read_checkpoint(src, "mmap-nocrc")
    content = dict(loaded.content)
    first, last = list(content)[0], list(content)[-1]
    content[first][0] = 123.0  # an edit in memory, which a truncation of the file drops too
    content[last] = torch.zeros(16, 3, 6, 6)
    _rewrite_in_place(src, _moved_records(src, 1, same_size), keep_mtime=same_size)
    if same_size:  # nothing of the file's identity (device, inode, size, mtime) tells it apart from the one read
        assert file_identity(os.stat(src))[:4] == loaded.stats.identity[:4]
    dst = tmp_path / "out" / "out.pt"
    dst.parent.mkdir()
    with pytest.raises(CheckpointError, match="changed since it was read") as error:
        save_checkpoint(content, dst, like=loaded)
    assert "\n" not in str(error.value) and str(src) in str(error.value)
    assert list(dst.parent.iterdir()) == []


def test_edit_dropped_by_an_identical_rewrite_with_mtime_restored_refused(tmp_path: Path) -> None:
    """``cp -p`` of an identical copy over the input (truncated and written where it lies, its mtime put back): the
    truncation drops the pages an edit in memory made the process's own, so memory shows the file again. Device,
    inode, size and mtime were all as read, so the write went ahead without the edit; the change time (which no call
    can put back) now tells the rewrite apart, and the write is refused."""
    src = tmp_path / "in.pt"
    _save(src, 1)
    raw, read_ctime, mtime = src.read_bytes(), os.stat(src).st_ctime_ns, os.stat(src).st_mtime_ns
    loaded = read_checkpoint(src, "mmap-nocrc")
    content = dict(loaded.content)
    first, last = list(content)[0], list(content)[-1]
    content[first][0] = 123.0
    content[last] = torch.zeros(16, 3, 6, 6)
    _rewrite_in_place(src, raw, keep_mtime=True)
    for _ in range(1_000_000):  # a coarse clock may not have ticked since the read: each utime sets the change time
        if os.stat(src).st_ctime_ns != read_ctime:
            break
        os.utime(src, ns=(os.stat(src).st_atime_ns, mtime))
    assert os.stat(src).st_mtime_ns == mtime and os.stat(src).st_size == len(raw)
    assert content[first][0] != 123.0  # the kernel dropped the edit: what is written must not pretend otherwise
    dst = tmp_path / "out" / "out.pt"
    dst.parent.mkdir()
    with pytest.raises(CheckpointError, match="changed since it was read") as error:
        save_checkpoint(content, dst, like=loaded)
    assert "\n" not in str(error.value)
    assert list(dst.parent.iterdir()) == []


_CHILD = """
import sys
from pathlib import Path
import torch
from focus_surgery.checkpoint_io import save_checkpoint
from focus_surgery.errors import CheckpointError
from focus_surgery.loader import read_checkpoint
src, replacement, dst = (Path(a) for a in sys.argv[1:4])
loaded = read_checkpoint(src, "mmap-nocrc")
content = dict(loaded.content)
content[list(content)[-1]] = torch.zeros(16, 3, 6, 6)
with open(src, "r+b") as handle:
    handle.truncate(0)
    handle.write(replacement.read_bytes())
try:
    save_checkpoint(content, dst, like=loaded)
except CheckpointError as error:
    print("refused:", error)
"""


def test_input_shortened_under_the_mapping_refused_not_a_bus_error(tmp_path: Path) -> None:
    """A rewrite of the same file that is shorter than where a kept storage was mapped: reading that storage's memory
    killed the process with SIGBUS (no message, its temporary left behind). Refused in one line before memory is
    read. In a child process, as a bus error would end this one."""
    src = tmp_path / "in.pt"
    _save(src, 4000)  # the storages lie about 20 kB further into the file than in the replacement
    replacement = tmp_path / "replacement.pt"
    replacement.write_bytes(_moved_records(src, 1, same_size=False))
    assert replacement.stat().st_size < src.stat().st_size - 8192
    dst = tmp_path / "out" / "out.pt"
    dst.parent.mkdir()
    checkout = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([checkout, os.environ.get("PYTHONPATH", "")]))
    run = [sys.executable, "-c", _CHILD, str(src), str(replacement), str(dst)]
    done = subprocess.run(run, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    (line,) = done.stdout.splitlines()
    assert line.startswith("refused: ") and "changed since it was read" in line and str(src) in line
    assert list(dst.parent.iterdir()) == []


def test_kept_storages_read_from_the_file_match_memory_record_by_record(tmp_path: Path) -> None:
    """The file path's guard, page by page: an edit on the first byte of a storage, on the last, on both sides of a
    page boundary, through ``/proc/self/mem`` (a kernel write) and through a numpy alias each reaches the output; the
    storages no edit reached come from the file."""
    import ctypes
    import mmap

    src = tmp_path / "in.pt"
    _save(src, 1)
    loaded = read_checkpoint(src, "mmap-nocrc")
    content = dict(loaded.content)
    names = list(content)
    ptr = [content[k].untyped_storage().data_ptr() for k in names]
    ctypes.memset(ptr[0], 0x11, 1)  # first byte of storage 0
    boundary = (ptr[1] // mmap.PAGESIZE + 1) * mmap.PAGESIZE
    ctypes.memset(boundary - 1, 0x22, 2)  # across a page boundary inside storage 1
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(ptr[2] + 4 * (1 << 16) - 1)  # last byte of storage 2
        mem.write(b"\x33")
    content[names[3]].numpy()[1 << 15] = 7.0
    content[names[-1]] = torch.zeros(16, 3, 6, 6)
    dst = tmp_path / "out.pt"
    with zip_rewrite.recording() as outcomes:
        save_checkpoint(content, dst, like=loaded)
    back = torch.load(dst, weights_only=True)
    for key in names:
        assert torch.equal(back[key], content[key]), key
    assert outcomes[0].bytes_from_file == 0 and outcomes[0].storages_written == 5  # every kept one written
    values = _values()
    assert not any(torch.equal(back[k], v) for k, v in zip(names[:4], values))  # each edit is in the output


def test_the_resident_measure_sees_a_copy_from_the_mapping_wherever_the_file_lies(tmp_path: Path, monkeypatch) -> None:
    """Control for ``tests/test_zip_copy_resident``'s memory bound: with the file path off (no pagemap reader), the
    copy from the mapping must show in the measure. ``RssFile`` alone missed it where ``tmp_path`` is on tmpfs (a
    shmem file's mapped pages count as ``RssShmem``), so there the bound held whatever path ran."""
    from tests.test_zip_copy_resident import _convert, _input, _resident_file_bytes

    monkeypatch.setattr(zip_rewrite, "private_pages_reader", lambda probe, fd: None)
    src, sd = _input(tmp_path)
    loaded = read_checkpoint(src, "mmap-nocrc")
    before = _resident_file_bytes()
    outcome, _, _ = _convert(loaded, tmp_path)
    grown = _resident_file_bytes() - before
    kept = sum(t.nbytes for k, t in sd.items() if k != "stem")
    assert outcome.bytes_from_file == 0 and grown >= 0.9 * kept, (grown, kept)


def test_a_pagemap_that_calls_every_page_of_a_file_mapping_the_file_s_is_not_trusted(
    tmp_path: Path, monkeypatch
) -> None:
    """The reader's probe wrote a page of the heap and trusted any pagemap that showed it as the process's own; one
    that tells pages apart by mapping (every page of a file mapping shown as the file's, written or not: an emulated
    /proc, a kernel that does not report it) passed that probe, and an edit in memory was lost, the file's bytes
    copied over it. The probe now also writes a page of a private mapping of the input, which must read as own."""
    import mmap

    src = tmp_path / "in.pt"
    _save(src, 1)
    loaded = read_checkpoint(src, "mmap-nocrc")
    content = dict(loaded.content)
    first, last = list(content)[0], list(content)[-1]
    content[first][1 << 15] = 42.0
    content[last] = torch.zeros(16, 3, 6, 6)
    real_open, real_pread, fake = os.open, os.pread, set()

    def file_vmas() -> list[tuple[int, int]]:
        with open("/proc/self/maps") as maps:
            rows = [line.split() for line in maps]
        return [tuple(int(x, 16) for x in row[0].split("-")) for row in rows if len(row) > 5 and row[4] != "0"]

    def fake_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if str(path) == "/proc/self/pagemap":
            fake.add(fd)
        return fd

    def fake_pread(fd, n, offset):
        raw = real_pread(fd, n, offset)
        if fd not in fake:
            return raw
        entries, vmas = bytearray(raw), file_vmas()
        for i in range(len(raw) // 8):
            address = (offset // 8 + i) * mmap.PAGESIZE
            if any(start <= address < end for start, end in vmas):  # a file mapping: "the file's page", always
                entries[8 * i : 8 * i + 8] = struct.pack("<Q", (1 << 63) | (1 << 61))
        return bytes(entries)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "pread", fake_pread)
    dst = tmp_path / "out.pt"
    with zip_rewrite.recording() as outcomes:
        save_checkpoint(content, dst, like=loaded)
    monkeypatch.undo()
    back = torch.load(dst, weights_only=True)
    assert back[first][1 << 15] == 42.0 and torch.equal(back[first], content[first])
    assert outcomes[0].bytes_from_file == 0  # the reader not trusted: every kept storage from memory
