"""State-dict sources: plain (top level or nested, wrapper kept), YOLOX trainer files; the plugin's own checkpoints."""

from pathlib import Path

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery.cli import main
from focus_surgery.demo import build_focus_model
from focus_surgery.files import convert_file, inspect_file, verify_files
from tests.family_models.reorg import BaseConv, Focus

ROOT = Path(__file__).resolve().parents[1]
SHARED_YOLOX = ROOT / "tests" / "fixtures" / "focus-family" / "yolox"  # copied from the shared focus-family set
REL_TOL = 1e-9


class TinyYolox(nn.Module):
    """The YOLOX key layout around the stem: backbone.backbone.stem (Focus or, converted, a 6x6/2 BaseConv)."""

    def __init__(self, conv_stem: bool = False):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.backbone = nn.Module()
        self.backbone.backbone.stem = BaseConv(3, 8, 6, 2) if conv_stem else Focus(3, 8, 3)
        self.backbone.backbone.dark2 = BaseConv(8, 16, 3, 2)
        self.head = nn.Conv2d(16, 9, 1)

    def forward(self, x):
        b = self.backbone.backbone
        return self.head(b.dark2(b.stem(x)))


def _randomized(model):
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.normal_(0, 0.25)
            m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2)
    return model.eval()


def _trainer_file(path):
    """What yolox/core/trainer.py save_ckpt writes: start_epoch, model state dict, SGD state with momentum."""
    model = _randomized(TinyYolox())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()(torch.rand(2, 3, 32, 32)).square().mean().backward()
    optimizer.step()
    model.eval()
    torch.save(
        {
            "start_epoch": 7,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best_ap": 0.0,
            "curr_ap": None,
        },
        path,
    )
    return model


def test_yolox_trainer_file_converts_and_loads_into_a_conv_stem_yolox(tmp_path):
    src, dst = tmp_path / "yolox_ckpt.pth", tmp_path / "yolox_conv.pth"
    original = _trainer_file(src)
    assert "no Focus" not in inspect_file(src)["summary"] and inspect_file(src)["source"] == "yolox"
    report = convert_file(src, dst, verify=True)
    assert (
        report["source"] == "yolox"
        and report["wrapper"] == "model"
        and "BaseConv(3, base_channels, ksize=6" in report["loads_into"]
    )
    assert report["verification"]["passed"] and "optimizer state of the stem weight" in report["optimizer"]
    before, after = torch.load(src, weights_only=True), torch.load(dst, weights_only=True)
    assert list(before) == list(after) and after["start_epoch"] == 7 and after["curr_ap"] is None
    old_w = before["model"]["backbone.backbone.stem.conv.conv.weight"]
    new_w = after["model"]["backbone.backbone.stem.conv.weight"]
    assert torch.equal(new_w, fs.focus_to_conv_weight(old_w, 2, "yolov5"))
    renamed = {
        k.replace("stem.conv.", "stem.", 1) if k.startswith("backbone.backbone.stem.conv.") else k: v
        for k, v in before["model"].items()
    }
    assert list(renamed) == list(after["model"])
    assert all(torch.equal(v, after["model"][k]) for k, v in renamed.items() if not k.endswith("stem.conv.weight"))
    stem_state = [s for s in before["optimizer"]["state"].values() if s["momentum_buffer"].shape == old_w.shape]
    new_state = [s for s in after["optimizer"]["state"].values() if s["momentum_buffer"].shape == new_w.shape]
    assert torch.equal(
        new_state[0]["momentum_buffer"], fs.focus_to_conv_weight(stem_state[0]["momentum_buffer"], 2, "yolov5")
    )
    conv_model = TinyYolox(conv_stem=True)
    conv_model.load_state_dict(after["model"], strict=True)  # the one-line model change of the README
    report = fs.verify(original, conv_model.eval(), input_shape=(2, 3, 64, 96))
    assert report.passed and report.max_rel_err <= REL_TOL


@pytest.mark.parametrize(
    "name, width", [("yolox_d033_w0078125_nc4_ckpt.pth", 5), ("yolox_nano_w009375_nc2_ckpt.pth", 6)]
)
def test_yolox_files_written_by_yolox(tmp_path, name, width):
    src, dst = SHARED_YOLOX / name, tmp_path / name
    report = convert_file(src, dst, verify=True)
    assert report["source"] == "yolox" and report["verification"]["tensors"]["passed"]
    before, after = torch.load(src, weights_only=True), torch.load(dst, weights_only=True)
    assert list(before) == list(after) and len(after["model"]) == len(before["model"])
    w = before["model"]["backbone.backbone.stem.conv.conv.weight"]
    assert w.shape == (width, 12, 3, 3)
    assert torch.equal(after["model"]["backbone.backbone.stem.conv.weight"], fs.focus_to_conv_weight(w, 2, "yolov5"))
    # the YOLOX stem (test-only copy of its Focus) against the BaseConv(3, C, 6, 2) the converted keys load into
    focus, conv = Focus(3, width, 3), BaseConv(3, width, 6, 2)
    focus.load_state_dict(
        {
            k[len("backbone.backbone.stem.") :]: v
            for k, v in before["model"].items()
            if k.startswith("backbone.backbone.stem.")
        }
    )
    conv.load_state_dict(
        {
            k[len("backbone.backbone.stem.") :]: v
            for k, v in after["model"].items()
            if k.startswith("backbone.backbone.stem.")
        },
        strict=True,
    )
    assert fs.verify(focus, conv, input_shape=(2, 3, 64, 96)).max_rel_err <= REL_TOL


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "ema", "model_ema", "module"])
def test_nested_state_dict_keeps_its_wrapper(tmp_path, wrapper):
    sd = {f"model.{k}": v for k, v in build_focus_model().state_dict().items()}
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({wrapper: sd, "epoch": 3, "note": "kept"}, src)
    report = convert_file(src, dst, verify=True)
    assert report["wrapper"] == wrapper and report["stem"] == "model.0" and report["verification"]["passed"]
    out = torch.load(dst, weights_only=True)
    assert list(out) == [wrapper, "epoch", "note"] and out["epoch"] == 3
    assert out[wrapper]["model.0.conv.weight"].shape == (16, 3, 6, 6)
    assert verify_files(src, dst)["passed"]


def test_verify_never_passes_on_nothing(tmp_path, capsys):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"epoch": 1}, a)
    torch.save({"epoch": 2}, b)
    assert main(["verify", str(a), str(b)]) == 1
    assert "no tensors to compare" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the plugin's checkpoints


def test_old_plugin_checkpoint_with_a_pickled_hook_converts_with_scope_all(tmp_path, capsys):
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    from focus_surgery.integrations.ultralytics import _check_block_divides

    yaml = {
        "nc": 2,
        "backbone": [[-1, 1, "SPDConv", [16, 3]], [-1, 1, "Conv", [32, 3, 2]], [-1, 1, "SPDConv", [32, 3]]],
        "head": [[[-1], 1, "Detect", ["nc"]]],
    }
    model = DetectionModel(yaml, ch=3, nc=2, verbose=False).eval()
    for m in model.modules():
        if isinstance(m, fs.SPDConv):
            m.register_forward_pre_hook(_check_block_divides)  # what checkpoints saved before this change carry
    src, dst = tmp_path / "spd.pt", tmp_path / "conv.pt"
    torch.save({"model": model, "epoch": 5}, src)
    assert main(["convert", str(src), str(dst), "--scope", "all", "--verify", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["scope"] == "all" and len(report["replaced"]) == 2 and report["verification"]["passed"]
    converted = torch.load(dst, weights_only=False)["model"]
    assert not any(isinstance(m, fs.SPDConv) or m._forward_pre_hooks for m in converted.modules())
    assert verify_files(src, dst)["passed"]
