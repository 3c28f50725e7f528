"""Every bound the safe loader enforces, at its limit from both sides (issue 23.1), for both torch containers.

Just inside a bound the file loads (or passes that check); one unit outside it is refused with one line naming the
file. Each limit's value is asserted where it is defined, so that widening a bound fails a test, and each check is
probed at its exact edge, so that loosening ``>`` to ``>=`` (or dropping a charge) fails one too. No clock: the
CPU attacks are shown bounded by counting (keys checked, decompressors made, objects transformed).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile

import pytest
import torch
from torch import nn

from focus_surgery.loader import CheckpointError, Transform, read_checkpoint
from focus_surgery.loader import containers, layers, rebuilders, unpickler
from focus_surgery.loader.errors import Refused
from focus_surgery.loader.rebuilders import Budgets
from hostile_files import PickleWriter, legacy_file, shared_layer_pickle, torch_zip, write_zip, zip_entries

pytestmark = pytest.mark.usefixtures("loader_mode")  # every test once per loader mode (conftest)

FORMATS = ("zip", "legacy")


def refused(path, *words: str) -> str:
    """The one-line error of reading ``path``; it names the file and contains ``words``."""
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and path.name in message, message
    assert all(word in message for word in words), message
    return message


def container(fmt: str, path, pkl: bytes, storages: dict[str, bytes] | None = None):
    """``pkl`` (the object pickle) in a zip archive or the pre-1.6 container; storages are raw uint8 bytes."""
    storages = storages or {}
    if fmt == "zip":
        return torch_zip(path, pkl, storages)
    return legacy_file(path, pkl, list(storages.items()), counts={k: len(v) for k, v in storages.items()})


def save(obj, path, fmt: str):
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


# ------------------------------------------------------------------------------------------------ nesting depth


def nested(depth: int) -> list:
    """A list whose innermost list lies ``depth`` levels below the outermost (depth 0)."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("fmt", FORMATS)
def test_nesting_depth_at_its_limit(fmt, tmp_path):
    """200 levels load, 201 are refused (code that recurses over content would exhaust the C stack)."""
    loaded = read_checkpoint(save(nested(200), tmp_path / "200.pt", fmt)).content
    depth = 0
    while loaded:
        loaded, depth = loaded[0], depth + 1
    assert depth == 200
    refused(save(nested(201), tmp_path / "201.pt", fmt), "nested more than 200 levels")


def test_one_transform_visits_each_shared_object_once():
    """A DAG of 2**40 paths is transformed with one call of ``replace`` per distinct object."""
    value: list = [torch.zeros(1)]
    for _ in range(40):
        value = [value, value]
    calls = []
    Transform(lambda obj: calls.append(obj) or obj)(value)
    assert len(calls) == 40 + 2  # 41 lists and the tensor


# ------------------------------------------------------------------------------------------------ object budget

BUILDERS = "EMPTY_SET EMPTY_DICT EMPTY_LIST LIST DICT TUPLE TUPLE1 TUPLE2 TUPLE3 FROZENSET".split()
BUILDERS += "NEWOBJ NEWOBJ_EX REDUCE BUILD GLOBAL STACK_GLOBAL BINPERSID PERSID".split()
SLOTS = "BINPUT LONG_BINPUT MEMOIZE PUT APPEND APPENDS SETITEM SETITEMS ADDITEMS MARK".split()


def charge(op: str) -> int:
    """What the loader documents each opcode may build (CPython 3.11, 64-bit): containers and objects 256 bytes,
    a memo entry or added item 96, anything else 32."""
    return 256 if op in BUILDERS else 96 if op in SLOTS else 32


def stream_cost(data: bytes) -> int:
    """The charge of every opcode of every pickle in ``data`` (the legacy container holds five)."""
    stream, total = io.BytesIO(data), 0
    while stream.tell() < len(data):
        ops = list(pickletools.genops(stream))
        total += sum(charge(op.name) for op, _, _ in ops)
        if ops[-1][0].name != "STOP":
            break
    return total


# one object of each kind, three times over, inside a list: ](<snippet x 3>e.
ONE_BYTE_CONTAINERS = {
    "EMPTY_LIST": b"]",
    "EMPTY_DICT": b"}",
    "EMPTY_SET": b"\x8f",
    "EMPTY_TUPLE": b")",
    "LIST": b"(l",
    "DICT": b"(d",
    "TUPLE": b"(t",
    "TUPLE1": b"N\x85",
    "TUPLE2": b"NN\x86",
    "TUPLE3": b"NNN\x87",
    "FROZENSET": b"(\x91",
    "APPEND": b"]Na",
    "APPENDS": b"](Ne",
    "SETITEM": b"}NNs",
    "SETITEMS": b"}(NNu",
    "ADDITEMS": b"\x8f(N\x90",
    "BINPUT": b"Nq\x07",
    "LONG_BINPUT": b"Nr\x07\x00\x00\x00",
    "MEMOIZE": b"N\x94",
    "PUT": b"Np7\n",
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("opcode", list(ONE_BYTE_CONTAINERS))
def test_object_budget_charges_every_opcode_at_its_limit(opcode, fmt, tmp_path, monkeypatch):
    """A budget of exactly the pickle's documented charge loads it; one byte less is refused at its last opcode."""
    pkl = b"\x80\x04](" + ONE_BYTE_CONTAINERS[opcode] * 3 + b"e."
    path = container(fmt, tmp_path / f"{opcode}.pt", pkl)
    data = zip_entries(path)["archive/data.pkl"] if fmt == "zip" else path.read_bytes()
    cost = stream_cost(data)
    monkeypatch.setattr(containers, "budgets_for", lambda size: Budgets(1 << 40, cost))
    assert len(read_checkpoint(path).content) == 3
    monkeypatch.setattr(containers, "budgets_for", lambda size: Budgets(1 << 40, cost - 1))
    refused(path, "objects built")


def test_budgets_follow_the_file_size():
    """Tensors: twice the file plus 256 MiB; objects: four times the file plus 16 MiB; the pickle: 64 MiB."""
    budgets = containers.budgets_for(1000)
    assert (budgets.tensors.limit, budgets.objects.limit) == (2000 + (256 << 20), 4000 + (16 << 20))
    assert containers.MAX_PICKLE_BYTES == 64 << 20 and unpickler.OPCODE_COST == 256


# ------------------------------------------------------------------------------------------------ tensors' size


def stride_zero_pickle(numel: int, uses: int = 1) -> bytes:
    """A dict holding one uint8 tensor of ``numel`` elements viewing one byte (stride 0), under ``uses`` keys (the
    tensor built once, then referenced from the memo)."""
    items = {"t0": lambda q: q.tensor("z", 1, (numel,), (0,), storage="ByteStorage").put(7)}
    items.update({f"t{i}": (lambda q: q.get(7)) for i in range(1, uses)})
    return PickleWriter().dict(items).stop()


@pytest.mark.parametrize("uses", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
def test_tensor_logical_size_at_its_limit(fmt, uses, tmp_path):
    """The views' logical bytes, every use of a tensor counted, may reach 2 x file + 256 MiB and not one more."""
    size = container(fmt, tmp_path / "probe.pt", stride_zero_pickle(1, uses), {"z": b"\x01"}).stat().st_size
    limit = 2 * size + (256 << 20)
    assert limit % uses == 0
    inside = container(fmt, tmp_path / "inside.pt", stride_zero_pickle(limit // uses, uses), {"z": b"\x01"})
    assert inside.stat().st_size == size  # the sizes are fixed-width integers: the file does not change
    content = read_checkpoint(inside).content
    assert sum(t.numel() for t in content.values()) == limit
    outside = container(fmt, tmp_path / "outside.pt", stride_zero_pickle(limit // uses + 1, uses), {"z": b"\x01"})
    refused(outside, "logical size", f"({limit:,})")


def test_tensor_sizes_are_64_bit_before_any_product():
    assert rebuilders._ints((2**63 - 1, -(2**63)), "size") == (2**63 - 1, -(2**63))
    for bad in (2**63, -(2**63) - 1):
        with pytest.raises(pickle.UnpicklingError, match="64-bit"):
            rebuilders._ints((1, bad), "size")


def test_integers_at_their_limit():
    """An integer of 128 bits loads; 129 bits are refused as soon as it is pushed, before anything computes with
    it (a 1 MB LONG4 too)."""

    def load(pkl: bytes):
        return unpickler.RestrictedUnpickler(io.BytesIO(pkl), None, Budgets(1 << 30, 1 << 30)).load()

    for n in (2**128 - 1, -(2**128 - 1)):
        assert load(pickle.dumps(n, protocol=2)) == n
    for n in (2**128, -(2**128)):
        with pytest.raises(Refused, match="129 bits"):
            load(pickle.dumps(n, protocol=2))
    with pytest.raises(Refused, match="8,388,607 bits"):
        load(b"\x80\x02\x8b" + struct.pack("<i", 1 << 20) + b"\xff" * ((1 << 20) - 1) + b"\x7f.")
    assert load(b"\x80\x02Np9999999999\ng9999999999\n\x86.") == (None, None)  # text PUT / GET of 10 digits
    with pytest.raises(Refused, match="memo index"):
        load(b"\x80\x02Np99999999999\n.")  # 11 digits: an index that could collide in the memo


# ------------------------------------------------------------------------------------------------ keys


def keys_pickle(keys: list, as_set: bool = False) -> bytes:
    p = PickleWriter(4).raw(b"\x8f" if as_set else b"}").mark()
    for key in keys:
        p.int(key) if as_set else p.int(key).none()
    return p.raw(b"\x90" if as_set else b"u").stop()


@pytest.mark.parametrize("as_set", [False, True])
def test_integer_keys_at_their_limit(as_set):
    """Keys and set members of magnitude below 2**32 load (their hashes are themselves: no two collide); 2**32 is
    refused at the first such key, before it is hashed - so colliding keys k * (2**61 - 1) cost one check."""

    def reader(pkl: bytes):
        return unpickler.RestrictedUnpickler(io.BytesIO(pkl), None, Budgets(1 << 30, 1 << 30))

    inside = reader(keys_pickle([2**32 - 1, -(2**32 - 1), 0, 5], as_set))
    assert len(inside.load()) == 4 and inside.keys_checked == 4
    for edge in (2**32, -(2**32)):
        outside = reader(keys_pickle([edge, 1, 2], as_set))
        with pytest.raises(Refused, match="33 bits"):
            outside.load()
        assert outside.keys_checked == 1
    bomb = reader(keys_pickle([k * (2**61 - 1) for k in range(1, 5001)], as_set))
    with pytest.raises(Refused, match="integer"):
        bomb.load()
    assert bomb.keys_checked == 1


def test_keys_are_checked_once_each_in_every_dict_form():
    """SETITEM, SETITEMS, DICT, dict(list of pairs) and frozenset(list): each key is checked exactly once."""
    cases = [
        b"\x80\x02}K\x01Ns.",  # SETITEM
        b"\x80\x02}(K\x01NK\x02Nu.",  # SETITEMS
        b"\x80\x02(K\x01NK\x02Nd.",  # DICT
        b"\x80\x02cbuiltins\ndict\n](K\x01N\x86K\x02N\x86e\x85R.",  # dict([(1, None), (2, None)])
        b"\x80\x02cbuiltins\nfrozenset\n](K\x01K\x02e\x85R.",  # frozenset([1, 2])
    ]
    for pkl, expected in zip(cases, (1, 2, 2, 2, 2)):
        reader = unpickler.RestrictedUnpickler(io.BytesIO(pkl), None, Budgets(1 << 30, 1 << 30))
        assert len(reader.load()) == expected and reader.keys_checked == expected, pkl
    colliding = b"\x80\x02(" + pickle.dumps(2**61 - 1, protocol=2)[2:-1] + b"Nd."
    with pytest.raises(Refused, match="integer"):  # the DICT opcode too (it once skipped the key check)
        unpickler.RestrictedUnpickler(io.BytesIO(colliding), None, Budgets(1 << 30, 1 << 30)).load()


def test_float_keys_alone_but_not_inside_tuples():
    def load(pkl):
        return unpickler.RestrictedUnpickler(io.BytesIO(pkl), None, Budgets(1 << 30, 1 << 30)).load()

    assert load(pickle.dumps({0.5: 1, ("a", 3): 2}, protocol=2)) == {0.5: 1, ("a", 3): 2}
    with pytest.raises(Refused, match="tuple"):
        load(pickle.dumps({("a", 0.5): 1}, protocol=2))


# ------------------------------------------------------------------------------------------------ zip records


def test_pickle_size_at_its_limit(tmp_path):
    """data.pkl of exactly 64 MiB loads; one byte more is refused before it is read."""
    body = (64 << 20) - 2 - 9 - 1  # PROTO 4, BINBYTES8 header, STOP
    pkl = b"\x80\x04\x8e" + struct.pack("<Q", body) + bytes(body) + b"."
    assert len(pkl) == 64 << 20
    assert len(read_checkpoint(torch_zip(tmp_path / "inside.pt", pkl)).content) == body
    (tmp_path / "inside.pt").unlink()
    pkl = b"\x80\x04\x8e" + struct.pack("<Q", body + 1) + bytes(body + 1) + b"."
    refused(torch_zip(tmp_path / "outside.pt", pkl), "its pickle is 67,108,865 bytes")


def tensor_file_entries(tmp_path) -> dict[str, bytes]:
    path = save({"w": torch.arange(12.0)}, tmp_path / "src.pt", "zip")
    return zip_entries(path)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_only_stored_or_deflated_records_are_decompressed(method, tmp_path, monkeypatch):
    """A deflated archive loads; bzip2 / LZMA records (zipfile inflates them without an output bound) are refused
    before a single decompressor is made."""
    made = []
    real = zipfile._get_decompressor
    monkeypatch.setattr(zipfile, "_get_decompressor", lambda kind: made.append(kind) or real(kind))
    entries = tensor_file_entries(tmp_path)
    deflated = write_zip(tmp_path / "deflated.pt", entries, {n: zipfile.ZIP_DEFLATED for n in entries})
    assert torch.equal(read_checkpoint(deflated).content["w"], torch.arange(12.0))
    made.clear()
    name = next(n for n in entries if n.endswith("/data.pkl"))
    refused(write_zip(tmp_path / "other.pt", entries, {name: method}), f"compression method {method}")
    assert made == []


def test_records_together_at_most_the_file(tmp_path):
    """The storage records may declare as many bytes as the file holds, and not one more (deflated zeros)."""

    def build(nbytes: int):
        pkl = PickleWriter().dict({"w": lambda q: q.tensor("0", nbytes, (nbytes,), (1,), storage="ByteStorage")})
        entries = {"archive/data.pkl": pkl.stop(), "archive/byteorder": b"little", "archive/version": b"3\n"}
        entries["archive/data/0"] = bytes(nbytes)
        return write_zip(tmp_path / f"{nbytes}.pt", entries, {"archive/data/0": zipfile.ZIP_DEFLATED})

    nbytes, others = 4000, len(b"little") + len(b"3\n")  # the byteorder and version records count too
    for _ in range(10):  # the deflated size barely moves with the record's size: find the fixed point
        size = build(nbytes).stat().st_size
        if size == nbytes + others:
            break
        nbytes = size - others
    assert build(nbytes).stat().st_size == nbytes + others
    assert read_checkpoint(tmp_path / f"{nbytes}.pt").content["w"].numel() == nbytes
    outside = build(nbytes + 1)
    if outside.stat().st_size != nbytes + others:  # the deflated size moved: keep the file, grow the declaration
        pytest.fail(f"deflated size moved by {outside.stat().st_size - nbytes - others} byte(s)")
    refused(outside, "records unpack to", "more than the file")


def test_overlapping_records_at_the_edge(tmp_path):
    """A record ending where the next one's header begins loads; one byte further, the two overlap: refused."""
    path = save({"w": torch.arange(12.0)}, tmp_path / "src.pt", "zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        infos = sorted(z.infolist(), key=lambda i: i.header_offset)
    first, second = infos[0], infos[1]
    assert first.filename.endswith("data.pkl")
    local_extra = struct.unpack("<H", data[first.header_offset + 28 : first.header_offset + 30])[0]
    gap = second.header_offset - (first.header_offset + 30 + len(first.filename) + local_extra)
    central = data.index(b"PK\x01\x02")  # the first central entry is data.pkl's (torch writes it first)
    assert data[central + 46 : central + 46 + len(first.filename)] == first.filename.encode()

    def with_size(size: int, name: str):
        edited = bytearray(data)
        edited[central + 20 : central + 28] = struct.pack("<II", size, size)
        (tmp_path / name).write_bytes(edited)
        return tmp_path / name

    assert first.compress_size <= gap
    read_checkpoint(with_size(first.compress_size, "inside.pt"))
    with_size(gap, "edge.pt")  # ends exactly at the next header: no overlap (its CRC no longer matches)
    assert "overlap;" not in refused(tmp_path / "edge.pt")
    refused(with_size(gap + 1, "outside.pt"), "overlap; not a torch checkpoint")


# ------------------------------------------------------------------------------------------------ legacy storages


def two_storages(tmp_path, name: str, declared_b: int, data_b: int):
    """Legacy file: uint8 tensors over storages "a" (16 bytes) and "b" (declared ``declared_b``, ``data_b`` in the
    file); the position where "b" is declared and the file's size."""
    pkl = (
        PickleWriter()
        .dict(
            {
                "a": lambda q: q.tensor("a", 16, (16,), (1,), storage="ByteStorage"),
                "b": lambda q: q.tensor("b", declared_b, (1,), (1,), storage="ByteStorage"),
            }
        )
        .stop()
    )
    path = legacy_file(tmp_path / name, pkl, [("a", bytes(16)), ("b", bytes(data_b))], counts={"a": 16, "b": data_b})
    head = path.read_bytes()
    start = head.index(pkl)
    persid = [pos for op, _, pos in pickletools.genops(pkl) if op.name == "BINPERSID"][1]
    return path, start + persid + 1


def test_legacy_storages_at_what_is_left_of_the_file(tmp_path):
    """Every storage's data (and its 8-byte count) lies after the point where it is declared: all of them together
    may claim what is left of the file at that point, and not one byte more - many storages that each fit can
    no longer add up to hundreds of times the file."""
    valid, _ = two_storages(tmp_path, "valid.pt", 40, 40)
    assert read_checkpoint(valid).content["b"].numel() == 1
    probe, declared_at = two_storages(tmp_path, "probe.pt", 40, 40)
    left = probe.stat().st_size - declared_at
    edge = left - (8 + 16) - 8  # what "b" may declare: the rest, less a's data and both counts
    inside, _ = two_storages(tmp_path, "inside.pt", edge, 40)
    assert inside.stat().st_size == probe.stat().st_size
    assert "more than the file holds" not in refused(inside)  # passes this check; its data is short
    outside, _ = two_storages(tmp_path, "outside.pt", edge + 1, 40)
    refused(outside, "storage b declares", "more than the file holds")


# ------------------------------------------------------------------------------------------------ layer settings

GEOMETRY = ("kernel_size", "padding", "output_size", "size")
SCALE = ("stride", "dilation", "output_padding", "scale_factor", "upscale_factor", "downscale_factor")


@pytest.mark.parametrize("attr", GEOMETRY + SCALE)
def test_layer_settings_at_their_limit(attr):
    limit = 4096 if attr in GEOMETRY else 64
    assert (layers.MAX_GEOMETRY, layers.MAX_SCALE) == (4096, 64)
    for value in (limit, (limit, 1), float(limit)):
        layers.check_hyperparameters(nn.Upsample, {attr: value}, "m")
    for value in (limit + 1, (1, limit + 1), limit + 1e-9 * limit):
        with pytest.raises(ValueError, match=f"{attr} = "):
            layers.check_hyperparameters(nn.Upsample, {attr: value}, "m")


@pytest.mark.parametrize("fmt", FORMATS)
def test_upsampling_factor_at_its_limit_in_a_file(fmt, tmp_path):
    from focus_surgery.checkpoint_io import load_checkpoint

    model = load_checkpoint(save({"model": nn.Upsample(scale_factor=64.0)}, tmp_path / "64.pt", fmt)).model
    assert model.scale_factor == 64.0
    path = save({"model": nn.Upsample(scale_factor=64.5)}, tmp_path / "64.5.pt", fmt)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert len(str(caught.value).splitlines()) == 1 and "scale_factor = 64.5" in str(caught.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_shared_layer_tensors_at_their_limit(fmt, tmp_path):
    """A layer shared by two parents writes its buffer twice: together at most 2 x file + 256 MiB."""
    from focus_surgery.checkpoint_io import load_checkpoint

    size = container(fmt, tmp_path / "probe.pt", shared_layer_pickle(1, 2), {"z": b"\x01"}).stat().st_size
    limit = 2 * size + (256 << 20)
    inside = container(fmt, tmp_path / "inside.pt", shared_layer_pickle(limit // 2, 2), {"z": b"\x01"})
    assert inside.stat().st_size == size
    state = load_checkpoint(inside).model.state_dict()
    assert sum(t.numel() for t in state.values()) == limit
    outside = container(fmt, tmp_path / "outside.pt", shared_layer_pickle(limit // 2 + 1, 2), {"z": b"\x01"})
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(outside)
    assert len(str(caught.value).splitlines()) == 1 and f"holds {limit + 2:,} bytes" in str(caught.value)
