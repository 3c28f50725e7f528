"""ONNX surgery on the files people deploy (issue 21): verification at the sizes the model runs with a tolerance the
model earns, stride-64 graphs, external data read and written as a pair, quantized (QDQ) graphs, NHWC inputs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

import focus_surgery as fs  # noqa: E402
from focus_surgery.cli import main  # noqa: E402
from focus_surgery.onnx_graph import OnnxVerificationError, OriginalGraphFailed, convert_onnx  # noqa: E402
from focus_surgery.onnx_graph.runtime import STEM_FLOAT64_TOLERANCE  # noqa: E402
from focus_surgery.onnx_graph.sizes import largest_stride  # noqa: E402


def _focus(x):
    return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class P6(nn.Module):
    """A YOLOv5-P6-like toy: Focus stem, five more stride-2 convs (stride 64), an upsample + Concat with stride 32.

    At 64x96 (not a multiple of 64) the Concat fails in the original graph too: the size must follow the stride.
    """

    def __init__(self, nhwc: bool = False):
        super().__init__()
        self.nhwc = nhwc
        self.stem = nn.Conv2d(12, 8, 3, 1, 1)
        self.down = nn.ModuleList(nn.Conv2d(8, 8, 3, 2, 1) for _ in range(5))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        y = torch.nn.functional.silu(self.stem(_focus(x)))
        feats = []
        for conv in self.down:
            y = torch.nn.functional.silu(conv(y))
            feats.append(y)
        up = torch.nn.functional.interpolate(feats[-1], scale_factor=2.0, mode="nearest")
        return self.head(torch.cat([up, feats[-2]], 1))


def _model(nhwc: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = P6(nhwc).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _export(path: Path, dynamic: bool = True, nhwc: bool = False, size: int = 128, opset: int = 13) -> Path:
    x = torch.rand(1, size, size, 3) if nhwc else torch.rand(1, 3, size, size)
    spatial = {0: "batch", 1: "height", 2: "width"} if nhwc else {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _model(nhwc),
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["out"],
            dynamic_axes={"images": spatial} if dynamic else None,
        )
    return path


def _run(path_or_model, feed):
    data = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


# ------------------------------------------------------------------------------------ verification at real sizes


def test_stride_64_dynamic_model_verifies_at_multiples_of_its_stride(tmp_path):
    src = _export(tmp_path / "p6.onnx")
    feed = {"images": np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)}
    with pytest.raises(Exception, match="Concat"):  # the old verification size: the original cannot run it
        _run(src, feed)
    assert largest_stride(onnx.load(str(src))) == 64
    report = convert_onnx(src, tmp_path / "conv.onnx")
    v = report.verification
    assert v.passed and v.stride == 64
    assert v.inputs == ["images=1x3x640x640", "images=2x3x320x512"]  # 640 and the second size, multiples of 64
    assert v.reference_error is not None and v.reference_error > 0 and "float64 run" in v.tolerance_source
    assert v.tolerance >= 1e-5 and v.max_rel_err <= v.tolerance
    [stem] = v.stems
    assert stem["float64"] is not None and stem["float64"] <= STEM_FLOAT64_TOLERANCE and stem["float32"] <= 1e-5


def test_static_model_verifies_at_its_declared_size(tmp_path):
    src = _export(tmp_path / "p6.onnx", dynamic=False, size=256)
    report = convert_onnx(src, tmp_path / "conv.onnx")
    assert report.verification.inputs == ["images=1x3x256x256"] and report.verification.passed


def test_tolerance_is_derived_from_the_original_graphs_float32_error(tmp_path):
    """The default tolerance is 4x the original's own float32-vs-float64 error, never below the 1e-5 floor; the
    error it reports is measured, and a user tolerance replaces it."""
    src = _export(tmp_path / "p6.onnx")
    v = convert_onnx(src, None).verification
    assert v.tolerance == max(1e-5, 4 * v.reference_error)
    tight = convert_onnx(src, None, tolerance=v.max_rel_err * 2).verification
    assert tight.passed and tight.tolerance_source == "--tolerance"
    with pytest.raises(OnnxVerificationError):
        convert_onnx(src, tmp_path / "out.onnx", tolerance=v.max_rel_err / 4)
    assert not (tmp_path / "out.onnx").exists()


def test_cli_tolerance_flag(tmp_path, capsys):
    src = _export(tmp_path / "p6.onnx")
    assert main(["convert", str(src), str(tmp_path / "a.onnx"), "--verify", "--tolerance", "1e-13"]) == 1
    assert "verification failed" in capsys.readouterr().err and not (tmp_path / "a.onnx").exists()
    assert main(["convert", str(src), str(tmp_path / "b.onnx"), "--verify", "--tolerance", "1e-3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verification"]["tolerance"] == 1e-3 and result["verification"]["passed"]
    assert main(["convert", str(src), str(tmp_path / "c.onnx"), "--verify", "--tolerance", "-1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "c.onnx").exists()


def test_original_graph_failing_at_the_chosen_size_is_reported_as_such(tmp_path, capsys):
    """A graph whose height / width are declared dynamic but whose Reshape hard-codes the export size."""
    src = _export(tmp_path / "p6.onnx", dynamic=False, size=128)
    model = onnx.load(str(src))
    for dim in list(model.graph.input[0].type.tensor_type.shape.dim)[2:]:
        dim.Clear()
        dim.dim_param = "side"
    for extra in ("shape", "flat"):
        model.graph.initializer.append(numpy_helper.from_array(np.array([1, 4 * 4 * 4], np.int64), extra))
    head = model.graph.output[0].name
    model.graph.node.append(onnx.helper.make_node("Reshape", [head, "shape"], ["flat_out"]))
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info("flat_out", onnx.TensorProto.FLOAT, [1, 64]))
    del model.graph.value_info[:]
    src.write_bytes(model.SerializeToString())
    with pytest.raises(OriginalGraphFailed, match="original graph itself fails at images=1x3x640x640"):
        convert_onnx(src, tmp_path / "conv.onnx")
    assert main(["convert", str(src), str(tmp_path / "conv.onnx"), "--verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert "original graph itself fails" in err and "not a conversion failure" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "conv.onnx").exists()


# ----------------------------------------------------------------------------------------------------- NHWC input


def test_nhwc_transpose_before_the_slices_is_part_of_the_chain(tmp_path):
    src = _export(tmp_path / "nhwc.onnx", nhwc=True)
    report = convert_onnx(src, tmp_path / "conv.onnx")
    [stem] = report.replaced
    assert (stem.family, stem.block_size, stem.order) == ("slices", 2, "yolov5")
    assert report.verification.inputs == ["images=1x640x640x3", "images=2x320x512x3"]
    after = onnx.load(str(tmp_path / "conv.onnx"))
    first = [n.op_type for n in after.graph.node if "images" in n.input]
    assert first == ["Transpose"] and "Slice" not in {n.op_type for n in after.graph.node}
    feed = {"images": np.random.default_rng(3).random((1, 128, 192, 3), dtype=np.float32)}
    a, b = _run(src, feed)[0], _run(tmp_path / "conv.onnx", feed)[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


# -------------------------------------------------------------------------------------------------- external data


_DYNAMO_PAIR: dict[str, bytes] = {}  # one export per session, copied into each test's folder (5-10 s each)


def _dynamo_external(folder: Path) -> Path:
    """torch's dynamo exporter with its default external data (``m.onnx`` + ``m.onnx.data``)."""
    pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
    path = folder / "m.onnx"
    if _DYNAMO_PAIR:
        for name, data in _DYNAMO_PAIR.items():
            (folder / name).write_bytes(data)
        return path
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            torch.onnx.export(_model(), (torch.rand(1, 3, 128, 128),), str(path), dynamo=True, external_data=True)
        finally:
            logging.disable(logging.NOTSET)
    model = onnx.load(str(path), load_external_data=False)
    assert any(len(t.external_data) for t in model.graph.initializer), "the exporter wrote no external data"
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "m.onnx.data"]
    _DYNAMO_PAIR.update({p.name: p.read_bytes() for p in folder.iterdir()})
    return path


def test_external_data_read_and_written_as_a_pair(tmp_path):
    src = _dynamo_external(tmp_path)
    before = _digests(tmp_path)
    dst = tmp_path / "out" / "conv.onnx"
    dst.parent.mkdir()
    report = convert_onnx(src, dst)
    assert report.verification.passed and len(report.replaced) == 1
    assert _digests(tmp_path) == before  # the input pair is untouched
    assert sorted(p.name for p in dst.parent.iterdir()) == ["conv.onnx", "conv.onnx.data"]
    graph = onnx.load(str(dst), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"conv.onnx.data"}
    feed = {"x": np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)}
    name = graph.graph.input[0].name
    feed = {name: feed["x"]}
    a, b = _run(src, feed)[0], _run(dst, feed)[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_external_data_pair_is_atomic(tmp_path, monkeypatch):
    """A failure while writing the second file of the pair leaves neither."""
    import focus_surgery.onnx_graph.io as onnx_io

    src = _dynamo_external(tmp_path)
    real = onnx_io._writer
    calls = []

    def failing(data):
        calls.append(len(data))
        if len(calls) == 2:

            def write(tmp):
                raise OSError(28, "No space left on device")

            return write
        return real(data)

    monkeypatch.setattr(onnx_io, "_writer", failing)
    with pytest.raises(Exception, match="No space left"):
        convert_onnx(src, tmp_path / "conv.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_output_never_replaces_the_inputs_data_file(tmp_path, capsys):
    src = _dynamo_external(tmp_path)
    data = src.with_name("m.onnx.data")
    model = onnx.load(str(src), load_external_data=False)
    for t in model.graph.initializer:  # the input names its data "conv.onnx.data": what we would write for conv.onnx
        for e in t.external_data:
            if e.key == "location":
                e.value = "conv.onnx.data"
    data.rename(tmp_path / "conv.onnx.data")
    src.write_bytes(model.SerializeToString())
    before = _digests(tmp_path)
    assert main(["convert", str(src), str(tmp_path / "conv.onnx")]) == 2
    assert "input's files" in capsys.readouterr().err
    assert _digests(tmp_path) == before


@pytest.mark.parametrize(
    "location,message",
    [
        ("../m.onnx.data", "plain relative path"),
        ("/etc/passwd", "plain relative path"),
        ("link.data", "out of the model's folder"),
        ("missing.data", "cannot be read"),
        ("short.data", "past the end"),
        ("fifo.data", "not a regular file"),
    ],
)
def test_external_data_confined_to_the_models_folder(location, message, tmp_path, capsys):
    import os

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    src = _dynamo_external(model_dir)
    outside = tmp_path / "outside.data"
    outside.write_bytes(src.with_name("m.onnx.data").read_bytes())
    (model_dir / "link.data").symlink_to(outside)
    (model_dir / "short.data").write_bytes(b"\0" * 16)
    os.mkfifo(model_dir / "fifo.data")
    model = onnx.load(str(src), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    src.write_bytes(model.SerializeToString())
    before = _digests(model_dir)
    for argv in (["convert", str(src), str(model_dir / "conv.onnx")], ["inspect", str(src)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "external data" in err and len(err.splitlines()) == 1, err
    assert _digests(model_dir) == before and not (model_dir / "conv.onnx").exists()


def test_external_data_length_must_match_the_declared_tensor(tmp_path, capsys):
    src = _dynamo_external(tmp_path)
    model = onnx.load(str(src), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if len(t.external_data))
    for e in tensor.external_data:
        if e.key == "length":
            e.value = str(int(e.value) + 4)
    src.write_bytes(model.SerializeToString())
    assert main(["inspect", str(src)]) == 2
    assert "declares" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- QDQ graphs


def _quantized(tmp_path: Path, per_channel: bool, conv_only: bool) -> Path:
    quantization = pytest.importorskip("onnxruntime.quantization")
    src = _export(tmp_path / "float.onnx", dynamic=False, size=64)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.data = iter([{"images": rng.random((1, 3, 64, 64), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.data, None)

    dst = tmp_path / "qdq.onnx"
    logging.disable(logging.WARNING)
    try:
        quantization.quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=per_channel,
            weight_type=quantization.QuantType.QInt8,
            activation_type=quantization.QuantType.QUInt8,
            **({"op_types_to_quantize": ["Conv"]} if conv_only else {}),
        )
    finally:
        logging.disable(logging.NOTSET)
    return dst


def _weight_dq(model, conv):
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = producer[conv.input[1]]
    assert dq.op_type == "DequantizeLinear"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    return inits[dq.input[0]], inits[dq.input[1]], inits[dq.input[2]], axis


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_stem_folds_with_exact_quantization(per_channel, tmp_path):
    src = _quantized(tmp_path, per_channel, conv_only=True)
    report = convert_onnx(src, tmp_path / "conv.onnx")
    [stem] = report.replaced
    assert stem.qdq and stem.weight_dq is not None
    v = report.verification
    assert v.passed and v.stems[0]["float32"] <= 1e-5
    before, after = onnx.load(str(src)), onnx.load(str(tmp_path / "conv.onnx"))
    conv_b = next(n for n in before.graph.node if n.op_type == "Conv")
    conv_a = next(n for n in after.graph.node if n.op_type == "Conv" and n.name == conv_b.name)
    qb, sb, zb, axis_b = _weight_dq(before, conv_b)
    qa, sa, za, axis_a = _weight_dq(after, conv_a)
    assert qa.dtype == qb.dtype == np.int8
    expected = fs.focus_to_conv_weight(torch.from_numpy(qb.astype(np.int64)), 2, "yolov5").numpy()
    assert np.array_equal(qa, expected)  # the integer weight is permuted, every value kept
    assert np.array_equal(sa, sb) and np.array_equal(za, zb) and axis_a == axis_b
    assert sb.size == (qb.shape[0] if per_channel else 1)
    producer = {o: n for n in after.graph.node for o in n.output}
    dq = producer[conv_a.input[0]]
    q = producer[dq.input[0]]
    assert (dq.op_type, q.op_type, q.input[0]) == ("DequantizeLinear", "QuantizeLinear", "images")


def test_qdq_inside_the_chain_is_refused_naming_the_nodes(tmp_path, capsys):
    src = _quantized(tmp_path, False, conv_only=False)
    assert main(["convert", str(src), str(tmp_path / "conv.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "QDQ nodes inside the chain" in err and "QuantizeLinear" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "conv.onnx").exists()


# ------------------------------------------------------------------ YOLOv5's own export.py (tests/fixtures/onnx-yolov5)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "onnx-yolov5"
EXPORTS = json.loads((FIXTURES / "MANIFEST.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_yolov5_export_py_files_fold_and_verify(name, tmp_path):
    """Files written by YOLOv5 v5.0's own models/export.py (TorchScript and dynamo exporters, static, dynamic,
    P6 with stride 64, external data): folded, verified at their real size, and equal to the original graph's stored
    outputs within the tolerance the verification derived."""
    import shutil

    for produced in FIXTURES.glob(f"{name}.onnx*"):
        shutil.copy(produced, tmp_path / produced.name)
    src, dst = tmp_path / f"{name}.onnx", tmp_path / "out" / f"{name}-conv.onnx"
    dst.parent.mkdir()
    report = convert_onnx(src, dst)
    v = report.verification
    assert [(s.family, s.block_size, s.order) for s in report.replaced] == [("slices", 2, "yolov5")]
    assert v.passed and v.stems[0]["float64"] <= STEM_FLOAT64_TOLERANCE, v
    if "dynamic" in name:
        assert v.inputs[0] == "images=1x3x640x640" and v.stride == (64 if name.startswith("yolov5s6") else 32)
    else:
        assert v.inputs == ["images=1x3x128x128"]
    assert (dst.parent / f"{name}-conv.onnx.data").exists() == (src.parent / f"{name}.onnx.data").exists()
    ref = np.load(FIXTURES / f"{name}.ref.npz")
    outputs = _run(dst, {"images": ref["images"]})
    for i, got in enumerate(outputs):
        expected = ref[f"out{i}"]
        assert np.abs(got.astype(np.float64) - expected).max() <= v.tolerance * np.abs(expected).max()
