"""Exact stem forms and ``optimize``: every form equals the stem in float64, and optimize returns an exact model.

No timing is asserted (the machine is shared); only that the choice follows the measured medians.
"""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery.demo import build_focus_model, randomize_batchnorm
from focus_surgery.layers import ConvBnAct, Focus
from focus_surgery.speed.optimize import ORIGINAL
from focus_surgery.speed.stem_forms import KINDS, StemForm, build_form, build_forms, form_names, strided_block
from focus_surgery.surgery import ConversionError

TOL = 1e-12  # float64 rounding of reordered sums; a wrong channel order gives errors of order 1


def _stems():
    """A stem of each family: YOLOv5 Focus, ResNet 7x7/2 (asymmetric s2d pad), TResNet s2d(4)+conv, bare conv."""
    torch.manual_seed(0)
    return {
        "focus_k3": randomize_batchnorm(Focus(3, 16, k=3)),
        "focus_timm_order_bs4": randomize_batchnorm(Focus(3, 8, k=3, block_size=4, order="timm")),
        "resnet_7x7_s2": randomize_batchnorm(ConvBnAct(3, 8, 7, 2, 3)),
        "tresnet_s2d4": randomize_batchnorm(nn.Sequential(nn.PixelUnshuffle(4), ConvBnAct(48, 8, 3, 1))),
        "bare_conv_bias": nn.Conv2d(3, 8, 4, 2, 1, bias=True),
    }


@pytest.mark.parametrize("form", form_names())
@pytest.mark.parametrize("stem_name", list(_stems()))
def test_every_form_is_exact_in_float64(stem_name, form):
    stem = _stems()[stem_name].eval()
    candidate = build_form(strided_block(stem), form)
    x = torch.rand(2, 3, 32, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = copy.deepcopy(stem).double()(x)
        got = copy.deepcopy(candidate).double()(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= TOL * max(1.0, float(expected.abs().max()))
    assert candidate.channels_last == form.endswith("+channels_last")
    if candidate.channels_last:
        conv = candidate.conv if isinstance(candidate.conv, nn.Conv2d) else candidate.conv.conv
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_forms_cover_every_kind_in_both_memory_formats():
    forms = build_forms(_stems()["focus_k3"])
    assert set(forms) == {k + s for k in KINDS for s in ("", "+channels_last")}
    assert len(forms) == 8
    # weights are copies, never shared with the stem
    stem = _stems()["focus_k3"]
    forms = build_forms(stem)
    forms["conv"].conv.conv.weight.data.zero_()
    assert stem.conv.conv.weight.abs().sum() > 0


def test_stem_without_exact_form_is_refused():
    with pytest.raises(ConversionError, match="dilation"):
        strided_block(nn.Conv2d(3, 8, 3, 2, 2, dilation=2))
    with pytest.raises(ConversionError, match="stride"):
        strided_block(nn.Conv2d(3, 8, 3, 1, 1))
    with pytest.raises(ValueError, match="unknown stem form"):
        build_form(nn.Conv2d(3, 8, 4, 2, 1), "conv+nhwc")


def _assert_exact(reference, model, shape):
    report = fs.verify(reference, model, input_shape=shape, tolerance=1e-10)
    assert report.passed, report
    assert report.dtype == "float64"
    assert report.max_abs_err <= 1e-12 * max(1.0, report.output_scale)


def test_optimize_returns_an_exact_model_and_follows_the_measured_medians():
    model = build_focus_model()
    reference = copy.deepcopy(model)
    x = torch.rand(2, 3, 64, 96)
    result, report = fs.optimize(model, x, repeats=3, warmup=1)
    assert result is model
    _assert_exact(reference, result, (2, 3, 64, 96))
    (stem,) = report.stems
    assert stem.path == "0" and stem.input_shape == [2, 3, 64, 96]
    assert {r.form for r in stem.results} == {ORIGINAL, *form_names()}
    assert all(r.exact and r.max_abs_err <= TOL for r in stem.results), report
    fastest = min(stem.results, key=lambda r: r.median_ms)
    assert stem.chosen == fastest.form and fastest.ratio_to_fastest == 1.0
    assert all(r.ratio_to_fastest >= 1.0 for r in stem.results)
    if stem.chosen == ORIGINAL:
        assert isinstance(result[0], Focus)
    else:
        assert isinstance(result[0], StemForm) and result[0].form == stem.chosen
        assert report.verification is not None and report.verification.passed
    assert "kept" in str(report) and report.to_dict()["stems"][0]["chosen"] == stem.chosen


def test_optimize_training_timing_of_the_whole_model_leaves_statistics_alone():
    model = build_focus_model().train()
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    reference = copy.deepcopy(model)
    result, report = fs.optimize(model, torch.rand(2, 3, 32, 32), backward=True, measure="model", repeats=2, warmup=1)
    assert report.mode == "forward+backward" and report.measure == "model"
    after = dict(result.named_buffers())
    for key, value in buffers.items():  # downstream BatchNorm statistics are restored after timing in train mode
        if not key.startswith("0."):
            assert torch.equal(after[key], value), key
    stem_bn = next(m for m in result[0].modules() if isinstance(m, nn.BatchNorm2d))  # the stem's: never timed
    assert torch.equal(stem_bn.running_mean, buffers["0.conv.bn.running_mean"])
    assert all(p.grad is None for p in result.parameters())
    _assert_exact(reference.eval(), result.eval(), (2, 3, 32, 32))


def test_optimize_restricted_forms_and_separate_space_to_depth_layer():
    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(nn.PixelUnshuffle(4), ConvBnAct(48, 8, 3, 1), ConvBnAct(8, 8, 1))).eval()
    reference = copy.deepcopy(model)
    result, report = fs.optimize(model, torch.rand(1, 3, 32, 32), forms=["conv", "space_to_depth"], repeats=2)
    (stem,) = report.stems
    assert {r.form for r in stem.results} == {ORIGINAL, "conv", "space_to_depth"}
    assert stem.chosen in {ORIGINAL, "conv", "space_to_depth"}
    if stem.chosen != ORIGINAL:
        assert isinstance(result[0], nn.Identity) and isinstance(result[1], StemForm)
    _assert_exact(reference, result, (1, 3, 32, 32))


FOCUS_YAML = Path(__file__).parent / "fixtures" / "yolo-focus-tiny.yaml"  # Ultralytics model, Focus stem


def test_optimize_ultralytics_focus_model_keeps_routing():
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(str(FOCUS_YAML), verbose=False).eval()
    reference = copy.deepcopy(model)
    result, report = fs.optimize(
        model, torch.rand(1, 3, 64, 64), forms=["focus_slices", "conv"], measure="model", repeats=1, warmup=1
    )
    (stem,) = report.stems
    assert stem.path == "model.0" and stem.original_type == "Focus"
    assert all(r.exact for r in stem.results)
    assert (result.model[0].i, result.model[0].f) == (0, -1)
    _assert_exact(reference, result, (1, 3, 64, 96))


def test_optimize_bad_input():
    model = build_focus_model()
    with pytest.raises(ValueError, match="measure"):
        fs.optimize(model, torch.rand(1, 3, 32, 32), measure="everything")
    with pytest.raises(ValueError, match="unknown stem form"):
        fs.optimize(model, torch.rand(1, 3, 32, 32), forms=["winograd"])
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    result, report = fs.optimize(linear, torch.rand(1, 3, 2, 2))
    assert result is linear and not report.stems and report.skipped


def test_optimize_keeps_the_callers_gradients():
    model = build_focus_model().train()
    model(torch.rand(1, 3, 32, 32)).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if not k.startswith("0.")}
    result, _ = fs.optimize(model, torch.rand(2, 3, 32, 32), backward=True, measure="model", repeats=2, warmup=1)
    after = dict(result.named_parameters())
    assert all(torch.equal(after[k].grad, g) for k, g in grads.items())
