"""The way back: ``convert --layout yolov5`` of Ultralytics files holding YOLOv5 models (converted here, or trained
here by Ultralytics), checked against what YOLOv5's own code computed on the files written when the fixtures were
made (tests/fixtures/yolov5-wayback: ``attempt_load`` and ``torch.load`` + forward at the release's tag); and "nothing
to do" for a file that already is what was asked."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from focus_surgery.cli import main
from focus_surgery.errors import VerificationFailed
from focus_surgery.files import convert_file
from focus_surgery.loader import read_checkpoint
from focus_surgery.yolov5 import layout
from focus_surgery.yolov5.rebuild import rebuild, yolov5_checkpoint

HERE = Path(__file__).parent / "fixtures" / "yolov5-wayback"
_spec = importlib.util.spec_from_file_location("wayback_fixture", HERE / "make_fixture.py")
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)
CASES = fixture.CASES
V7 = Path(__file__).parent / "fixtures" / "yolov5-val" / "yolov5s-v7.0-w0.0625-nc3-seed7.pt"
V5 = Path(__file__).parent / "fixtures" / "yolov5-legacy" / "yolov5s-v5.0-d0.33-w0.125-nc3-seed102-fp32.pt"


def pickle_globals(path: Path) -> set[str]:
    """``module name`` of every GLOBAL the file's pickle names (torch.save writes protocol 2: GLOBAL only)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    ops = list(pickletools.genops(data))
    assert not any(op.name == "STACK_GLOBAL" for op, _, _ in ops)
    return {arg for op, arg, _ in ops if op.name == "GLOBAL"}


def _written(case: str, tmp_path: Path) -> tuple[Path, dict]:
    src = fixture.ultralytics_input(case, tmp_path)
    before = src.read_bytes()
    dst = tmp_path / f"{case}-yolov5.pt"
    report = convert_file(src, dst, layout="yolov5", to=CASES[case][1], verify=True)
    assert src.read_bytes() == before and report["written"] == [str(dst)]
    return dst, report.to_dict()


@pytest.mark.parametrize("case", list(CASES))
def test_written_file_is_the_one_yolov5_loaded_and_gives_its_outputs_in_float64(case, tmp_path):
    dst, report = _written(case, tmp_path)
    tag = CASES[case][2]
    assert report["release"] == tag and report["verification"]["release_read_back"] == tag
    assert report["max_abs_err"] < 1e-9
    info = json.loads((HERE / f"{case}.json").read_text())
    content = read_checkpoint(dst).content
    assert fixture.describe(content) == info["describe"]  # the records YOLOv5's own code loaded, unchanged
    assert list(content) == list(layout.CHECKPOINT_KEYS[tag])  # the keys its train.py writes
    if content.get("ema") is not None:  # train.py's ModelEMA counts on: `updates += 1`
        assert isinstance(content["updates"], int)
    ref = np.load(HERE / f"{case}.npz")
    x = torch.from_numpy(fixture.fixed_input())
    ckpt = yolov5_checkpoint(content, dst)
    for key in ("inference", "model"):
        model_key = ("ema" if content.get("ema") is not None else "model") if key == "inference" else "model"
        model = rebuild(dataclasses.replace(ckpt, model_key=model_key))[0].double().eval()
        with torch.no_grad():
            out, raw = model(x)
        for i, level in enumerate(raw):  # the head's logits: the same float64 operations as YOLOv5's
            np.testing.assert_array_equal(level.numpy(), ref[f"{key}/raw{i}"])
        y = ref[f"{key}/y"]  # YOLOv5's (B, N, xywh + obj + classes)
        ours = out.permute(0, 2, 1).numpy()  # (B, N, xywh + obj * classes)
        scale = np.abs(y[..., :4]).max()
        assert np.abs(ours[..., :4] - y[..., :4]).max() <= 1e-13 * scale
        assert np.abs(ours[..., 4:] - y[..., 5:] * y[..., 4:5]).max() <= 1e-15
        if key == "inference":  # attempt_load: Conv+BN fused in float32, run in float32
            fused = ref["attempt_load/y"]
            assert np.abs(fused[..., :4] - y[..., :4]).max() <= 1e-4 * scale
    if case == "v7.0-last":  # both models written: train.py --weights tunes `model`, attempt_load runs `ema`
        assert np.abs(ref["model/raw0"] - ref["inference/raw0"]).max() > 1e-3


@pytest.mark.parametrize("case", list(CASES))
def test_written_file_pickles_only_yolov5_and_torch_classes(case, tmp_path):
    dst, _ = _written(case, tmp_path)
    names = pickle_globals(dst)
    modules = {n.split(" ")[0] for n in names}
    assert "models.yolo" in modules and "models.common" in modules
    allowed = ("models.yolo", "models.common", "collections", "__builtin__")
    assert all(m in allowed or m.startswith("torch") for m in modules), names
    legacy = Path(__file__).parent / "fixtures" / "yolov5-legacy"
    originals = [V7, V5, *legacy.glob("yolov5s-v[24].0-*-fp16.pt")]  # written by YOLOv5's own train.py / strip
    original = set().union(*map(pickle_globals, originals))
    assert {n for n in names if not n.startswith("models.")} <= original | {"torch.nn.modules.container Sequential"}


def test_yolov5_train_val_and_detect_ran_on_the_written_file():
    """make_fixture.py ran v7.0's train.py --weights on the last.pt case's file (every tensor transferred into the
    Model its YAML builds, one epoch run) and val.py and detect.py on the trained case's file (results kept)."""
    train = json.loads((HERE / "v7.0-last.json").read_text())["train"]
    assert train["transferred"] == train["of"] == train["from_file"] > 300 and train["batches"] >= 1
    assert all(np.isfinite(train["mean_losses"]))
    info = json.loads((HERE / "v7.0-trained.json").read_text())
    assert set(info["val"]) == {"P", "R", "mAP50", "mAP50-95"} and all(np.isfinite(list(info["val"].values())))
    assert len(info["detect"]) == 4 and all(lines for lines in info["detect"].values())
    assert "models.yolo.DetectionModel" in info["classes"] and not any("ultralytics" in c for c in info["classes"])


def test_a_wrong_head_in_the_written_file_fails_the_check_and_writes_nothing(tmp_path, monkeypatch):
    original = layout._detect_record

    def planted(head, release, stride):  # anchors off by 1 %: loads fine in YOLOv5, computes other boxes
        record = original(head, release, stride)
        record.state["_buffers"]["anchors"] = record.state["_buffers"]["anchors"] * 1.01
        return record

    monkeypatch.setattr(layout, "_detect_record", planted)
    src = fixture.ultralytics_input("v7.0-trained", tmp_path)
    with pytest.raises(VerificationFailed):
        convert_file(src, tmp_path / "out.pt", layout="yolov5", verify=True)
    assert not (tmp_path / "out.pt").exists()


def test_layout_yolov5_refuses_other_targets(tmp_path, capsys):
    src = fixture.ultralytics_input("v7.0-trained", tmp_path)
    assert main(["convert", str(src), str(tmp_path / "out.pt"), "--layout", "yolov5", "--to", "s2d"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--to conv or --to focus" in err and not (tmp_path / "out.pt").exists()


def _nothing_to_do(tmp_path, capsys, src: Path, *flags: str) -> dict:
    dst = tmp_path / "out.pt"
    before = src.read_bytes()
    assert main(["convert", str(src), str(dst), *flags]) == 0
    text = capsys.readouterr().out
    assert text.startswith("nothing to do: ") and f"{dst} not written" in text and text.count("\n") == 1
    assert main(["convert", str(src), str(dst), *flags, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["written"] == [] and result["nothing_to_do"] and not dst.exists() and src.read_bytes() == before
    return result


def test_converted_ultralytics_file_to_conv_is_nothing_to_do(tmp_path, capsys):
    """The default --to conv on an already-converted (and trained) Ultralytics file exited 2, "no stem to convert"."""
    result = _nothing_to_do(tmp_path, capsys, fixture.TRAINED)
    assert "already is a Conv(6x6" in result["nothing_to_do"]
    focus = Path(__file__).parents[1] / "checkpoints" / "yolo-focus-tiny.pt"  # a Focus stem asked --to focus
    assert "already is a Focus" in _nothing_to_do(tmp_path, capsys, focus, "--to", "focus")["nothing_to_do"]


def test_yolov5_file_already_in_the_asked_form_is_nothing_to_do(tmp_path, capsys):
    """--layout yolov5 of a YOLOv5 file whose stem already is the --to form exited 2 ("nothing to convert")."""
    assert "Conv(6x6, stride 2)" in _nothing_to_do(tmp_path, capsys, V7, "--layout", "yolov5")["nothing_to_do"]
    assert "a Focus" in _nothing_to_do(tmp_path, capsys, V5, "--layout", "yolov5", "--to", "focus")["nothing_to_do"]


def test_folder_run_counts_nothing_to_do_apart(tmp_path, capsys):
    """A folder holding an already-converted file and a Focus one: one converted, one "nothing to do", exit 0."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "trained.pt").write_bytes(fixture.TRAINED.read_bytes())
    (src / "focus.pt").write_bytes((Path(__file__).parents[1] / "checkpoints" / "yolo-focus-tiny.pt").read_bytes())
    assert main(["convert", str(src), str(tmp_path / "out"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("converted 1, nothing to do 1, failed 0 (of 2 files") and "trained.pt: nothing to do" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["focus.pt"]
