"""Review of the zip-copy writer (``loader.zip_rewrite``): attacks that found defects."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch

from focus_surgery.checkpoint_io import save_checkpoint
from focus_surgery.errors import CheckpointError
from focus_surgery.loader import read_checkpoint, zip_rewrite


def _src(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    sd = {"a": torch.randn(1000, dtype=torch.float64), "b": torch.randn(1000), "c": torch.randn(10)}
    path = tmp_path / "in.pt"
    torch.save(sd, path)
    return path, sd


def _replace_input(src: Path, body: Callable[[str, bytes], bytes | None]) -> None:
    """Replace ``src`` (after it was read) by an archive of the same records, each as ``body(name, data)`` makes it
    (None: left out)."""
    other = src.with_name("replacement.pt")
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(other, "w") as new:
        for info in old.infolist():
            data = body(info.filename, old.read(info))
            if data is not None:
                new.writestr(info.filename, data)
    os.replace(other, src)


def _write_refused_after_replacement(tmp_path: Path, body: Callable[[str, bytes], bytes | None], record: str) -> None:
    """Read the input, replace it by ``body``'s archive, then write a conversion of what was read: refused in one
    line naming ``record``, nothing left."""
    src, _ = _src(tmp_path)
    loaded = read_checkpoint(src, "mmap")
    content = dict(loaded.content)
    content["c"] = torch.zeros(10)
    _replace_input(src, body)
    dst = tmp_path / "out" / "out.pt"
    dst.parent.mkdir()
    with pytest.raises(CheckpointError, match="changed since it was read") as error:
        save_checkpoint(content, dst, like=loaded)
    assert "\n" not in str(error.value) and record in str(error.value)
    assert list(dst.parent.iterdir()) == []


@pytest.mark.parametrize("mode", ["copy", "mmap", "mmap-nocrc"])
def test_kept_storage_changed_in_place_is_written_as_it_is_now(tmp_path: Path, mode: str) -> None:
    src, sd = _src(tmp_path)
    loaded = read_checkpoint(src, mode)
    content = loaded.content
    content["a"].mul_(2)  # same storage object as read, new bytes: copying the input's record would lose this
    content["c"] = torch.zeros(10)  # a new storage, so the zip copy applies
    dst = tmp_path / "out.pt"
    with zip_rewrite.recording() as outcomes:
        save_checkpoint(content, dst, like=loaded)
    assert outcomes, "the zip copy ran"
    back = torch.load(dst, weights_only=True)
    assert torch.equal(back["a"], sd["a"] * 2) and torch.equal(back["b"], sd["b"])
    assert torch.equal(back["c"], torch.zeros(10))
    assert outcomes[0].storages_written == 2 and outcomes[0].records_copied >= 1  # "b" still copied
    with zipfile.ZipFile(dst) as archive:
        assert archive.testzip() is None  # each record's CRC-32 (local header and directory) right
    for m in ("copy", "mmap"):  # the loader checks every CRC-32 in these modes
        assert torch.equal(read_checkpoint(dst, m).content["a"], sd["a"] * 2)


def test_input_replaced_between_load_and_write_keeps_what_was_loaded(tmp_path: Path) -> None:
    src, sd = _src(tmp_path)
    loaded = read_checkpoint(src, "copy")
    content = dict(loaded.content)
    content["c"] = torch.zeros(10)
    # same records and sizes, storages all 7s
    _replace_input(src, lambda name, body: b"\x07" * len(body) if "/data/" in name else body)
    dst = tmp_path / "out.pt"
    save_checkpoint(content, dst, like=loaded)
    back = torch.load(dst, weights_only=True)
    assert torch.equal(back["a"], sd["a"]) and torch.equal(back["b"], sd["b"])  # not the new file's bytes


def test_unreferenced_storage_record_present_at_load_still_converts(tmp_path: Path) -> None:
    """torch.load and the loader read a file with a storage record no pickle entry names: its conversion did before
    the zip copy (torch.save drops the record) and still does; only such a record appearing after the read refuses."""
    from focus_surgery.files import convert_file

    src = tmp_path / "in.pt"
    torch.save({"model.0.conv.conv.weight": torch.randn(16, 12, 3, 3), "x": torch.randn(16, 16, 3, 3)}, src)
    with zipfile.ZipFile(src, "a") as archive:
        prefix = archive.infolist()[0].filename.split("/")[0]
        archive.writestr(f"{prefix}/data/999", b"\0" * 64)
    before = src.read_bytes()
    report = convert_file(src, tmp_path / "out.pt", to="conv", verify=True)
    assert report["verification"]["passed"] and src.read_bytes() == before
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    assert back["model.0.conv.weight"].shape == (16, 3, 6, 6)
    with zipfile.ZipFile(tmp_path / "out.pt") as archive:
        assert not any(i.filename.endswith("data/999") for i in archive.infolist())


def test_other_record_changed_since_the_read_refused(tmp_path: Path) -> None:
    """The input replaced after the read by one whose ``byteorder`` says big: copying it would make torch.load swap
    every storage's bytes; the write is refused, nothing is left."""
    _write_refused_after_replacement(
        tmp_path, lambda name, body: b"big" if name.endswith("/byteorder") else body, "byteorder"
    )


def test_input_replaced_by_a_fifo_after_the_read_refused_not_hung(tmp_path: Path) -> None:
    """The path now names a FIFO no one writes: opening it to copy would block for ever; the write is refused."""
    import subprocess
    import sys

    script = (
        "import os, sys, torch\n"
        "from focus_surgery.checkpoint_io import save_checkpoint\n"
        "from focus_surgery.errors import CheckpointError\n"
        "from focus_surgery.loader import read_checkpoint\n"
        "src, dst = sys.argv[1], sys.argv[2]\n"
        "torch.save({'a': torch.randn(1000), 'c': torch.randn(10)}, src)\n"
        "loaded = read_checkpoint(src, 'mmap')\n"
        "content = dict(loaded.content); content['c'] = torch.zeros(10)\n"
        "os.unlink(src); os.mkfifo(src)\n"
        "try:\n"
        "    save_checkpoint(content, dst, like=loaded)\n"
        "except CheckpointError as error:\n"
        "    print('refused:', error)\n"
    )
    dst = tmp_path / "out" / "out.pt"
    dst.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "in.pt"), str(dst)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("refused:") and "not a regular file" in run.stdout
    assert list(dst.parent.iterdir()) == []


def test_record_gone_since_the_read_refused(tmp_path: Path) -> None:
    """The input replaced after the read by one without its ``version`` record: the copy wrote an archive torch.load
    refuses ("Expected hasRecord("version")"); the write is refused instead, nothing is left."""
    _write_refused_after_replacement(
        tmp_path, lambda name, body: None if name.endswith("/version") else body, "version"
    )


def test_storage_rewritten_in_place_in_the_file_after_an_mmap_read_refused(tmp_path: Path) -> None:
    """Mode mmap maps the file privately: pages not yet written follow the file. A kept storage's bytes rewritten in
    the same file (CRC-32s updated to match) after the read are then both what memory and the file hold, but not what
    was read and converted: the write is refused, not a mix of two files."""
    import io
    import struct
    import zlib

    src, _ = _src(tmp_path)
    loaded = read_checkpoint(src, "mmap")
    content = dict(loaded.content)
    content["c"] = torch.zeros(10)
    raw = bytearray(src.read_bytes())
    key = next(k for k, s, _ in loaded.stats.keys.values() if s.nbytes() == 1000 * 8)  # "a", float64
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(f"/data/{key}"))
    n, e = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + n + e
    raw[start : start + info.file_size] = b"\x07" * info.file_size
    crc = struct.pack("<I", zlib.crc32(b"\x07" * info.file_size))
    raw[info.header_offset + 14 : info.header_offset + 18] = crc
    at = raw.index(b"PK\x01\x02")
    while struct.unpack("<I", raw[at + 42 : at + 46])[0] != info.header_offset:
        at += 46 + sum(struct.unpack("<HHH", raw[at + 28 : at + 34]))
    raw[at + 16 : at + 20] = crc
    with open(src, "r+b") as handle:  # the same file, rewritten where it lies (the mapping sees it)
        handle.write(raw)
    dst = tmp_path / "out" / "out.pt"
    dst.parent.mkdir()
    with pytest.raises(CheckpointError, match="changed since it was read"):
        save_checkpoint(content, dst, like=loaded)
    assert list(dst.parent.iterdir()) == []
