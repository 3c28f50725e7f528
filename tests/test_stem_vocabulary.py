"""The stem vocabulary (focus_surgery.stems): sites found by one walk, every block size x order x kernel built and
checked in float64, recognisers registered from outside, one input rule, no framework names in the core, and a
YOLOv5 convert that does each piece of work once."""

from __future__ import annotations

import ast
import copy
import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery import stems
from focus_surgery.stems import inputs as input_rule

VERIFY = importlib.import_module("focus_surgery.verify")  # fs.verify is the function

CORE = Path(fs.__file__).parent
CORE_FILES = sorted(
    [CORE / f for f in ("orders.py", "remap.py", "layers.py", "verify.py", "surgery.py")]
    + list((CORE / "stems").glob("*.py"))
)


def _exact(reference: nn.Module, model: nn.Module, shape) -> float:
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a, b = copy.deepcopy(reference).double().eval(), copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("order", fs.ORDERS)
@pytest.mark.parametrize("bs", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_space_to_depth_plus_conv_site_folds_and_unfolds(bs, order, k):
    torch.manual_seed(bs * 10 + k)
    model = nn.Sequential(fs.SpaceToDepth(bs, order), nn.Conv2d(3 * bs * bs, 8, k, 1, k // 2), nn.ReLU())
    reference = copy.deepcopy(model)
    sites = list(stems.walk(model))
    assert [(s.path, s.form, s.block_size, s.order) for s in sites][:1] == [("0", "s2d", bs, order)]
    assert sites[0].block is model[1] and sites[0].kernel == (k, k) and sites[0].padding == (k // 2, k // 2)
    changes, skipped = stems.plan(model, "conv")
    assert not skipped and [c.path for c in changes] == ["0", "1"] and changes[1].record.block_size == bs
    result = stems.check(model, changes, input_shape=(2, 3, 4 * bs, 6 * bs))
    assert result.passed and result.max_abs_err <= 1e-10 and result.dtype == "float64"
    assert isinstance(model[0], fs.SpaceToDepth)  # planning and checking change nothing
    fs.convert(model, to="conv", input_shape=(2, 3, 4 * bs, 6 * bs))
    assert model[1].stride == (bs, bs) and _exact(reference, model, (1, 3, 2 * bs, 5 * bs)) <= 1e-10
    back = fs.convert(model, to="s2d", input_shape=(2, 3, 4 * bs, 6 * bs))  # the folded pair is put back
    assert [r.path for r in back.replaced] == ["1"] and isinstance(model[0], fs.SpaceToDepth)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("order", fs.ORDERS)
@pytest.mark.parametrize("bs", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 3, 4, 6])
@pytest.mark.parametrize("to", ["focus", "s2d"])
def test_strided_conv_site_to_space_to_depth_and_back(bs, order, k, to):
    torch.manual_seed(bs + k)
    model = nn.Sequential(fs.ConvBnAct(3, 8, k, bs, k // 2), nn.Conv2d(8, 4, 1))
    reference = copy.deepcopy(model).eval()
    site = next(stems.walk(model))
    assert (site.path, site.form, site.block_size, site.kernel) == ("0", "conv", bs, (k, k))
    report = fs.convert(model.eval(), to=to, order=order)
    assert report.replaced[0].order == order and report.verification.max_abs_err <= 1e-10
    assert isinstance(model[0], (fs.Focus, fs.SPDConv)) and stems.part_of(model[0]).block_size == bs
    assert stems.input_multiple(model) == bs and stems.input_multiple(reference) == 1
    fs.convert(model, to="conv")
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.state_dict().values()))
    assert _exact(reference, model, (1, 3, 3 * bs * 4, 2 * bs * 4)) <= 1e-10


class Shuffle(nn.Module):
    """A space-to-depth(2) in timm's order that carries a buffer: no probe takes it for a weightless layer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        return fs.SpaceToDepth(2, "timm")(x) * self.scale


def test_a_registered_recogniser_is_used_for_a_new_class():
    def model():
        torch.manual_seed(0)
        return nn.Sequential(Shuffle(), nn.Conv2d(12, 8, 3, 1, 1))

    unknown = model()
    assert stems.part_of(unknown[0]) is None and not fs.convert(unknown, to="conv").replaced

    def shuffle(module):
        return stems.SpaceToDepthPart(2, "timm") if isinstance(module, Shuffle) else None

    stems.register_recogniser(shuffle)
    try:
        stems.register_recogniser(shuffle)  # idempotent
        assert stems.RECOGNISERS.count(shuffle) == 1
        known, reference = model(), model()
        assert [(s.form, s.block_size, s.order) for s in stems.walk(known)] == [("s2d", 2, "timm"), ("conv", 1, None)]
        report = fs.convert(known, to="conv")
        assert report.replaced[0].order == "timm" and report.verification.max_abs_err <= 1e-10
        assert known[1].stride == (2, 2) and _exact(reference, known, (1, 3, 8, 12)) <= 1e-10
        assert stems.input_multiple(reference) == 2
    finally:
        stems.RECOGNISERS.remove(shuffle)


FRAMEWORK_NAMES = {"SpaceToDepth", "SpaceToDepthJit", "SpaceToDepthModule", "Focus", "Conv", "ConvNormAct", "ReOrg"}


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_the_core_names_no_framework_class(path):
    tree = ast.parse(path.read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & FRAMEWORK_NAMES
    assert not [s for s in strings if s.startswith(("ultralytics", "timm.", "models.common"))]
    imports = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imports += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imports if m.split(".")[0] in ("ultralytics", "timm", "yolov5", "models")]
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "__name__"]
    compared = [c for c in ast.walk(tree) if isinstance(c, ast.Compare) and any(n in ast.walk(c) for n in names)]
    assert not compared  # no type(m).__name__ == "..." recognition


def test_the_input_rule_runs_once_per_model_per_convert(monkeypatch):
    calls = []
    rule = input_rule.input_channels_and_multiple
    counting = lambda m: calls.append(m) or rule(m)  # noqa: E731
    monkeypatch.setattr(input_rule, "input_channels_and_multiple", counting)
    monkeypatch.setattr(VERIFY, "input_channels_and_multiple", counting)
    model = nn.Sequential(fs.Focus(3, 8, 3), nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 4, 3, 2, 1))
    report = fs.convert(model, to="conv")
    assert report.verification.passed and report.verification.input_shapes[0][2] % 2 == 0
    assert sum(m is model for m in calls) == 1  # the model's: the check's input; each change's module once more
    assert len(calls) == 1 + 2 * len(report.replaced)
    calls.clear()
    fs.verify(model, copy.deepcopy(model))
    assert len(calls) == 2  # once per model (it was 4 per verify)


@pytest.mark.parametrize(
    "model, multiple",
    [
        (nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1)), 1),
        (nn.Sequential(fs.SpaceToDepth(2), fs.SpaceToDepth(3), nn.Conv2d(108, 8, 1)), 6),  # cascaded: a product
        (nn.Sequential(fs.SPDConv(3, 8, 3, 4)), 4),
        (nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 8, 1), fs.SpaceToDepth(2)), 2),  # after the first conv
    ],
)
def test_one_input_rule(model, multiple):
    channels, found = stems.input_channels_and_multiple(model)
    assert (channels, found) == (3, multiple) and stems.input_multiple(model) == multiple
    shape = stems.infer_input_shape(model)
    assert shape[1] == 3 and shape[2] % multiple == 0 and shape[3] % multiple == 0


def test_yolov5_convert_copies_the_model_twice_and_asks_the_release_once(monkeypatch, tmp_path):
    helpers = pytest.importorskip("_yolov5_legacy_helpers")
    pytest.importorskip("ultralytics")
    import focus_surgery.yolov5.convert as yolov5_convert
    from focus_surgery import surgery
    from focus_surgery.files import convert_file
    from focus_surgery.integrations import ultralytics as fs_ultralytics

    counts = {"model copies": 0, "guess_release": 0, "sync_yaml": 0}
    deepcopy, guess, sync = copy.deepcopy, yolov5_convert.guess_release, fs_ultralytics.sync_yaml

    def counting_deepcopy(obj, memo=None):
        counts["model copies"] += memo is None and isinstance(obj, nn.Module) and hasattr(obj, "yaml")
        return deepcopy(obj, memo)

    def counting_sync(model, paths):
        counts["sync_yaml"] += "model.0" in paths
        return sync(model, paths)

    monkeypatch.setattr(copy, "deepcopy", counting_deepcopy)

    def counting_guess(ckpt):
        counts["guess_release"] += 1
        return guess(ckpt)

    monkeypatch.setattr(yolov5_convert, "guess_release", counting_guess)
    monkeypatch.setattr(surgery, "POST_APPLY", [counting_sync if h is sync else h for h in surgery.POST_APPLY])
    report = convert_file(helpers.MODELS["v4.0"], tmp_path / "out.pt", to="conv", verify=True)
    assert report["verification"]["passed"] and report["release"] == "v4.0-v5.0"
    assert counts == {"model copies": 2, "guess_release": 1, "sync_yaml": 1}  # were 4, 3 and (row 0 written) 2
    conv = yolov5_convert.convert_yolov5(helpers.MODELS["v4.0"], to="conv", measure=False)
    assert conv.arch.yaml["backbone"][0] == conv.model.yaml["backbone"][0] == [-1, 1, "Conv", [64, 6, 2, 2]]
