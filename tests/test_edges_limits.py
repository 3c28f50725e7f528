"""The folder runner's per-file memory limit and the forward guard, each at its limit from both sides: just inside
accepted, just outside refused with one line (and the command line's --max-memory turned into exactly that limit)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery import cli, folder
from focus_surgery.folder import convert_isolated
from focus_surgery.limits import AllocationRefused, checked_forward, forward_memory_limit
from tests._folder_workers import by_content

MIB = 1 << 20


def _jobs(tmp_path: Path, kinds: list[str]) -> list[tuple[str, str]]:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    jobs = []
    for i, kind in enumerate(kinds):
        src = tmp_path / "in" / f"{i}.pt"
        src.write_text(kind)
        jobs.append((str(src), str(tmp_path / "out" / src.name)))
    return jobs


def test_folder_memory_limit_at_its_edge(tmp_path):
    """A child may allocate its budget beyond what it had mapped when it started: 7/8 of 96 MiB is accepted, 9/8 is
    refused as that file's one-line failure (a limit 1024x too large, or one that forgets what the forked child
    already maps, fails one side)."""
    budget = 96 * MIB
    kinds = [f"allocate {budget * 7 // 8}", f"allocate {budget * 9 // 8}", f"allocate {budget // 2}"]
    outcomes = convert_isolated(_jobs(tmp_path, kinds), by_content, {}, workers=1, memory_bytes=budget)
    inside, outside, half = outcomes
    assert inside.error is None and inside.result == {"allocated": budget * 7 // 8}
    assert half.error is None
    assert outside.result is None and "memory limit of 0.1 GiB (--max-memory)" in outside.error
    assert "\n" not in outside.error


@pytest.mark.parametrize("gib,expected", [("0.25", 1 << 28), ("8", 8 << 30), (None, 8 << 30)])
def test_max_memory_flag_is_the_per_file_limit_in_bytes(tmp_path, monkeypatch, gib, expected):
    seen = {}

    def record(jobs, work, options, workers, timeout_s, memory_bytes, progress):
        seen.update(memory=memory_bytes, timeout=timeout_s)
        return [folder.FileOutcome(src, dst, result={"src": src, "dst": dst}) for src, dst in jobs]

    monkeypatch.setattr(folder, "convert_isolated", record)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.pt").write_bytes(b"x")
    flags = [] if gib is None else ["--max-memory", gib]
    assert cli.main(["convert", str(tmp_path / "in"), str(tmp_path / "out"), *flags]) == 0
    assert seen["memory"] == expected and seen["timeout"] == 300.0
    assert folder.DEFAULT_MEMORY_GB * 2**30 == 8 << 30  # the library default is the command line's


# ------------------------------------------------------------------------------------------------ forward guard


def _guarded(limit: int, fn):
    with forward_memory_limit(limit), checked_forward():
        return fn()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.uint8])
def test_factory_output_at_the_limit(dtype):
    """A factory (no tensor input) sized on the meta device: exactly the limit passes, one element more is refused."""
    n, size = 1000, torch.empty(0, dtype=dtype).element_size()
    assert _guarded(n * size, lambda: torch.ones(n, dtype=dtype)).numel() == n
    with pytest.raises(AllocationRefused) as info:
        _guarded(n * size, lambda: torch.ones(n + 1, dtype=dtype))
    assert "\n" not in str(info.value) and "ones" in str(info.value)


def test_operation_output_at_the_limit_counts_bytes_not_elements():
    x = torch.rand(250, dtype=torch.float32)  # 1000 bytes
    assert torch.equal(_guarded(1000, lambda: x + 1), x + 1)
    with pytest.raises(AllocationRefused):
        _guarded(999, lambda: x + 1)
    with pytest.raises(AllocationRefused):  # float64: 2000 bytes for the same 250 elements
        _guarded(1999, lambda: x.double() * 2)


def test_every_output_of_an_operation_counts():
    """``max(dim)`` returns values (float32) and indices (int64): the guard charges their sum."""
    x = torch.rand(10, 100)
    total = 10 * 4 + 10 * 8
    values, _ = _guarded(total, lambda: x.max(dim=1))
    assert torch.equal(values, x.max(dim=1).values)
    with pytest.raises(AllocationRefused):
        _guarded(total - 1, lambda: x.max(dim=1))


class _Upsample(nn.Module):
    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.conv(x), scale_factor=self.factor)


def test_verify_under_the_limit_at_its_edge():
    """``verify`` runs in float64: a (1, 3, 8, 8) input upsampled 4x is 3 * 32 * 32 * 8 = 24576 bytes per output."""
    x, model = torch.rand(1, 3, 8, 8), _Upsample(4)
    with forward_memory_limit(24576):
        assert fs.verify(model, model, inputs=x).passed
    with forward_memory_limit(24575), pytest.raises(AllocationRefused, match="upsample|interpolate"):
        fs.verify(model, model, inputs=x)


def test_folder_children_apply_the_cli_forward_limit(tmp_path, monkeypatch):
    """Each folder child converts under the command line's forward limit (1 GiB), not unbounded."""
    from focus_surgery import files
    from focus_surgery.limits import current_limit

    monkeypatch.setattr(files, "convert_one", lambda src, dst, args: {"limit": current_limit()})
    result = folder._convert_in_child(str(tmp_path / "a.pt"), str(tmp_path / "out" / "a.pt"), vars(_args()))
    assert result == {"limit": cli.FORWARD_LIMIT} and cli.FORWARD_LIMIT == 1 << 30


def _args() -> argparse.Namespace:
    return argparse.Namespace(workers=1)
