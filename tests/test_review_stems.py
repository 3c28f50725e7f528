"""Review of the stem vocabulary merge (stems/ package): each test failed on a8ef63e and names the defect it pins."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery import stems


def _max_err(reference: nn.Module, model: nn.Module, shape) -> float:
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    a, b = copy.deepcopy(reference).double().eval(), copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_ultralytics_focus_subclass_with_its_own_slicing_is_probed_not_assumed():
    """Defect: ``ultralytics_focus`` took every subclass of Ultralytics' Focus for YOLOv5's order without reading its
    slicing (the old planner probed it): with verify=False the result was silently wrong (error 0.16)."""
    ultralytics = pytest.importorskip("ultralytics.nn.modules")

    class TimmOrderFocus(ultralytics.Focus):
        def forward(self, x):
            return self.conv(torch.cat([x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]], 1))

    torch.manual_seed(0)
    model = nn.Sequential(TimmOrderFocus(3, 8, 3), nn.Conv2d(8, 4, 1)).eval()
    reference = copy.deepcopy(model)
    part = stems.part_of(model[0])
    assert (part.block_size, part.order, part.problem) == (2, "timm", None)
    report = fs.convert(model, to="conv", verify=False)
    assert report.replaced[0].order == "timm"
    assert _max_err(reference, model, (1, 3, 16, 24)) <= 1e-10


def test_an_odd_input_size_for_a_framework_focus_is_said_clearly():
    """Defect: an odd input_shape for a model whose Focus slices (Ultralytics') raised torch's raw RuntimeError
    ("Sizes of tensors must match ...") out of ``convert``, in both directions."""
    ultralytics = pytest.importorskip("ultralytics.nn.modules")
    torch.manual_seed(0)
    model = nn.Sequential(ultralytics.Focus(3, 8, 3), nn.Conv2d(8, 4, 1)).eval()
    reference = copy.deepcopy(model)
    with pytest.raises(fs.ConversionError, match=r"input 1x3x63x64 .*divisible by 2.*model left unchanged") as info:
        fs.convert(model, to="conv", input_shape=(1, 3, 63, 64))
    assert "\n" not in str(info.value) and _same_state(reference, model) and type(model[0]) is ultralytics.Focus

    strided = nn.Sequential(ultralytics.Conv(3, 8, 6, 2, 2), nn.Conv2d(8, 4, 1)).eval()
    with pytest.raises(fs.ConversionError, match=r"converted model does not run on input 1x3x63x64 .*divisible by 2"):
        fs.convert(strided, to="focus", input_shape=(1, 3, 63, 64))
    assert type(strided[0]) is ultralytics.Conv


class NamedFocus(nn.Module):
    """A class named Focus that is no space-to-depth: it stacks the image with its flips, then a strided conv."""

    def __init__(self):
        super().__init__()
        self.conv = fs.ConvBnAct(12, 8, 3, 2, 1)

    def forward(self, x):
        return self.conv(torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)], 1))


NamedFocus.__name__ = NamedFocus.__qualname__ = "Focus"


def test_a_class_named_focus_that_is_no_space_to_depth_is_never_folded_and_fails_clearly():
    """Defect: it is walked into (right), but its input channels cannot be read from its conv, so the check ran the
    model on 12 channels and torch's raw RuntimeError escaped ``convert``; now a one-line ConversionError asks for
    the input shape, and with the shape given its strided conv converts exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(NamedFocus(), nn.Conv2d(8, 4, 1)).eval()
    reference = copy.deepcopy(model)
    assert stems.part_of(model[0]) is None
    assert not fs.convert(model, to="conv", scope="all").replaced  # never folded as a Focus
    with pytest.raises(fs.ConversionError, match=r"the model itself does not run on input 2x12x.*pass inputs="):
        fs.convert(model, to="focus")
    assert _same_state(reference, model) and type(model[0].conv.conv) is nn.Conv2d
    report = fs.convert(model, to="s2d", input_shape=(1, 3, 16, 24))
    assert [r.path for r in report.replaced] == ["0.conv"] and report.verification.max_abs_err <= 1e-10
    assert _max_err(reference, model, (1, 3, 8, 12)) <= 1e-10


class DoublesInPlace(nn.Module):
    def forward(self, x):
        return x.mul_(2)


def test_the_check_never_writes_into_the_callers_inputs():
    """Defect: ``check`` ran the reference and the changed model on the caller's own float64 tensor; a model that
    writes into its input changed the caller's tensor and made an exact conversion fail its verification."""
    torch.manual_seed(0)
    model = nn.Sequential(DoublesInPlace(), nn.Conv2d(3, 8, 3, 2, 1)).eval()
    x = torch.rand(1, 3, 16, 24, dtype=torch.float64)
    before = x.clone()
    report = fs.convert(model, to="focus", inputs=x)
    assert report.verification.passed and report.verification.max_abs_err <= 1e-10
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Conv2d(3, 8, 3, 3, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 3, 1)),  # stride 3 twice: needs 9
        nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, 2, 1) for i in range(7)]),  # stride 2 seven times
    ],
    ids=["stride3x2", "stride2x7"],
)
def test_scope_all_infers_an_input_every_new_space_to_depth_divides(model):
    """Defect: with no input given, the check's inferred size was the lcm of the new blocks (3, or 2 under the floor
    of 32), not what stacked strides need, so an exact ``to="s2d", scope="all"`` failed with "input height and width
    (64x96) must be divisible by block_size 3" for a size the user never chose."""
    torch.manual_seed(0)
    model = model.eval()
    reference = copy.deepcopy(model)
    report = fs.convert(model, to="s2d", scope="all")
    assert report.verification.passed and report.verification.max_abs_err <= 1e-10
    assert len(report.replaced) == sum(isinstance(m, nn.Conv2d) for m in reference)
    h, w = report.verification.input_shapes[0][2:]
    assert _max_err(reference, model, (1, 3, h, w)) <= 1e-10
