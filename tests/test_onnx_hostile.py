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
def test_external_tensor_anywhere_is_refused(make, command, tmp_path, cli):
    work = tmp_path / "work"
    work.mkdir()
    src, dst = work / "m.onnx", work / "out.onnx"
    src.write_bytes(make().SerializeToString())
    (work / "secret.txt").write_bytes(SECRET + b"\0\0")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in work.iterdir()}
    argv = ["convert", src, dst] if command == "convert" else ["inspect", src]
    outcome = cli.run(*argv, cwd=work)
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


# ------------------------------------------------------------------------- issue 25: bounded, linear, confined


def _transpose_chain(n: int) -> onnx.ModelProto:
    """image (6-D) -> ``n`` Transposes swapping the last two axes -> Reshape to 4-D -> Conv: a layout chain that
    looks like a space-to-depth (6-D perms) but is ``n`` nodes long."""
    nodes = []
    name = "image"
    for i in range(n):
        nodes.append(helper.make_node("Transpose", [name], [f"t{i}"], perm=[0, 1, 2, 3, 5, 4]))
        name = f"t{i}"
    nodes += [
        helper.make_node("Reshape", [name, "shape"], ["flat"]),
        helper.make_node("Conv", ["flat", "w"], ["out"], kernel_shape=[1, 1]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 12, 4, 4], np.int64), "shape"),
        numpy_helper.from_array(np.ones((2, 12, 1, 1), np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 2, 4, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _python_calls(function, *args) -> int:
    """Python and C function calls made by ``function(*args)``: a count, not a clock."""
    import sys

    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(profile)
    try:
        function(*args)
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize("builder", ["transposes", "glue"])
def test_graph_walks_are_linear(builder):
    """Doubling the graph at most doubles the work (plus a constant): no list search per node (issue 25: an
    80,000-Transpose chain took 237 s)."""
    from focus_surgery.onnx_graph import fold

    make = _transpose_chain if builder == "transposes" else _glue_graph
    small, large = (_python_calls(fold, make(n)) for n in (2000, 4000))
    assert large <= 2.2 * small, (small, large)


def _glue_graph(n: int) -> onnx.ModelProto:
    """A foldable stem whose slice ``starts`` come through ``n`` Identity nodes of shape glue (removed with it)."""
    nodes = [helper.make_node("Identity", ["start0"], ["g0"])]
    nodes += [helper.make_node("Identity", [f"g{i - 1}"], [f"g{i}"]) for i in range(1, n)]
    model = _stem_graph(extra_nodes=nodes, starts=f"g{n - 1}")
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0], np.int64), "start0"))
    return model


def _loop_starts(trips: int) -> onnx.ModelProto:
    """The first slice's ``starts`` come out of a Loop of ``trips`` iterations (the reference evaluator would run
    it while proving the chain)."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.INT64, [2]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.INT64, [2]),
        ],
    )
    nodes = [
        helper.make_node("Constant", [], ["trips"], value=numpy_helper.from_array(np.array(trips, np.int64))),
        helper.make_node("Constant", [], ["true"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros(2, np.int64))),
        helper.make_node("Loop", ["trips", "true", "zero"], ["looped"], body=body),
    ]
    return _stem_graph(extra_nodes=nodes, starts="looped")


def _loop_reshape(trips: int) -> onnx.ModelProto:
    """A reshape-transpose space-to-depth whose 6-D shape comes out of a Loop of ``trips`` iterations: the proof
    would run the Loop in the reference evaluator."""
    from focus_surgery.layers import SpaceToDepth

    loop = _loop_starts(trips)
    looper = [n for n in loop.graph.node if n.op_type in ("Constant", "Loop")]
    zero = next(n for n in looper if n.output[0] == "zero")
    zero.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([1, 3, 4, 2, 4, 2], np.int64)))
    body = next(n for n in looper if n.op_type == "Loop").attribute[0].g
    for value in (*body.input[2:], *body.output[1:]):
        value.type.tensor_type.shape.dim[0].dim_value = 6
    nodes = [
        *looper,
        helper.make_node("Reshape", ["image", "looped"], ["six"]),
        helper.make_node("Transpose", ["six"], ["moved"], perm=SpaceToDepth(2, "yolov5").permutation),
        helper.make_node("Reshape", ["moved", "four"], ["s2d"]),
        helper.make_node("Conv", ["s2d", "w"], ["out"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 12, 4, 4], np.int64), "four"),
        numpy_helper.from_array(np.ones((4, 12, 3, 3), np.float32), "w"),
    ]
    graph = helper.make_graph(nodes, "g", list(loop.graph.input), list(loop.graph.output), inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _loop_beside(trips: int) -> onnx.ModelProto:
    """A foldable stem, and a Loop of ``trips`` iterations elsewhere that ``--verify`` would run in onnxruntime."""
    model = _loop_starts(trips)
    slice0 = next(n for n in model.graph.node if n.op_type == "Slice")
    slice0.input[1] = "start0"
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0], np.int64), "start0"))
    model.graph.output.append(helper.make_tensor_value_info("looped", TensorProto.INT64, [2]))
    return model


def _huge_static_input() -> onnx.ModelProto:
    """A Focus stem on a declared 1x3x8192x8192 input: proving it on an index tensor would take 5.4 GB."""
    model = _stem_graph()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 8192
    out = model.graph.output[0].type.tensor_type.shape.dim
    out[2].dim_value = out[3].dim_value = 4096
    return model


@pytest.mark.parametrize(
    "make,argv_tail,message",
    [
        (lambda: _transpose_chain(80_000), [], "no space-to-depth stem"),
        (lambda: _loop_starts(10**12), [], "no space-to-depth stem"),
        (lambda: _loop_reshape(10**12), [], "the chain reads Loop"),
        (lambda: _loop_beside(10**12), ["--verify"], "trip count"),
        (_huge_static_input, [], "8192x8192"),
        (_huge_static_input, ["--verify"], "8192x8192"),
    ],
    ids=["80k-transposes", "loop-slice-starts", "loop-reshape-shape", "loop-verified", "8192-stem", "8192-verified"],
)
def test_unbounded_work_is_refused_before_it_starts(make, argv_tail, message, tmp_path, cli):
    """Through the real CLI with 1 GiB of address-space headroom: exit 2, one line, nothing written."""
    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    src.write_bytes(make().SerializeToString())
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    outcome = cli.run("convert", src, dst, *argv_tail, cwd=tmp_path, headroom=1 << 30, limit=300)
    assert not outcome.timed_out and outcome.returncode == 2, outcome
    assert len(outcome.stderr_lines) == 1 and message in outcome.stderr_lines[0], outcome
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest


def test_initializer_data_outside_the_models_folder_is_refused(tmp_path, cli):
    """An initializer naming ``../secret.txt`` or a symlink leading out: refused, never read or printed."""
    import os

    (tmp_path / "secret.txt").write_bytes(SECRET + b"\0\0")
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(tmp_path / "secret.txt", work / "innocent.bin")
    for location in ("../secret.txt", "innocent.bin", str(tmp_path / "secret.txt")):
        model = _stem_graph()
        start = next(t for t in model.graph.initializer if t.name == "start0")
        _external(start, location)
        src = work / "m.onnx"
        src.write_bytes(model.SerializeToString())
        before = {p.name: p.read_bytes() for p in work.iterdir() if not p.is_symlink()}
        for argv in (["convert", src, work / "out.onnx"], ["inspect", src]):
            outcome = cli.run(*argv, cwd=work)
            assert outcome.returncode == 2, outcome
            assert len(outcome.stderr_lines) == 1 and "external data" in outcome.stderr_lines[0], outcome
            assert SECRET not in outcome.stdout + outcome.stderr
        assert {p.name: p.read_bytes() for p in work.iterdir() if not p.is_symlink()} == before


def test_output_that_is_not_a_regular_file_is_never_replaced(tmp_path):
    """A FIFO (or a device node such as /dev/null) as destination: refused, left as it is."""
    import os
    import stat

    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    src.write_bytes(_stem_graph().SerializeToString())
    os.mkfifo(dst)
    outcome = run_fresh("convert", src, dst, cwd=tmp_path)
    assert outcome.returncode == 2 and "is a FIFO; refusing to replace it" in outcome.stderr_lines[0], outcome
    assert stat.S_ISFIFO(os.lstat(dst).st_mode)
