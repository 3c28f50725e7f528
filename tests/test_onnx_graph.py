"""ONNX graph surgery: Focus / space-to-depth stems exported by torch (TorchScript exporter at opsets 11-18, dynamo
exporter) or built with onnx.helper are folded into one strided Conv; the new weight equals GUIDE section 1's map
in float64, onnxruntime outputs match the original's at float32 rounding level; everything else is left alone."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import focus_surgery as fs  # noqa: E402
from focus_surgery.cli import main  # noqa: E402
from focus_surgery.onnx_graph import OnnxSurgeryError, OnnxVerificationError, convert_onnx, inspect_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAYOUT_OPS = {"Slice", "Concat", "Reshape", "Transpose", "SpaceToDepth", "Squeeze", "Unsqueeze"}


# ------------------------------------------------------------------------------------------------ torch stems


class UltralyticsFocus(nn.Module):
    """Ultralytics / YOLOv5 <= v5.0 ``Focus``: cat of 4 slices then conv + SiLU."""

    def __init__(self, c2: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(12, c2, 3, 1, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(
            self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))
        )


class YoloxFocus(nn.Module):
    """YOLOX ``Focus``: named patches, top-left, bottom-left, top-right, bottom-right, then a strided conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 8, 3, 2, 1)  # YOLOX's stem conv has stride 1; stride 2 checks the stride map

    def forward(self, x):
        tl, tr, bl, br = x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat((tl, bl, tr, br), dim=1))


class ReOrgStem(nn.Module):
    """yolov7 ``ReOrg`` (slices on a 4-D tensor with explicit axes) + conv, with a second conv after it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 8, 3, 1, 1, bias=False)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.cat([x[:, :, ::2, ::2], x[:, :, 1::2, ::2], x[:, :, ::2, 1::2], x[:, :, 1::2, 1::2]], 1)
        return self.head(torch.relu(self.conv(y)))


class TResNetSpaceToDepth(nn.Module):
    """timm's ``SpaceToDepth`` (TResNet, block size 4) written as timm writes it, then a 3x3 conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(48, 8, 3, 1, 1)

    def forward(self, x):
        n, c, h, w = x.size()
        x = x.view(n, c, h // 4, 4, w // 4, 4).permute(0, 3, 5, 1, 2, 4).contiguous()
        return self.conv(x.view(n, c * 16, h // 4, w // 4))


def _ultralytics_package_focus():
    conv = pytest.importorskip("ultralytics.nn.modules.conv")
    return conv.Focus(3, 8, 3)  # the class itself: Conv(12, 8, 3) with BatchNorm and SiLU


def _pixel_unshuffle():
    return nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 8, 3, 1, 1))


# name: (builder, block size, order, family)
MODELS = {
    "fs_focus": (lambda: fs.Focus(3, 8, k=3), 2, "yolov5", "reshape-transpose"),
    "ultralytics_focus": (UltralyticsFocus, 2, "yolov5", "slices"),
    "ultralytics_package_focus": (_ultralytics_package_focus, 2, "yolov5", "slices"),
    "yolox_focus": (YoloxFocus, 2, "yolov5", "slices"),
    "reorg": (ReOrgStem, 2, "yolov5", "slices"),
    "pixel_unshuffle": (_pixel_unshuffle, 2, "pixel_unshuffle", "reshape-transpose"),
    "tresnet": (TResNetSpaceToDepth, 4, "timm", "reshape-transpose"),
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name][0]().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # nothing symmetric: a wrong permutation cannot go unnoticed
    return model


def export(name: str, path: Path, opset: int = 17, dynamic: bool = False, dynamo: bool = False) -> Path:
    model, x = _model(name), torch.rand(1, 3, 32, 32)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                model, (x,), str(path), dynamo=True, opset_version=opset, input_names=["images"], external_data=False
            )
        else:
            axes = {"images": {0: "batch", 2: "height", 3: "width"}, "out": {0: "batch"}} if dynamic else None
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["out"],
                dynamic_axes=axes,
            )
    return path


def _ops(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _run(path_or_model, feed):
    data = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def _assert_same_outputs(src: Path, dst: Path, shapes: list[tuple[int, ...]]) -> float:
    worst = 0.0
    for shape in shapes:
        feed = {"images": np.random.default_rng(1).random(shape, dtype=np.float32)}
        for a, b in zip(_run(src, feed), _run(dst, feed)):
            assert a.shape == b.shape
            rel = float(np.abs(a.astype(np.float64) - b).max() / np.abs(a).max())
            assert rel <= 1e-5, rel
            worst = max(worst, rel)
    return worst


def _stem_conv(model, image: str = "images"):
    return next(n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == image)


def _initializer(model, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name)).copy()


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _check_folded(src: Path, dst: Path, block_size: int, order: str, shapes, stem_only: bool = True) -> None:
    """Only the Conv reads the image (a stem-only graph has no layout op left); its weight is GUIDE section 1's map,
    exactly; names, opset and onnxruntime outputs as before (float32 rounding level)."""
    before, after = onnx.load(str(src)), onnx.load(str(dst))
    assert [n.op_type for n in after.graph.node if "images" in n.input] == ["Conv"]
    assert not stem_only or not LAYOUT_OPS & set(_ops(after)), _ops(after)
    conv_before = next(n for n in before.graph.node if n.op_type == "Conv")
    conv_after = _stem_conv(after)
    w = torch.from_numpy(_initializer(before, conv_before.input[1])).double()
    expected = fs.focus_to_conv_weight(w, block_size, order)
    got = torch.from_numpy(_initializer(after, conv_after.input[1])).double()
    assert got.shape == expected.shape and torch.equal(got, expected)
    a, b = _attrs(conv_before), _attrs(conv_after)
    assert b["strides"] == [block_size * s for s in a.get("strides", [1, 1])]
    assert b["pads"] == [block_size * p for p in a["pads"]] and b["kernel_shape"] == list(expected.shape[2:])
    assert conv_after.name == conv_before.name and list(conv_after.output) == list(conv_before.output)
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]
    assert after.opset_import == before.opset_import
    _assert_same_outputs(src, dst, shapes)


# ------------------------------------------------------------------------------------------------- positive cases


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("opset", [11, 13, 14, 17, 18])
def test_torchscript_exports_fold_exactly(name, opset, tmp_path):
    _, block_size, order, family = MODELS[name]
    src = export(name, tmp_path / "m.onnx", opset)
    report = convert_onnx(src, tmp_path / "conv.onnx")
    assert [(s.family, s.block_size, s.order) for s in report.replaced] == [(family, block_size, order)]
    assert not report.skipped and report.verification.passed and report.verification.max_rel_err <= 1e-5
    assert report.nodes_after < report.nodes_before
    _check_folded(src, tmp_path / "conv.onnx", block_size, order, [(1, 3, 32, 32)])


@pytest.mark.parametrize("name", ["ultralytics_focus", "pixel_unshuffle", "tresnet", "fs_focus"])
def test_dynamic_axes_kept_and_checked_at_several_sizes(name, tmp_path):
    _, block_size, order, _ = MODELS[name]
    src = export(name, tmp_path / "m.onnx", 13, dynamic=True)
    before = onnx.load(str(src))
    before.metadata_props.add(key="author", value="test")
    onnx.save(before, str(src))
    report = convert_onnx(src, tmp_path / "conv.onnx")
    assert len(report.verification.inputs) == 2  # two sizes of the dynamic axes
    after = onnx.load(str(tmp_path / "conv.onnx"))
    dims = [d.dim_param or d.dim_value for d in after.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [(p.key, p.value) for p in after.metadata_props] == [("author", "test")]
    _check_folded(src, tmp_path / "conv.onnx", block_size, order, [(2, 3, 64, 96), (1, 3, 16, 48)])


@pytest.mark.parametrize("name", ["ultralytics_focus", "fs_focus"])  # slices, Reshape-Transpose
def test_dynamo_exports_fold_exactly(name, tmp_path):
    pytest.importorskip(
        "onnxscript", reason="torch's dynamo exporter needs onnxscript (pinned in requirements-dev.txt)"
    )
    _, block_size, order, family = MODELS[name]
    src = export(name, tmp_path / "m.onnx", 18, dynamo=True)
    report = convert_onnx(src, tmp_path / "conv.onnx")
    assert [(s.family, s.block_size, s.order) for s in report.replaced] == [(family, block_size, order)]
    _check_folded(src, tmp_path / "conv.onnx", block_size, order, [(1, 3, 32, 32)])


def test_onnxslim_simplified_graphs_fold(tmp_path):
    onnxslim = pytest.importorskip("onnxslim")
    for name, opset in (("ultralytics_focus", 13), ("fs_focus", 17)):
        src = export(name, tmp_path / f"{name}.onnx", opset, dynamic=True)
        slim = tmp_path / f"{name}-slim.onnx"
        onnx.save(onnxslim.slim(onnx.load(str(src))), str(slim))
        convert_onnx(slim, tmp_path / f"{name}-conv.onnx")
        _check_folded(slim, tmp_path / f"{name}-conv.onnx", 2, "yolov5", [(1, 3, 32, 64)])


def test_yolov5_v4_checkpoint_rebuilt_and_exported(tmp_path):
    """A real YOLOv5 v4.0 model (the repository's own checkpoint, rebuilt) exported whole with a dynamic input."""
    from _yolov5_legacy_helpers import MODELS as YOLOV5

    from focus_surgery.yolov5.rebuild import read_yolov5_checkpoint, rebuild

    model = rebuild(read_yolov5_checkpoint(YOLOV5["v4.0"]))[0].float().eval()
    src, dst = tmp_path / "yolov5s-v4.onnx", tmp_path / "yolov5s-v4-conv.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 64, 64),),
            str(src),
            dynamo=False,
            opset_version=12,
            input_names=["images"],
            output_names=["out"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
        )
    report = convert_onnx(src, dst)
    assert [(s.family, s.block_size, s.order) for s in report.replaced] == [("slices", 2, "yolov5")]
    assert report.verification.passed and len(report.verification.inputs) == 2
    before, after = _ops(onnx.load(str(src))), _ops(onnx.load(str(dst)))
    assert after["Conv"] == before["Conv"] and before["Slice"] - after.get("Slice", 0) >= 4  # head Slices remain
    _check_folded(src, dst, 2, "yolov5", [(1, 3, 64, 96)], stem_only=False)


def test_other_nodes_and_initializers_are_kept(tmp_path):
    src = export("reorg", tmp_path / "m.onnx", 17)
    convert_onnx(src, tmp_path / "conv.onnx")
    before, after = onnx.load(str(src)), onnx.load(str(tmp_path / "conv.onnx"))
    assert _ops(after) == {"Conv": 2, "Relu": 1}
    head_before = [n for n in before.graph.node if n.op_type in ("Conv", "Relu")][1:]
    head_after = [n for n in after.graph.node if n.op_type in ("Conv", "Relu")][1:]
    assert [n.SerializeToString() for n in head_before] == [n.SerializeToString() for n in head_after]
    for name in ("head.weight", "head.bias"):
        assert np.array_equal(_initializer(before, name), _initializer(after, name))


# -------------------------------------------------------------------------------- hand-built graphs (onnx.helper)


def _const(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _slice_graph(
    phases,
    step: int = 2,
    split_axes: bool = False,
    extra_consumer: str = "",
    channels: int = 3,
    end: int = 2**63 - 1,
    size: int | str = 24,
):
    """image -> one Slice per phase (or one per axis) -> Concat -> Conv; phases as (dy, dx) in concat order."""
    rng = np.random.default_rng(0)
    if split_axes:
        inits = [_const("end1", [end]), _const("step1", [step]), _const("ax2", [2]), _const("ax3", [3])]
    else:
        inits = [_const("end", [end, end]), _const("steps", [step, step]), _const("axes", [2, 3])]
    nodes, branches = [], []
    for k, (dy, dx) in enumerate(phases):
        if split_axes:
            inits += [_const(f"sy{k}", [dy]), _const(f"sx{k}", [dx])]
            nodes.append(helper.make_node("Slice", ["image", f"sy{k}", "end1", "ax2", "step1"], [f"rows{k}"]))
            nodes.append(helper.make_node("Slice", [f"rows{k}", f"sx{k}", "end1", "ax3", "step1"], [f"phase{k}"]))
        else:
            inits.append(_const(f"start{k}", [dy, dx]))
            nodes.append(helper.make_node("Slice", ["image", f"start{k}", "end", "axes", "steps"], [f"phase{k}"]))
        branches.append(f"phase{k}")
    weight = rng.standard_normal((4, channels * len(phases), 3, 3)).astype(np.float32)
    inits += [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
    ]
    nodes.append(helper.make_node("Concat", branches, ["s2d"], axis=1))
    nodes.append(
        helper.make_node("Conv", ["s2d", "w", "b"], ["out"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="stem")
    )
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, "oh", "ow"])]
    if extra_consumer == "output":  # a slice is also a graph output
        outputs.append(helper.make_tensor_value_info("phase0", TensorProto.FLOAT, ["n", channels, "ph", "pw"]))
    elif extra_consumer == "node":  # a slice also feeds another node
        nodes.append(helper.make_node("ReduceMax", ["phase1"], ["peak"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("peak", TensorProto.FLOAT, []))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, channels, size, size])
    graph = helper.make_graph(nodes, "g", [image], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


YOLOV5_PHASES = [(0, 0), (1, 0), (0, 1), (1, 1)]  # ch = (dx*bs + dy)*C + c
TIMM_PHASES = [(0, 0), (0, 1), (1, 0), (1, 1)]  # ch = (dy*bs + dx)*C + c


@pytest.mark.parametrize("phases,order", [(YOLOV5_PHASES, "yolov5"), (TIMM_PHASES, "timm")])
@pytest.mark.parametrize("split_axes", [False, True])  # 4 Slices, or 8 (one per axis per branch)
def test_hand_built_slice_chains(phases, order, split_axes, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_slice_graph(phases, split_axes=split_axes), str(src))
    report = convert_onnx(src, tmp_path / "conv.onnx")
    assert [(s.block_size, s.order, s.ops.get("Slice")) for s in report.replaced] == [
        (2, order, 8 if split_axes else 4)
    ]
    after = onnx.load(str(tmp_path / "conv.onnx"))
    assert _ops(after) == {"Conv": 1} and {t.name for t in after.graph.initializer} == {"w", "b"}
    w = torch.from_numpy(_initializer(onnx.load(str(src)), "w")).double()
    assert torch.equal(torch.from_numpy(_initializer(after, "w")).double(), fs.focus_to_conv_weight(w, 2, order))
    feed = {"image": np.random.default_rng(2).random((1, 3, 24, 24), dtype=np.float32)}
    a, b = _run(src, feed)[0], _run(after, feed)[0]
    assert np.abs(a.astype(np.float64) - b).max() / np.abs(a).max() <= 1e-5


def test_slice_ends_at_the_static_size_read_to_the_end(tmp_path):
    """End 24 on a static 24x24 image reads to the end (folds); on a dynamic image it may crop (left alone)."""
    onnx.save(_slice_graph(YOLOV5_PHASES, split_axes=True, end=24), str(tmp_path / "static.onnx"))
    assert [s.order for s in convert_onnx(tmp_path / "static.onnx", tmp_path / "conv.onnx").replaced] == ["yolov5"]
    onnx.save(_slice_graph(YOLOV5_PHASES, end=24, size="h"), str(tmp_path / "dynamic.onnx"))
    (stem,) = inspect_onnx(tmp_path / "dynamic.onnx").stems
    assert not stem.convertible and "not start::step to the end" in stem.reason


def test_hand_built_block_size_3_and_onnx_space_to_depth(tmp_path):
    phases = [(dy, dx) for dx in range(3) for dy in range(3)]  # yolov5 order, block size 3: 9 slices
    onnx.save(_slice_graph(phases, step=3), str(tmp_path / "bs3.onnx"))
    report = convert_onnx(tmp_path / "bs3.onnx", tmp_path / "bs3-conv.onnx")
    assert [(s.block_size, s.order) for s in report.replaced] == [(3, "yolov5")]

    rng = np.random.default_rng(3)
    weight = rng.standard_normal((5, 3 * 16, 2, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("SpaceToDepth", ["image"], ["s2d"], blocksize=4),
            helper.make_node("Conv", ["s2d", "w"], ["out"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
        ],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 5, "oh", "ow"])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "s2d.onnx"))
    report = convert_onnx(tmp_path / "s2d.onnx", tmp_path / "s2d-conv.onnx")
    assert [(s.family, s.block_size, s.order) for s in report.replaced] == [("SpaceToDepth", 4, "timm")]
    after = onnx.load(str(tmp_path / "s2d-conv.onnx"))
    conv = _stem_conv(after, "image")
    assert _attrs(conv)["pads"] == [0, 0, 4, 4] and _attrs(conv)["strides"] == [4, 4]
    expected = fs.focus_to_conv_weight(torch.from_numpy(weight).double(), 4, "timm")
    assert torch.equal(torch.from_numpy(_initializer(after, "w")).double(), expected)
    for shape in [(1, 3, 32, 48), (2, 3, 16, 16)]:
        feed = {"image": np.random.default_rng(4).random(shape, dtype=np.float32)}
        a, b = _run(tmp_path / "s2d.onnx", feed)[0], _run(after, feed)[0]
        assert np.abs(a.astype(np.float64) - b).max() / np.abs(a).max() <= 1e-5


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_weight_permutation_is_bit_exact_in_every_dtype(dtype):
    """``remap_weight`` (numpy, any dtype) equals ``fs.focus_to_conv_weight`` bit for bit."""
    from focus_surgery.onnx_graph.rewrite import remap_weight

    w = torch.randn(5, 12, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        array, back = w.float().numpy().astype(ml_dtypes.bfloat16), lambda a: torch.from_numpy(a.astype(np.float32))
        expected = fs.focus_to_conv_weight(w.to(torch.bfloat16), 2, "yolov5").float()
    else:
        array, back = w.numpy().astype(dtype), torch.from_numpy
        expected = fs.focus_to_conv_weight(torch.from_numpy(array.copy()), 2, "yolov5")
    got = remap_weight(array, 2, "yolov5")
    assert got.dtype == array.dtype and torch.equal(back(got), expected)


def test_nan_in_the_rewritten_outputs_fails_verification():
    from focus_surgery.onnx_graph.runtime import compare

    def model(value: float):
        graph = helper.make_graph(
            [helper.make_node("Add", ["images", "c"], ["out"])],
            "g",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])],
            [numpy_helper.from_array(np.array([0, value, 0], dtype=np.float32), "c")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    assert compare(model(1.0), model(1.0)).passed
    assert not compare(model(1.0), model(float("nan"))).passed


# ------------------------------------------------------------------------------------------------- negative cases


@pytest.mark.parametrize(
    "kind,phases,step,reason",
    [
        ("wrong order", [(0, 0), (0, 1), (1, 1), (1, 0)], 2, "none of the space-to-depth orders"),
        ("non-2 block size, 4 of 9 phases", [(0, 0), (1, 0), (0, 1), (1, 1)], 3, "not each of the 3x3 pixel phases"),
        ("a phase twice", [(0, 0), (1, 0), (0, 1), (0, 0)], 2, "not each of the 2x2 pixel phases"),
    ],
)
def test_not_a_space_to_depth_is_left_and_reported(kind, phases, step, reason, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_slice_graph(phases, step=step), str(src))
    stems = inspect_onnx(src).stems
    assert len(stems) == 1 and not stems[0].convertible and reason in stems[0].reason, stems[0].reason
    with pytest.raises(OnnxSurgeryError, match=reason):
        convert_onnx(src, tmp_path / "conv.onnx")
    assert not (tmp_path / "conv.onnx").exists()


@pytest.mark.parametrize("consumer,reason", [("output", "is also a graph output"), ("node", "also feeds")])
def test_slices_with_other_consumers_are_left(consumer, reason, tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_slice_graph(YOLOV5_PHASES, extra_consumer=consumer), str(src))
    (stem,) = inspect_onnx(src).stems
    assert not stem.convertible and reason in stem.reason, stem.reason
    with pytest.raises(OnnxSurgeryError, match=reason):
        convert_onnx(src, tmp_path / "conv.onnx")


class _WrongReshape(nn.Module):
    """The right Transpose (timm's perm) after the wrong 6-D view: structure matches, the probe must refuse it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 4, 3, 1, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        y = x.view(n, c, 2, h // 2, 2, w // 2).permute(0, 3, 5, 1, 2, 4).reshape(n, c * 4, h // 2, w // 2)
        return self.conv(y)


def test_mixed_graph_converts_the_stem_and_leaves_the_impostor(tmp_path):
    """One real Focus and one look-alike in the same graph: the first folds, the second is reported, unchanged."""

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.focus, self.other = UltralyticsFocus(4), _WrongReshape()

        def forward(self, x):
            return self.focus(x) + self.other(x)

    model = Both().eval()
    src, dst = tmp_path / "m.onnx", tmp_path / "conv.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 16, 16),),
            str(src),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["out"],
        )
    report = convert_onnx(src, dst)
    assert [s.family for s in report.replaced] == ["slices"]
    assert [s.family for s in report.skipped] == ["reshape-transpose"]
    assert "index input the chain is not space-to-depth" in report.skipped[0].reason
    ops = _ops(onnx.load(str(dst)))
    assert "Slice" not in ops and ops["Transpose"] == 1 and ops["Reshape"] == 2
    _assert_same_outputs(src, dst, [(1, 3, 16, 16)])


def test_verification_failure_writes_nothing(tmp_path, monkeypatch, capsys):
    import focus_surgery.onnx_graph.rewrite as rewrite_module

    src = export("ultralytics_focus", tmp_path / "m.onnx")
    real = rewrite_module.remap_weight
    monkeypatch.setattr(rewrite_module, "remap_weight", lambda w, bs, order: real(w, bs, order) * np.float32(1.001))
    with pytest.raises(OnnxVerificationError):
        convert_onnx(src, tmp_path / "conv.onnx")
    assert main(["convert", str(src), str(tmp_path / "conv.onnx"), "--verify"]) == 1
    assert "verification failed" in capsys.readouterr().err
    assert not (tmp_path / "conv.onnx").exists()


# ------------------------------------------------------------------------------------------------------ bad input


def _checker_failure(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["out"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _external_data(path: Path) -> None:
    """External data named by an absolute path (genuine same-folder data files are read: test_onnx_external)."""
    model = onnx.load(str(export("ultralytics_focus", path.with_name("inline.onnx"))))
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str(path.with_name("weights.bin").resolve())
    path.write_bytes(model.SerializeToString())


def _huge(path: Path) -> None:
    with open(path, "wb") as handle:  # sparse: takes no disk space
        handle.truncate(2**31 + 16)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p.write_text("not a model\n"), "not an ONNX model"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not an ONNX model"),
        (_checker_failure, "fails the ONNX checker"),
        (_external_data, "external data"),
        (_huge, "2 GiB"),
        (lambda p: None, "no such file"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(make, message, tmp_path, capsys):
    src, dst = tmp_path / "bad.onnx", tmp_path / "out.onnx"
    make(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest() if src.exists() and src.stat().st_size < 2**20 else None
    for argv in (["convert", str(src), str(dst), "--verify"], ["inspect", str(src)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    if digest:
        assert hashlib.sha256(src.read_bytes()).hexdigest() == digest


def test_nothing_to_fold_and_same_file_refused(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(_slice_graph(YOLOV5_PHASES), str(src))
    assert main(["convert", str(src), str(src)]) == 2 and "overwrite the input" in capsys.readouterr().err
    convert_onnx(src, tmp_path / "conv.onnx")
    assert main(["convert", str(tmp_path / "conv.onnx"), str(tmp_path / "again.onnx")]) == 2
    assert "no space-to-depth stem" in capsys.readouterr().err and not (tmp_path / "again.onnx").exists()


# ---------------------------------------------------------------------------------------------------------- CLI


def test_cli_subprocess_convert(tmp_path):
    src, dst = export("tresnet", tmp_path / "m.onnx", 13, dynamic=True), tmp_path / "conv.onnx"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "focus_surgery", "convert", str(src), str(dst), "--verify", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["verification"]["passed"] and result["max_abs_err"] < 1e-4 and result["nodes_after"] == 1
    assert [(s["block_size"], s["order"]) for s in result["replaced"]] == [(4, "timm")]
    _check_folded(src, dst, 4, "timm", [(1, 3, 32, 64)])


def test_cli_inspect_lists_stems_and_reasons(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(_slice_graph([(0, 0), (0, 1), (1, 1), (1, 0)]), str(src))
    assert main(["inspect", str(src)]) == 0
    text = capsys.readouterr().out
    assert "left stem: slices (1 Concat, 4 Slice): phase order" in text
    src2 = export("pixel_unshuffle", tmp_path / "pu.onnx")
    assert main(["inspect", str(src2), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [(s["family"], s["block_size"], s["order"]) for s in found["replaced"]] == [
        ("reshape-transpose", 2, "pixel_unshuffle")
    ]
