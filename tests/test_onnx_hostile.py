"""Hostile ONNX files through the real CLI: no tensor anywhere in a graph can make the tool read or write a file.

ONNX's own loader and saver follow a tensor's ``external_data.location``; the checker skips model-local functions
(IR version 7) and does not look inside Constant attributes, so each case hides the external tensor where the
checker does not see it. Every run: exit 2, one line, nothing written, the input and the named file unchanged.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from _bounded_cli import run_fresh  # noqa: E402

PAYLOAD = b"echo pwned > focus-surgery-pwned\n"  # relative: a run of it would write into the test's work folder
SECRET = b"TOPSECRETBYTES"


def _external(tensor: onnx.TensorProto, location: str, raw: bytes | None = None) -> onnx.TensorProto:
    """Mark ``tensor`` as stored in ``location``; with ``raw`` it also keeps bytes that a save would append there."""
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    if raw is None:
        tensor.ClearField("raw_data")
        entry = tensor.external_data.add()
        entry.key, entry.value = "length", "16"
    else:
        tensor.raw_data = raw
    return tensor


def _stem_graph(extra_nodes=(), functions=(), ir_version: int = 8, starts=None) -> onnx.ModelProto:
    """image -> 4 Slices (YOLOv5 phases) -> Concat -> Conv: a foldable stem, so only the planted tensor is wrong."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in [("end", [2**62, 2**62]), ("steps", [2, 2]), ("axes", [2, 3])]
    ]
    nodes = list(extra_nodes)
    for k, (dy, dx) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        start = starts if (k == 0 and starts is not None) else f"start{k}"
        if start == f"start{k}":
            inits.append(numpy_helper.from_array(np.array([dy, dx], np.int64), start))
        nodes.append(helper.make_node("Slice", ["image", start, "end", "axes", "steps"], [f"phase{k}"]))
    inits += [numpy_helper.from_array(rng.standard_normal((4, 12, 3, 3)).astype(np.float32), "w")]
    nodes += [
        helper.make_node("Concat", [f"phase{k}" for k in range(4)], ["s2d"], axis=1),
        helper.make_node("Conv", ["s2d", "w"], ["out"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("local", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions), ir_version=ir_version)


def _function_constant_writes_bashrc() -> onnx.ModelProto:
    """A model-local function (IR 7: the checker skips functions) whose Constant would be saved to .bashrc."""
    value = _external(numpy_helper.from_array(np.zeros(1, np.float32), "payload"), ".bashrc", PAYLOAD)
    body = [helper.make_node("Constant", [], ["c"], value=value)]
    function = helper.make_function("local", "Payload", [], ["c"], body, [helper.make_opsetid("", 13)])
    return _stem_graph(functions=[function], ir_version=7)


def _subgraph_constant_writes_bashrc() -> onnx.ModelProto:
    """The same bytes in a Constant inside an If branch of the main graph."""
    value = _external(numpy_helper.from_array(np.zeros(1, np.float32), "payload"), ".bashrc", PAYLOAD)
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=value)],
        "branch",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [
        helper.make_node("Constant", [], ["flag"], value=cond),
        helper.make_node("If", ["flag"], ["unused"], then_branch=branch, else_branch=branch),
    ]
    return _stem_graph(extra_nodes=nodes)


def _slice_starts_read_secret() -> onnx.ModelProto:
    """A Slice whose ``starts`` is a Constant stored in ``secret.txt`` of the current folder."""
    value = _external(numpy_helper.from_array(np.zeros(2, np.int64), "starts"), "secret.txt")
    return _stem_graph(extra_nodes=[helper.make_node("Constant", [], ["leak"], value=value)], starts="leak")


@pytest.mark.parametrize(
    "make", [_function_constant_writes_bashrc, _subgraph_constant_writes_bashrc, _slice_starts_read_secret]
)
@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_external_tensor_anywhere_is_refused(make, command, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    src, dst = work / "m.onnx", work / "out.onnx"
    src.write_bytes(make().SerializeToString())
    (work / "secret.txt").write_bytes(SECRET + b"\0\0")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in work.iterdir()}
    argv = ["convert", src, dst] if command == "convert" else ["inspect", src]
    outcome = run_fresh(*argv, cwd=work)
    assert outcome.returncode == 2, outcome
    assert len(outcome.stderr_lines) == 1 and "external data" in outcome.stderr_lines[0], outcome
    assert SECRET not in outcome.stdout + outcome.stderr
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in work.iterdir()}
    assert after == before, "a file was written, changed or removed"
    assert not (work / "focus-surgery-pwned").exists()


def test_saving_never_writes_an_external_file(tmp_path):
    """``save_onnx`` serialises the graph itself: a tensor naming another file is refused, never followed."""
    from focus_surgery.onnx_graph.io import OnnxSurgeryError, save_onnx

    model = _function_constant_writes_bashrc()
    with pytest.raises(OnnxSurgeryError, match="external data"):
        save_onnx(model, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
