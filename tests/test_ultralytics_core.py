"""Ultralytics: a YOLO model with a Focus row converts exactly and keeps working (predict, fuse, ONNX)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from _stem_check import PLANTED, assert_same_stem, outputs_float64, relative_errors, stem_error

import focus_surgery as fs
from focus_surgery.demo import randomize_batchnorm

ultralytics = pytest.importorskip("ultralytics")  # optional third-party package

FOCUS_YAML = Path(__file__).parent / "fixtures" / "yolo-focus-tiny.yaml"  # Focus stem, 3 classes


@pytest.fixture(scope="module")
def yolo_focus():
    from ultralytics import YOLO

    model = YOLO(str(FOCUS_YAML))
    randomize_batchnorm(model.model, seed=1)
    model.model.eval()
    return model


def test_yolo_focus_row_converts_exactly(yolo_focus):
    from ultralytics.nn.modules import Conv, Focus

    net = copy.deepcopy(yolo_focus.model)
    assert isinstance(net.model[0], Focus)
    report = fs.convert(net, to="conv")
    stem = net.model[0]
    assert type(stem) is Conv and stem.conv.kernel_size == (6, 6) and stem.conv.stride == (2, 2)
    assert (stem.i, stem.f, stem.type) == (0, -1, "ultralytics.nn.modules.conv.Conv")
    assert report.verification.passed and report.verification.max_rel_err <= 1e-10
    assert report.verification.num_outputs > 1  # (y, feature maps) compared element by element
    assert_same_stem(yolo_focus.model, net, torch.rand(2, 3, 64, 96))  # the stem map itself, float64
    back = fs.convert(net, to="focus")
    assert type(net.model[0]) is Focus and back.verification.passed  # Ultralytics' own Focus again
    assert torch.equal(net.model[0].conv.conv.weight, yolo_focus.model.model[0].conv.conv.weight)


def test_predictions_fuse_and_onnx_after_conversion(yolo_focus, tmp_path):
    from ultralytics import YOLO

    converted = copy.deepcopy(yolo_focus)
    fs.convert(converted.model, to="conv")
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    kwargs = dict(imgsz=128, conf=0.0, iou=0.99, max_det=50, verbose=False)
    before = yolo_focus.predict(image, **kwargs)[0].boxes.data
    after = converted.predict(image, **kwargs)[0].boxes.data
    assert before.shape == after.shape and torch.allclose(before, after, atol=1e-3)

    x = torch.rand(1, 3, 64, 96)
    assert_same_stem(yolo_focus.model, converted.model, x)  # what NMS'd boxes cannot see: the stem map, float64
    fused = copy.deepcopy(converted.model).eval().double().fuse(verbose=False)  # BatchNorm folded in float64
    assert not hasattr(fused.model[0], "bn")  # BatchNorm folded into the 6x6 conv
    assert_same_stem(yolo_focus.model, fused, x)  # folding rounds at ~1e-15

    converted.model.yaml["yaml_file"] = "converted.yaml"
    saved = tmp_path / "converted.pt"
    converted.save(str(saved))
    onnx_path = YOLO(str(saved)).export(format="onnx", imgsz=64, simplify=False, opset=17)
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(onnx_path).graph
    image_input = graph.input[0].name
    consumers = [node.op_type for node in graph.node if image_input in node.input]
    assert consumers == ["Conv"]  # the image goes straight into one conv: no Slice/Concat stem


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_the_end_to_end_check_sees_a_wrong_stem(yolo_focus, bug):
    """Each bug planted in a copy of the converted model fails the check by orders of magnitude, while the float32
    comparison of ``model(x)[0]`` the tests used before (``rtol=atol=1e-4``) does not see the wrong order or the
    fresh statistics (recorded, not asserted: it is the reason this check exists)."""
    net = copy.deepcopy(yolo_focus.model)
    fs.convert(net, to="conv")
    x = torch.rand(2, 3, 64, 96)
    assert stem_error(yolo_focus.model, net, x) <= 1e-10  # the correct conversion passes
    broken = PLANTED[bug](copy.deepcopy(net))
    errors = relative_errors(outputs_float64(yolo_focus.model, x), outputs_float64(broken, x))
    assert errors[0] > 1e-3, f"{bug}: the stem map moved by only {errors[0]:.2e}"
    with pytest.raises(AssertionError, match="stem map / raw outputs differ"):
        assert_same_stem(yolo_focus.model, broken, x)
    with torch.no_grad():
        old = float((broken.eval()(x)[0] - yolo_focus.model.eval()(x)[0]).abs().max())
    print(
        f"{bug}: stem map rel. error {errors[0]:.2e}, raw outputs up to {max(errors[1:]):.2e}; "
        f"float32 model(x)[0] moved by {old:.2e}"
    )
