"""The focus-surgery command, run as users run it (a subprocess): outputs, exit codes, atomic writes."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focus_surgery.demo import build_focus_model
from tests._markers import marker_state

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "fixtures" / "yolov5-legacy"


def run(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "focus_surgery", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def focus_state_dict(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "focus.pt"
    torch.save({f"model.{k}": v for k, v in build_focus_model().state_dict().items()}, path)
    return path


def test_convert_state_dict_with_verify_json(focus_state_dict, tmp_path):
    before = digest(focus_state_dict)
    dst = tmp_path / "conv.pt"
    result = run("convert", focus_state_dict, dst, "--verify", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["max_abs_err"] <= 1e-10 and report["stem"] == "model.0" and report["to"] == "conv"
    converted = torch.load(dst, weights_only=True)
    assert converted["model.0.conv.weight"].shape == (16, 3, 6, 6) and "model.0.bn.running_var" in converted
    assert digest(focus_state_dict) == before  # input untouched
    back = tmp_path / "back.safetensors"
    assert run("convert", dst, back, "--to", "focus").returncode == 0
    from safetensors.torch import load_file

    original = torch.load(focus_state_dict, weights_only=True)
    restored = load_file(str(back))
    assert original.keys() == restored.keys() and all(torch.equal(original[k], restored[k]) for k in original)
    assert run("verify", focus_state_dict, back).returncode == 0


def test_verify_detects_a_tampered_file(focus_state_dict, tmp_path):
    tampered = torch.load(focus_state_dict, weights_only=True)
    tampered["model.1.conv.weight"] = tampered["model.1.conv.weight"] + 1e-3
    path = tmp_path / "tampered.pt"
    torch.save(tampered, path)
    result = run("verify", focus_state_dict, path, "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["passed"] is False


def test_inspect_json(focus_state_dict):
    result = run("inspect", focus_state_dict, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["stems"][0]["form"] == "focus" and info["stems"][0]["converts_to"] == "conv"


def test_convert_ultralytics_checkpoint(tmp_path):
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    from tests.test_ultralytics_core import FOCUS_YAML

    src, dst = tmp_path / "focus.pt", tmp_path / "conv.pt"
    YOLO(str(FOCUS_YAML)).save(str(src))
    result = run("convert", src, dst, "--verify", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["max_abs_err"] <= 1e-10 and report["replaced"][0]["new_form"].startswith("Conv(6x6")
    info = json.loads(run("inspect", dst, "--json").stdout)
    assert info["kind"] == "ultralytics" and [s["direction"] for s in info["stems"]] == ["focus"]
    assert run("verify", src, dst).returncode == 0


def test_demo_runs_and_reports():
    result = run("demo")
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout and "bit-identical: True" in result.stdout


@pytest.mark.parametrize(
    "make_src,message",
    [
        (lambda tmp: tmp / "missing.pt", "no such file"),
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: (tmp / "empty.pt").write_bytes(b"") or tmp / "empty.pt", "empty file"),
        (lambda tmp: LEGACY / "random_bytes.pt", "not a torch checkpoint"),
        (lambda tmp: LEGACY / "truncated_half.pt", "truncated or corrupt zip"),
        (lambda tmp: LEGACY / "malicious_reduce.pt", "refused to load"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(make_src, message, tmp_path):
    src = make_src(tmp_path)
    dst = tmp_path / "out" / "never.pt"
    dst.parent.mkdir()
    fixed_marker = marker_state()
    result = run("convert", src, dst)
    assert result.returncode == 2
    assert (
        message in result.stderr and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    )
    assert list(dst.parent.iterdir()) == []  # no partial output
    assert marker_state() == fixed_marker  # nothing was executed (malicious_reduce.pt would touch it)


def test_unwritable_destination_and_same_file(focus_state_dict, tmp_path):
    result = run("convert", focus_state_dict, tmp_path / "no-such-folder" / "x.pt")
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run("convert", focus_state_dict, focus_state_dict)
    assert result.returncode == 2 and "refusing to overwrite the input" in result.stderr


def test_nothing_to_convert_is_bad_input(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"fc.weight": torch.randn(3, 3)}, path)
    result = run("convert", path, tmp_path / "out.pt")
    assert result.returncode == 2 and "no Focus or conv stem found" in result.stderr


def test_interrupted_write_leaves_nothing(focus_state_dict, tmp_path, monkeypatch):
    from focus_surgery import checkpoint_io

    def explode(obj, path, *args, **kwargs):  # torch.save's own keywords (pickle_module, protocol) pass through
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", explode)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_io.save_checkpoint({"a": torch.zeros(1)}, tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []


def test_unexpected_errors_are_one_line_exit_2(monkeypatch, capsys):
    from focus_surgery import cli

    def broken_forward(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore detail")

    monkeypatch.setattr(cli, "cmd_inspect", broken_forward)  # the parser binds the handler when it is built
    assert cli.main(["inspect", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "focus-surgery: error: x.pt: RuntimeError: mat1 and mat2 shapes cannot be multiplied"


class _CallsOnLoad:
    """Pickles as a call of ``func(*args)``: what a hostile checkpoint does with names we know."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "make_payload",
    [
        # a function under an allowed package would write a file if it were called
        lambda marker: _CallsOnLoad(
            __import__("focus_surgery.checkpoint_io").checkpoint_io.save_checkpoint, {"a": torch.zeros(1)}, str(marker)
        ),
        # a layer class called with arguments runs its constructor
        lambda marker: _CallsOnLoad(torch.nn.Conv2d, 3, 8, 3),
    ],
)
def test_functions_and_constructors_of_allowed_packages_never_run(make_payload, tmp_path):
    marker = tmp_path / "written-by-the-checkpoint.pt"
    src = tmp_path / "hostile.pt"
    torch.save({"model.0.weight": torch.zeros(1), "payload": make_payload(marker)}, src)
    result = run("inspect", src)
    assert result.returncode == 2 and "refused to load" in result.stderr
    assert not marker.exists()


def test_hostile_numpy_dtype_and_storage_tampering_are_refused(tmp_path):
    """A pickle may not give numpy an object-typed field, nor change the shared storage stand-ins for later files."""
    import zipfile

    from focus_surgery.checkpoint_io import CheckpointError, load_checkpoint

    class ObjectFieldDtype:  # numpy.dtype("V8") whose state then claims an object field
        def __reduce__(self):
            return (
                __import__("numpy").dtype,
                ("V8", False, True),
                (3, "|", None, ("x",), {"x": (object, 0)}, 8, 1, 63),
            )

    dtype_file = tmp_path / "dtype.pt"
    torch.save({"w": torch.arange(4.0), "payload": ObjectFieldDtype()}, dtype_file)
    with pytest.raises(CheckpointError, match="numpy dtype with fields"):
        load_checkpoint(dtype_file)
    # BUILD on torch.FloatStorage's stand-in, setting its dtype to float16 (hand-written pickle, protocol 2)
    storage_file = tmp_path / "storage.pt"
    retype = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypectorch\nfloat16\nsb."
    with zipfile.ZipFile(storage_file, "w") as archive:
        archive.writestr("archive/data.pkl", retype)
    with pytest.raises(CheckpointError, match="refused to load: setting the state"):
        load_checkpoint(storage_file)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(4.0)}, good)
    assert torch.equal(load_checkpoint(good).content["w"], torch.arange(4.0))  # still float32, values intact


def test_state_dict_with_metadata_loads(tmp_path):
    """model.state_dict() is an OrderedDict carrying ``_metadata``: its state is set on load, and that is allowed."""
    from focus_surgery.checkpoint_io import load_checkpoint

    path = tmp_path / "sd.pt"
    state = build_focus_model().state_dict()
    torch.save(state, path)
    loaded = load_checkpoint(path).content
    assert loaded.keys() == state.keys() and getattr(loaded, "_metadata", None) == state._metadata
