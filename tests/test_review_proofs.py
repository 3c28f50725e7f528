"""Review of the proofs branch: a stem proof says "every other tensor identical"; it must be measured on every
tensor the written file holds (optimizer state, the non-EMA model), not only the model's own state dict."""

from pathlib import Path

import pytest
import torch

from focus_surgery import checkpoint_io
from focus_surgery.errors import VerificationFailed
from focus_surgery.files import convert_file
from focus_surgery.sources import records_io

FAMILY = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "focus-family"
DARKNET = FAMILY / "yolor_w6-div32_last.pt"
YOLOV7_LAST = FAMILY / "yolov7-e6-w003125_last.pt"


def _wrong_optimizer(monkeypatch):
    """A writer that perturbs one momentum buffer of a non-stem parameter on its way to disk (after the check)."""
    save = checkpoint_io.torch_save

    def wrong_save(content, path, *rest):
        optimizer = content["optimizer"]
        state = dict(optimizer["state"])
        last = max(state)  # the last parameter's momentum: never the stem's
        state[last] = {**state[last], "momentum_buffer": state[last]["momentum_buffer"] + 1.0}
        save({**content, "optimizer": {**optimizer, "state": state}}, path, *rest)

    _patch(monkeypatch, wrong_save)


def _patch(monkeypatch, wrong_save):
    """Every writer's name for ``torch_save`` (records_io binds its own at import)."""
    monkeypatch.setattr(checkpoint_io, "torch_save", wrong_save)
    monkeypatch.setattr(records_io, "torch_save", wrong_save)


@pytest.mark.parametrize("src", [DARKNET, YOLOV7_LAST], ids=["darknet", "yolov7"])
def test_optimizer_state_written_wrong_fails_the_stem_proof(tmp_path, monkeypatch, src):
    _wrong_optimizer(monkeypatch)
    dst = tmp_path / "out.pt"
    with pytest.raises(VerificationFailed):
        convert_file(src, dst, verify=True)
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".focus-surgery-tmp")]


def test_yolov7_model_copy_written_wrong_fails_the_stem_proof(tmp_path, monkeypatch):
    """The file holds ``model`` and ``ema``: the proof compares the EMA; a wrong ``model`` must fail too."""
    save = checkpoint_io.torch_save

    def wrong_save(content, path, *rest):
        layers = content["model"].children()["model"].state["_modules"]
        conv = list(layers.values())[-2].children()["conv"]
        weight = conv.state["_parameters"]["weight"]
        conv.state["_parameters"]["weight"] = torch.nn.Parameter(weight.detach() * 1.5, requires_grad=False)
        try:
            save(content, path, *rest)
        finally:
            conv.state["_parameters"]["weight"] = weight

    _patch(monkeypatch, wrong_save)
    dst = tmp_path / "out.pt"
    with pytest.raises(VerificationFailed):
        convert_file(YOLOV7_LAST, dst, verify=True)
    assert not dst.exists()


def test_onnx_external_data_pair_is_read_back_as_written(tmp_path):
    """The read-back of a graph + data pair must read the pair as written (not fail on the data file, nor read a
    data file already at the destination); nothing but the pair is left."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_onnx_deployed import _dynamo_external

    src = _dynamo_external(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    report = convert_file(src, out / "conv.onnx", verify=True)
    assert report.proof == "model" and report["verification"]["passed"]
    assert sorted(p.name for p in out.iterdir()) == ["conv.onnx", "conv.onnx.data"]
    (out / "conv.onnx.data").write_bytes(b"\0" * (out / "conv.onnx.data").stat().st_size)  # a stale, wrong pair
    report = convert_file(src, out / "conv.onnx", verify=True)
    assert report["verification"]["passed"] and sorted(p.name for p in out.iterdir()) == ["conv.onnx", "conv.onnx.data"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, "term"], ids=["sigint", "sigterm"])
def test_an_interrupt_during_the_read_back_leaves_nothing(tmp_path, monkeypatch, interrupt):
    import tempfile

    from torch import nn

    from focus_surgery.atomic_io import Interrupted
    from focus_surgery.layers import Focus
    from focus_surgery.sources import proof

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    src = tmp_path / "m.pt"
    torch.save({"model": nn.Sequential(Focus(3, 8, 3), nn.Conv2d(8, 4, 3)).eval()}, src)
    out = tmp_path / "out"
    out.mkdir()

    def interrupted(*args, **kwargs):
        assert list(system_tmp.iterdir()), "the read-back view is open"
        raise KeyboardInterrupt if interrupt is KeyboardInterrupt else Interrupted(15)

    monkeypatch.setattr(proof, "verify", interrupted)
    with pytest.raises((KeyboardInterrupt, Interrupted)):
        convert_file(src, out / "m-conv.pt", verify=True)
    assert list(out.iterdir()) == [] and list(system_tmp.iterdir()) == []


def test_a_checkpoint_written_as_safetensors_is_proven_on_what_it_holds(tmp_path):
    """A .safetensors output holds the model's tensors only (no optimizer, no second copy): its proof compares
    those, and does not fail for the checkpoint's other contents it was never meant to hold."""
    src = FAMILY / "yolox" / "yolox_nano_w009375_nc2_ckpt.pth"
    report = convert_file(src, tmp_path / "o.safetensors", verify=True)
    assert report.proof == "stem" and report["verification"]["tensors"]["passed"]


def test_a_trainer_state_dict_written_as_safetensors_is_proven_on_what_it_holds(tmp_path):
    import focus_surgery as fs

    torch.manual_seed(0)
    sd = torch.nn.Sequential(fs.Focus(3, 8, 3), torch.nn.Conv2d(8, 4, 3, padding=1)).state_dict()
    ema = {k: v.clone() + (0.01 if v.is_floating_point() else 0) for k, v in sd.items()}
    torch.save({"epoch": 3, "state_dict": sd, "state_dict_ema": ema}, tmp_path / "ckpt.pth")
    report = convert_file(tmp_path / "ckpt.pth", tmp_path / "o.safetensors", verify=True)
    assert report["verification"]["tensors"]["passed"] and (tmp_path / "o.safetensors").exists()
    report = convert_file(tmp_path / "ckpt.pth", tmp_path / "o.pth", verify=True)  # the whole file: every tensor
    assert report["verification"]["tensors"]["every_tensor"] == {
        "tensors": 16,
        "remapped": 2,
        "passed": True,
        "problem": "",
    }


YOLOV7_STRIPPED = FAMILY / "yolov7-e6-w003125_stripped.pt"  # no EMA: the .safetensors holds the model's tensors
# each family's stem as its adapter names it (``Source.stems``), and the written file's tensor that holds its weight
FAMILY_STEMS = {
    "darknet": (DARKNET, "module_list.1.Conv2d.weight", "module_list.1.Conv2d.weight"),
    "yolov7": (YOLOV7_LAST, "ema:1", "model.1.conv.weight"),  # the EMA's: what the .safetensors holds
    "yolov7-no-ema": (YOLOV7_STRIPPED, "model:1", "model.1.conv.weight"),
}


@pytest.mark.parametrize("src", [DARKNET, YOLOV7_LAST], ids=["darknet", "yolov7"])
def test_a_family_checkpoint_written_as_safetensors_passes_its_proof(tmp_path, src):
    report = convert_file(src, tmp_path / "o.safetensors", verify=True)
    assert report.proof == "stem" and (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("family", list(FAMILY_STEMS))
def test_a_family_safetensors_proof_runs_the_written_stem(tmp_path, family):
    """The stem run is the written file's stem (found by the family's adapter in the tensors read back) against the
    original's of the same name, in float64, and every tensor the file holds is compared."""
    src, stem, _ = FAMILY_STEMS[family]
    report = convert_file(src, tmp_path / "o.safetensors", verify=True)
    check = report["verification"]
    assert check["passed"] and check["stems"] == [stem] and check["stem"]["passed"]
    assert check["stem"]["dtype"] == "float64" and report.max_abs_err < 1e-12
    written = checkpoint_io.load_checkpoint(tmp_path / "o.safetensors").content
    assert check["tensors"]["passed"] and check["tensors"]["tensors"] == sum(t.numel() > 0 for t in written.values())


def test_a_family_safetensors_verifies_on_the_command_line(tmp_path, capsys):
    from focus_surgery.cli import main

    for name, src in (("darknet", DARKNET), ("yolov7", YOLOV7_LAST)):
        assert main(["convert", str(src), str(tmp_path / f"{name}.safetensors"), "--verify"]) == 0
        assert "verification failed" not in capsys.readouterr().err
        assert (tmp_path / f"{name}.safetensors").exists()


def _wrong_safetensors(monkeypatch, key):
    """A ``.safetensors`` writer that moves the largest-magnitude element of tensor ``key`` by 1 on its way to disk
    (after the conversion, before the proof reads the file back)."""
    save = checkpoint_io.safetensors_save

    def wrong_save(tensors, path, *rest):
        tensor = tensors[key].clone()
        at = int(tensor.reshape(-1).abs().argmax())
        tensor.view(-1)[at] += 1
        save({**tensors, key: tensor}, path, *rest)

    monkeypatch.setattr(checkpoint_io, "safetensors_save", wrong_save)


@pytest.mark.parametrize("family", list(FAMILY_STEMS))
def test_a_family_safetensors_with_a_wrong_stem_fails_its_proof(tmp_path, monkeypatch, family):
    src, stem, weight = FAMILY_STEMS[family]
    _wrong_safetensors(monkeypatch, weight)
    dst = tmp_path / "o.safetensors"
    with pytest.raises(VerificationFailed) as failed:
        convert_file(src, dst, verify=True)
    check = failed.value.report.fields["verification"]
    assert check["stems"] == [stem] and not check["stem"]["passed"]  # the stem run on the written bits caught it
    assert check["stem"]["max_abs_err"] > 1e-3 and not check["passed"]
    assert not dst.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", list(FAMILY_STEMS))
def test_a_family_safetensors_with_a_wrong_other_tensor_fails_its_proof(tmp_path, monkeypatch, family):
    src, stem, weight = FAMILY_STEMS[family]
    from focus_surgery.sources import load, source_for

    loaded = load(src)
    keys = list(source_for(loaded).state_dict(loaded))  # what the .safetensors holds
    other = [k for k in keys if k.endswith("weight") and k != weight][-1]  # of the head: not the stem's
    _wrong_safetensors(monkeypatch, other)
    dst = tmp_path / "o.safetensors"
    with pytest.raises(VerificationFailed) as failed:
        convert_file(src, dst, verify=True)
    check = failed.value.report.fields["verification"]
    assert check["stems"] == [stem] and check["stem"]["passed"]  # the stem is right; the other tensor is not
    assert not check["tensors"]["passed"] and not check["passed"]
    assert not dst.exists() and list(tmp_path.iterdir()) == []
