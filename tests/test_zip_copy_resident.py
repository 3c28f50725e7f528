"""The zip copy's memory: kept storages that are views of the input's private mapping, never written since the read,
are copied from the file (``Outcome.bytes_from_file``), so their pages never become resident in the process; a page
written in place (the process's own copy, per ``/proc/self/pagemap``) sends its storage through memory instead."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from focus_surgery.checkpoint_io import save_checkpoint
from focus_surgery.loader import read_checkpoint, zip_rewrite

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/pagemap is Linux's")

BIG = 1 << 20  # floats per large storage: 4 MiB, many pages each


def _input(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    sd = {f"big{i}": torch.randn(BIG) for i in range(6)}
    sd |= {"small0": torch.randn(10), "small1": torch.randn(10), "stem": torch.randn(16, 12, 3, 3)}
    path = tmp_path / "in.pt"
    torch.save(sd, path)
    return path, sd


def _resident_file_bytes() -> int:
    """Resident pages of mapped files: ``RssFile``, plus ``RssShmem`` where the file lies on tmpfs."""
    with open("/proc/self/status") as status:
        return sum(int(line.split()[1]) * 1024 for line in status if line.startswith(("RssFile:", "RssShmem:")))


def _convert(loaded, tmp_path: Path) -> tuple[zip_rewrite.Outcome, dict[str, torch.Tensor], Path]:
    content = dict(loaded.content)
    content["stem"] = torch.zeros(16, 3, 6, 6)  # a new storage: the zip copy applies
    dst = tmp_path / "out.pt"
    with zip_rewrite.recording() as outcomes:
        save_checkpoint(content, dst, like=loaded)
    (outcome,) = outcomes
    return outcome, content, dst


def test_unwritten_mapped_storages_are_copied_from_the_file(tmp_path: Path, monkeypatch) -> None:
    src, sd = _input(tmp_path)
    loaded = read_checkpoint(src, "mmap-nocrc")
    from_memory: list[int] = []
    real = zip_rewrite._memory_view
    monkeypatch.setattr(zip_rewrite, "_memory_view", lambda s: from_memory.append(s.nbytes()) or real(s))
    before = _resident_file_bytes()
    outcome, _, dst = _convert(loaded, tmp_path)
    grown = _resident_file_bytes() - before
    kept = sum(t.nbytes for k, t in sd.items() if k != "stem")
    assert outcome.bytes_from_file == kept and from_memory == []  # every kept storage read from the file
    assert grown < 0.25 * src.stat().st_size, grown  # the 24 MiB of mapped storages never became resident
    back = torch.load(dst, weights_only=True)
    assert all(torch.equal(back[k], sd[k]) for k in sd if k != "stem")


def test_a_storage_written_in_place_goes_through_memory_the_rest_from_the_file(tmp_path: Path) -> None:
    src, sd = _input(tmp_path)
    loaded = read_checkpoint(src, "mmap-nocrc")
    loaded.content["big3"][BIG // 2] = 42.0  # one page of one storage becomes the process's own copy
    loaded.content["small1"][0] = 7.0  # a small storage: its page is shared with its neighbours
    outcome, content, dst = _convert(loaded, tmp_path)
    back = torch.load(dst, weights_only=True)
    for key, tensor in content.items():
        assert torch.equal(back[key], tensor), key
    assert back["big3"][BIG // 2] == 42.0 and back["small1"][0] == 7.0
    # from the file: four big storages; from memory: big3 (written), big5 (its last page holds small1 too) and the rest
    assert outcome.bytes_from_file == 4 * BIG * 4
    assert outcome.storages_written == 3  # the two edited in place and the new stem


@pytest.mark.parametrize("pagemap", ["missing", "all zeros", "unreadable after the first read"])
def test_a_pagemap_that_cannot_tell_pages_apart_is_not_trusted(tmp_path: Path, monkeypatch, pagemap: str) -> None:
    """A ``/proc/self/pagemap`` that reads as all zeros (an emulated /proc) would call every page unwritten and copy
    the file's bytes over an edit: the writer's probe page must read as written, else memory is read throughout."""
    src, sd = _input(tmp_path)
    loaded = read_checkpoint(src, "mmap-nocrc")
    loaded.content["big3"][BIG // 2] = 42.0
    real_open = os.open

    opened = [0]

    def fake_open(path, *args, **kwargs):
        if str(path) == "/proc/self/pagemap":
            opened[0] += 1
            if pagemap == "missing" or (pagemap.startswith("unreadable") and opened[0] > 1):
                raise FileNotFoundError(path)
            if pagemap.startswith("unreadable"):
                return real_open(path, *args, **kwargs)
            return real_open("/dev/zero", *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(zip_rewrite.os, "open", fake_open)
    outcome, content, dst = _convert(loaded, tmp_path)
    assert outcome.bytes_from_file == 0
    back = torch.load(dst, weights_only=True)
    assert back["big3"][BIG // 2] == 42.0 and torch.equal(back["big0"], sd["big0"])


@pytest.mark.parametrize("mode", ["copy", "mmap"])
def test_copied_storages_stay_in_memory_checked_mapped_ones_come_from_the_file(tmp_path: Path, mode: str) -> None:
    src, sd = _input(tmp_path)
    loaded = read_checkpoint(src, mode)
    outcome, _, dst = _convert(loaded, tmp_path)
    back = torch.load(dst, weights_only=True)
    assert all(torch.equal(back[k], sd[k]) for k in sd if k != "stem")
    if mode == "copy":
        assert outcome.bytes_from_file == 0  # the process's own copies: nothing maps the file
    else:  # mode mmap (its CRC-32 pass read the mapping): views no write reached still come from the file
        assert outcome.bytes_from_file == sum(t.nbytes for k, t in sd.items() if k != "stem")
