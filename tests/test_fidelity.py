"""What ``convert`` writes is its input with only the stem changed (issue 24 item 1, issue 22 item 2).

For every source, on files written by each family's own code (or built here as that code saves them), the converted
file is compared with its input, one property per test:

* the container (a legacy non-zip file stays legacy, zip stays zip);
* the pickle's globals, read from the raw pickle with ``pickletools`` (nothing is unpickled) and with torch's own
  ``get_unsafe_globals_in_checkpoint``: never a new one (a family's ``weights_only=True`` allow-list still loads it);
* the Python type of every non-tensor value, by its path in the file (references stay references, namespaces stay
  their class, paths stay paths, numpy stays numpy);
* every tensor outside the stem, bit for bit;
* every copy of the stem weight (model, EMA, optimizer state) converted: no tensor of the old stem shape is left.
"""

from __future__ import annotations

import argparse
import copy
import io
import pathlib
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.family_models.mmengine.tiny_focus_net import TinyFocusNet
from focus_surgery.files import convert_file
from focus_surgery.loader import NamedReference, Namespace, PathText, Record, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
MMENGINE = FIXTURES / "mmengine" / "epoch_1.pth"


# ------------------------------------------------------------------------------------------------ reading a file raw


def content_pickle(path: Path) -> bytes:
    """The pickle of a torch file's content: ``data.pkl`` of a zip, the fourth pickle of a legacy file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    data = path.read_bytes()
    handle = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, sys info
        for _ in pickletools.genops(handle):
            pass
    start = handle.tell()
    for _ in pickletools.genops(handle):
        pass
    return data[start : handle.tell()]


def pickle_globals(path: Path) -> set[str]:
    """Every ``module.name`` the content pickle names (``GLOBAL`` and ``STACK_GLOBAL``), read with pickletools."""
    names: set[str] = set()
    memo: dict[int, object] = {}
    pushed: list[object] = []
    for op, arg, _ in pickletools.genops(content_pickle(path)):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{pushed[-2]}.{pushed[-1]}")
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif op.name != "PROTO":
            pushed.append(None)
    return names


def container(path: Path) -> str:
    return "zip" if zipfile.is_zipfile(path) else "legacy"


def type_of(value) -> str:
    """A value's type as the file pickled it (the loader's stand-ins name what they stand for)."""
    if isinstance(value, Record):
        return f"record {value.qualname} ({value.pickled_by})"
    if isinstance(value, Namespace):
        return f"namespace {value.qualname} ({value.pickled_by})"
    if isinstance(value, PathText):
        return f"path {value.qualname}"
    if isinstance(value, NamedReference):
        return f"reference {value.qualname} via {value.pickled[0] if value.pickled else 'GLOBAL'}"
    if isinstance(value, np.ndarray):
        return f"numpy.ndarray {value.dtype}"
    if isinstance(value, np.generic):
        return f"numpy {type(value).__name__}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


def walk(content) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(path -> type of each non-tensor value, path -> tensor) of what the loader read, each shared object once."""
    types: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    stack = [("", content)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            tensors[path] = obj
            continue
        types[path] = type_of(obj)
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, type(None))):
            continue
        seen.add(id(obj))
        if isinstance(obj, Record):
            items = obj.state.items()
        elif isinstance(obj, dict):
            items = obj.items()
        elif isinstance(obj, (list, tuple)):
            items = enumerate(obj)
        else:
            continue
        stack.extend((f"{path}/{key}", value) for key, value in items)
    return types, tensors


def raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


# ------------------------------------------------------------------------------------------------ the cases


@dataclass
class Case:
    """One conversion: ``make(tmp) -> input file``, the options, and where the stem's change may show.

    ``changes``: path fragments under which values and tensors may differ (the stem's keys and rows, its yaml rows);
    ``added`` / ``removed``: globals the stem's new form adds or drops (nothing else may change);
    ``copies``: tensors of the new stem shape expected in the output (model, EMA, optimizer state).
    """

    make: object
    options: dict = field(default_factory=dict)
    changes: tuple[str, ...] = ()
    added: frozenset = frozenset()
    removed: frozenset = frozenset()
    copies: int = 1


def _training_checkpoint(tmp: Path, legacy: bool) -> Path:
    """A timm ``train.py``-style checkpoint of a Focus-stem network: model and EMA state dicts, SGD momentum,
    ``args`` as an ``argparse.Namespace`` holding a ``PosixPath``, numpy metrics; legacy as mmdetection's
    ``publish_model.py`` saves (``_use_new_zipfile_serialization=False``)."""
    net = TinyFocusNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.rand(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    ema = copy.deepcopy(net)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    args = argparse.Namespace(model="tiny_focus", lr=0.1, output=pathlib.PosixPath("runs", "exp"), epochs=3)
    content = {
        "epoch": 2,
        "arch": "tiny_focus",
        "state_dict": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "args": args,
        "state_dict_ema": ema.state_dict(),
        "metric": np.float64(0.25),
        "history": np.arange(4, dtype=np.float32),
    }
    path = tmp / ("published.pth" if legacy else "last.pth")
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return path


def _ultralytics_last(tmp: Path) -> Path:
    """The repository's Ultralytics sample (Focus stem) as an unfinished run's ``last.pt`` holds it: the model's
    ``args`` an ``IterableSimpleNamespace``, an EMA, optimizer state with momentum."""
    from ultralytics.utils import IterableSimpleNamespace

    ckpt = torch.load(ROOT / "checkpoints" / "yolo-focus-tiny.pt", weights_only=False)  # the repository's own file
    model = ckpt["model"].float()
    model.args = IterableSimpleNamespace(imgsz=64, epochs=2, save_dir=pathlib.PosixPath("runs", "detect", "train"))
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    ckpt.update(model=model, ema=copy.deepcopy(model).half(), optimizer=optimizer.state_dict(), epoch=1)
    ckpt["train_args"] = {"imgsz": 64, "epochs": 2}
    path = tmp / "last.pt"
    torch.save(ckpt, path)
    return path


def _fixture(name: str):
    return lambda tmp: FIXTURES / name


CASES = {
    "state_dict": Case(lambda tmp: _training_checkpoint(tmp, legacy=False), changes=("backbone.stem",), copies=3),
    "state_dict-legacy": Case(lambda tmp: _training_checkpoint(tmp, legacy=True), changes=("backbone.stem",), copies=3),
    "mmengine": Case(lambda tmp: MMENGINE, changes=("backbone.stem",), copies=3),
    "yolox": Case(
        _fixture("focus-family/yolox/yolox_nano_w009375_nc2_ckpt.pth"), changes=("backbone.backbone.stem",), copies=2
    ),
    "darknet": Case(_fixture("focus-family/yolor_w6-div32_last.pt"), changes=("module_list.1.Conv2d",), copies=2),
    "yolov7": Case(
        _fixture("focus-family/yolov7-e6-w003125_last.pt"),
        changes=("/_modules/0", "/_modules/1/", "yaml/backbone/0", "yaml/backbone/1"),
        added=frozenset({"torch.nn.modules.linear.Identity"}),
        removed=frozenset({"models.common.ReOrg"}),
        copies=3,
    ),
    "yolov5-focus-to-conv": Case(
        _fixture("yolov5-legacy/yolov5s-v5.0-d0.33-w0.125-nc3-seed102-fp32.pt"),
        {"layout": "yolov5", "to": "conv"},
        changes=("/_modules/0", "yaml/backbone/0"),
        removed=frozenset({"models.common.Focus"}),
        copies=2,
    ),
    "yolov5-seg-conv-to-focus": Case(
        _fixture("yolov5-family/yolov5s-seg-v7.0-d0.33-w0.0625-nc3-fp16.pt"),
        {"layout": "yolov5", "to": "focus"},
        changes=("/_modules/0", "yaml/backbone/0"),
        added=frozenset({"models.common.Focus"}),
    ),
    "yolov5-cls-conv-to-focus": Case(
        _fixture("yolov5-family/yolov5s-cls-v7.0-d0.33-w0.0625-nc3-fp16.pt"),
        {"layout": "yolov5", "to": "focus"},
        changes=("/_modules/0", "yaml/backbone/0"),
        added=frozenset({"models.common.Focus"}),
    ),
    "yolov5-face-default": Case(  # a fork Ultralytics cannot hold: written in the YOLOv5 layout by default
        _fixture("yolov5-forks/yolov5s-face-34d991d-d0.33-w0.0625-nc1-fp16.pt"),
        changes=("/_modules/0", "yaml/backbone/0"),
        removed=frozenset({"models.common.Focus"}),
    ),
    "ultralytics": Case(
        _ultralytics_last,
        changes=("/_modules/0", "yaml/backbone/0"),
        removed=frozenset({"ultralytics.nn.modules.conv.Focus"}),
        copies=3,
    ),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (input, output, report), each case converted once."""
    done: dict[str, tuple[Path, Path, dict]] = {}

    def get(name: str) -> tuple[Path, Path, dict]:
        if name not in done:
            tmp = tmp_path_factory.mktemp(name)
            case = CASES[name]
            src = case.make(tmp)
            dst = tmp / f"converted{src.suffix}"
            report = convert_file(src, dst, verify=True, **case.options)
            done[name] = (src, dst, report.to_dict())
        return done[name]

    return get


def _changed(path: str, case: Case) -> bool:
    return any(fragment in path for fragment in case.changes)


def stem_shapes(before: dict, after: dict, case: Case) -> tuple[torch.Size, torch.Size]:
    """The stem weight's shape before and after: the one 4-D shape under the stem's paths that changed."""
    old = {t.shape for p, t in before.items() if _changed(p, case) and t.ndim == 4}
    new = {t.shape for p, t in after.items() if _changed(p, case) and t.ndim == 4}
    assert len(old - new) == 1 and len(new - old) == 1, (old, new)
    return next(iter(old - new)), next(iter(new - old))


@pytest.mark.parametrize("name", CASES)
def test_container_kept(name, converted):
    src, dst, _ = converted(name)
    assert container(dst) == container(src)


@pytest.mark.parametrize("name", CASES)
def test_pickle_globals_kept(name, converted):
    src, dst, _ = converted(name)
    case = CASES[name]
    before, after = pickle_globals(src), pickle_globals(dst)
    assert after - before <= case.added, f"new globals: {sorted(after - before - case.added)}"
    assert before - after <= case.removed, f"globals lost: {sorted(before - after - case.removed)}"
    if container(src) == "zip":  # torch's own scan reads zip files only
        unsafe = [set(map(str, torch.serialization.get_unsafe_globals_in_checkpoint(p))) for p in (src, dst)]
        assert unsafe[1] - unsafe[0] <= case.added and unsafe[0] - unsafe[1] <= case.removed


@pytest.mark.parametrize("name", CASES)
def test_non_tensor_types_kept(name, converted):
    src, dst, _ = converted(name)
    case = CASES[name]
    before, _ = walk(read_checkpoint(src).content)
    after, _ = walk(read_checkpoint(dst).content)
    differ = {p: (before.get(p), after.get(p)) for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    unexpected = {p: d for p, d in differ.items() if not _changed(p, case)}
    assert not unexpected, f"{len(unexpected)} values changed type, e.g. {sorted(unexpected.items())[:3]}"


@pytest.mark.parametrize("name", CASES)
def test_non_stem_tensors_identical(name, converted):
    src, dst, _ = converted(name)
    case = CASES[name]
    _, before = walk(read_checkpoint(src).content)
    _, after = walk(read_checkpoint(dst).content)
    old_shape, _ = stem_shapes(before, after, case)
    # the stem's tensors, and the optimizer state shaped like its weight (remapped with it), may change
    kept = [p for p in before if not _changed(p, case) and before[p].shape != old_shape]
    assert kept and all(p in after for p in kept), sorted(set(kept) - set(after))[:3]
    for path in kept:
        a, b = before[path], after[path]
        assert (a.dtype, a.shape, raw_bytes(a)) == (b.dtype, b.shape, raw_bytes(b)), path


@pytest.mark.parametrize("name", CASES)
def test_every_copy_of_the_stem_converted(name, converted):
    src, dst, _ = converted(name)
    case = CASES[name]
    _, before = walk(read_checkpoint(src).content)
    _, after = walk(read_checkpoint(dst).content)
    old_shape, new_shape = stem_shapes(before, after, case)
    assert not [p for p, t in after.items() if t.shape == old_shape], "a copy of the stem left in its old layout"
    assert len([p for p, t in after.items() if t.shape == new_shape]) == case.copies


# ------------------------------------------------------------------------------------------------ loaded by its users


def test_yolov5_segmentation_reference_runs_in_the_yolov5_code(converted):
    """v7.0's ``Segment.detect`` (``getattr(models.yolo.Detect, 'forward')``) is written back as that reference:
    (a test-only copy of) YOLOv5's code runs the converted file (it failed with "'str' object is not callable"),
    and its outputs equal the original's in float64."""
    import sys

    src, dst, _ = converted("yolov5-seg-conv-to-focus")
    code = str(ROOT / "tests" / "family_models" / "yolov5")
    sys.path.insert(0, code)
    try:
        from models.yolo import Detect, attempt_load

        original, focus = attempt_load(src).double(), attempt_load(dst).double()
        assert focus.model[-1].detect is Detect.forward and type(focus.model[0]).__name__ == "Focus"
        x = torch.rand(1, 3, 64, 96, dtype=torch.float64)
        with torch.no_grad():
            (boxes_a, proto_a, _), (boxes_b, proto_b, _) = original(x), focus(x)
    finally:
        sys.path.remove(code)
        for module in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[module]
    assert float((boxes_a - boxes_b).abs().max() / boxes_a.abs().max()) <= 1e-12
    assert float((proto_a - proto_b).abs().max() / proto_a.abs().max()) <= 1e-12


# ------------------------------------------------------------------------------------------------ the pickler itself


class _Reduce:
    """Pickles as ``func(*args)``: ``getattr(Detect, 'forward')`` as YOLOv5 v7.0's ``Segment.detect`` pickles."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("protocol", [2, 4])
def test_every_stand_in_written_back_byte_for_byte(tmp_path, monkeypatch, protocol):
    """A pickle of every data-only kind the loader stands in for (namespaces of three classes, built by NEWOBJ and by
    REDUCE, paths, a function reference through getattr, an enum member, records of a class with __dict__ and
    slots, a Counter, numpy values) is written back as the same bytes."""
    import collections
    import sys
    import types

    from torchvision.transforms import InterpolationMode

    from focus_surgery.checkpoint_io import torch_save

    yolo = types.ModuleType("models.yolo")

    class Detect:  # stands for models.yolo.Detect; pickled by reference, never imported when loading
        def forward(self):
            pass

    class Slotted:  # state pickled as (dict, slots)
        __slots__ = ("a", "__dict__")

    Detect.__module__, Detect.__qualname__, yolo.Detect = "models.yolo", "Detect", Detect
    Slotted.__module__, Slotted.__qualname__, yolo.Slotted = "models.yolo", "Slotted", Slotted
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    monkeypatch.setitem(sys.modules, "models.yolo", yolo)
    slotted, record = Slotted(), Detect()
    slotted.a, slotted.extra, record.stride = 1, [2], torch.tensor([8.0, 16.0])
    content = {
        "args": argparse.Namespace(model="m", output=pathlib.PosixPath("runs", "exp"), empty=argparse.Namespace()),
        "simple": types.SimpleNamespace(epochs=3, save_dir=pathlib.PurePosixPath("runs", "val")),
        "detect": _Reduce(getattr, (Detect, "forward")),
        "cls": Detect,
        "mode": InterpolationMode.BILINEAR,
        "records": [record, slotted, record],
        "milestones": collections.Counter({30: 1, 60: 2}),
        "metrics": (np.float64(0.5), np.arange(3, dtype=np.int32), np.dtype("float16")),
        "bytes": b"\x00\x01",
    }
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(content, src, pickle_protocol=protocol)
    monkeypatch.delitem(sys.modules, "models.yolo")  # written back without the class being importable
    loaded = read_checkpoint(src)
    torch_save(loaded.content, str(dst), like=loaded)
    assert content_pickle(dst) == content_pickle(src)


def test_a_copy_of_the_stem_elsewhere_is_refused_by_name(tmp_path):
    """A third copy of the weights under a key no source knows (a teacher, a nested EMA) is not left in the old
    layout without a word: the conversion refuses and names it; nothing is written."""
    from focus_surgery import errors

    sd = TinyFocusNet().state_dict()
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"state_dict": sd, "extra": {"teacher": {"weights": dict(sd)}}}, src)
    with pytest.raises(errors.ConversionError, match=r"'extra\.teacher\.weights\.backbone\.stem\.conv\.conv\.weight'"):
        convert_file(src, dst)
    assert not dst.exists()


def test_optimizer_state_that_cannot_be_told_apart_is_refused(tmp_path):
    """Two parameters whose state has the stem weight's shape: which is the stem's cannot be known, so the
    conversion refuses (it kept both as they were before, a half-converted file)."""
    from focus_surgery import errors

    sd = TinyFocusNet().state_dict()
    state = {i: {"momentum_buffer": torch.zeros(8, 12, 3, 3)} for i in (0, 5)}
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"state_dict": sd, "optimizer": {"state": state, "param_groups": [{"params": list(range(9))}]}}, src)
    with pytest.raises(errors.ConversionError, match="optimizer state of parameters 0, 5"):
        convert_file(src, dst)
    assert not dst.exists()


def test_timm_loaders_load_the_converted_training_checkpoint(tmp_path):
    """A timm ``train.py`` checkpoint (``args`` an ``argparse.Namespace``): timm's own ``load_checkpoint`` (model and
    EMA) and ``resume_checkpoint`` - ``weights_only=True`` with timm's allow-list, ``argparse.Namespace`` only - load
    the converted file (a dict pickled through ``builtins.dict`` was refused), strictly into the conv-stem network,
    which computes what the original computed (float64); ``args`` is still a Namespace."""
    from timm.models import load_checkpoint, resume_checkpoint

    net = TinyFocusNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.rand(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    ema = copy.deepcopy(net)
    args = argparse.Namespace(model="tiny_focus", lr=0.1, epochs=3, model_ema=True)
    src, dst = tmp_path / "last.pth", tmp_path / "converted.pth"
    torch.save(
        {
            "epoch": 2,
            "arch": "tiny_focus",
            "state_dict": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "version": 2,
            "args": args,
            "state_dict_ema": ema.state_dict(),
            "metric": 0.5,
        },
        src,
    )
    convert_file(src, dst, verify=True)
    x = torch.rand(2, 3, 32, 48, dtype=torch.float64)
    for use_ema, reference in ((False, net), (True, ema)):
        converted_net = TinyFocusNet(converted=True)
        load_checkpoint(converted_net, str(dst), use_ema=use_ema, strict=True)
        with torch.no_grad():
            expected, got = reference.double().eval()(x), converted_net.double().eval()(x)
        assert float((expected - got).abs().max()) <= 1e-12 * float(expected.abs().max())
    resumed = TinyFocusNet(converted=True)
    resumed_optimizer = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    assert resume_checkpoint(resumed, str(dst), resumed_optimizer, log_info=False) == 3
    momentum = resumed_optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert momentum.shape == (8, 3, 6, 6)
    with torch.serialization.safe_globals([argparse.Namespace]):
        assert type(torch.load(dst, weights_only=True)["args"]) is argparse.Namespace


def test_numpy_globals_keep_the_input_spelling(tmp_path):
    """A file written under numpy 1 names ``numpy.core.multiarray``; numpy 2 (installed here) pickles
    ``numpy._core.multiarray``: the output keeps the input's spelling, so no new global appears."""
    import pickle

    from focus_surgery.checkpoint_io import torch_save
    from tests.hostile_files import torch_zip

    pkl = pickle.dumps({"metric": np.float64(0.5), "history": np.arange(3, dtype=np.float32)}, protocol=2)
    assert b"numpy._core.multiarray" in pkl
    src, dst = tmp_path / "numpy1.pt", tmp_path / "out.pt"
    torch_zip(src, pkl.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = read_checkpoint(src)
    torch_save(loaded.content, str(dst), like=loaded)
    assert pickle_globals(dst) == pickle_globals(src)
    assert {"numpy.core.multiarray.scalar", "numpy.core.multiarray._reconstruct"} <= pickle_globals(dst)
