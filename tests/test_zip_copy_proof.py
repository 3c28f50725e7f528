"""``convert --verify`` of a zip copy: the proof reads the written archive once (every record's CRC-32, the copied
ones against the input's) and compares only what the copy did not copy. A tensor of the written file that views a
record copied byte for byte from the record its original views (same key, dtype, shape, strides, offset) is the
same bits by construction (``compare.identical_by_copy``); every other tensor is still compared bit for bit."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

from focus_surgery.errors import VerificationFailed
from focus_surgery.files import convert_file
from focus_surgery.loader import read_checkpoint, zip_rewrite
from focus_surgery.sources import compare

STEM = "model.0.conv.conv.weight"
STEM_BYTES = 16 * 12 * 3 * 3 * 4


@pytest.fixture
def src(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    sd = {STEM: torch.randn(16, 12, 3, 3)}
    for i in range(1, 8):
        sd[f"model.{i}.conv.weight"] = torch.randn(64, 64, 3, 3)
        sd[f"model.{i}.bn.running_var"] = torch.rand(64)
    path = tmp_path / "in.pt"
    torch.save(sd, path)
    return path


@pytest.fixture
def compared(monkeypatch) -> list[int]:
    """Bytes ``same_bits`` read to compare (each call: both tensors' bytes)."""
    seen: list[int] = []
    real = compare.same_bits

    def counting_equal(a, b):
        seen.append(a.numel() * a.element_size() + b.numel() * b.element_size())
        return real_equal(a, b)

    real_equal = torch.equal
    monkeypatch.setattr(compare.torch, "equal", counting_equal)
    assert compare.same_bits is real
    return seen


def test_only_what_was_not_copied_is_compared(src: Path, tmp_path: Path, compared: list[int]) -> None:
    report = convert_file(src, tmp_path / "out.pt", to="conv", verify=True)
    assert report["verification"]["passed"] and report["write"]["path"] == "zip-copy"
    check = report["write"]["copied_identical"]
    assert check["passed"] and check["records"] == report["write"]["records_copied"] and check["other_records"] >= 2
    storages = sum(t.nbytes for t in torch.load(src, weights_only=True).values())
    # the stem's bytes only, a few times over (the in-memory check, the written state dict, every tensor of the file)
    assert sum(compared) <= 8 * STEM_BYTES < storages / 10


def test_a_copied_record_written_wrong_is_refused(src: Path, tmp_path: Path, monkeypatch) -> None:
    """A copy that writes other bytes than it checked: the read-back's CRC-32 of the written record refuses it."""
    real = zip_rewrite._stream

    def flipping(fd, offset, size, out, buffer):
        crc = real(fd, offset, size, out, buffer)
        if hasattr(out, "seek") and size >= 64 * 64 * 9 * 4:  # a conv weight's record, just written
            end = out.tell()
            out.seek(end - 1)
            out.write(b"\x00" if buffer[size % len(buffer) - 1 if size % len(buffer) else -1] else b"\x01")
            out.seek(end)
        return crc

    monkeypatch.setattr(zip_rewrite, "_stream", flipping)
    with pytest.raises(VerificationFailed, match="fails its CRC-32 check in the written file"):
        convert_file(src, tmp_path / "out.pt", to="conv", verify=True)
    assert not (tmp_path / "out.pt").exists()


def swap_is_refused(src: Path, tmp_path: Path, monkeypatch) -> None:
    """A writer that swaps two kept tensors of one shape: refused by ``--verify``, nothing written."""
    real = zip_rewrite._pickled

    def swapped(content, like):
        content = dict(content)
        content["model.1.conv.weight"], content["model.2.conv.weight"] = (
            content["model.2.conv.weight"],
            content["model.1.conv.weight"],
        )
        return real(content, like)

    monkeypatch.setattr(zip_rewrite, "_pickled", swapped)
    with pytest.raises(VerificationFailed, match="differ"):
        convert_file(src, tmp_path / "out.pt", to="conv", verify=True)
    assert not (tmp_path / "out.pt").exists()


def test_a_tensor_written_under_another_name_is_refused(src: Path, tmp_path: Path, monkeypatch) -> None:
    """Two kept tensors of one shape swapped by the writer: each views a copied record, but not the one its original
    views, so it is compared bit for bit and the swap is found."""
    swap_is_refused(src, tmp_path, monkeypatch)


def test_an_input_changed_before_the_copy_is_compared_in_full(src: Path, tmp_path: Path, compared, monkeypatch):
    """The input touched after the conversion's read: the copy no longer vouches for what the proof's own read holds,
    so every tensor is compared bit for bit."""
    import focus_surgery.files as files

    monkeypatch.setenv("FOCUS_SURGERY_LOAD_MODE", "copy")  # storages copied: a touched input is still copied from
    real = files.capture

    def touched_first(*args, **kwargs):
        stat = src.stat()
        os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "capture", touched_first)
    report = convert_file(src, tmp_path / "out.pt", to="conv", verify=True)
    assert report["verification"]["passed"] and report["write"]["path"] == "zip-copy"
    storages = sum(t.nbytes for t in torch.load(src, weights_only=True).values())
    assert sum(compared) >= 2 * (storages - STEM_BYTES)


def test_copied_views_needs_the_same_key_and_the_same_version(src: Path, tmp_path: Path) -> None:
    loaded = read_checkpoint(src, "mmap-nocrc")
    content = dict(loaded.content)
    content[STEM] = torch.zeros(16, 3, 6, 6)
    with zip_rewrite.recording() as outcomes:
        from focus_surgery.checkpoint_io import save_checkpoint

        save_checkpoint(content, tmp_path / "out.pt", like=loaded)
    (outcome,) = outcomes
    original, written = read_checkpoint(src, "mmap-nocrc"), read_checkpoint(tmp_path / "out.pt", "mmap-nocrc")
    proven = zip_rewrite.copied_views(outcome, original.stats, written.stats)
    a, b = original.content, written.content
    assert proven(a["model.1.conv.weight"], b["model.1.conv.weight"])
    assert not proven(a["model.1.conv.weight"], b["model.2.conv.weight"])  # another record
    assert not proven(a[STEM], b[STEM])  # not copied
    assert not proven(torch.randn(3), b["model.1.bn.running_var"])  # not of the original's read
    original.stats.identity = (*original.stats.identity[:-1], original.stats.identity[-1] + 1)
    assert zip_rewrite.copied_views(outcome, original.stats, written.stats) is None  # another version of the input


def test_a_new_record_with_a_wrong_crc_is_refused(src: Path, tmp_path: Path, monkeypatch) -> None:
    """The read-back of a zip copy skips the loader's CRC pass: ``check_copied`` checks the records it did not copy
    (the pickle, the new stem) against the written archive's own CRC-32s, so a wrong one still refuses the file."""
    names = set(zipfile.ZipFile(src).namelist())
    real = zip_rewrite._central

    def wrong_crc_for_new_records(entries, start):
        entries = [(n, at, crc ^ 1 if n.decode() not in names else crc, size) for n, at, crc, size in entries]
        return real(entries, start)

    monkeypatch.setattr(zip_rewrite, "_central", wrong_crc_for_new_records)
    with pytest.raises(VerificationFailed, match="fails its CRC-32 check"):
        convert_file(src, tmp_path / "out.pt", to="conv", verify=True)
    assert not (tmp_path / "out.pt").exists()
