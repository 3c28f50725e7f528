"""Review of the loader's pool (mode copy reads storages in the CRC pool, mode mmap starts every mapped record's CRC-32
before the unpickling): nothing is returned, and no worker runs, while a read or a checksum is pending or failed; the
pool never outlives a load (refusal, corrupt record, a file that ends early, an I/O error, KeyboardInterrupt); many
tiny records cost a bounded number of pool jobs. Bounded by counts, never by time."""

from __future__ import annotations

import errno
import os
import pickle
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from focus_surgery.loader import CheckpointError, containers, read_checkpoint
from hostile_files import write_zip, zip_entries

MODES = ("copy", "mmap", "mmap-nocrc")


def _tensors_file(path: Path, count: int = 12, numel: int = 1 << 14) -> Path:
    torch.save({f"w{i}": _values(numel, i) for i in range(count)}, path)
    return path


def _values(numel: int, i: int) -> torch.Tensor:
    return torch.arange(float(numel)) * (i + 2) + 1 / (i + 3)  # no tensor's bytes found inside another's


def _data_offset(raw: bytes, info: zipfile.ZipInfo) -> int:
    """Where a stored record's bytes start (its local header's name and extra lengths, not the directory's)."""
    name_length = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_length + extra_length


def _tiny_records(path: Path, count: int) -> Path:
    """A torch-written (64-aligned) archive: an empty dict and ``count`` zero-length storage records it never uses."""
    writer = torch._C.PyTorchFileWriter(str(path))
    data = pickle.dumps({}, protocol=2)
    writer.write_record("data.pkl", data, len(data))
    for i in range(count):
        writer.write_record(f"data/{i}", b"", 0)
    writer.write_end_of_file()
    del writer
    return path


class _Watch:
    """os.preadv wrapped: each read notes whether the load had already ended (raised or returned) when it ran."""

    def __init__(self, monkeypatch, fail_at: int = 0, error: BaseException | None = None):
        self.real, self.calls, self.after_end, self.ended = os.preadv, 0, 0, False
        self.fail_at, self.error, self.lock = fail_at, error, threading.Lock()
        monkeypatch.setattr(os, "preadv", self)

    def __call__(self, fd, buffers, offset):
        with self.lock:
            self.calls += 1
            call = self.calls
        threading.Event().wait(0.002)  # lets the main thread run on (a worker outliving the load would show)
        if self.fail_at and call == self.fail_at:
            raise self.error
        try:  # a read running after the load ended (its fd closed, maybe reused) counts, even if it fails
            return self.real(fd, buffers, offset)
        finally:
            self.after_end += self.ended


def _unpickler_raising(monkeypatch, error: BaseException, after_storages: int) -> None:
    """The unpickler raises ``error`` at its ``after_storages``-th storage (reads of earlier ones are in the pool)."""
    seen = [0]

    class Raising(containers.RestrictedUnpickler):
        def persistent_load(self, pid):
            seen[0] += 1
            if seen[0] > after_storages:
                raise error
            return super().persistent_load(pid)

    monkeypatch.setattr(containers, "RestrictedUnpickler", Raising)


@pytest.mark.parametrize("mode", ["copy", "mmap"])
@pytest.mark.parametrize("error", [pickle.UnpicklingError("refused"), KeyboardInterrupt()], ids=["refusal", "ctrl-c"])
def test_no_worker_reads_into_a_storage_after_the_unpickler_raised(tmp_path, monkeypatch, error, mode):
    """Mode copy reads every storage in the pool; mode mmap those not 64-aligned (and checksums the mapped ones)."""
    path = _tensors_file(tmp_path / "w.pt")
    if mode == "mmap":
        path = write_zip(tmp_path / "unaligned.pt", zip_entries(path))
    watch = _Watch(monkeypatch)
    _unpickler_raising(monkeypatch, error, after_storages=8)
    threads = threading.active_count()
    with pytest.raises(CheckpointError if isinstance(error, Exception) else KeyboardInterrupt) as caught:
        read_checkpoint(path, mode)
    watch.ended = True
    assert watch.calls >= 1  # reads
    threading.Event().wait(0.05)
    assert watch.after_end == 0 and threading.active_count() == threads
    if isinstance(error, Exception):
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("mode", ["copy", "mmap"])
def test_an_io_error_in_a_pool_read_is_one_line_and_ends_the_pool(tmp_path, monkeypatch, mode):
    path = tmp_path / "w.pt"
    if mode == "copy":
        _tensors_file(path)
    else:  # unaligned records: mode mmap copies them, in the pool
        write_zip(path, zip_entries(_tensors_file(tmp_path / "src.pt")))
    watch = _Watch(monkeypatch, fail_at=3, error=OSError(errno.EIO, "Input/output error"))
    threads = threading.active_count()
    with pytest.raises(CheckpointError, match="Input/output error") as caught:
        read_checkpoint(path, mode)
    watch.ended = True
    assert "\n" not in str(caught.value)
    assert threading.active_count() == threads and watch.after_end == 0


def test_every_pool_job_is_done_before_the_content_is_returned(tmp_path, monkeypatch):
    jobs = []

    class Noting(containers.ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            jobs.append(super().submit(*args, **kwargs))
            return jobs[-1]

    monkeypatch.setattr(containers, "ThreadPoolExecutor", Noting)
    aligned = _tensors_file(tmp_path / "a.pt")
    unaligned = write_zip(tmp_path / "u.pt", zip_entries(aligned))
    for path in (aligned, unaligned):
        for mode in MODES:
            jobs.clear()
            loaded = read_checkpoint(path, mode)
            assert all(job.done() and not job.cancelled() and job.exception() is None for job in jobs), (path, mode)
            assert torch.equal(loaded.content["w3"], _values(1 << 14, 3))


def _archive(path: Path, records: dict[str, bytes], aligned: bool) -> Path:
    """``records`` (names inside the archive folder) written by torch's writer (64-aligned) or by zipfile (not)."""
    if not aligned:
        return write_zip(path, {f"archive/{name}": data for name, data in records.items()})
    writer = torch._C.PyTorchFileWriter(str(path))
    for name, data in records.items():
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    del writer
    return path


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("used", [True, False], ids=["used", "unused"])
def test_a_corrupt_storage_record_is_refused_and_the_pool_ends(tmp_path, aligned, used):
    """One flipped bit in a storage record, used by the pickle or not, mapped or (unaligned) copied in the pool."""
    entries = zip_entries(_tensors_file(tmp_path / "src.pt"))
    records = {name.split("/", 1)[1]: data for name, data in entries.items()}
    target = "data/11" if used else "data/99"
    records["data/99"] = _values(4096, 99).numpy().tobytes()  # a record the pickle never names
    path = _archive(tmp_path / "bad.pt", records, aligned)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(target))
    at = _data_offset(bytes(raw), info)
    assert raw[at : at + info.file_size] == records[target] and (at % 64 == 0) == aligned
    raw[at + 777] ^= 0x10
    path.write_bytes(bytes(raw))
    threads = threading.active_count()
    for mode in ("copy", "mmap"):
        with pytest.raises(CheckpointError, match=rf"{target}'? fails its CRC-32 check|Bad CRC-32") as caught:
            read_checkpoint(path, mode)
        assert "\n" not in str(caught.value)
        assert threading.active_count() == threads
    if not used:
        assert read_checkpoint(path, "mmap-nocrc").content.keys() == {f"w{i}" for i in range(12)}


def test_many_tiny_records_cost_few_pool_jobs(tmp_path, monkeypatch):
    """Mode mmap starts the CRC-32 of every mapped storage record before the unpickling: a file of many tiny records
    (here 3,000 zero-length ones, ~130 bytes of file each) must not cost a pool job (~2 KB of Python objects) each."""
    count, jobs = 3000, [0]

    class Counting(containers.ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            jobs[0] += 1
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(containers, "ThreadPoolExecutor", Counting)
    path = _tiny_records(tmp_path / "tiny.pt", count)
    loaded = read_checkpoint(path, "mmap")
    assert loaded.content == {} and loaded.stats.crc_bytes > 0
    assert jobs[0] <= count // containers.EARLY_JOB_RECORDS + 1, jobs[0]
    torch.save({str(i): torch.empty(0) for i in range(count)}, tmp_path / "used.pt")  # the same, every one used
    jobs[0] = 0
    assert len(read_checkpoint(tmp_path / "used.pt", "mmap").content) == count
    assert jobs[0] <= count // containers.EARLY_JOB_RECORDS + 1, jobs[0]


def test_a_corrupt_tiny_record_among_many_is_found(tmp_path):
    """Batched checksums still check each record: the 1,000th of 2,000 one-byte records, corrupted, is refused."""
    records = {"data.pkl": pickle.dumps({}, protocol=2)} | {f"data/{i}": bytes([i % 251]) for i in range(2000)}
    path = _archive(tmp_path / "t.pt", records, aligned=True)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/1000"))
    raw = bytearray(path.read_bytes())
    at = _data_offset(bytes(raw), info)
    assert raw[at] == 1000 % 251 and at % 64 == 0
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"data/1000' fails its CRC-32 check"):
        read_checkpoint(path, "mmap")


@pytest.mark.parametrize("mode", ["mmap", "mmap-nocrc"])
def test_a_mapping_refused_falls_back_to_pool_copies_every_one_awaited(tmp_path, monkeypatch, mode):
    """No room to map (an address-space limit): the mmap modes copy every storage in the pool, none mapped, none early;
    a file that ends early during those copies is refused in one line, and the pool ends."""
    path = _tensors_file(tmp_path / "w.pt")

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(containers.mmap, "mmap", no_room)
    watch = _Watch(monkeypatch)
    loaded = read_checkpoint(path, mode)
    assert (loaded.stats.mapped_bytes, loaded.stats.mapped_at) == (0, 0)
    assert loaded.stats.copied_bytes == 12 * (1 << 14) * 4
    assert watch.calls >= 12 and all(torch.equal(loaded.content[f"w{i}"], _values(1 << 14, i)) for i in range(12))
    threads = threading.active_count()

    calls = [0]

    def shrinking(fd, buffers, offset):
        calls[0] += 1
        return 0 if calls[0] == 5 else watch.real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", shrinking)
    with pytest.raises(CheckpointError, match="became shorter while it was read") as caught:
        read_checkpoint(path, mode)
    assert "\n" not in str(caught.value) and threading.active_count() == threads
