"""The proof checks the written file's FORM: its stems, read back, must be in the form the conversion says it wrote
(``--to conv``: a strided conv; ``--to focus`` / ``s2d``: a space-to-depth form), whatever the original was. A file
written as the original (or half converted) computes exactly what the original does: only its form tells."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery import checkpoint_io
from focus_surgery.errors import VerificationFailed
from focus_surgery.files import convert_file
from focus_surgery.report import PROOF_MODEL
from focus_surgery.sources import load, records_io
from focus_surgery.stems import unconverted


def _conv_net() -> nn.Sequential:
    """A strided-conv stem (6x6, stride 2, padding 2: the conv form of a 2x2 Focus with a 3x3 conv) and a head."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 6, 2, 2), nn.Conv2d(8, 4, 3, padding=1))
    for p in net.parameters():
        p.data.normal_(0, 0.5)
    return net.eval()


def _two_focus_net() -> nn.Sequential:
    """Two Focus sites: ``--scope stem`` converts the first, ``--scope all`` both."""
    torch.manual_seed(2)
    net = nn.Sequential(fs.Focus(3, 8, 3), fs.Focus(8, 4, 3))
    for p in net.parameters():
        p.data.normal_(0, 0.5)
    return net.eval()


def _writer(monkeypatch, content):
    """A ``.pt`` writer that writes ``content`` where the conversion belongs."""
    save = checkpoint_io.torch_save

    def other_save(_content, path, *rest):
        save(content, path)

    monkeypatch.setattr(checkpoint_io, "torch_save", other_save)
    monkeypatch.setattr(records_io, "torch_save", other_save)


def _conv_state_dict(tmp_path: Path) -> Path:
    """A trainer-style state dict (model and EMA) whose stem is a strided conv: a Focus net converted --to conv."""
    import test_proofs

    conv = tmp_path / "conv.pt"
    convert_file(test_proofs._nested(tmp_path / "focus.pt"), conv)
    (tmp_path / "focus.pt").unlink()
    return conv


@pytest.mark.parametrize("to", ["focus", "s2d"])
def test_a_model_file_converts_to_a_space_to_depth_form_and_proves(tmp_path, to):
    src = tmp_path / "in.pt"
    torch.save({"model": _conv_net(), "epoch": 1}, src)
    report = convert_file(src, tmp_path / "out.pt", to=to, verify=True)
    assert report.proof == PROOF_MODEL and report.max_abs_err < 1e-10
    model = load(tmp_path / "out.pt").checkpoint().content["model"]
    assert unconverted(model, to) == [] and unconverted(model, "conv") != []  # written in the form asked


def test_scope_all_converts_every_site_and_proves(tmp_path):
    src = tmp_path / "in.pt"
    torch.save({"model": _two_focus_net()}, src)
    report = convert_file(src, tmp_path / "out.pt", scope="all", verify=True)
    assert report.proof == PROOF_MODEL and report.max_abs_err < 1e-10
    model = load(tmp_path / "out.pt").checkpoint().content["model"]
    assert unconverted(model, "conv", "all") == [] and [m.conv.stride for m in model] == [(2, 2), (2, 2)]


@pytest.mark.parametrize("to", ["focus", "s2d"])
def test_a_model_file_converted_to_focus_written_unconverted_fails_its_proof(tmp_path, monkeypatch, to):
    src = tmp_path / "in.pt"
    torch.save({"model": _conv_net(), "epoch": 1}, src)
    _writer(monkeypatch, load(src).checkpoint().content)
    with pytest.raises(VerificationFailed, match="unconverted") as caught:
        convert_file(src, tmp_path / "out.pt", to=to, verify=True)
    message = str(caught.value)
    assert "\n" not in message and "stem '0' is still in conv form, not space-to-depth" in message, message
    check = caught.value.report.fields["verification"]  # the model proof's numbers stand; it did not pass
    assert check["passed"] is False and "unconverted" in check["problem"] and check["max_abs_err"] == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"]


def test_a_state_dict_converted_to_focus_written_unconverted_fails_its_proof(tmp_path, monkeypatch):
    src = _conv_state_dict(tmp_path)
    convert_file(src, tmp_path / "back.pt", to="focus", verify=True)  # the conversion itself proves
    (tmp_path / "back.pt").unlink()
    _writer(monkeypatch, load(src).content)
    with pytest.raises(VerificationFailed, match="unconverted") as caught:
        convert_file(src, tmp_path / "out.pt", to="focus", verify=True)
    message = str(caught.value)
    assert "\n" not in message and "stem '0' is still in conv form, not space-to-depth" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.pt"]


def test_a_state_dict_whose_ema_copy_is_written_unconverted_fails_its_proof(tmp_path, monkeypatch):
    """Model and EMA both hold the stem: the EMA copy left in Focus form is named."""
    import test_proofs

    src = test_proofs._nested(tmp_path / "in.pt")
    converted = load(src).content
    half = dict(converted)
    convert_file(src, tmp_path / "conv.pt")
    half["state_dict"] = load(tmp_path / "conv.pt").content["state_dict"]  # the EMA keeps the original's stem
    (tmp_path / "conv.pt").unlink()
    _writer(monkeypatch, half)
    with pytest.raises(VerificationFailed, match="unconverted") as caught:
        convert_file(src, tmp_path / "out.pt", verify=True)
    assert "under 'state_dict_ema'" in str(caught.value) and "focus form, not conv" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"]


def test_scope_all_written_half_converted_fails_its_proof(tmp_path, monkeypatch):
    """``--scope all`` written with its first site converted only: the second, still a Focus, is named."""
    src = tmp_path / "in.pt"
    torch.save({"model": _two_focus_net()}, src)
    half = copy.deepcopy(load(src).checkpoint().content)
    fs.convert(half["model"], to="conv", scope="stem")
    _writer(monkeypatch, half)
    with pytest.raises(VerificationFailed, match="unconverted") as caught:
        convert_file(src, tmp_path / "out.pt", scope="all", verify=True)
    assert "stem '1' is still in focus form, not conv" in str(caught.value), str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"]
