"""Proofs that say what they proved (model / stem / layout only), the written file read back before it is put in
place, and ``inspect`` / ``verify`` reading every wrapper ``convert`` reads (issue 24, items 2-4)."""

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery import checkpoint_io
from focus_surgery.cli import main
from focus_surgery.errors import VerificationFailed
from focus_surgery.files import convert_file, inspect_file, verify_files
from focus_surgery.report import PROOF_LAYOUT, PROOF_MODEL, PROOF_STEM
from focus_surgery.sources.records_io import save_records

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ROOT / "tests" / "fixtures" / "focus-family"
YOLOV7 = FAMILY / "yolov7-e6-w003125_stripped.pt"
DARKNET = FAMILY / "yolor_w6-div32_last.pt"
YOLOV5 = ROOT / "tests" / "fixtures" / "yolov5-legacy" / "yolov5s-v5.0-d0.33-w0.125-nc3-seed102-fp32.pt"


def _net(block_size: int = 2, order: str = "yolov5") -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(fs.Focus(3, 8, 3, block_size=block_size, order=order), nn.Conv2d(8, 4, 3, padding=1))
    for p in net.parameters():
        p.data.normal_(0, 0.5)
    bn = net[0].conv.bn
    bn.running_mean.normal_(0, 0.2), bn.running_var.uniform_(0.5, 2)
    return net.eval()


def _nested(path: Path, block_size: int = 2, order: str = "yolov5") -> Path:
    """A trainer-style file: the weights under ``state_dict`` and an EMA copy under ``state_dict_ema``."""
    sd = _net(block_size, order).state_dict()
    ema = {k: v.clone() + (0.01 if v.is_floating_point() else 0) for k, v in sd.items()}
    torch.save({"epoch": 3, "arch": "focus_net", "state_dict": sd, "state_dict_ema": ema}, path)
    return path


def _model_file(path: Path) -> Path:
    torch.save({"model": _net(), "epoch": 1}, path)
    return path


def _cli(*args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".focus-surgery-tmp")]


# 1. proofs that say what they proved


def test_each_report_names_its_proof_and_only_a_model_proof_says_verified(tmp_path, capsys):
    sd = tmp_path / "sd.pt"
    torch.save(_net().state_dict(), sd)
    code, out, _ = _cli("convert", sd, tmp_path / "sd-conv.pt", "--verify", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 0 and report["proof"] == PROOF_LAYOUT and report["max_abs_err"] < 1e-12
    assert "layout only" in report["summary"] and "verified" not in report["summary"]
    assert report["verification"]["tensors"]["passed"] and report["verification"]["tensors"]["max_abs_err"] == 0.0

    code, out, _ = _cli("convert", _model_file(tmp_path / "m.pt"), tmp_path / "m-conv.pt", "--verify", capsys=capsys)
    assert code == 0 and "verified (model proof): max_abs_err=" in out
    report = convert_file(tmp_path / "m.pt", tmp_path / "m-conv2.pt", verify=True)
    assert report.proof == PROOF_MODEL and report["proof"] == PROOF_MODEL
    assert "loaded back" in report["verification"]["compared"] and report["verification"]["dtype"] == "float64"

    # no --verify: no proof, and the key is there (None)
    report = convert_file(sd, tmp_path / "plain.pt")
    assert report["proof"] is None and report.max_abs_err is None and "verified" not in report["summary"]


def test_yolov7_and_darknet_are_stem_proofs(tmp_path):
    report = convert_file(YOLOV7, tmp_path / "v7.pt", verify=True)
    assert report.proof == PROOF_STEM and "stem proof" in report["summary"] and "verified" not in report["summary"]
    assert report["verification"]["tensors"]["passed"] and report["verification"]["tensors"]["tensors"] > 100
    report = convert_file(DARKNET, tmp_path / "dn.pt", verify=True)
    assert report.proof == PROOF_STEM and "verified" not in report["summary"]
    assert report["verification"]["tensors"]["passed"]
    # an order the family's [reorg] does not compute is an assumption: layout only
    report = convert_file(DARKNET, tmp_path / "dn-timm.pt", verify=True, order="timm")
    assert report.proof == PROOF_LAYOUT and "verified" not in report["summary"]


def test_a_wrong_stated_order_is_never_verified(tmp_path, capsys):
    """The issue's TResNet case: a block-4 stem in timm order converted as --order yolov5. The stem check replays
    the stated order against itself (it passes), so it must not say "verified": it says layout only."""
    src = _nested(tmp_path / "tresnet-like.pth", block_size=4, order="timm")
    code, out, _ = _cli(
        "convert", src, tmp_path / "out.pth", "--block-size", "4", "--order", "yolov5", "--verify", capsys=capsys
    )
    assert code == 0 and "layout only" in out and "verified" not in out
    # and the real model is indeed off: the stated order is wrong (what "layout only" warns of)
    right = _net(4, "timm")
    wrong = _net(4, "yolov5")
    wrong.load_state_dict(right.state_dict())
    x = torch.rand(1, 3, 32, 32)
    assert (right(x) - wrong(x)).abs().max() > 1e-2


# 2. loaded back as written


def test_a_model_written_wrong_fails_its_proof_and_nothing_is_left(tmp_path, capsys, monkeypatch):
    """A writer that perturbs one weight of the model (not of the stem) on its way to disk: the in-memory check
    cannot see it, the read-back model proof does; exit 1, no output, no temporary left."""
    src = _model_file(tmp_path / "m.pt")
    save = checkpoint_io.torch_save

    def wrong_save(content, path, *rest):
        content = dict(content)
        model = content["model"]
        model[1].weight.data[0, 0, 0, 0] += 0.5  # written wrong (after the conversion was checked)
        save(content, path, *rest)
        model[1].weight.data[0, 0, 0, 0] -= 0.5

    monkeypatch.setattr(checkpoint_io, "torch_save", wrong_save)
    dst = tmp_path / "out" / "m-conv.pt"
    dst.parent.mkdir()
    code, out, err = _cli("convert", src, dst, "--verify", capsys=capsys)
    assert code == 1 and "verification failed" in err and not dst.exists() and not _leftovers(dst.parent)
    with pytest.raises(VerificationFailed) as failed:
        convert_file(src, dst, verify=True)
    assert failed.value.report.proof == PROOF_MODEL and failed.value.report.max_abs_err > 1e-3
    assert list(dst.parent.iterdir()) == []
    monkeypatch.setattr(checkpoint_io, "torch_save", save)  # the same conversion written right passes
    assert convert_file(src, dst, verify=True).proof == PROOF_MODEL and dst.exists()


def test_a_state_dict_written_wrong_fails_its_proof(tmp_path, monkeypatch):
    """The stem proof's "every other tensor identical" is measured on the written file."""
    src = _nested(tmp_path / "sd.pt")
    save = checkpoint_io.torch_save

    def wrong_save(content, path, *rest):
        content = {**content, "state_dict": {**content["state_dict"]}}
        content["state_dict"]["1.bias"] = content["state_dict"]["1.bias"] + 1e-6
        save(content, path, *rest)

    monkeypatch.setattr(checkpoint_io, "torch_save", wrong_save)
    with pytest.raises(VerificationFailed, match="the written file's tensors"):
        convert_file(src, tmp_path / "out.pt", verify=True)
    assert not (tmp_path / "out.pt").exists() and not _leftovers(tmp_path)


def test_yolov5_records_written_wrong_fail_the_rebuild(tmp_path, monkeypatch):
    """--layout yolov5: the proof rebuilds the model from the records as written."""
    import focus_surgery.sources.records_io as records_io

    def wrong_records(content, destination, *rest):
        kept = []
        for key in ("model", "ema"):  # the Detect head's first conv, in every copy the file holds
            if content.get(key) is None:
                continue
            layers = content[key].children()["model"].state["_modules"]
            conv = next(iter(list(layers.values())[-1].children()["m"].children().values()))
            weight = conv.state["_parameters"]["weight"]
            conv.state["_parameters"]["weight"] = nn.Parameter(weight.detach() * 1.5, requires_grad=False)
            kept.append((conv, weight))
        try:
            save_records(content, destination, *rest)
        finally:
            for conv, weight in kept:
                conv.state["_parameters"]["weight"] = weight

    monkeypatch.setattr(records_io, "save_records", wrong_records)
    dst = tmp_path / "v5.pt"
    with pytest.raises(VerificationFailed) as failed:
        convert_file(YOLOV5, dst, verify=True, layout="yolov5")
    assert failed.value.report.proof == PROOF_MODEL and not dst.exists() and not _leftovers(tmp_path)
    monkeypatch.setattr(records_io, "save_records", save_records)
    report = convert_file(YOLOV5, dst, verify=True, layout="yolov5")
    assert report.proof == PROOF_MODEL and report.max_abs_err < 1e-9 and "verified (model proof)" in report["summary"]


# 3. inspect and verify read every wrapper convert reads


def test_inspect_and_verify_read_nested_state_dicts(tmp_path, capsys):
    src = _nested(tmp_path / "ckpt.pth")
    info = inspect_file(src)
    assert info["wrapper"] == "state_dict" and info["tensors"] == 8 and info["stems"]
    assert info["tensors_per_wrapper"] == {"state_dict": 8, "state_dict_ema": 8}
    assert "state_dict_ema" in info["summary"] and "0 tensors" not in info["summary"]
    result = verify_files(src, src)
    assert result["passed"] and result["tensors"] == 2 * 8  # state_dict and state_dict_ema, each compared

    dst = tmp_path / "conv.pth"
    convert_file(src, dst, verify=True)
    result = verify_files(src, dst)  # an original and its conversion: the stem remapped, then every tensor
    assert result["passed"] and result["max_abs_err"] == 0.0 and "stem remapped" in result["compared"]
    info = inspect_file(dst)
    assert info["stems"][0]["form"] == "conv" and "already converted" in info["summary"]


def test_inspect_and_verify_take_block_size_and_order(tmp_path, capsys):
    src = _nested(tmp_path / "b4.pth", block_size=4, order="timm")
    info = inspect_file(src)  # block 4: no stem of block 2, but the tensors are found under their wrappers
    assert not info["stems"] and info["tensors"] == 8 and "'state_dict_ema' (8 tensors)" in info["summary"]
    assert verify_files(src, src)["passed"] and verify_files(src, src)["tensors"] == 8
    info = inspect_file(src, block_size=4, order="timm")
    assert info["stems"] and info["stems"][0]["shape"][1] == 48 and info["block_size"] == 4
    dst = tmp_path / "b4-conv.pth"
    convert_file(src, dst, block_size=4, order="timm", verify=True)
    code, out, _ = _cli("verify", src, dst, "--block-size", "4", "--order", "timm", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["passed"]
    code, out, _ = _cli("verify", src, dst, "--block-size", "4", "--order", "yolov5", capsys=capsys)
    assert code == 1 and "FAIL" in out  # another order remaps the stem otherwise: the tensors differ
    code, out, _ = _cli("inspect", src, "--block-size", "4", "--order", "timm", capsys=capsys)
    assert code == 0 and "stem 0:" in out
    code, _, err = _cli("inspect", YOLOV7, "--block-size", "4", capsys=capsys)
    assert code == 2 and "does not use --block-size" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli("inspect", src, "--order", "nope", capsys=capsys)
    assert code == 2 and "nope" in err


def test_converted_family_files_say_already_converted(tmp_path):
    for src, name in ((YOLOV7, "v7.pt"), (DARKNET, "dn.pt")):
        dst = tmp_path / name
        convert_file(src, dst)
        info = inspect_file(dst)
        assert "already converted" in info["summary"] and "no ReOrg" not in info["summary"]
        with pytest.raises(fs.errors.ConversionError, match="already converted"):
            convert_file(dst, tmp_path / f"again-{name}")
        assert verify_files(src, dst)["passed"]
    src = _model_file(tmp_path / "m.pt")  # a model file: its converted stem is named as such too
    convert_file(src, tmp_path / "m-conv.pt")
    assert "already converted" in inspect_file(tmp_path / "m-conv.pt")["summary"]
    assert "already converted" not in inspect_file(src)["summary"]


def test_no_temporary_or_view_is_left_by_a_proof(tmp_path):
    src = _model_file(tmp_path / "m.pt")
    before = set(os.listdir(tmp_path))
    convert_file(src, tmp_path / "m-conv.pt", verify=True)
    assert set(os.listdir(tmp_path)) - before == {"m-conv.pt"}


def test_verify_that_measured_nothing_is_a_failure(tmp_path, monkeypatch):
    """A writer that bypasses the atomic write (so nothing could be read back before the rename) is not verified:
    exit 1 and its output removed, never a report without a measurement."""
    import focus_surgery.sources.plain as plain

    src = _nested(tmp_path / "sd.pt")
    monkeypatch.setattr(plain, "save_checkpoint", lambda content, dst, *rest, **kw: torch.save(content, dst))
    with pytest.raises(VerificationFailed, match="measured nothing") as failed:
        convert_file(src, tmp_path / "out.pt", verify=True)
    assert failed.value.report.proof is None and not (tmp_path / "out.pt").exists()
    assert convert_file(src, tmp_path / "out.pt").written == [str(tmp_path / "out.pt")]  # without --verify: written


def test_verify_an_original_against_its_conversion_tresnet_layout(tmp_path, capsys):
    """TResNet's layout (a weightless SpaceToDepth(4), then ``body.conv1.conv`` reading 48 channels), nested under
    ``state_dict`` and ``state_dict_ema``: ``verify original converted`` remaps the stem and compares every tensor."""
    torch.manual_seed(1)
    sd = {
        "body.conv1.conv.weight": torch.randn(8, 48, 3, 3),
        "body.conv1.bn.weight": torch.rand(8) + 0.5,
        "body.conv1.bn.bias": torch.randn(8),
        "body.conv1.bn.running_mean": torch.randn(8),
        "body.conv1.bn.running_var": torch.rand(8) + 0.5,
        "body.layer1.conv.weight": torch.randn(8, 8, 3, 3),
        "head.fc.weight": torch.randn(10, 8),
        "head.fc.bias": torch.randn(10),
    }
    src, dst = tmp_path / "tresnet.pth", tmp_path / "tresnet-conv.pth"
    torch.save({"arch": "tresnet_m", "state_dict": sd, "state_dict_ema": {k: v + 0 for k, v in sd.items()}}, src)
    code, out, _ = _cli("convert", src, dst, "--block-size", "4", "--order", "timm", "--verify", capsys=capsys)
    assert code == 0 and "verified" not in out
    code, out, _ = _cli("verify", src, src, capsys=capsys)
    assert code == 0 and "over 16 tensors" in out
    code, out, _ = _cli("verify", src, dst, "--block-size", "4", "--order", "timm", "--json", capsys=capsys)
    result = json.loads(out)
    assert code == 0 and result["passed"] and result["tensors"] == 2 * 8 and result["max_abs_err"] == 0.0
    assert "stem remapped" in result["compared"]
    code, out, _ = _cli("inspect", src, "--block-size", "4", capsys=capsys)
    assert code == 0 and "8 tensors" in out and "stem body.conv1" in out
