"""fp16 / bf16 files whose model is an EMA, for the YOLOX and darknet (YOLOR main) sources (issue 23, item 2).

Both trainers save the EMA as the model: YOLOX's ``save_ckpt`` writes ``ema_model.ema.state_dict()`` under "model"
(yolox/core/trainer.py), YOLOR main's ``train.py`` writes ``ema.ema.state_dict()``; the optimizer is the live
model's. Neither writes half precision itself, so the fp16 / bf16 files are those a user makes by casting the
model's tensors. Each is converted with ``--verify``: every dtype is kept, the stem is the exact remap in its own
dtype, the converted EMA loads into the conv-stem model and matches the Focus one in float64, and a planted write in
the wrong dtype (same values: a float32 holds every fp16 / bf16 exactly) fails the verification.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery import cli
from focus_surgery.files import verify_files
from focus_surgery.sources import darknet as darknet_source
from focus_surgery.sources import plain as plain_source
from focus_surgery.sources.darknet import cfg_after_conversion
from tests.test_zoo_darknet import CFG, SHARED as SHARED_YOLOR, _randomized as _randomized_rows, darknet_rows
from tests.test_zoo_state_dicts import SHARED_YOLOX, TinyYolox, _randomized as _randomized_yolox

HALF = [torch.float16, torch.bfloat16]
YOLOX_STEM = "backbone.backbone.stem.conv.conv.weight"
YOLOX_NEW_STEM = "backbone.backbone.stem.conv.weight"


def ema_of(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 2) -> nn.Module:
    """Train ``steps`` SGD steps and keep an EMA the way YOLOX's / YOLOR's ModelEMA does: a deep copy, then per
    update ``v = d * v + (1 - d) * model_v`` on floating-point entries, ``d = 0.9999 * (1 - exp(-updates / 2000))``.
    The EMA then differs from the live model (whose optimizer is saved)."""
    ema = copy.deepcopy(model).eval()
    for updates in range(1, steps + 1):
        optimizer.zero_grad()
        model.train()(torch.rand(2, 3, 32, 32)).square().mean().backward()
        optimizer.step()
        d = 0.9999 * (1 - math.exp(-updates / 2000))
        msd = model.state_dict()
        with torch.no_grad():
            for k, v in ema.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(d).add_((1 - d) * msd[k].detach())
    model.eval()
    return ema


def cast(sd: dict, dtype: torch.dtype) -> dict:
    return type(sd)((k, v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items())


def convert(src: Path, dst: Path, capsys) -> dict:
    code = cli.main(["convert", str(src), str(dst), "--verify", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def convert_fails(src: Path, dst: Path, capsys) -> str:
    code = cli.main(["convert", str(src), str(dst), "--verify"])
    err = capsys.readouterr().err
    assert code == 1 and not dst.exists(), err
    assert len(err.strip().splitlines()) == 1 and "dtype" in err, err
    return err


def dtypes(sd: dict) -> dict:
    return {k: v.dtype for k, v in sd.items() if isinstance(v, torch.Tensor)}


def optimizer_dtypes(opt: dict) -> list:
    return [(i, k, v.dtype) for i, s in opt["state"].items() for k, v in s.items() if isinstance(v, torch.Tensor)]


def widen_file(dst: Path, key_of, out: Path) -> Path:
    """A copy of the converted file with one tensor of ``model`` (``key_of(model)``) written back as float32."""
    content = torch.load(dst, weights_only=False)
    key = key_of(content["model"])
    content["model"][key] = content["model"][key].float()
    torch.save(content, out)
    return out


# ---------------------------------------------------------------------------------------------------------- YOLOX


def yolox_ema_file(path: Path, dtype: torch.dtype) -> nn.Module:
    """``save_ckpt`` with ``use_model_ema``: the EMA's state dict (cast to ``dtype``) under "model"; returns the EMA
    model with those very (rounded) values."""
    model = _randomized_yolox(TinyYolox())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    ema = ema_of(model, optimizer)
    assert not torch.equal(ema.state_dict()[YOLOX_STEM], model.state_dict()[YOLOX_STEM])
    sd = cast(ema.state_dict(), dtype)
    ema.load_state_dict(sd)  # the EMA as stored: its fp16 / bf16 values (held in float32)
    ckpt = {"start_epoch": 3, "model": sd, "optimizer": optimizer.state_dict(), "best_ap": 0.25, "curr_ap": 0.25}
    torch.save(ckpt, path)
    return ema


def yolox_real_file(path: Path, dtype: torch.dtype) -> None:
    """The YOLOX-written nano trainer file with its model cast to ``dtype``."""
    ckpt = torch.load(SHARED_YOLOX / "yolox_nano_w009375_nc2_ckpt.pth", weights_only=True)
    ckpt["model"] = cast(ckpt["model"], dtype)
    torch.save(ckpt, path)


def check_yolox(src: Path, dst: Path, dtype: torch.dtype, capsys) -> dict:
    report = convert(src, dst, capsys)
    assert report["source"] == "yolox" and report["verification"]["passed"] and report["dtype"] == str(dtype)[6:]
    before, after = torch.load(src, weights_only=True), torch.load(dst, weights_only=True)
    assert list(before) == list(after) and after["start_epoch"] == before["start_epoch"]
    renamed = {k.replace("backbone.stem.conv.", "backbone.stem.", 1): v for k, v in before["model"].items()}
    assert list(after["model"]) == list(renamed) and dtypes(after["model"]) == dtypes(renamed)
    assert {v.dtype for v in after["model"].values() if v.is_floating_point()} == {dtype}
    assert optimizer_dtypes(after["optimizer"]) == optimizer_dtypes(before["optimizer"])
    assert torch.equal(after["model"][YOLOX_NEW_STEM], fs.focus_to_conv_weight(before["model"][YOLOX_STEM]))
    assert all(torch.equal(v, after["model"][k]) for k, v in renamed.items() if k != YOLOX_NEW_STEM)
    assert verify_files(src, dst)["passed"]
    return after


@pytest.mark.parametrize("dtype", HALF)
def test_yolox_ema_checkpoint_in_half_precision(tmp_path, capsys, dtype):
    src, dst = tmp_path / "latest_ckpt.pth", tmp_path / "conv.pth"
    ema = yolox_ema_file(src, dtype)
    after = check_yolox(src, dst, dtype, capsys)
    conv = TinyYolox(conv_stem=True)
    conv.load_state_dict(after["model"], strict=True)  # cast back to float32 by load_state_dict: exact
    result = fs.verify(ema, conv.eval(), input_shape=(2, 3, 64, 96))
    assert result.passed and result.dtype == "float64" and result.max_rel_err <= 1e-9, str(result)


@pytest.mark.parametrize("dtype", HALF)
def test_yolox_written_by_yolox_in_half_precision(tmp_path, capsys, dtype):
    src, dst = tmp_path / "nano_ckpt.pth", tmp_path / "conv.pth"
    yolox_real_file(src, dtype)
    check_yolox(src, dst, dtype, capsys)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("planted", ["other tensors", "stem"])
def test_yolox_half_written_as_float32_fails_verification(tmp_path, capsys, monkeypatch, dtype, planted):
    src, dst = tmp_path / "latest_ckpt.pth", tmp_path / "conv.pth"
    yolox_ema_file(src, dtype)
    real = plain_source.convert_state_dict

    def widened(sd, *args, **kwargs):
        out, stem = real(sd, *args, **kwargs)
        hit = (lambda k: k == YOLOX_NEW_STEM) if planted == "stem" else (lambda k: k != YOLOX_NEW_STEM)
        return {k: v.float() if hit(k) and v.is_floating_point() else v for k, v in out.items()}, stem

    monkeypatch.setattr(plain_source, "convert_state_dict", widened)
    convert_fails(src, dst, capsys)


@pytest.mark.parametrize("dtype", HALF)
def test_verify_command_sees_a_widened_yolox_tensor(tmp_path, capsys, dtype):
    src, dst = tmp_path / "latest_ckpt.pth", tmp_path / "conv.pth"
    yolox_ema_file(src, dtype)
    convert(src, dst, capsys)
    bad = widen_file(dst, lambda sd: "head.weight", tmp_path / "widened.pth")
    result = verify_files(src, bad)
    assert not result["passed"] and "dtype" in result["problem"] and "head.weight" in result["problem"], result


# -------------------------------------------------------------------------------------------------------- darknet


class Rows(nn.Module):
    """YOLOR main's first rows ([reorg], conv) and a 1x1 head: the keys ``module_list.N.*`` of its Darknet."""

    def __init__(self, cfg_text: str):
        super().__init__()
        self.module_list = darknet_rows(cfg_text)
        self.module_list.append(nn.Conv2d(self.module_list[1].Conv2d.out_channels, 4, 1))

    def forward(self, x):
        for m in self.module_list:
            x = m(x)
        return x


def darknet_ema_file(path: Path, dtype: torch.dtype) -> Rows:
    """main-branch ``train.py``'s checkpoint: ``ema.ema.state_dict()`` (cast to ``dtype``) under "model", the live
    model's SGD state; returns the EMA model with the stored values."""
    model = Rows(CFG.read_text())
    _randomized_rows(model.module_list)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    ema = ema_of(model, optimizer)
    sd = cast(ema.state_dict(), dtype)
    ema.load_state_dict(sd)
    torch.save({"epoch": 2, "model": sd, "optimizer": optimizer.state_dict(), "wandb_id": None}, path)
    return ema


def darknet_real_file(path: Path, dtype: torch.dtype) -> None:
    """The YOLOR-written ``last.pt`` (its model is already ``ema.ema.state_dict()``) cast to ``dtype``."""
    ckpt = torch.load(SHARED_YOLOR, weights_only=False)
    ckpt["model"] = cast(ckpt["model"], dtype)
    torch.save(ckpt, path)


def check_darknet(src: Path, dst: Path, dtype: torch.dtype, capsys) -> tuple[dict, str]:
    report = convert(src, dst, capsys)
    assert report["source"] == "darknet" and report["verification"]["passed"]
    before, after = torch.load(src, weights_only=False), torch.load(dst, weights_only=False)
    key = report["stem"]
    assert list(before) == list(after) and list(after["model"]) == list(before["model"])
    assert dtypes(after["model"]) == dtypes(before["model"])
    assert {v.dtype for v in after["model"].values() if v.is_floating_point()} == {dtype}
    assert optimizer_dtypes(after["optimizer"]) == optimizer_dtypes(before["optimizer"])
    new = after["model"][key]
    assert new.shape[2:] == (7, 7) and not new[..., 0, :].any() and not new[..., :, 0].any()
    assert torch.equal(new[..., 1:, 1:], fs.focus_to_conv_weight(before["model"][key]))
    assert all(torch.equal(v, after["model"][k]) for k, v in before["model"].items() if k != key)
    assert verify_files(src, dst)["passed"]
    return after, key


@pytest.mark.parametrize("dtype", HALF)
def test_darknet_ema_checkpoint_in_half_precision(tmp_path, capsys, dtype):
    src, dst = tmp_path / "last.pt", tmp_path / "conv.pt"
    ema = darknet_ema_file(src, dtype)
    after, _ = check_darknet(src, dst, dtype, capsys)
    conv = Rows(cfg_after_conversion(CFG.read_text()))
    conv.load_state_dict(after["model"], strict=True)
    result = fs.verify(ema, conv.eval(), input_shape=(2, 3, 64, 96))
    assert result.passed and result.dtype == "float64" and result.max_rel_err <= 1e-9, str(result)


@pytest.mark.parametrize("dtype", HALF)
def test_darknet_written_by_yolor_in_half_precision(tmp_path, capsys, dtype):
    src, dst = tmp_path / "last.pt", tmp_path / "conv.pt"
    darknet_real_file(src, dtype)
    check_darknet(src, dst, dtype, capsys)


@pytest.mark.parametrize("dtype", HALF)
def test_darknet_stem_written_as_float32_fails_verification(tmp_path, capsys, monkeypatch, dtype):
    src, dst = tmp_path / "last.pt", tmp_path / "conv.pt"
    darknet_ema_file(src, dtype)
    real = darknet_source.stem_weight
    monkeypatch.setattr(darknet_source, "stem_weight", lambda *a, **k: real(*a, **k).float())
    convert_fails(src, dst, capsys)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("which", ["stem", "other"])
def test_verify_command_sees_a_widened_darknet_tensor(tmp_path, capsys, dtype, which):
    src, dst = tmp_path / "last.pt", tmp_path / "conv.pt"
    darknet_ema_file(src, dtype)
    report = convert(src, dst, capsys)
    key = report["stem"] if which == "stem" else "module_list.1.BatchNorm2d.running_var"
    bad = widen_file(dst, lambda sd: key, tmp_path / "widened.pt")
    result = verify_files(src, bad)
    assert not result["passed"] and "dtype" in result["problem"] and key in result["problem"], result
