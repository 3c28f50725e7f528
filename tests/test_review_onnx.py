"""Defects of the ONNX deployed-files change found in review (issues 21 and 25), each reproduced through the real CLI.

* external data named by a hidden path in the model's folder (``.ssh/id_rsa`` next to a model in ``$HOME``) was
  read and its bytes printed by ``inspect`` as a Slice start;
* a block-quantized weight (DequantizeLinear ``block_size``, opset 21) was folded without its scale: ``convert``
  wrote a graph onnxruntime cannot run (exit 0), ``--verify`` called it a failed conversion (exit 1);
* onnxruntime's own error log reached stderr next to our one-line error;
* a planted wrong fold on a graph whose own float32 error is large still fails verification (the stem check).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from test_onnx_hostile import SECRET, _stem_graph  # noqa: E402


def _digests(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _external_start(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """The first Slice's ``starts`` initializer stored in ``location`` (16 bytes = two int64)."""
    tensor = next(t for t in model.graph.initializer if t.name == "start0")
    tensor.ClearField("raw_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model


@pytest.mark.parametrize("location", [".secret/key", ".env", "m.onnx"])
def test_hidden_files_and_the_model_itself_are_never_external_data(location, tmp_path, cli):
    """A model in ``$HOME`` naming ``.ssh/id_rsa`` as its data: on main ``inspect`` printed the first 8 bytes as
    ``slice [4995128901736877908::2]`` ("TOPSECRE")."""
    work = tmp_path / "work"
    (work / ".secret").mkdir(parents=True)
    for name in (".secret/key", ".env"):
        (work / name).write_bytes(SECRET + b"\0\0")
    src = work / "m.onnx"
    src.write_bytes(_external_start(_stem_graph(), location).SerializeToString())
    before = _digests(work)
    for argv in (["inspect", src], ["convert", src, work / "out.onnx"]):
        outcome = cli.run(*argv, cwd=work)
        assert outcome.returncode == 2, outcome
        [line] = outcome.stderr_lines
        assert "external data" in line and ("hidden" in line or "model file itself" in line), line
        leaked = str(int.from_bytes(SECRET[:8], "little")).encode()
        assert leaked not in outcome.stdout + outcome.stderr and SECRET not in outcome.stdout + outcome.stderr
    assert _digests(work) == before


def _block_quantized_weight() -> onnx.ModelProto:
    """The stem's Conv weight is int8 behind a DequantizeLinear with ``axis=0, block_size=2`` (opset 21): its scale
    (2, 12, 3, 3) varies along the input-channel and kernel axes that the fold permutes and reshapes."""
    model = _stem_graph()
    graph = model.graph
    rng = np.random.default_rng(1)
    graph.initializer.remove(next(t for t in graph.initializer if t.name == "w"))
    graph.initializer.extend(
        [
            numpy_helper.from_array(rng.integers(-100, 100, (4, 12, 3, 3)).astype(np.int8), "wq"),
            numpy_helper.from_array((rng.random((2, 12, 3, 3)) * 0.01 + 0.001).astype(np.float32), "ws"),
        ]
    )
    graph.node.insert(0, helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0, block_size=2))
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 21))
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("verify", [False, True])
def test_block_quantized_weight_is_left_not_folded(verify, tmp_path, cli):
    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    src.write_bytes(_block_quantized_weight().SerializeToString())
    outcome = cli.run("convert", src, dst, *(["--verify"] if verify else []), cwd=tmp_path)
    assert outcome.returncode == 2, outcome  # main: exit 0 with an unrunnable graph, or 1 (a "failed conversion")
    [line] = outcome.stderr_lines
    assert "block-quantized" in line and "DequantizeLinear" in line, line
    assert not dst.exists()


def test_onnxruntime_errors_stay_off_stderr(tmp_path, cli):
    """The original graph fails at the verification size (its Reshape hard-codes the export size): one line, ours;
    on main onnxruntime's own ``[E:onnxruntime ...]`` log lines came first."""
    model = _stem_graph()
    for dim in list(model.graph.input[0].type.tensor_type.shape.dim)[2:]:
        dim.Clear()
        dim.dim_param = "side"
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 64], np.int64), "flat"))
    model.graph.node.append(helper.make_node("Reshape", ["out", "flat"], ["flat_out"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("flat_out", TensorProto.FLOAT, [1, 64]))
    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    src.write_bytes(model.SerializeToString())
    outcome = cli.run("convert", src, dst, "--verify", cwd=tmp_path)
    assert outcome.returncode == 2, outcome
    assert len(outcome.stderr_lines) == 1 and "original graph itself fails" in outcome.stderr_lines[0], outcome
    assert not dst.exists()


def _noisy_graph() -> onnx.ModelProto:
    """The stem, then ``(out + 1e6) - 1e6``: the graph's own float32 error is about 1e-2 relative, so 4x it lets a
    whole-graph comparison pass almost anything; only the direct stem comparison can catch a wrong fold."""
    model = _stem_graph()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(1e6, np.float32), "big"))
    graph.node.extend(
        [helper.make_node("Add", ["out", "big"], ["shifted"]), helper.make_node("Sub", ["shifted", "big"], ["back"])]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("back", TensorProto.FLOAT, [1, 4, 4, 4]))
    return model


@pytest.mark.parametrize("plant", ["order", "pads", "transpose"])
def test_a_wrong_fold_fails_verification_even_with_a_loose_whole_graph_tolerance(plant, monkeypatch):
    from focus_surgery.onnx_graph import fold, rewrite
    from focus_surgery.onnx_graph.runtime import compare

    model = _noisy_graph()
    good, stems = fold(model)
    honest = compare(model, good, None, stems)
    assert honest.passed and honest.reference_error > 1e-4  # the loose case: tolerance from a large own error
    real_remap, real_set = rewrite.remap_weight, rewrite._set_ints
    if plant == "order":
        monkeypatch.setattr(rewrite, "remap_weight", lambda w, bs, order: real_remap(w, bs, "timm"))
    elif plant == "transpose":
        monkeypatch.setattr(
            rewrite, "remap_weight", lambda w, bs, order: np.ascontiguousarray(real_remap(w, bs, order).swapaxes(2, 3))
        )
    else:
        monkeypatch.setattr(
            rewrite,
            "_set_ints",
            lambda node, name, v: real_set(node, name, [p // 2 for p in v] if name == "pads" else v),
        )
    bad, stems = fold(model)
    result = compare(model, bad, None, stems)
    assert not result.passed, result
    assert result.stems[0]["float64"] > 1e-3 or result.stems[0]["float32"] > 1e-3, result
