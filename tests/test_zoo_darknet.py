"""YOLOR main-branch darknet checkpoints: [reorg] + conv stem -> one 7x7 / 2 conv (darknet pads size // 2)."""

from pathlib import Path

import torch
from torch import nn

import focus_surgery as fs
from focus_surgery.files import convert_file, inspect_file, verify_files
from focus_surgery.sources.darknet import cfg_after_conversion
from tests.family_models.reorg import ReOrg as Reorg  # utils/layers.py Reorg slices the same way

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "tests" / "fixtures" / "focus-family" / "yolor_w6-div32.cfg"
SHARED = ROOT / "tests" / "fixtures" / "focus-family" / "yolor_w6-div32_last.pt"  # copied from the shared set


def darknet_rows(cfg_text: str, rows: int = 2) -> nn.ModuleList:
    """The first rows of YOLOR's create_modules for [reorg] / [silence] / [convolutional] (test-only reading of
    models/models.py: Conv2d padding size // 2 when pad=1, BatchNorm2d eps 1e-4, activation silu)."""
    blocks = [b for b in cfg_text.split("\n[")[1:] if not b.startswith("net]")][:rows]  # [net] is not a layer
    module_list, channels = nn.ModuleList(), 3
    for block in blocks:
        kind, _, body = block.partition("]")
        fields = dict(line.split("=", 1) for line in body.split() if "=" in line)
        if kind == "reorg":
            module_list.append(nn.Sequential(Reorg()))
            channels *= 4
        elif kind == "silence":
            module_list.append(nn.Identity())
        else:
            k, s, f = int(fields["size"]), int(fields["stride"]), int(fields["filters"])
            seq = nn.Sequential()
            seq.add_module("Conv2d", nn.Conv2d(channels, f, k, s, k // 2 if int(fields["pad"]) else 0, bias=False))
            seq.add_module("BatchNorm2d", nn.BatchNorm2d(f, momentum=0.03, eps=1e-4))
            seq.add_module("activation", nn.SiLU())
            module_list.append(seq)
            channels = f
    return module_list


def _stem_state(sd):
    return {k[len("module_list.") :]: v for k, v in sd.items() if k.startswith(("module_list.0.", "module_list.1."))}


def _randomized(rows):
    torch.manual_seed(5)
    bn = rows[1].BatchNorm2d
    bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.normal_(0, 0.25)
    bn.running_mean.normal_(0, 0.2), bn.running_var.uniform_(0.5, 2)
    return rows


def _check_file(src, dst):
    report = convert_file(src, dst, verify=True)
    assert report["source"] == "darknet" and report["verification"]["passed"] and "[silence]" in report["cfg"]
    before, after = torch.load(src, weights_only=False), torch.load(dst, weights_only=False)
    assert list(before) == list(after) and list(before["model"]) == list(after["model"])
    key = report["stem"]
    w, new = before["model"][key], after["model"][key]
    assert new.shape[2:] == (7, 7) and not new[..., 0, :].any() and not new[..., :, 0].any()
    assert torch.equal(new[..., 1:, 1:], fs.focus_to_conv_weight(w, 2, "yolov5"))
    assert all(torch.equal(v, after["model"][k]) for k, v in before["model"].items() if k != key)
    text = CFG.read_text()
    old_rows, new_rows = darknet_rows(text), darknet_rows(cfg_after_conversion(text))
    old_rows.load_state_dict(_stem_state(before["model"]), strict=True)
    new_rows.load_state_dict(_stem_state(after["model"]), strict=True)
    old, new = nn.Sequential(*old_rows).eval(), nn.Sequential(*new_rows).eval()
    result = fs.verify(old, new, input_shape=(2, 3, 64, 96))
    assert result.passed and result.max_rel_err <= 1e-9
    assert verify_files(src, dst)["passed"]
    return before, after


def test_cfg_rewrite_keeps_every_layer_index():
    text = CFG.read_text()
    new = cfg_after_conversion(text)
    assert new.count("\n[") == text.count("\n[") and "[reorg]" not in new and "[silence]" in new
    conv = darknet_rows(new)[1].Conv2d
    assert (conv.in_channels, conv.kernel_size, conv.stride, conv.padding) == (3, (7, 7), (2, 2), (3, 3))


def test_darknet_layout_file(tmp_path):
    rows = _randomized(darknet_rows(CFG.read_text()))
    head = nn.Conv2d(2, 4, 1)
    sd = {**{f"module_list.{k}": v for k, v in rows.state_dict().items()}, "module_list.2.weight": head.weight.data}
    optimizer = {"state": {0: {"momentum_buffer": torch.randn(2, 12, 3, 3)}}, "param_groups": [{"params": [0]}]}
    src, dst = tmp_path / "last.pt", tmp_path / "conv.pt"
    torch.save({"epoch": 4, "model": sd, "optimizer": optimizer, "wandb_id": None}, src)
    assert inspect_file(src)["source"] == "darknet"
    before, after = _check_file(src, dst)
    momentum = after["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(
        momentum[..., 1:, 1:], fs.focus_to_conv_weight(optimizer["state"][0]["momentum_buffer"], 2, "yolov5")
    )


def test_yolor_main_file_written_by_yolor(tmp_path):
    _check_file(SHARED, tmp_path / "conv.pt")
