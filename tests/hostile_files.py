"""Hostile and odd checkpoint files for the loader tests (issue 9): one builder per attack class.

Every builder writes its file itself: pickles opcode by opcode (``PickleWriter``), torch zip archives with
``zipfile``, the pre-1.6 torch container and the torch < 0.4 tar by hand. Payloads that must sit inside a real
checkpoint are spliced into the committed fixtures (a YOLOv5 v4.0 file, the plain state dict of ``checkpoints/``),
so the rest of the file is exactly what torch and YOLOv5 write. Each builder returns a ``Hostile``: the file, the
command that exposes the attack, and what the attack did on the loader it was written against.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
YOLOV5_FILE = ROOT / "tests" / "fixtures" / "yolov5-legacy" / "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt"
STATE_DICT_FILE = ROOT / "checkpoints" / "focus-backbone.pt"  # plain state dict, Focus stem at model.0
ULTRALYTICS_FILE = ROOT / "checkpoints" / "yolo-focus-tiny.pt"
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
ESCAPE_TEXT = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b1m"  # set the title, clear the screen, red, 8-bit CSI
DAG_LEVELS = 40  # 2**40 paths through a few hundred bytes


@dataclass
class Hostile:
    """One hostile file and how to run it.

    Attributes:
        path (Path): The file.
        command (tuple[str, ...]): CLI arguments, ``{src}`` / ``{dst}`` standing for the file and the output path.
        effect (str): What it did to the loader it was written against (for the report; not asserted).
        message (str): A word the one-line error must contain (lower case), "" if any message will do.
    """

    path: Path
    command: tuple[str, ...] = ("inspect", "{src}")
    effect: str = ""
    message: str = ""
    wrong: str = ""  # a word the message must not contain (lower case): what the old, untrue message said
    valid: bool = False  # a file that must load (exit 0)


# ------------------------------------------------------------------------------------------------ pickle opcodes


class PickleWriter:
    """Pickle opcodes written one by one (protocol 2 header; protocol 4 opcodes where an attack needs them)."""

    def __init__(self, protocol: int = 2):
        self.out = bytearray(pickle.PROTO + bytes([protocol]))

    def raw(self, data: bytes) -> PickleWriter:
        self.out += data
        return self

    def glob(self, module: str, name: str) -> PickleWriter:
        return self.raw(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def str(self, text: str) -> PickleWriter:
        data = text.encode("utf-8", "surrogatepass")
        return self.raw(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def int(self, n: int) -> PickleWriter:
        if -(2**31) <= n < 2**31:
            return self.raw(pickle.BININT + struct.pack("<i", n))
        data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
        return self.raw(pickle.LONG1 + bytes([len(data)]) + data)

    def float(self, x: float) -> PickleWriter:
        return self.raw(pickle.BINFLOAT + struct.pack(">d", x))

    def bool(self, flag: bool) -> PickleWriter:
        return self.raw(pickle.NEWTRUE if flag else pickle.NEWFALSE)

    def none(self) -> PickleWriter:
        return self.raw(pickle.NONE)

    def mark(self) -> PickleWriter:
        return self.raw(pickle.MARK)

    def tuple(self) -> PickleWriter:  # MARK ... TUPLE
        return self.raw(pickle.TUPLE)

    def put(self, i: int) -> PickleWriter:
        return self.raw(pickle.LONG_BINPUT + struct.pack("<I", i))

    def get(self, i: int) -> PickleWriter:
        return self.raw(pickle.LONG_BINGET + struct.pack("<I", i))

    def value(self, v) -> PickleWriter:
        """A plain Python value: None, bool, int, float, str, list, tuple, dict (recursively)."""
        if v is None:
            return self.none()
        if isinstance(v, bool):
            return self.bool(v)
        if isinstance(v, int):
            return self.int(v)
        if isinstance(v, float):
            return self.float(v)
        if isinstance(v, str):
            return self.str(v)
        if isinstance(v, tuple):
            self.mark()
            for item in v:
                self.value(item)
            return self.tuple()
        if isinstance(v, list):
            self.raw(pickle.EMPTY_LIST)
            if v:
                self.mark()
                for item in v:
                    self.value(item)
                self.raw(pickle.APPENDS)
            return self
        if isinstance(v, dict):
            return self.dict(v)
        raise TypeError(type(v))

    def dict(self, items: dict, ordered: bool = False) -> PickleWriter:
        """A dict (``OrderedDict`` if ``ordered``) of keys to plain values or to callables writing the value."""
        if ordered:
            self.glob("collections", "OrderedDict").raw(pickle.EMPTY_TUPLE + pickle.REDUCE)
        else:
            self.raw(pickle.EMPTY_DICT)
        if items:
            self.mark()
            for key, item in items.items():
                self.value(key)
                item(self) if callable(item) else self.value(item)
            self.raw(pickle.SETITEMS)
        return self

    def record(self, module: str, name: str, state: dict) -> PickleWriter:
        """An object of class ``module.name`` made with ``__new__`` (NEWOBJ) and given ``state`` (BUILD)."""
        self.glob(module, name).raw(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
        return self.dict(state).raw(pickle.BUILD)

    def module(
        self, module: str, name: str, attrs: dict, children: dict | None = None, parameters: dict | None = None
    ) -> PickleWriter:
        """An ``nn.Module``-shaped record: the private dicts torch pickles plus ``attrs``."""
        state = {
            "training": False,
            "_parameters": lambda p: p.dict(parameters or {}, ordered=True),
            "_buffers": lambda p: p.dict({}, ordered=True),
            "_non_persistent_buffers_set": lambda p: (
                p.glob("builtins", "set").raw(pickle.EMPTY_LIST).raw(pickle.TUPLE1 + pickle.REDUCE)
            ),
            "_modules": lambda p: p.dict(children or {}, ordered=True),
            **attrs,
        }
        return self.record(module, name, state)

    def tensor(
        self, key: str, numel: int, size: tuple, stride: tuple, offset: int = 0, storage: str = "FloatStorage"
    ) -> PickleWriter:
        """``torch._utils._rebuild_tensor_v2`` over persistent storage ``key`` of ``numel`` elements."""
        self.glob("torch._utils", "_rebuild_tensor_v2").mark()
        self.mark().str("storage").glob("torch", storage).str(key).str("cpu").int(numel).tuple()
        self.raw(pickle.BINPERSID)
        self.int(offset).value(tuple(size)).value(tuple(stride)).bool(False)
        self.glob("collections", "OrderedDict").raw(pickle.EMPTY_TUPLE + pickle.REDUCE)
        return self.tuple().raw(pickle.REDUCE)

    def stop(self) -> bytes:
        return bytes(self.out + pickle.STOP)


def cdata_tensor(p: PickleWriter, address: int = 0x41414141) -> PickleWriter:
    """``torch.Tensor.__new__(torch.Tensor, cdata=address)``: torch treats ``address`` as a TensorImpl pointer."""
    p.glob("torch", "Tensor").raw(pickle.EMPTY_TUPLE).dict({"cdata": address})
    return p.raw(pickle.NEWOBJ_EX)


def uninitialised_tensor(p: PickleWriter, numel: int = 4096) -> PickleWriter:
    """``torch.Tensor(numel)`` (REDUCE): an uninitialised tensor, i.e. whatever was in the allocator's memory."""
    return p.glob("torch", "Tensor").mark().int(numel).tuple().raw(pickle.REDUCE)


def tuple_dag(p: PickleWriter, levels: int = DAG_LEVELS, as_list: bool = False, memo: int = 900_000) -> PickleWriter:
    """``x[i + 1] = (x[i], x[i])``: a few bytes per level, 2**levels paths for a walk that does not memoise."""
    p.raw(pickle.EMPTY_LIST if as_list else pickle.EMPTY_TUPLE).put(memo)
    for i in range(levels):
        if as_list:
            p.raw(pickle.POP).raw(pickle.EMPTY_LIST).mark().get(memo + i).get(memo + i).raw(pickle.APPENDS)
        else:
            p.raw(pickle.POP).get(memo + i).get(memo + i).raw(pickle.TUPLE2)
        p.put(memo + i + 1)
    return p


def module_dag(p: PickleWriter, levels: int = DAG_LEVELS, memo: int = 800_000) -> PickleWriter:
    """``torch.nn.Sequential`` records, each holding the previous one twice: 2**levels module paths."""
    p.module("torch.nn.modules.activation", "SiLU", {"inplace": False}).put(memo)
    for i in range(levels):
        prev = memo + i
        p.raw(pickle.POP).module(
            "torch.nn.modules.container",
            "Sequential",
            {},
            {"0": lambda q, prev=prev: q.get(prev), "1": lambda q, prev=prev: q.get(prev)},
        )
        p.put(memo + i + 1)
    return p


# ------------------------------------------------------------------------------------------------ containers


def zip_entries(path: Path) -> dict[str, bytes]:
    """Every record of a zip archive, in order."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_zip(
    dst: Path, entries: dict[str, bytes] | list[tuple[str, bytes]], compress: dict[str, int] | None = None
) -> Path:
    """A zip archive of ``entries`` (stored unless ``compress`` names a record); duplicates allowed in a list."""
    items = entries.items() if isinstance(entries, dict) else entries
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in items:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = (compress or {}).get(name, zipfile.ZIP_STORED)
            archive.writestr(info, data)
    return dst


def torch_zip(
    dst: Path,
    pkl: bytes,
    storages: dict[str, bytes] | None = None,
    prefix: str = "archive",
    byteorder: bytes = b"little",
) -> Path:
    """A torch >= 1.6 archive: ``<prefix>/data.pkl``, ``byteorder``, ``data/<key>`` records, ``version``."""
    entries = {f"{prefix}/data.pkl": pkl, f"{prefix}/byteorder": byteorder}
    entries.update({f"{prefix}/data/{k}": v for k, v in (storages or {}).items()})
    entries[f"{prefix}/version"] = b"3\n"
    return write_zip(dst, entries)


def data_pkl_name(entries: dict[str, bytes]) -> str:
    return next(n for n in entries if n.endswith("/data.pkl"))


def splice_item(src: Path, dst: Path, key: str, value: Callable[[PickleWriter], PickleWriter]) -> Path:
    """Copy the torch zip ``src`` with ``key: value`` added to its top-level dict (opcodes inserted before STOP)."""
    entries = zip_entries(src)
    name = data_pkl_name(entries)
    pkl = entries[name]
    assert pkl.endswith(pickle.STOP), "a torch data.pkl ends with STOP"
    p = PickleWriter()
    p.out = bytearray()
    p.str(key)
    value(p)
    p.raw(pickle.SETITEM)
    entries[name] = pkl[:-1] + bytes(p.out) + pickle.STOP
    return write_zip(dst, entries)


def edit_pickle(src: Path, dst: Path, edits: list[tuple[bytes, bytes]]) -> Path:
    """Copy the torch zip ``src`` with regex substitutions applied to its data.pkl; each must match."""
    entries = zip_entries(src)
    name = data_pkl_name(entries)
    pkl = entries[name]
    for pattern, replacement in edits:
        pkl, count = re.subn(pattern, replacement, pkl, flags=re.DOTALL)
        assert count, f"pattern {pattern!r} not in {src.name}"
    entries[name] = pkl
    return write_zip(dst, entries)


_MEMO_PUT = rb"(?:q.|r....)"  # BINPUT / LONG_BINPUT after a key in torch's protocol-2 pickles


def _key(name: str) -> bytes:
    return re.escape(pickle.BINUNICODE + struct.pack("<I", len(name)) + name.encode()) + _MEMO_PUT


def set_float(key: str, value: float) -> tuple[bytes, bytes]:
    """Edit: every ``key: <float>`` item gets ``value``."""
    return (b"(" + _key(key) + b")G.{8}", lambda m: m.group(1) + pickle.BINFLOAT + struct.pack(">d", value))


def set_small_int(key: str, value: int) -> tuple[bytes, bytes]:
    """Edit: every ``key: <BININT1>`` item gets ``value`` (BININT)."""
    return (b"(" + _key(key) + b")K.", lambda m: m.group(1) + pickle.BININT + struct.pack("<i", value))


def state_dict_pickle(tensors: dict[str, torch.Tensor], extra: dict[str, Callable] | None = None) -> tuple[bytes, dict]:
    """A hand-written pickle of an ``OrderedDict`` of float tensors (one storage per tensor) and its storages."""
    p = PickleWriter()
    storages: dict[str, bytes] = {}
    items: dict[str, Callable] = {}
    for i, (name, t) in enumerate(tensors.items()):
        t = t.detach().float().contiguous()
        storages[str(i)] = t.numpy().tobytes()
        items[name] = lambda q, i=i, t=t: q.tensor(str(i), t.numel(), tuple(t.shape), t.stride())
    items.update(extra or {})
    return p.dict(items, ordered=True).stop(), storages


def stem_tensors() -> dict[str, torch.Tensor]:
    """The float tensors of the committed state-dict checkpoint (a Focus stem and two more layers)."""
    state = torch.load(STATE_DICT_FILE, weights_only=True)
    return {k: v for k, v in state.items() if v.is_floating_point()}


def legacy_file(
    dst: Path,
    pkl_object: bytes,
    storages: list[tuple[str, bytes]],
    keys: list[str] | None = None,
    little_endian: bool = True,
    counts: dict[str, int] | None = None,
) -> Path:
    """The pre-1.6 torch container: magic, protocol and sys-info pickles, the object, its storage keys, then per key
    an 8-byte element count and the raw bytes (float32 storages)."""
    out = bytearray()
    out += PickleWriter().int(LEGACY_MAGIC_NUMBER).stop()
    out += PickleWriter().int(1001).stop()
    out += (
        PickleWriter()
        .dict(
            {"protocol_version": 1001, "little_endian": little_endian, "type_sizes": {"short": 2, "int": 4, "long": 4}}
        )
        .stop()
    )
    out += pkl_object
    keys = [k for k, _ in storages] if keys is None else keys
    out += PickleWriter().value(keys).stop()
    for key, data in storages:
        if key in keys:
            out += struct.pack("<q", (counts or {}).get(key, len(data) // 4)) + data
    dst.write_bytes(bytes(out))
    return dst


# ------------------------------------------------------------------------------------------------ the attacks


def cdata_bare(tmp: Path) -> Hostile:
    path = tmp / "cdata-bare.pt"
    path.write_bytes(cdata_tensor(PickleWriter(4)).stop())
    return Hostile(path, effect="SIGSEGV: torch.Tensor resolvable, NEWOBJ_EX passes cdata=<int> to its constructor")


def cdata_in_yolov5(tmp: Path) -> Hostile:
    path = splice_item(YOLOV5_FILE, tmp / "cdata-yolov5.pt", "evil", cdata_tensor)
    return Hostile(path, effect="SIGSEGV inside a real YOLOv5 checkpoint")


def cdata_in_zip(tmp: Path) -> Hostile:
    pkl, storages = state_dict_pickle(stem_tensors(), {"evil": cdata_tensor})
    path = torch_zip(tmp / "cdata-zip.pt", pkl, storages)
    return Hostile(path, ("convert", "{src}", "{dst}"), effect="SIGSEGV inside a plain state-dict zip")


def dag_plain(tmp: Path) -> Hostile:
    pkl, storages = state_dict_pickle(stem_tensors(), {"meta": tuple_dag})
    path = torch_zip(tmp / "dag-tuples.pt", pkl, storages)
    # shared data is data: read and passed through in linear time (it used to hang: walked path by path, 2**40)
    return Hostile(
        path, ("convert", "{src}", "{dst}"), effect="hang: tuple DAG walked path by path (2**40)", valid=True
    )


def dag_yolov5(tmp: Path) -> Hostile:
    path = splice_item(
        YOLOV5_FILE, tmp / "dag-lists-yolov5.pt", "training_results", lambda p: tuple_dag(p, as_list=True)
    )
    return Hostile(path, effect="hang: list DAG in YOLOv5 metadata walked path by path (2**40)")


def dag_modules(tmp: Path) -> Hostile:
    p = PickleWriter()
    p.dict({"model": module_dag, "epoch": -1})
    path = torch_zip(tmp / "dag-modules.pt", p.stop())
    return Hostile(
        path,
        ("convert", "{src}", "{dst}"),
        effect="bounded today (torch's named_modules is memoised); a walk of _modules must stay so",
    )


def dag_modules_yolov5(tmp: Path) -> Hostile:
    """A YOLOv5 ``Model`` record (as ``ema``) whose first layer is a 2**40-path module DAG."""

    def model(p: PickleWriter) -> PickleWriter:
        yaml = {
            "nc": 3,
            "depth_multiple": 0.33,
            "width_multiple": 0.125,
            "anchors": 3,
            "backbone": [[-1, 1, "Conv", [16, 3, 2]]],
            "head": [[-1, 1, "Detect", ["nc", "anchors"]]],
        }
        layers = lambda q: q.module("torch.nn.modules.container", "Sequential", {}, {"0": module_dag})  # noqa: E731
        return p.module("models.yolo", "Model", {"yaml": yaml, "names": ["a", "b", "c"]}, {"model": layers})

    path = splice_item(YOLOV5_FILE, tmp / "dag-modules-yolov5.pt", "ema", model)
    return Hostile(path, effect="hang: Record.named_modules / state_dict through shared layers")


def lstm_layers(tmp: Path) -> Hostile:
    lstm = {
        "mode": "LSTM",
        "input_size": 4,
        "hidden_size": 4,
        "num_layers": 10**12,
        "bias": True,
        "batch_first": False,
        "dropout": 0.0,
        "bidirectional": False,
        "proj_size": 0,
        "_flat_weights_names": [],
        "_all_weights": [[0]],
    }
    p = PickleWriter()
    p.dict({"model": lambda q: q.module("torch.nn.modules.rnn", "LSTM", lstm), "epoch": 0})
    path = torch_zip(tmp / "lstm-layers.pt", p.stop())
    return Hostile(path, effect="hang: RNNBase.__setstate__ loops num_layers=10**12 times")


def yaml_depth(tmp: Path) -> Hostile:
    path = edit_pickle(YOLOV5_FILE, tmp / "yaml-depth.pt", [set_float("depth_multiple", 1e7)])
    return Hostile(path, ("convert", "{src}", "{dst}"), effect="hang: Ultralytics' parser builds millions of blocks")


def yaml_width(tmp: Path) -> Hostile:
    path = edit_pickle(YOLOV5_FILE, tmp / "yaml-width.pt", [set_float("width_multiple", 64.0)])
    return Hostile(path, ("convert", "{src}", "{dst}"), effect="memory: layers 512x wider than the weights")


def yaml_nc(tmp: Path) -> Hostile:
    """nc = 1e9 everywhere and no ``names``: ``inspect`` makes a billion class names, ``convert`` a 3e9-channel head."""
    names = re.escape(pickle.BINUNICODE + struct.pack("<I", 5) + b"names")
    model_nc = rb"(j....)K\x03(X\x03\x00\x00\x00hyp)"  # the Model's own nc: its key is a memo get of "nc"
    edits = [
        set_small_int("nc", 10**9),
        (names, pickle.BINUNICODE + struct.pack("<I", 5) + b"namez"),
        (model_nc, lambda m: m.group(1) + pickle.BININT + struct.pack("<i", 10**9) + m.group(2)),
    ]
    path = edit_pickle(YOLOV5_FILE, tmp / "yaml-nc.pt", edits)
    return Hostile(path, effect="memory/time: names = range(int(nc)) with nc = 1e9")


def conv_stride(tmp: Path) -> Hostile:
    """A strided stem conv record with stride 8192 and a 1x1 kernel (96 weights): ``inspect`` plans its
    space-to-depth form, an (8, 3*8192**2, 1, 1) weight (6.4 GB in float32)."""
    weight = torch.randn(8, 3, 1, 1)
    conv = {
        "in_channels": 3,
        "out_channels": 8,
        "kernel_size": (1, 1),
        "stride": (8192, 8192),
        "padding": (0, 0),
        "dilation": (1, 1),
        "transposed": False,
        "output_padding": (0, 0),
        "groups": 1,
        "padding_mode": "zeros",
        "_reversed_padding_repeated_twice": (0, 0, 0, 0),
    }
    params = {"weight": lambda q: q.tensor("0", 24, (8, 3, 1, 1), (3, 1, 1, 1)), "bias": None}
    stem = lambda q: q.module("torch.nn.modules.conv", "Conv2d", conv, parameters=params)  # noqa: E731
    p = PickleWriter()
    p.dict({"model": lambda q: q.module("torch.nn.modules.container", "Sequential", {}, {"0": stem})})
    path = torch_zip(tmp / "conv-stride.pt", p.stop(), {"0": weight.numpy().tobytes()})
    return Hostile(path, effect="memory: inspect's plan builds the (O, C*s*s, 1, 1) space-to-depth weight")


def upsample_scale(tmp: Path) -> Hostile:
    path = edit_pickle(YOLOV5_FILE, tmp / "upsample-scale.pt", [set_float("scale_factor", 4096.0)])
    return Hostile(path, ("verify", "{src}", "{src}"), effect="memory: nn.Upsample(scale_factor=4096) run on verify")


def _deflate_zeros(nbytes: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``nbytes`` zero bytes and their CRC-32, built from one full-flushed 1 MiB block."""
    chunk = 1 << 20
    assert nbytes % chunk == 0
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    unit = block.compress(bytes(chunk)) + block.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no history: repeatable
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # an empty final block
    crc = 0
    for _ in range(nbytes // chunk):
        crc = zlib.crc32(bytes(chunk), crc)
    return unit * (nbytes // chunk) + tail, crc


def _zip_with_raw_record(
    dst: Path, entries: list[tuple[str, bytes]], name: str, deflated: bytes, size: int, crc: int, method: int = 8
) -> Path:
    """A zip of stored ``entries`` plus one record ``name`` given as a ready stream compressed with ``method``
    (8: deflate, 12: bzip2, 14: LZMA), declaring ``size`` and ``crc``."""
    out, central = bytearray(), bytearray()

    def add(fname: str, method: int, payload: bytes, crc: int, size: int) -> None:
        raw = fname.encode()
        offset = len(out)
        out.extend(
            struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x5821, crc, len(payload), size, len(raw), 0)
            + raw
            + payload
        )
        central.extend(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0x5821,
                crc,
                len(payload),
                size,
                len(raw),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + raw
        )

    count = 0
    for fname, data in entries:
        add(fname, 0, data, zlib.crc32(data), len(data))
        count += 1
    add(name, method, deflated, crc, size)
    count += 1
    start = len(out)
    out.extend(central)
    out.extend(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), start, 0))
    dst.write_bytes(bytes(out))
    return dst


BOMB_BYTES = 1 << 30  # 1 GiB from about 1 MB


def zip_bomb_pickle(tmp: Path) -> Hostile:
    """data.pkl deflated from 1 GiB: a valid pickle prefix (a 1 GiB BINBYTES of zeros would follow)."""
    deflated, crc = _deflate_zeros(BOMB_BYTES)
    path = _zip_with_raw_record(
        tmp / "bomb-pickle.pt", [("archive/byteorder", b"little")], "archive/data.pkl", deflated, BOMB_BYTES, crc
    )
    return Hostile(path, effect="memory: zipfile.read(data.pkl) inflates 1 GiB before any check")


def zip_bomb_storage(tmp: Path) -> Hostile:
    """A 1 GiB storage deflated to about 1 MB, referenced by a (2**28,) float tensor."""
    numel = BOMB_BYTES // 4
    p = PickleWriter()
    pkl = p.dict({"model.0.conv.conv.weight": lambda q: q.tensor("0", numel, (numel,), (1,))}, ordered=True).stop()
    deflated, crc = _deflate_zeros(BOMB_BYTES)
    entries = [("archive/data.pkl", pkl), ("archive/byteorder", b"little"), ("archive/version", b"3\n")]
    path = _zip_with_raw_record(tmp / "bomb-storage.pt", entries, "archive/data/0", deflated, BOMB_BYTES, crc)
    return Hostile(path, effect="memory: torch's record reader inflates the 1 GiB storage")


def stride_zero(tmp: Path) -> Hostile:
    """One float, viewed as a (2**17, 2**17) tensor with strides (0, 0): 64 GiB once anything makes it dense."""
    extent = 1 << 17
    tensors = stem_tensors()
    pkl, storages = state_dict_pickle(tensors, {"huge": lambda q: q.tensor("z", 1, (extent, extent), (0, 0))})
    storages["z"] = struct.pack("<f", 1.0)
    path = torch_zip(tmp / "stride-zero.pt", pkl, storages)
    return Hostile(path, ("verify", "{src}", "{src}"), effect="memory: verify's .double() expands the view")


def stride_zero_output(tmp: Path) -> Hostile:
    """One float viewed as (2**14, 2**14) with strides (0, 0), beside a Focus stem: a .safetensors output of it
    is 1 GiB (``contiguous()`` before the write) from a 35 KB input."""
    extent = 1 << 14
    pkl, storages = state_dict_pickle(stem_tensors(), {"huge": lambda q: q.tensor("z", 1, (extent, extent), (0, 0))})
    storages["z"] = struct.pack("<f", 1.0)
    path = torch_zip(tmp / "stride-zero-output.pt", pkl, storages)
    return Hostile(path, ("convert", "{src}", "{dst}.safetensors"), effect="disk: 1 GiB output from 35 KB")


COMPRESSED_BOMB_BYTES = 1 << 26  # 64 MiB (building 1 GiB takes a minute; test_loader_bounds counts decompressors)


def _compressed_pickle_bomb(tmp: Path, method: int) -> Hostile:
    """data.pkl compressed with bzip2 (12) or LZMA (14) from 64 MiB of zeros (under 10 KB), declaring 4 KB: zipfile
    inflates such a record without an output bound, so the declared size passed every check (5.7 KB -> 2 GiB)."""
    import bz2
    import lzma

    squeeze = bz2.BZ2Compressor(1) if method == 12 else lzma.LZMACompressor(lzma.FORMAT_ALONE, preset=0)
    chunk, stream = bytes(1 << 24), bytearray()
    for _ in range(COMPRESSED_BOMB_BYTES >> 24):
        stream += squeeze.compress(chunk)
    stream += squeeze.flush()
    if method == 14:  # zip's LZMA records: 2-byte version, 2-byte properties size, properties, raw stream
        stream = b"\x09\x14\x05\x00" + stream[:5] + stream[13:]
    name = f"bomb-{'bzip2' if method == 12 else 'lzma'}.pt"
    path = _zip_with_raw_record(
        tmp / name, [("archive/byteorder", b"little")], "archive/data.pkl", bytes(stream), 4096, 0, method
    )
    return Hostile(path, effect="memory: 5.7 KB inflated to 2 GiB by zipfile (bzip2 / LZMA, no output bound)")


def zip_bzip2_record(tmp: Path) -> Hostile:
    return _compressed_pickle_bomb(tmp, 12)


def zip_lzma_record(tmp: Path) -> Hostile:
    return _compressed_pickle_bomb(tmp, 14)


def zip_overlapping_records(tmp: Path, count: int = 800, payload: int = 512) -> Hostile:
    """``count`` stored records, each one's data quoting every later record (header and data), every CRC-32 right:
    ~0.5 MB of file, and a reader that checks each record reads ``count**2 / 2`` records' worth (15 MB: > 90 s)."""
    pkl = PickleWriter().dict({"x": 1}).stop()
    write_zip(tmp / "head.zip", {"archive/data.pkl": pkl, "archive/byteorder": b"little"})
    head = (tmp / "head.zip").read_bytes()
    with zipfile.ZipFile(tmp / "head.zip") as z:
        infos = z.infolist()
    (tmp / "head.zip").unlink()
    names = [f"archive/data/{i}".encode() for i in range(count)]
    starts, position = [], infos[-1].header_offset + 30 + len(infos[-1].filename) + infos[-1].compress_size
    for name in names:
        starts.append(position)
        position += 30 + len(name) + payload
    out = bytearray(head[: starts[0]]) + bytearray(position - starts[0])
    view, central = memoryview(out), bytearray()
    for info in infos:
        central += _central_entry(info.filename.encode(), info.CRC, info.compress_size, info.header_offset)
    entries = []
    for i in range(count - 1, -1, -1):  # from the last record: each one's CRC-32 covers every later one
        data_start = starts[i] + 30 + len(names[i])
        out[data_start : data_start + payload] = bytes([i % 251]) * payload
        crc, size = zlib.crc32(view[data_start:]), position - data_start
        header = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x5821, crc, size, size, len(names[i]), 0)
        out[starts[i] : data_start] = header + names[i]
        entries.append(_central_entry(names[i], crc, size, starts[i]))
    view.release()
    central += b"".join(reversed(entries))
    total = len(infos) + count
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, total, total, len(central), position, 0)
    path = tmp / "overlapping-records.pt"
    path.write_bytes(bytes(out))
    return Hostile(path, effect="time: every record re-reads all later ones (quadratic)")


def _central_entry(name: bytes, crc: int, size: int, offset: int) -> bytes:
    """A central-directory entry of a stored record."""
    fields = (0x02014B50, 20, 20, 0, 0, 0, 0x5821, crc, size, size, len(name), 0, 0, 0, 0, 0, offset)
    return struct.pack("<IHHHHHHIIIHHHHHII", *fields) + name


def stride_zero_shared(tmp: Path, names: int = 16) -> Hostile:
    """One (2**13, 2**13) stride-0 view of one float (256 MiB logical), written under ``names`` keys by memo
    reference (the tensor is built once): a .safetensors output of 4.29 GB from 4.6 KB."""
    extent = 1 << 13

    def first(q: PickleWriter) -> PickleWriter:
        return q.tensor("z", 1, (extent, extent), (0, 0)).put(900_000)

    extra = {"huge0": first, **{f"huge{i}": (lambda q: q.get(900_000)) for i in range(1, names)}}
    pkl, storages = state_dict_pickle(stem_tensors(), extra)
    storages["z"] = struct.pack("<f", 1.0)
    path = torch_zip(tmp / "stride-zero-shared.pt", pkl, storages)
    return Hostile(path, ("convert", "{src}", "{dst}.safetensors"), effect="disk: 4.29 GB output from 4.6 KB")


def shared_layer_pickle(numel: int, parents: int) -> bytes:
    """{"model": Sequential} whose ``parents`` children are one Identity layer holding a uint8 buffer of ``numel``
    elements viewing one byte (stride 0): its state dict writes the buffer once per path."""

    def identity(q: PickleWriter) -> PickleWriter:
        state = {
            "training": False,
            "_parameters": lambda p: p.dict({}, ordered=True),
            "_buffers": lambda p: p.dict(
                {"b": lambda r: r.tensor("z", 1, (numel,), (0,), storage="ByteStorage")}, ordered=True
            ),
            "_non_persistent_buffers_set": lambda p: p.glob("builtins", "set").raw(pickle.EMPTY_LIST + b"\x85R"),
            "_modules": lambda p: p.dict({}, ordered=True),
        }
        return q.record("torch.nn.modules.linear", "Identity", state).put(7)

    children = {"0": identity, **{str(i): (lambda q: q.get(7)) for i in range(1, parents)}}
    model = {"model": lambda q: q.module("torch.nn.modules.container", "Sequential", {}, children)}
    return PickleWriter().dict(model).stop()


def stride_zero_shared_layer(tmp: Path, parents: int = 16) -> Hostile:
    """One Identity layer shared by ``parents`` slots of a Sequential, holding a 256 MiB stride-0 buffer over one
    byte: the model's state dict writes it once per path (4 GiB from a few KB)."""
    pkl = shared_layer_pickle(1 << 28, parents)
    path = torch_zip(tmp / "stride-zero-shared-layer.pt", pkl, {"z": b"\x01"})
    return Hostile(path, ("convert", "{src}", "{dst}.safetensors"), effect="disk: 4 GiB state dict from a few KB")


def _colliding_ints(count: int) -> list[int]:
    return [k * (2**61 - 1) for k in range(1, count + 1)]  # hash(k * (2**61 - 1)) == 0 for every k


def int_key_collisions(tmp: Path, count: int = 50_000) -> Hostile:
    """A dict of ``count`` int keys that all hash to 0: each insert probes every earlier key (617 s CPU)."""
    p = PickleWriter().raw(pickle.EMPTY_DICT).mark()
    for key in _colliding_ints(count):
        p.int(key).none()
    pkl = p.raw(pickle.SETITEMS).stop()
    return Hostile(torch_zip(tmp / "int-key-collisions.pt", pkl), message="integer")


def int_set_hash_bomb(tmp: Path, count: int = 50_000) -> Hostile:
    """``frozenset([...])`` of colliding int members, built through REDUCE (the container-call path)."""
    p = PickleWriter().glob("builtins", "frozenset").raw(pickle.EMPTY_LIST).mark()
    for key in _colliding_ints(count):
        p.int(key)
    pkl = p.raw(pickle.APPENDS + pickle.TUPLE1 + pickle.REDUCE).stop()
    return Hostile(torch_zip(tmp / "int-set-hash-bomb.pt", pkl), message="integer")


def big_int_tensor_size(tmp: Path, digits_bytes: int = 1 << 20) -> Hostile:
    """A tensor whose size is four integers of a million bytes each and a zero: its product took > 150 s."""
    big = pickle.LONG4 + struct.pack("<i", digits_bytes) + b"\xff" * (digits_bytes - 1) + b"\x7f"
    p = PickleWriter()

    def tensor(q: PickleWriter) -> PickleWriter:
        q.glob("torch._utils", "_rebuild_tensor_v2").mark()
        q.mark().str("storage").glob("torch", "FloatStorage").str("0").str("cpu").int(1).tuple()
        q.raw(pickle.BINPERSID).int(0)
        q.mark().raw(big * 4).int(0).tuple()
        q.mark().int(1).int(1).int(1).int(1).int(1).tuple().bool(False)
        q.glob("collections", "OrderedDict").raw(pickle.EMPTY_TUPLE + pickle.REDUCE)
        return q.tuple().raw(pickle.REDUCE)

    pkl = p.dict({"w": tensor}, ordered=True).stop()
    path = torch_zip(tmp / "big-int-size.pt", pkl, {"0": struct.pack("<f", 1.0)})
    return Hostile(path, effect="time: the product of the size's big integers (> 150 s)")


def legacy_huge_numel(tmp: Path) -> Hostile:
    p = PickleWriter()
    obj = p.dict({"w": lambda q: q.tensor("0", 10**11, (4,), (1,))}, ordered=True).stop()
    path = legacy_file(tmp / "legacy-numel.pt", obj, [("0", bytes(16))])
    return Hostile(path, effect="memory: _load_legacy allocates the declared numel (400 GB) before reading")


def legacy_unfilled(tmp: Path) -> Hostile:
    """A pre-1.6 file whose storage key list leaves out the stem weight's storage: it is never filled."""
    tensors = stem_tensors()
    obj, storages = state_dict_pickle(tensors)
    items = list(storages.items())
    path = legacy_file(tmp / "legacy-unfilled.pt", obj, items, keys=[k for k, _ in items[1:]])
    return Hostile(path, ("convert", "{src}", "{dst}"), effect="heap bytes: the stem weight is uninitialised memory")


def uninitialised(tmp: Path) -> Hostile:
    pkl, storages = state_dict_pickle(stem_tensors(), {"model.9.weight": uninitialised_tensor})
    path = torch_zip(tmp / "uninitialised.pt", pkl, storages)
    return Hostile(path, ("convert", "{src}", "{dst}"), effect="heap bytes: torch.Tensor(n) saved into the output")


def crc_flip(tmp: Path) -> Hostile:
    """The committed state dict with one bit flipped in a stored weight record (its CRC-32 no longer matches)."""
    data = bytearray(STATE_DICT_FILE.read_bytes())
    with zipfile.ZipFile(STATE_DICT_FILE) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    header = data[info.header_offset : info.header_offset + 30]
    start = info.header_offset + 30 + struct.unpack("<H", header[26:28])[0] + struct.unpack("<H", header[28:30])[0]
    data[start + info.file_size // 2] ^= 0x10
    path = tmp / "crc-flip.pt"
    path.write_bytes(bytes(data))
    return Hostile(
        path, ("convert", "{src}", "{dst}"), effect="integrity: bit flip converts and verifies", message="crc"
    )


def pwned_marker(tmp: Path) -> Path:
    """What a payload run would create: beside the hostile files' folder, inside the test's tmp_path."""
    return tmp.parent / "focus-surgery-pwned"


def os_system_yolov5(tmp: Path) -> Hostile:
    def payload(p: PickleWriter) -> PickleWriter:
        return p.glob("models.yolo.os", "system").mark().str(f"touch {pwned_marker(tmp)}").tuple().raw(pickle.REDUCE)

    path = splice_item(YOLOV5_FILE, tmp / "os-system-yolov5.pt", "wandb_id", payload)
    return Hostile(path, ("convert", "{src}", "{dst}"), effect="REDUCE of models.yolo.os.system kept as a record")


def main_import(tmp: Path) -> Hostile:
    p = PickleWriter()
    p.dict({"model": lambda q: q.glob("focus_surgery.__main__", "main").raw(pickle.EMPTY_TUPLE + pickle.NEWOBJ)})
    path = torch_zip(tmp / "main-import.pt", p.stop())
    return Hostile(path, effect="must refuse to import a __main__ module")


def main_import_plain(tmp: Path) -> Hostile:
    p = PickleWriter()
    p.dict({"x": lambda q: q.glob("__main__", "run").raw(pickle.EMPTY_TUPLE + pickle.REDUCE)})
    path = torch_zip(tmp / "main-plain.pt", p.stop())
    return Hostile(path, effect="must refuse __main__")


def big_endian(tmp: Path) -> Hostile:
    pkl, storages = state_dict_pickle(stem_tensors())
    path = torch_zip(tmp / "big-endian.pt", pkl, storages, byteorder=b"big")
    return Hostile(path, ("convert", "{src}", "{dst}"), message="endian")


def big_endian_legacy(tmp: Path) -> Hostile:
    obj, storages = state_dict_pickle(stem_tensors())
    path = legacy_file(tmp / "big-endian-legacy.pt", obj, list(storages.items()), little_endian=False)
    return Hostile(path, ("convert", "{src}", "{dst}"), message="endian")


def truncated_storage(tmp: Path) -> Hostile:
    pkl, storages = state_dict_pickle(stem_tensors())
    storages["0"] = storages["0"][: len(storages["0"]) // 2]
    path = torch_zip(tmp / "truncated-storage.pt", pkl, storages)
    return Hostile(path, ("convert", "{src}", "{dst}"))


def many_pickles(tmp: Path, size: int = 2 << 20) -> Hostile:
    """2 MB of 5-byte pickles (``K\\x01.``): the family pre-scan copied the rest of the file for each."""
    unit = PickleWriter().raw(pickle.BININT1 + b"\x01").stop()
    path = tmp / "many-pickles.pt"
    path.write_bytes(unit * (size // len(unit)))
    return Hostile(path, effect="time: quadratic pre-scan (78 s for 2 MB)")


def two_data_pkl(tmp: Path) -> Hostile:
    """Two records named ``archive/data.pkl``: an innocent state dict, then a pickle naming ``os.system``."""
    pkl, storages = state_dict_pickle(stem_tensors())
    evil = (
        PickleWriter()
        .dict({"x": lambda q: q.glob("os", "system").mark().str("true").tuple().raw(pickle.REDUCE)})
        .stop()
    )
    entries = [("archive/data.pkl", pkl), ("archive/byteorder", b"little")]
    entries += [(f"archive/data/{k}", v) for k, v in storages.items()]
    entries += [("archive/data.pkl", evil), ("archive/version", b"3\n")]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the attack
        path = write_zip(tmp / "two-data-pkl.pt", entries)
    return Hostile(path, ("convert", "{src}", "{dst}"), effect="pre-scan and loader read different data.pkl")


def two_archives(tmp: Path) -> Hostile:
    """Two torch archives in one zip (``a/data.pkl`` and ``b/data.pkl``): which one is the checkpoint?"""
    pkl, storages = state_dict_pickle(stem_tensors())
    entries = zip_entries(torch_zip(tmp / "two-archives-a.pt", pkl, storages, prefix="a"))
    entries.update(zip_entries(torch_zip(tmp / "two-archives-b.pt", pkl, storages, prefix="b")))
    (tmp / "two-archives-a.pt").unlink()
    (tmp / "two-archives-b.pt").unlink()
    path = write_zip(tmp / "two-archives.pt", entries)
    return Hostile(path, ("convert", "{src}", "{dst}"))


def urandom(tmp: Path) -> Hostile:
    return Hostile(Path("/dev/urandom"), wrong="empty", effect='called "empty file"')


def torch_tar(tmp: Path) -> Hostile:
    """The torch < 0.4 container: a tar of ``sys_info``, ``pickle``, ``tensors``, ``storages``."""
    path = tmp / "torch-0.3.pt"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in [
            ("sys_info", PickleWriter().dict({"little_endian": True}).stop()),
            ("pickle", PickleWriter().dict({}).stop()),
            ("tensors", b"\x80\x02K\x00."),
            ("storages", b"\x80\x02K\x00."),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return Hostile(path, message="tar", effect="the 'torch < 0.4 tar' message is unreachable")


def escape_names(tmp: Path) -> Hostile:
    """A valid YOLOv5 checkpoint whose class names hold terminal escape sequences (title change, clear screen)."""
    evil = ESCAPE_TEXT
    widget = re.escape(pickle.BINUNICODE + struct.pack("<I", 6) + b"widget")  # the first class name
    edits = [(widget, lambda m: bytes(PickleWriter().str(evil).out[2:]))]
    path = edit_pickle(YOLOV5_FILE, tmp / "escape-names.pt", edits)
    return Hostile(path, valid=True, effect="escape sequences reach the terminal")


def escape_epoch(tmp: Path) -> Hostile:
    """A valid YOLOv5 checkpoint whose ``epoch`` is a string of escape sequences (``inspect`` prints it as text)."""
    path = splice_item(YOLOV5_FILE, tmp / "escape-epoch.pt", "epoch", lambda p: p.str(ESCAPE_TEXT))
    return Hostile(path, valid=True, effect="printed raw by inspect")


def escape_file_name(tmp: Path) -> Hostile:
    """A valid checkpoint whose file name holds escape sequences: messages and reports print the name."""
    path = tmp / f"ckpt-{ESCAPE_TEXT}.pt"
    path.write_bytes(STATE_DICT_FILE.read_bytes())
    return Hostile(path, valid=True, effect="printed raw")


def non_utf8_name(tmp: Path) -> Hostile:
    """A valid checkpoint whose file name is not UTF-8 (bytes 0xff 0xfe): it must load."""
    path = tmp / b"focus-\xff\xfe.pt".decode("utf-8", "surrogateescape")
    path.write_bytes(STATE_DICT_FILE.read_bytes())
    return Hostile(path, valid=True, effect="refused: 'str' object has no attribute 'tell'")


def non_utf8_name_yolov5(tmp: Path) -> Hostile:
    path = tmp / b"yolov5-\xff.pt".decode("utf-8", "surrogateescape")
    path.write_bytes(YOLOV5_FILE.read_bytes())
    return Hostile(path, ("convert", "{src}", "{dst}"), valid=True)


HOSTILE: dict[str, Callable[[Path], Hostile]] = {
    f.__name__: f
    for f in (
        cdata_bare,
        cdata_in_yolov5,
        cdata_in_zip,
        dag_yolov5,
        dag_modules,
        dag_modules_yolov5,
        lstm_layers,
        yaml_depth,
        yaml_width,
        yaml_nc,
        conv_stride,
        upsample_scale,
        zip_bomb_pickle,
        zip_bomb_storage,
        stride_zero,
        stride_zero_output,
        stride_zero_shared,
        stride_zero_shared_layer,
        zip_bzip2_record,
        zip_lzma_record,
        zip_overlapping_records,
        int_key_collisions,
        int_set_hash_bomb,
        big_int_tensor_size,
        legacy_huge_numel,
        legacy_unfilled,
        uninitialised,
        crc_flip,
        os_system_yolov5,
        main_import,
        main_import_plain,
        big_endian,
        big_endian_legacy,
        truncated_storage,
        many_pickles,
        two_data_pkl,
        two_archives,
        urandom,
        torch_tar,
    )
}
VALID_ODD: dict[str, Callable[[Path], Hostile]] = {
    f.__name__: f
    for f in (escape_names, escape_epoch, escape_file_name, non_utf8_name, non_utf8_name_yolov5, dag_plain)
}
