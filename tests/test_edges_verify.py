"""Verification at its threshold: a difference just above the tolerance fails, just below passes, the comparison runs
in float64 (a float32 comparison is caught both ways), and a dtype change fails a state dict's ``--verify``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery import cli
from focus_surgery.sources import plain as plain_source
from focus_surgery.sources.compare import compare_state_dicts, verify_stems
from focus_surgery.state_dict import convert_state_dict
from focus_surgery.verify import DEFAULT_TOLERANCE

TOL = 1e-10  # the documented tolerance, written out: the threshold tests below must not move with the code's constant


class Shift(nn.Module):
    """``x + delta`` with ``delta`` a Python float: it takes the dtype the copy runs in, so float32 loses it."""

    def __init__(self, delta: float):
        super().__init__()
        self.delta = delta
        self.anchor = nn.Parameter(torch.zeros(1))  # gives verify a device and something to cast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta + self.anchor


def _inputs(low: float, high: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return low + (high - low) * torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)


def test_tolerance_is_the_documented_value():
    assert DEFAULT_TOLERANCE == 1e-10


@pytest.mark.parametrize("factor,passes", [(0.5, True), (0.9, True), (1.1, False), (1.5, False)])
def test_verify_at_its_threshold_with_outputs_below_one(factor, passes):
    """Outputs in [0.5, 1): the scale floors at 1, so the bound is ``tolerance`` itself. In float32 a shift of
    1e-10 on 0.75 vanishes (one ulp there is 6e-8): a float32 comparison would pass the failing cases."""
    x = _inputs(0.5, 1.0)
    report = fs.verify(Shift(0.0), Shift(factor * TOL), inputs=x)
    assert report.dtype == "float64" and report.passed is passes, str(report)
    assert report.max_abs_err == pytest.approx(factor * TOL, rel=1e-5)  # measured, not rounded away
    assert report.output_scale < 1.0


@pytest.mark.parametrize("factor,passes", [(0.5, True), (0.9, True), (1.1, False), (1.5, False)])
def test_verify_at_its_threshold_relative_to_a_large_output_scale(factor, passes):
    x = _inputs(500.0, 1000.0)
    scale = float(x.abs().max())
    report = fs.verify(Shift(0.0), Shift(factor * TOL * scale), inputs=x)
    assert report.passed is passes, str(report)
    assert report.max_rel_err == pytest.approx(factor * TOL, rel=1e-3)


def test_float32_would_fail_an_exact_conversion():
    """The other way round: Focus and its converted conv sum in different orders; in float32 they differ by ~1e-7
    relative (1000x the tolerance), in float64 by ~1e-16. A verify that ran or compared in float32 fails it."""
    torch.manual_seed(0)
    focus = nn.Sequential(fs.Focus(3, 16, k=3), nn.Conv2d(16, 8, 3)).eval()  # convert replaces children
    for m in focus.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    conv = copy.deepcopy(focus)
    fs.convert(conv, to="conv")
    assert conv[0].conv.kernel_size == (6, 6)
    x = _inputs(0.0, 255.0)  # pixel values: a large output scale
    report = fs.verify(focus, conv, inputs=x)
    assert report.passed and report.dtype == "float64" and report.max_rel_err < 1e-13, str(report)
    in_float32 = fs.verify(focus, conv, inputs=x, dtype=torch.float32)
    assert not in_float32.passed and in_float32.max_rel_err > 10 * TOL  # what the float64 default protects from


# ------------------------------------------------------------------------------------ state dicts: compare_state_dicts


def _state_dict(dtype: torch.dtype = torch.float64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "model.0.conv.conv.weight": torch.randn(5, 12, 3, 3, generator=g),
        "model.0.conv.bn.weight": torch.rand(5, generator=g) + 0.5,
        "model.0.conv.bn.bias": torch.randn(5, generator=g),
        "model.0.conv.bn.running_mean": torch.randn(5, generator=g),
        "model.0.conv.bn.running_var": torch.rand(5, generator=g) + 0.5,
        "model.0.conv.bn.num_batches_tracked": torch.tensor(7),
        "model.1.conv.weight": torch.randn(4, 5, 3, 3, generator=g) + 0.5,
        "model.1.bn.weight": torch.rand(4, generator=g) + 0.75,
    }
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


@pytest.mark.parametrize("factor,passes", [(0.5, True), (0.99, True), (1.01, False), (2.0, False)])
def test_compare_state_dicts_at_its_tolerance(factor, passes):
    a = _state_dict()
    tolerance = 1e-9
    b = dict(a)
    b["model.1.bn.weight"] = a["model.1.bn.weight"] + factor * tolerance
    result = compare_state_dicts(a, b, tolerance=tolerance)
    assert result["passed"] is passes and result["tensors"] == len(a)
    assert result["max_abs_err"] == pytest.approx(factor * tolerance, rel=1e-5)


def test_compare_state_dicts_sees_one_float64_ulp():
    """The ``--verify`` of a state dict compares every other tensor bit for bit (tolerance 0): one float64 ulp on
    values near 1 is 2e-16, lost entirely by a float32 comparison."""
    a = _state_dict()
    b = dict(a)
    w = a["model.1.bn.weight"]
    b["model.1.bn.weight"] = torch.nextafter(w, w + 1)
    result = compare_state_dicts(a, b, tolerance=0.0)
    assert not result["passed"] and 0 < result["max_abs_err"] < 1e-15
    assert compare_state_dicts(a, dict(a), tolerance=0.0)["passed"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compare_state_dicts_fails_on_a_dtype_change_with_equal_values(dtype):
    a = _state_dict(dtype)
    b = {k: v.float() if v.is_floating_point() and k.startswith("model.1.") else v for k, v in a.items()}
    result = compare_state_dicts(a, b, tolerance=0.0)
    assert not result["passed"] and "dtype" in result["problem"] and "model.1." in result["problem"]


def test_stem_check_at_its_threshold():
    """The float64 run of the stem (``verify_stems``) fails a stem weight perturbed to just above the tolerance and
    passes one just below; the perturbation is calibrated on the measured (linear) effect of one weight element."""
    before = _state_dict()
    after, _ = convert_state_dict(before, "conv")
    key = "model.0.conv.weight"

    def report(eps: float):
        changed = dict(after)
        changed[key] = after[key].clone()
        changed[key][0, 0, 2, 2] += eps
        return verify_stems(before, changed, 2, "yolov5")

    exact = report(0.0)
    assert exact.passed and exact.max_abs_err < 1e-13 and exact.output_scale > 1
    probe = report(1e-6)
    bound = TOL * max(1.0, probe.output_scale)
    per_unit = probe.max_abs_err / 1e-6
    for factor, passes in ((0.5, True), (0.9, True), (1.1, False), (2.0, False)):
        r = report(factor * bound / per_unit)
        assert r.passed is passes, (factor, str(r))
        assert r.max_abs_err == pytest.approx(factor * bound, rel=1e-2)


# ------------------------------------------------------------------------------- state dicts: the CLI's --verify


def _convert(tmp_path: Path, content: dict, *flags: str) -> tuple[int, Path]:
    src, dst = tmp_path / "src.pt", tmp_path / "out.pt"
    torch.save(content, src)
    return cli.main(["convert", str(src), str(dst), "--verify", *flags]), dst


def test_verify_exits_1_on_one_ulp_outside_the_stem(tmp_path, monkeypatch, capsys):
    real = plain_source.convert_state_dict

    def one_ulp(sd, *args, **kwargs):
        out, stem = real(sd, *args, **kwargs)
        w = out["model.1.bn.weight"]
        return {**out, "model.1.bn.weight": torch.nextafter(w, w + 1)}, stem

    monkeypatch.setattr(plain_source, "convert_state_dict", one_ulp)
    code, dst = _convert(tmp_path, _state_dict())
    err = capsys.readouterr().err
    assert code == 1 and "verification failed" in err and not dst.exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_verify_exits_1_when_other_tensors_are_written_back_as_float32(tmp_path, monkeypatch, capsys, dtype):
    """The planted bug of the issue: a half-precision state dict whose non-stem tensors come back as float32 has the
    same values (a float32 holds every float16 / bfloat16 exactly), so only a dtype check sees it."""
    real = plain_source.convert_state_dict

    def widened(sd, *args, **kwargs):
        out, stem = real(sd, *args, **kwargs)
        return {
            k: v if k.startswith("model.0.") or not v.is_floating_point() else v.float() for k, v in out.items()
        }, stem

    monkeypatch.setattr(plain_source, "convert_state_dict", widened)
    code, dst = _convert(tmp_path, _state_dict(dtype))
    err = capsys.readouterr().err
    assert code == 1 and "dtype" in err and len(err.strip().splitlines()) == 1 and not dst.exists()


def test_verify_exits_1_when_the_stem_is_written_back_as_float32(tmp_path, monkeypatch, capsys):
    real = plain_source.convert_state_dict

    def widened_stem(sd, *args, **kwargs):
        out, stem = real(sd, *args, **kwargs)
        return {k: v.float() if k == "model.0.conv.weight" else v for k, v in out.items()}, stem

    monkeypatch.setattr(plain_source, "convert_state_dict", widened_stem)
    code, dst = _convert(tmp_path, _state_dict(torch.float16))
    assert code == 1 and "dtype" in capsys.readouterr().err and not dst.exists()


WRAPPINGS = {
    "top level": lambda sd: sd,
    "ema": lambda sd: {"ema": sd, "updates": 12},
    "model_ema": lambda sd: {"model_ema": sd, "epoch": 3},
    "model and ema": lambda sd: {"model": sd, "ema": {k: v.clone() for k, v in sd.items()}, "epoch": 3},
    "state_dict and state_dict_ema": lambda sd: {"state_dict": sd, "state_dict_ema": dict(sd)},
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_conversion_keeps_every_dtype_and_converts_every_ema(tmp_path, capsys, dtype, wrapping):
    sd = _state_dict(dtype)
    code, dst = _convert(tmp_path, WRAPPINGS[wrapping](sd), "--json")
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["verification"]["passed"] and report["dtype"] == str(dtype)[6:]
    out = torch.load(dst, weights_only=True)
    places = [None] if wrapping == "top level" else [k for k, v in out.items() if isinstance(v, dict)]
    assert len(places) == (2 if " and " in wrapping else 1)
    for place in places:
        written = out if place is None else out[place]
        renamed = {k.replace("model.0.conv.", "model.0.", 1): v for k, v in sd.items()}
        assert list(written) == list(renamed)  # the stem of every copy (model and its EMA) converted
        assert {k: v.dtype for k, v in written.items()} == {k: v.dtype for k, v in renamed.items()}
        assert written["model.0.conv.weight"].shape == (5, 3, 6, 6)
        assert torch.equal(written["model.0.conv.weight"], fs.focus_to_conv_weight(sd["model.0.conv.conv.weight"]))
        assert all(torch.equal(written[k], renamed[k]) for k in renamed if k != "model.0.conv.weight")
