"""Sizes taken from a file are checked before anything that size is allocated (issue 25.2, outside loader / ONNX).

Each hostile file is a few bytes away from a valid one: a ``.json`` beside a YOLOv5 ``.safetensors`` that says
``stride = [8, 16, 4096]`` (a 2x3x8192x12288 float64 verification input: 4.5 GiB), ``ch = 2**24`` (a 4.8 GB head
from 2.3 KB of head weights; it then passed verification with exit 0) or a leaf ``Conv2d`` with 2**24 input
channels, and a timm model whose ``pretrained_cfg.input_size`` is (3, 9000, 9000) (a 3.6 GiB input). Each run goes
through the real CLI in a forked child under an address-space limit (``_bounded_cli.py``): exit 2, one line naming
the file and what is wrong, no allocation failure, peak RSS within ``MEMORY_MARGIN`` of a valid verification,
nothing written, inputs unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from _bounded_cli import ROOT

YOLOV5 = ROOT / "tests" / "fixtures" / "yolov5-legacy" / "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt"
MEMORY_MARGIN = 256 << 20
ALLOCATION_FAILURE = re.compile(r"MemoryError|can't allocate|cannot allocate|out of memory|bad_alloc|std::", re.I)


@pytest.fixture(scope="module")
def pair(cli, tmp_path_factory) -> Path:
    """A genuine YOLOv5 ``.safetensors`` + ``.json`` pair written by the CLI."""
    out = tmp_path_factory.mktemp("pair") / "yolov5s.safetensors"
    outcome = cli.run("convert", YOLOV5, out)
    assert outcome.returncode == 0 and out.with_suffix(".json").is_file(), str(outcome)
    return out


@pytest.fixture(scope="module")
def baseline_rss(cli, pair) -> int:
    """Peak RSS of verifying the genuine pair against its source (rebuilds both models, runs both in float64)."""
    outcome = cli.run("verify", pair, YOLOV5)
    assert outcome.returncode == 0, str(outcome)
    return outcome.peak_rss


def edited_pair(pair: Path, folder: Path, name: str, edit) -> Path:
    """A copy of ``pair`` named ``name`` whose JSON architecture went through ``edit(config)``."""
    folder.mkdir(exist_ok=True)
    dst = folder / f"{name}.safetensors"
    shutil.copyfile(pair, dst)
    config = json.loads(pair.with_suffix(".json").read_text())
    edit(config["architecture"])
    dst.with_suffix(".json").write_text(json.dumps(config))
    return dst


def _stride(arch: dict) -> None:
    arch["detect"]["stride"] = [8.0, 16.0, 4096.0]


def _ch(arch: dict) -> None:
    arch["detect"]["ch"] = [2**24] * len(arch["detect"]["ch"])


def _leaf(arch: dict) -> None:
    path = next(p for p, spec in arch["leaves"].items() if spec["type"] == "Conv2d")
    arch["leaves"][path]["args"]["in_channels"] = 2**24


def timm_input_size(folder: Path) -> Path:
    import timm

    folder.mkdir(exist_ok=True)
    model = timm.create_model("test_resnet", pretrained=False)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 9000, 9000))
    path = folder / "timm-input-size.pt"
    torch.save({"model": model}, path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("stride", _stride, "verification input of shape 2x3x8192x12288"),
        ("ch", _ch, "reads ch=16777216 channels"),
        ("leaf", _leaf, "has a weight of shape"),
    ],
)
def test_numbers_in_the_json_are_checked_before_allocation(cli, pair, baseline_rss, tmp_path, name, edit, message):
    hostile = edited_pair(pair, tmp_path / "in", name, edit)
    before = {p.name: digest(p) for p in hostile.parent.iterdir()}
    outcome = cli.run("verify", hostile, YOLOV5)
    assert_refused(outcome, hostile, baseline_rss, message)
    assert {p.name: digest(p) for p in hostile.parent.iterdir()} == before, "input modified or something written"


def test_configured_input_size_is_checked_before_allocation(cli, baseline_rss, tmp_path):
    hostile = timm_input_size(tmp_path / "in")
    before = digest(hostile)
    outcome = cli.run("verify", hostile, hostile)
    assert_refused(outcome, hostile, baseline_rss, "verification input of shape 2x3x9000x9000")
    assert digest(hostile) == before and sorted(p.name for p in hostile.parent.iterdir()) == [hostile.name]


def assert_refused(outcome, src: Path, baseline: int, message: str) -> None:
    assert not outcome.timed_out and outcome.signal is None, str(outcome)
    lines = outcome.stderr_lines
    assert outcome.returncode == 2, str(outcome)
    assert len(lines) == 1 and src.name in lines[0], str(outcome)
    assert not ALLOCATION_FAILURE.search(lines[0]), f"refused only when an allocation failed: {lines[0]}"
    assert message in lines[0], f"message should say {message!r}: {lines[0]}"
    assert outcome.peak_rss <= baseline + MEMORY_MARGIN, (
        f"peak RSS {outcome.peak_rss / 2**20:.0f} MiB, bound {(baseline + MEMORY_MARGIN) / 2**20:.0f} MiB: {outcome}"
    )
