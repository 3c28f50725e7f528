"""The safe loader's three modes (issue 19): the same content from each, and what each does with the file's bytes,
bounded by counts (bytes copied, mapped, checksummed), never by time.

The attack suites (test_hostile_files, test_loader*, test_review_loader, test_fuzz_checkpoints) run once per mode
through ``conftest.loader_mode``; this file checks what only the modes differ in.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import LOADER_MODES
from focus_surgery.loader import LOAD_MODES, CheckpointError, containers, load_mode, read_checkpoint
from focus_surgery.loader.walk import Transform
from focus_surgery.sources import loading
from hostile_files import write_zip, zip_entries

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = [
    ROOT / "checkpoints" / "focus-backbone.pt",
    ROOT / "checkpoints" / "yolo-focus-tiny.pt",
    ROOT / "tests" / "fixtures" / "yolov5-legacy" / "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt",
]


def _tensors(content) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []

    def visit(obj):
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        return obj

    Transform(visit)(content)
    return found


def _storage_records(path: Path) -> dict[str, int]:
    with zipfile.ZipFile(path) as archive:
        return {i.filename: i.file_size for i in archive.infolist() if "/data/" in i.filename}


def test_the_tests_run_every_mode():
    assert LOADER_MODES == LOAD_MODES


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_every_mode_reads_the_same_content(sample):
    reads = {mode: read_checkpoint(sample, mode) for mode in LOAD_MODES}
    first = _tensors(reads["copy"].content)
    assert first
    for mode, loaded in reads.items():
        tensors = _tensors(loaded.content)
        assert len(tensors) == len(first), mode
        for a, b in zip(first, tensors):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), mode
        assert loaded.globals == reads["copy"].globals


@pytest.mark.parametrize("sample", SAMPLES[:2], ids=lambda p: p.name)
def test_what_each_mode_copies_maps_and_checksums(sample):
    """copy: every storage byte copied, none mapped; mmap: none copied, all mapped, all checksummed; mmap-nocrc:
    none copied, none checksummed (only the pickle and the small records)."""
    storage_bytes = sum(_storage_records(sample).values())
    copy, mapped, lazy = (read_checkpoint(sample, mode).stats for mode in LOAD_MODES)
    assert copy.storages == mapped.storages == lazy.storages == len(_storage_records(sample))
    assert (copy.copied_bytes, copy.mapped_bytes) == (storage_bytes, 0)
    assert (mapped.copied_bytes, mapped.mapped_bytes) == (0, storage_bytes)
    assert (lazy.copied_bytes, lazy.mapped_bytes) == (0, storage_bytes)
    assert copy.crc_bytes == mapped.crc_bytes >= storage_bytes
    assert lazy.crc_bytes == mapped.crc_bytes - storage_bytes


def test_copied_storages_are_read_beside_the_unpickling(monkeypatch):
    """Mode copy reads each storage in the CRC pool's threads (the read releases the GIL, so it overlaps the pure-Python
    unpickling), and every read is done before the content is returned."""
    sample = SAMPLES[0]
    real, reads = os.preadv, []

    def counted(fd, buffers, offset):
        reads.append((threading.current_thread().name, sum(len(b) for b in buffers)))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counted)
    loaded = read_checkpoint(sample, "copy")
    assert reads and all(name.startswith("focus-surgery-crc") for name, _ in reads), reads
    assert sum(n for _, n in reads) == loaded.stats.copied_bytes == sum(_storage_records(sample).values())
    monkeypatch.undo()
    for a, b in zip(_tensors(loaded.content), _tensors(read_checkpoint(sample, "mmap").content)):
        assert torch.equal(a, b)


def test_mode_mmap_starts_every_storage_checksum_before_the_unpickling(monkeypatch):
    """Mode mmap knows every storage record from the zip directory: their CRC-32s all start in the pool before the
    first opcode is read, so the checksums overlap the whole unpickling (not only what follows each storage)."""
    sample = SAMPLES[0]
    submitted, seen_at_start = [0], []

    class CountingPool(containers.ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):  # records checksummed: small ones share a job (containers._crcs)
            submitted[0] += len(args[1]) if fn is containers._crcs else 1
            return super().submit(fn, *args, **kwargs)

    class NotingUnpickler(containers.RestrictedUnpickler):
        def load(self):
            seen_at_start.append(submitted[0])
            return super().load()

    monkeypatch.setattr(containers, "ThreadPoolExecutor", CountingPool)
    monkeypatch.setattr(containers, "RestrictedUnpickler", NotingUnpickler)
    loaded = read_checkpoint(sample, "mmap")
    assert seen_at_start == [len(_storage_records(sample))] == [loaded.stats.storages]
    assert submitted[0] == loaded.stats.storages  # each checksummed once
    submitted[0] = 0
    read_checkpoint(sample, "mmap-nocrc")  # nothing of the storages checksummed
    assert seen_at_start[-1] == submitted[0] == 0


def test_a_file_that_ends_early_during_the_copy_is_refused_in_one_line(monkeypatch):
    real, calls = os.preadv, [0]

    def shrinking(fd, buffers, offset):
        calls[0] += 1
        return 0 if calls[0] == 3 else real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", shrinking)
    with pytest.raises(CheckpointError, match="became shorter while it was read") as error:
        read_checkpoint(SAMPLES[0], "copy")
    assert "\n" not in str(error.value)


def test_a_mapped_tensor_written_to_leaves_the_file_alone(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(1024.0)}, path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for mode in ("mmap", "mmap-nocrc"):
        loaded = read_checkpoint(path, mode)
        assert loaded.stats.mapped_bytes == 4096
        loaded.content["w"].mul_(-1)  # copy-on-write: the page becomes the process's own
        assert loaded.content["w"][5].item() == -5.0
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        assert read_checkpoint(path, mode).content["w"][5].item() == 5.0


def test_a_record_torch_would_not_align_is_copied_not_mapped(tmp_path):
    """torch aligns each record's data to 64 bytes; a file that does not is read whole, never mapped unaligned."""
    src = tmp_path / "aligned.pt"
    torch.save({"w": torch.arange(16.0)}, src)
    entries = zip_entries(src)  # rewritten by zipfile: no alignment padding
    path = write_zip(tmp_path / "unaligned.pt", entries)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    offset = info.header_offset + 30 + len(info.filename.encode())
    assert offset % 64, "the rewritten archive happened to align the record; pad a name"
    loaded = read_checkpoint(path, "mmap")
    assert (loaded.stats.copied_bytes, loaded.stats.mapped_bytes) == (64, 0)
    assert torch.equal(loaded.content["w"], torch.arange(16.0))


def test_mode_choice_explicit_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("FOCUS_SURGERY_LOAD_MODE", raising=False)
    assert load_mode() == "copy" and load_mode(default="mmap") == "mmap" and load_mode("mmap-nocrc") == "mmap-nocrc"
    monkeypatch.setenv("FOCUS_SURGERY_LOAD_MODE", "mmap-nocrc")
    assert load_mode() == "mmap-nocrc" and load_mode("copy") == "copy"
    monkeypatch.setenv("FOCUS_SURGERY_LOAD_MODE", "fast")
    with pytest.raises(CheckpointError, match="FOCUS_SURGERY_LOAD_MODE=fast; use one of copy, mmap, mmap-nocrc"):
        load_mode()
    with pytest.raises(CheckpointError, match="unknown loader mode 'quick'"):
        read_checkpoint(SAMPLES[0], "quick")


def test_the_pipeline_maps_and_the_public_loader_copies(monkeypatch):
    """The CLI's pipeline drops what it read before it returns: it maps. read_checkpoint's tensors may outlive the
    call (and the file: torch.save to the same path truncates it), so its default copies."""
    monkeypatch.delenv("FOCUS_SURGERY_LOAD_MODE", raising=False)
    assert loading.load(SAMPLES[1]).stats.mode == "mmap"
    assert read_checkpoint(SAMPLES[1]).stats.mode == "copy"


def test_legacy_files_are_copied_in_every_mode(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(16.0), "b": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    for mode in LOAD_MODES:
        loaded = read_checkpoint(path, mode)
        assert (loaded.stats.storages, loaded.stats.copied_bytes, loaded.stats.mapped_bytes) == (2, 76, 0)
        assert torch.equal(loaded.content["w"], torch.arange(16.0)) and loaded.container == "legacy"
