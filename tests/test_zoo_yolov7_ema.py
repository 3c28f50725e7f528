"""A yolov7 ``train.py`` ``last.pt``: a live ``model`` and its ``ema`` (which differ), an optimizer, fp16. Both models
are converted, each matches its own original output, and an EMA written back unconverted is caught."""

import numpy as np
import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery.files import convert_file, inspect_file, verify_files
from tests.test_zoo_wongkinyiu import FIXTURES, REL_TOL, family_code, run64

LAST = FIXTURES / "yolov7-e6-w003125_last.pt"


@pytest.fixture(scope="module", params=[True, False], ids=["verify", "no-verify"])
def converted(request, tmp_path_factory):
    dst = tmp_path_factory.mktemp("yolov7-last") / "converted.pt"
    report = convert_file(LAST, dst, verify=request.param)
    return dst, report


def test_the_fixture_has_a_model_and_a_different_ema():
    with family_code():
        ckpt = torch.load(LAST, map_location="cpu", weights_only=False)
    assert isinstance(ckpt["model"], nn.Module) and isinstance(ckpt["ema"], nn.Module)
    assert ckpt["updates"] == 1 and isinstance(ckpt["optimizer"], dict)
    a, b = ckpt["model"].state_dict(), ckpt["ema"].state_dict()
    assert a.keys() == b.keys() and not torch.equal(a["model.1.conv.weight"], b["model.1.conv.weight"])
    assert a["model.1.conv.weight"].dtype == torch.float16
    assert inspect_file(LAST)["models"] == ["ema", "model"]


def test_report_names_both_models(converted):
    _, report = converted
    assert report["source"] == "yolov7" and report["converted"] == ["ema", "model"]
    assert report["replaced"][0]["weight"] == [[8, 12, 3, 3], [8, 3, 6, 6]]
    assert "remapped" in report["optimizer"]


@pytest.mark.parametrize("key", ["model", "ema"])
def test_each_model_is_converted_and_matches_its_own_original(converted, key):
    dst, _ = converted
    ref = np.load(FIXTURES / "yolov7-e6-w003125_last.ref.npz")
    with family_code():
        original = torch.load(LAST, map_location="cpu", weights_only=False)[key].float().eval()
        model = torch.load(dst, map_location="cpu", weights_only=False)[key].float().eval()
        assert isinstance(model.model[0], nn.Identity), f"{key}: the ReOrg row was written back unconverted"
        conv = model.model[1].conv
        assert (conv.in_channels, conv.kernel_size, conv.stride, conv.padding) == (3, (6, 6), (2, 2), (2, 2))
        theirs, ours = run64(original), run64(model)
    rows = torch.from_numpy(ref["rows"])
    expected = torch.from_numpy(ref[f"output_{key}_float64"])
    scale = float(expected.abs().max())
    assert float((theirs[rows] - expected).abs().max()) <= REL_TOL * scale  # the test-only code is the family's
    assert float((ours[rows] - expected).abs().max()) <= REL_TOL * scale
    assert float((ours - theirs).abs().max()) <= REL_TOL * float(theirs.abs().max())


@pytest.mark.parametrize("key", ["model", "ema"])
def test_every_other_tensor_keeps_its_value_and_dtype(converted, key):
    dst, _ = converted
    with family_code():
        before = torch.load(LAST, map_location="cpu", weights_only=False)
        after = torch.load(dst, map_location="cpu", weights_only=False)
    sa, sb = before[key].state_dict(), after[key].state_dict()
    assert list(sa) == list(sb)
    w = sa["model.1.conv.weight"]
    assert torch.equal(sb["model.1.conv.weight"], fs.focus_to_conv_weight(w, 2, "yolov5"))
    assert all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa if k != "model.1.conv.weight")
    assert after["updates"] == before["updates"] and after["epoch"] == before["epoch"]


def test_verify_files_compares_the_ema(converted):
    """``verify A B`` compares what ``attempt_load`` runs (the EMA when there is one), stem remapped."""
    dst, _ = converted
    result = verify_files(LAST, dst)
    assert result["passed"] and "stem remapped (reorg -> conv" in result["compared"]
