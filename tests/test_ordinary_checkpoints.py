"""Ordinary checkpoints that the safe loader must read (issue 9, "Ordinary files refused"): files written by the
YOLOv5 repository's own training scripts (master's train.py, v7.0's segmentation and classification scripts) and
an interrupted Ultralytics training run's ``last.pt``. They hold data, not code (a ``PosixPath`` in ``opt``, a
``Detect.forward`` reference reached through ``builtins.getattr``, a torchvision ``Compose``, an
``IterableSimpleNamespace``), and must ``inspect`` and ``convert`` with exit 0.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from _ultralytics_last_pt import write_interrupted_last_pt

FAMILY = Path(__file__).parent / "fixtures" / "yolov5-family"
YOLOV5_FILES = sorted(FAMILY.glob("*.pt"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fixtures_are_what_the_scripts_wrote():
    """The three files exist and hold the data-only globals that made them fail (so the tests below mean it)."""
    assert [p.name for p in YOLOV5_FILES] == [
        "yolov5s-cls-v7.0-d0.33-w0.0625-nc3-fp16.pt",
        "yolov5s-master-detect-d0.33-w0.0625-nc3-fp16.pt",
        "yolov5s-seg-v7.0-d0.33-w0.0625-nc3-fp16.pt",
    ]
    import zipfile

    for path, needle in zip(
        YOLOV5_FILES, (b"torchvision.transforms.transforms\nCompose", b"pathlib\nPosixPath", b"__builtin__\ngetattr")
    ):
        with zipfile.ZipFile(path) as archive:
            pkl = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        assert needle in pkl and b"pathlib\nPosixPath" in pkl, path.name


@pytest.mark.parametrize("path", YOLOV5_FILES, ids=lambda p: p.name.split("-d0")[0])
def test_yolov5_script_checkpoint_inspects(path, cli):
    before = digest(path)
    outcome = cli.run("inspect", path)
    assert outcome.returncode == 0, str(outcome)
    assert path.name in outcome.stdout.decode()
    assert digest(path) == before


@pytest.mark.parametrize("path", YOLOV5_FILES, ids=lambda p: p.name.split("-d0")[0])
def test_yolov5_script_checkpoint_converts(path, cli, tmp_path):
    dst = tmp_path / "converted.pt"
    # their stems are already 6x6 convs; heads without an Ultralytics counterpart convert in YOLOv5's own layout
    own_layout = ("--layout", "yolov5", "--to", "focus") if "-seg-" in path.name or "-cls-" in path.name else ()
    outcome = cli.run("convert", path, dst, "--verify", *own_layout)
    assert outcome.returncode == 0, str(outcome)
    assert dst.is_file() and [p.name for p in tmp_path.iterdir()] == ["converted.pt"]
    assert cli.run("inspect", dst).returncode == 0  # the result reads back


@pytest.fixture(scope="module")
def interrupted_last_pt(tmp_path_factory) -> Path:
    return write_interrupted_last_pt(tmp_path_factory.mktemp("ultralytics-run"))


@pytest.mark.slow
def test_interrupted_ultralytics_last_pt_loads_and_converts(interrupted_last_pt, cli, tmp_path):
    import zipfile

    with zipfile.ZipFile(interrupted_last_pt) as archive:
        pkl = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"IterableSimpleNamespace" in pkl  # what an unfinished run's last.pt holds
    before = digest(interrupted_last_pt)
    inspected = cli.run("inspect", interrupted_last_pt)
    assert inspected.returncode == 0, str(inspected)
    dst = tmp_path / "converted.pt"
    converted = cli.run("convert", interrupted_last_pt, dst, "--verify")
    assert converted.returncode == 0 and dst.is_file(), str(converted)
    assert digest(interrupted_last_pt) == before
