"""verify(): nested outputs, mismatches, NaNs, and that it never touches the models."""

import math

import pytest
import torch
from torch import nn

import focus_surgery as fs


class Nested(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 1, 1)
        self.scale = scale

    def forward(self, x):
        y = self.conv(x) * self.scale
        return {"a": y, "b": [y.mean(), (y.sum(), y[:, :1])]}


def test_identical_models_pass_with_zero_error():
    model = Nested()
    report = fs.verify(model, model, input_shape=(2, 3, 8, 12))
    assert report.passed and report.max_abs_err == 0.0 and report.num_outputs == 4 and report.dtype == "float64"


def test_small_difference_fails_and_is_measured():
    a = Nested()
    b = Nested(scale=1 + 1e-6)
    b.load_state_dict(a.state_dict())
    report = fs.verify(a, b, input_shape=(1, 3, 8, 8))
    assert not report.passed and 0 < report.max_abs_err < 1e-3


def test_structure_mismatch_is_a_failure_with_a_reason():
    report = fs.verify(nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(3, 4, 3, 2, 1), input_shape=(1, 3, 8, 8))
    assert not report.passed and "shape" in report.problem and math.isinf(report.max_abs_err)


def test_nan_in_candidate_fails():
    a = nn.Conv2d(3, 4, 1)
    b = nn.Conv2d(3, 4, 1)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.bias[0] = float("nan")
    assert not fs.verify(a, b, input_shape=(1, 3, 4, 4)).passed


def test_models_are_not_modified():
    model = fs.Focus(3, 8, 3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fs.verify(model, model, input_shape=(2, 3, 8, 8))
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_given_inputs_are_used():
    model = fs.Focus(3, 8, 3)
    report = fs.verify(model, model, inputs=torch.rand(3, 3, 16, 8))
    assert report.input_shapes == [[3, 3, 16, 8]]
    with pytest.raises(ValueError, match="divisible"):
        fs.verify(model, model, inputs=torch.rand(1, 3, 15, 8))


class Pair(Nested):
    """Two outputs; only the second one depends on ``scale``."""

    def forward(self, x):
        y = self.conv(x)
        return y, y * self.scale


def test_every_output_is_compared_not_only_the_first():
    a, b = Pair(), Pair(scale=1 + 1e-6)
    b.load_state_dict(a.state_dict())
    report = fs.verify(a, b, input_shape=(1, 3, 8, 8))
    assert report.num_outputs == 2 and not report.passed and report.max_abs_err > 0
