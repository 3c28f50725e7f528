"""The safe loader's rules, one by one: what a file may name, what it becomes, what is refused."""

import os
from pathlib import Path
import pathlib
import pickle
import sys
import types
import zipfile

import pytest
import torch

from focus_surgery.checkpoint_io import CheckpointError, load_checkpoint
from focus_surgery.loader import NamedReference, Namespace, Record, read_checkpoint
from focus_surgery.loader.allowlist import ALLOWED, is_record_module

pytestmark = pytest.mark.usefixtures("loader_mode")  # every test once per loader mode (conftest)


class _Reduce:
    """Pickles as ``func(*args)`` (and optional state): how a file asks the loader to call something."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _save(tmp_path, obj, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_every_allowed_name_says_why():
    assert all(entry.reason.strip() for entry in ALLOWED.values())
    assert any(e.record for e in ALLOWED.values()) and any(e.value is not None for e in ALLOWED.values())
    assert all((e.value is None) == e.record for e in ALLOWED.values())  # a row is a stand-in or a record module
    assert not any(
        callable(e.value) and isinstance(e.value, type) and issubclass(e.value, torch.Tensor) for e in ALLOWED.values()
    )  # no tensor class is callable from a file


@pytest.mark.parametrize(
    "module, expected",
    [
        ("models.yolo", True),
        ("models.common", True),
        ("torch.nn.modules.conv", True),
        ("timm.layers.std_conv", True),
        ("models.yolo.os", False),
        ("models", False),
        ("torch.nn", False),
        ("torch", False),
        ("os", False),
        ("ultralytics.utils", False),
        ("focus_surgery.cli", True),
    ],
)
def test_record_modules_match_exactly(module, expected):
    assert is_record_module(module) is expected


def test_data_only_values_become_plain_values(tmp_path, monkeypatch):
    class Detect:  # stands for models.yolo.Detect; pickled by reference
        pass

    yolo = types.ModuleType("models.yolo")
    Detect.__module__, Detect.__qualname__, yolo.Detect = "models.yolo", "Detect", Detect
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    monkeypatch.setitem(sys.modules, "models.yolo", yolo)
    namespace = types.SimpleNamespace(epochs=3, save_dir=pathlib.PurePosixPath("runs", "exp"))
    content = {
        "opt": {"save_dir": pathlib.PurePosixPath("runs", "train", "exp")},
        "args": namespace,
        "forward": _Reduce(getattr, (Detect, "forward")),
    }
    path = tmp_path / "data.pt"
    with open(path, "wb") as handle:  # protocol 2 as torch.save writes it, without importing Detect when loading
        torch.save(content, handle)
    loaded = read_checkpoint(path)
    assert loaded.content["opt"]["save_dir"] == "runs/train/exp"
    assert isinstance(loaded.content["args"], Namespace) and loaded.content["args"]["epochs"] == 3
    assert loaded.content["args"]["save_dir"] == "runs/exp"
    ref = loaded.content["forward"]
    assert isinstance(ref, NamedReference) and ref.qualname == "models.yolo.Detect.forward" and not callable(ref)
    assert {"pathlib.PurePosixPath", "types.SimpleNamespace"} <= loaded.globals
    assert {"builtins.getattr", "__builtin__.getattr"} & loaded.globals


@pytest.mark.parametrize(
    "payload, refusal",
    [
        (_Reduce(os.system, ("true",)), "imports 'posix.system'"),
        (_Reduce(torch.Tensor, (1000,)), "REDUCE of torch.Tensor, which is not callable"),  # uninitialised memory
        (_Reduce(torch.nn.Conv2d, (3, 8, 3)), "built with arguments"),  # a layer constructor would run
        (_Reduce(getattr, (pathlib.PurePosixPath, "unlink")), "getattr on something other than a recorded class"),
        (_Reduce(os.path.join, ("a", "b")), "imports 'posixpath.join'"),
    ],
)
def test_calls_are_refused_by_name(tmp_path, payload, refusal):
    path = _save(tmp_path, {"w": torch.zeros(2), "payload": payload})
    with pytest.raises(CheckpointError, match="refused to load") as error:
        read_checkpoint(path)
    assert refusal in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_records_keep_names_and_state_but_never_run(tmp_path):
    path = _save(tmp_path, torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.SiLU()))
    record = read_checkpoint(path).content
    assert isinstance(record, Record) and record.qualname == "torch.nn.modules.container.Sequential"
    assert list(record.state_dict()) == ["0.weight", "0.bias"]
    assert [p for p, _ in record.named_modules()] == ["", "0", "1"]


def test_layers_are_rebuilt_only_from_consistent_hyperparameters(tmp_path):
    conv = torch.nn.Conv2d(3, 4, 3)
    good = _save(tmp_path, {"model": torch.nn.Sequential(conv)}, "good.pt")
    assert isinstance(load_checkpoint(good).model[0], torch.nn.Conv2d)
    conv.out_channels = 4096  # disagrees with its weight: a later conversion would allocate from it
    bad = _save(tmp_path, {"model": torch.nn.Sequential(conv)}, "bad.pt")
    with pytest.raises(CheckpointError, match="weight .* disagrees with its settings"):
        load_checkpoint(bad)
    lstm = torch.nn.LSTM(4, 4)
    lstm.num_layers = 10**12  # RNNBase.__setstate__ would loop this many times
    with pytest.raises(CheckpointError, match="num_layers"):
        load_checkpoint(_save(tmp_path, {"model": lstm}, "lstm.pt"))
    up = torch.nn.Upsample(scale_factor=10_000)
    with pytest.raises(CheckpointError, match="scale_factor"):
        load_checkpoint(_save(tmp_path, {"model": torch.nn.Sequential(up)}, "up.pt"))


def test_hooks_from_a_file_are_dropped(tmp_path):
    from focus_surgery.integrations import ultralytics

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    expected = model(torch.ones(1, 3, 5, 5))
    hook = getattr(ultralytics, "_check_block_divides", None) or ultralytics.registered_yaml_modules
    model.register_forward_pre_hook(hook)  # a function pickled by reference, as the old YAML rows' pre-hook was
    ckpt = load_checkpoint(_save(tmp_path, {"model": model}))
    assert not ckpt.model._forward_pre_hooks
    assert torch.equal(ckpt.model(torch.ones(1, 3, 5, 5)), expected)


def test_crc_mismatch_names_the_record(tmp_path, loader_mode):
    path = _save(tmp_path, {"w": torch.arange(64.0)})
    data = bytearray(path.read_bytes())
    start = bytes(data).index(torch.arange(64.0).numpy().tobytes())
    data[start + 17] ^= 0x10  # one bit of one weight
    path.write_bytes(bytes(data))
    if loader_mode == "mmap-nocrc":  # documented: storages' CRC-32s are not computed; the flipped value is read
        assert read_checkpoint(path).content["w"][4].item() != 4.0
        loader_mode = "mmap"  # the same views with the check: refused
    with pytest.raises(CheckpointError, match=r"record '.*data/0' fails its CRC-32 check"):
        read_checkpoint(path, loader_mode)


def test_a_second_archive_folder_is_refused_as_torch_refuses_it(tmp_path):
    path = _save(tmp_path, {"w": torch.arange(3.0)})
    with zipfile.ZipFile(path, "a") as archive:  # a second folder with its own pickle: which one is the model?
        archive.writestr("other/data.pkl", pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="lies outside the archive folder"):
        read_checkpoint(path)
    with pytest.raises(RuntimeError, match="not in a subdirectory"):
        torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------------------------ one vocabulary


def test_allow_records_admits_a_module_with_its_reason(tmp_path):
    """Classes of an unknown package are refused by name; ``allow_records`` admits them as inert records (no
    import, no code), with the reason kept in the one allow-list table, like torch's ``add_safe_globals``."""
    from focus_surgery.loader import CheckpointError, allow_records
    from focus_surgery.loader.allowlist import ALLOWED

    from hostile_files import torch_zip

    # {"block": mylib.layers.Block() with state {"k": 3}}, written by hand
    pkl = b"\x80\x02}X\x05\x00\x00\x00blockcmylib.layers\nBlock\n)\x81}X\x01\x00\x00\x00kK\x03sbs."
    path = torch_zip(tmp_path / "mylib.pt", pkl)
    with pytest.raises(CheckpointError, match="mylib.layers.Block"):
        read_checkpoint(path)
    try:
        allow_records("mylib.*", "  our own layers,\n saved whole by train.py ")
        assert ALLOWED["mylib.*"].reason == "our own layers, saved whole by train.py" and ALLOWED["mylib.*"].record
        assert not ALLOWED["mylib.*"].materialise  # records of added modules are never rebuilt as live layers
        block = read_checkpoint(path).content["block"]
        assert isinstance(block, Record) and block.qualname == "mylib.layers.Block" and block.state == {"k": 3}
        assert "mylib" not in sys.modules
        assert is_record_module("mylib.layers") and not is_record_module("mylib") and not is_record_module("mylibx.a")
    finally:
        ALLOWED.pop("mylib.*", None)
    assert not is_record_module("mylib.layers")
    for module, reason in [("mylib", ""), ("my lib", "why"), ("mylib.*.x", "why"), ("torch.Size", "why"), (3, "x")]:
        with pytest.raises(ValueError, match="allow_records"):
            allow_records(module, reason)


def test_one_loaded_one_alias_free_loader():
    """One ``Loaded`` (the loader's, used by every source); the YOLOv5 alias module is gone."""
    import importlib.util

    import focus_surgery.loader as loader
    import focus_surgery.sources as sources

    assert sources.Loaded is loader.Loaded
    assert importlib.util.find_spec("focus_surgery.yolov5.unpickler") is None
    assert not hasattr(loader, "reading_once")


@pytest.mark.parametrize(
    "sample",
    [
        "tests/fixtures/yolov5-legacy/yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt",
        "checkpoints/focus-backbone.pt",
        "checkpoints/yolo-focus-tiny.pt",
    ],
)
def test_each_command_reads_its_file_once(sample, tmp_path, monkeypatch, capsys):
    """inspect and convert read the input once (no second read, so no cache of copies is needed)."""
    import focus_surgery.loader as loader
    from focus_surgery import cli

    root = Path(__file__).resolve().parents[1]
    reads = []
    real = loader.read_container
    monkeypatch.setattr(loader, "read_container", lambda path, *rest: reads.append(path) or real(path, *rest))
    for argv in (["inspect", str(root / sample)], ["convert", str(root / sample), str(tmp_path / "out.pt")]):
        reads.clear()
        assert cli.main(argv) == 0, capsys.readouterr()
        assert reads == [root / sample], (argv[0], reads)
