"""Review of the mapped loader (issue 19): what the pipeline returns must not keep its input mapped.

The pipeline reads in mode "mmap" because what it read is dropped before it returns (README); a report or an error
that still holds the converted content holds views of the input's mapping (and a descriptor of the file): a later
``torch.save`` to the input truncates it and any read of those views is a SIGBUS, and a loop over many files runs
out of descriptors. Counted in /proc/self/maps, never timed.
"""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import pytest
import torch

from focus_surgery import errors, files

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "checkpoints" / "yolo-focus-tiny.pt"
BACKBONE = ROOT / "checkpoints" / "focus-backbone.pt"

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="counts mappings in /proc/self/maps")


def _mappings_of(path: Path) -> int:
    gc.collect()
    name = os.fsdecode(os.path.realpath(path))
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip("\n").endswith(name))


def _descriptors_of(path: Path) -> int:
    target = os.path.realpath(path)
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == target)


@pytest.mark.parametrize("sample", [TINY, BACKBONE], ids=lambda p: p.name)
def test_a_returned_report_does_not_map_its_input(sample, tmp_path, monkeypatch):
    monkeypatch.delenv("FOCUS_SURGERY_LOAD_MODE", raising=False)  # the pipeline's own default: mmap
    src = tmp_path / sample.name
    shutil.copy(sample, src)
    report = files.convert_file(src, tmp_path / "out.pt")
    assert report.written == [str(tmp_path / "out.pt")]
    assert (_mappings_of(src), _descriptors_of(src)) == (0, 0), "the report still maps its input"
    torch.save({"other": torch.zeros(1)}, src)  # what training does to last.pt: truncates it in place
    assert report.to_dict()["written"] == [str(tmp_path / "out.pt")]


def test_a_failed_check_does_not_map_its_input(tmp_path, monkeypatch):
    monkeypatch.delenv("FOCUS_SURGERY_LOAD_MODE", raising=False)
    src = tmp_path / "in.pt"
    shutil.copy(BACKBONE, src)

    from focus_surgery.sources import plain

    real = plain.convert_state_dict

    def broken(sd, *args, **kwargs):
        out, stem = real(sd, *args, **kwargs)
        return {k: v.flip(0) if v.dim() == 4 and k.endswith("weight") else v for k, v in out.items()}, stem

    monkeypatch.setattr(plain, "convert_state_dict", broken)
    try:
        files.convert_file(src, tmp_path / "bad.pt", verify=True)
    except errors.VerificationFailed as error:  # kept past the except clause (its traceback's frames are not)
        report = error.report
    assert report.problem and not (tmp_path / "bad.pt").exists()
    assert _mappings_of(src) == 0, "a failed check's report still maps its input"


@pytest.mark.parametrize("mode", ["copy", "mmap"])
def test_a_file_that_shrinks_while_read_is_named(mode, tmp_path, monkeypatch):
    """A record read past the file's end (another process truncated it after its size was checked) is refused in one
    line that names the file, as every other loader error (the copy path; mmap where a record is not aligned)."""
    from focus_surgery.loader import CheckpointError, containers, read_checkpoint

    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(64.0)}, path)
    monkeypatch.setattr(containers, "RECORD_ALIGNMENT", 1 << 40)  # mmap: no record counts as aligned: copied
    monkeypatch.setattr(containers.os, "preadv", lambda fd, buffers, offset: 0)  # the bytes are gone
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path, mode)
    assert str(caught.value).startswith(f"{path}: ") and "shorter" in str(caught.value)
    assert "\n" not in str(caught.value)
