"""A YOLOv5-repository file with an EMA beside its model (as ``train.py`` writes ``last.pt``): both converted, each
from its own weights, every dtype kept (the fixtures are fp16 and fp32)."""

import pytest
import torch

import focus_surgery as fs
from focus_surgery.files import convert_file
from focus_surgery.sources import load
from focus_surgery.sources.records_io import save_records
from focus_surgery.yolov5.rebuild import read_yolov5_checkpoint
from tests._yolov5_legacy_helpers import FIXTURES

STEM = "model.0.conv.conv.weight"


def _stem_conv(model_record):
    return model_record.children()["model"].state["_modules"]["0"].children()["conv"].children()["conv"]


FILES = ["yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt", "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp32.pt"]


@pytest.mark.parametrize("name", FILES)
def test_model_and_ema_are_both_converted_from_their_own_weights(tmp_path, name):
    loaded = load(FIXTURES / name)
    ema = load(FIXTURES / name).content["model"]  # a second read: records are data and are not deep-copied
    weight = _stem_conv(ema).state["_parameters"]["weight"]
    _stem_conv(ema).state["_parameters"]["weight"] = torch.nn.Parameter(
        weight.detach() * 1.5 + 0.25, requires_grad=weight.requires_grad
    )  # the EMA differs from the live model, as in any last.pt
    loaded.content["ema"], loaded.content["updates"] = ema, 100
    src, dst = tmp_path / "last.pt", tmp_path / "converted.pt"
    save_records(loaded.content, src)
    before = {k: read_yolov5_checkpoint(src).content[k].state_dict() for k in ("model", "ema")}
    assert not torch.equal(before["model"][STEM], before["ema"][STEM])
    report = convert_file(src, dst, layout="yolov5", verify=True)
    assert report["converted"] == ["model", "ema"] and report["verification"]["passed"]
    after = read_yolov5_checkpoint(dst).content
    assert after["updates"] == 100
    for key in ("model", "ema"):
        sa, sb = before[key], after[key].state_dict()
        assert torch.equal(sb["model.0.conv.weight"], fs.focus_to_conv_weight(sa[STEM], 2, "yolov5")), key
        renamed = {k.replace("model.0.conv.", "model.0.", 1): v for k, v in sa.items()}
        assert list(renamed) == list(sb)
        assert all(v.dtype == sb[k].dtype for k, v in renamed.items()), key
        assert all(torch.equal(v, sb[k]) for k, v in renamed.items() if k != "model.0.conv.weight"), key
