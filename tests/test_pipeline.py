"""The one pipeline: options checked once against the sources' declared table, a registry whose answer does not
depend on registration order, one typed report, one verification failure that carries it, one error family."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import focus_surgery as fs
from focus_surgery import errors, files, sources
from focus_surgery.layers import Focus
from focus_surgery.report import ConvertReport
from focus_surgery.sources import Loaded, source_for
from focus_surgery.yolov5.convert import CONFIG_FORMAT


def _focus_state_dict(path: Path) -> Path:
    torch.save(torch.nn.Sequential(Focus(3, 8, 3)).state_dict(), path)
    return path


def _loaded_examples(tmp_path: Path) -> dict[str, Loaded]:
    """One file each source claims, as the safe load reads it (content and the globals named)."""
    stem = {"backbone.backbone.stem.conv.conv.weight": torch.zeros(8, 12, 3, 3)}
    return {
        "state_dict": Loaded(tmp_path / "a.pt", {"0.conv.conv.weight": torch.zeros(8, 12, 3, 3)}),
        "yolox": Loaded(tmp_path / "b.pt", {"start_epoch": 1, "model": stem, "optimizer": {}}),
        "darknet": Loaded(tmp_path / "c.pt", {"model": {"module_list.1.Conv2d.weight": torch.zeros(8, 12, 3, 3)}}),
        "yolov5-safetensors": Loaded(
            tmp_path / "d.safetensors", {"w": torch.zeros(1)}, metadata={"format": CONFIG_FORMAT}
        ),
        "yolov5": Loaded(tmp_path / "e.pt", {"model": None}, frozenset({"models.yolo.Model", "models.common.Focus"})),
        "yolov7": Loaded(tmp_path / "f.pt", {"model": None}, frozenset({"models.yolo.Model", "models.common.ReOrg"})),
        "onnx": Loaded(tmp_path / "g.onnx", object()),
        "mmengine": Loaded(
            tmp_path / "h.pth",
            {"meta": {"epoch": 1}, "state_dict": stem, "message_hub": {}},
            frozenset({"mmengine.logging.history_buffer.HistoryBuffer"}),
        ),
    }


def test_registry_answer_does_not_depend_on_registration_order(tmp_path, monkeypatch):
    examples = _loaded_examples(tmp_path)
    expected = {name: source_for(loaded).name for name, loaded in examples.items()}
    assert expected == {name: name for name in examples}  # each file goes to its own source
    registered = list(sources.SOURCES)
    for seed in range(5):
        monkeypatch.setattr(sources, "SOURCES", [])
        for source in random.Random(seed).sample(registered, len(registered)):
            sources.register_source(source)
        assert [s.name for s in sources.SOURCES] == [s.name for s in registered]
        assert {name: source_for(loaded).name for name, loaded in examples.items()} == expected


def test_options_are_checked_against_the_declared_table(tmp_path):
    src = _focus_state_dict(tmp_path / "sd.pt")
    cases = [
        ({"to": "s2d"}, "out.pt", errors.ConversionError, "a state_dict checkpoint converts --to conv or focus"),
        ({"scope": "all"}, "out.pt", errors.ConversionError, "converts --scope stem, not all"),
        ({"to": "nope"}, "out.pt", errors.ConversionError, "--to 'nope': use conv, focus, s2d, fastest"),
        ({"layout": "nope"}, "out.pt", errors.ConversionError, "--layout 'nope'"),
        ({"colour": "red"}, "out.pt", errors.ConversionError, "unknown option 'colour'"),
        ({}, "out.onnx", errors.CheckpointError, "unknown output type '.onnx' for a state_dict checkpoint"),
    ]
    for options, dst, error, message in cases:
        with pytest.raises(error, match=message):
            files.convert_file(src, tmp_path / dst, **options)
        assert not (tmp_path / dst).exists()
    rows = {row["source"]: row for row in files.accepted()}
    assert rows["yolov5"]["outputs"] == {"ultralytics": (".pt", ".pth", ".safetensors"), "yolov5": (".pt", ".pth")}
    assert rows["onnx"]["outputs"] == {"": (".onnx",)} and rows["state_dict"]["to"] == ("conv", "focus", "fastest")
    assert [r["source"] for r in files.accepted()][-1] == "state_dict"  # the least specific is asked last


def test_convert_file_returns_one_typed_report(tmp_path):
    src, dst = _focus_state_dict(tmp_path / "sd.pt"), tmp_path / "conv.pt"
    report = files.convert_file(src, dst, verify=True)
    assert isinstance(report, ConvertReport) and report.source == "state_dict" and report.written == [str(dst)]
    assert report["max_abs_err"] == report.max_abs_err <= 1e-10 and report.problem is None
    assert report.lines()[0] == (  # a state dict's stem check replays the assumed order: never "verified"
        f"converted {src} -> {dst} (stem to conv), layout only (assumed order and block size, not checkable from "
        f"the weights): max_abs_err={report.max_abs_err:.3e}"
    )
    data = report.to_dict()
    assert {"src", "dst", "source", "to", "stem", "verification", "max_abs_err", "summary", "written"} <= set(data)


def test_verification_failure_carries_its_report_and_writes_nothing(tmp_path, monkeypatch):
    from focus_surgery.sources import plain

    real = plain.convert_state_dict

    def broken(sd, *args, **kwargs):
        out, stem = real(sd, *args, **kwargs)
        return {
            k: v.flip(0) if k == stem.weight_key.replace(".conv.conv.", ".conv.") else v for k, v in out.items()
        }, stem

    monkeypatch.setattr(plain, "convert_state_dict", broken)
    src, dst = _focus_state_dict(tmp_path / "sd.pt"), tmp_path / "conv.pt"
    with pytest.raises(errors.VerificationFailed, match="verification failed") as caught:
        files.convert_file(src, dst, verify=True)
    assert isinstance(caught.value.report, ConvertReport) and caught.value.report.problem
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sd.pt"]


def test_one_error_family_with_the_old_names():
    from focus_surgery import checkpoint_io, loader, stems, surgery
    from focus_surgery.onnx_graph import OnnxSurgeryError, OnnxVerificationError

    family = errors.FocusSurgeryError
    assert issubclass(family, ValueError)
    for error in (
        errors.CheckpointError,
        errors.ConversionError,
        errors.VerificationFailed,
        stems.NotSpaceToDepth,
        OnnxSurgeryError,
    ):
        assert issubclass(error, family)
    assert loader.CheckpointError is checkpoint_io.CheckpointError is errors.CheckpointError
    assert fs.ConversionError is surgery.ConversionError is errors.ConversionError
    assert surgery.VerificationError is OnnxVerificationError is sources.VerificationFailed is errors.VerificationFailed
