"""Review of the loader rewrite (one Transform, one Loaded, one allow-list): defects found by attacking every
reading path, each with the file that showed it.

- a tensor reached again without GET (a parameter rebuilt from a memoised argument tuple; DUP) was not charged
  again: 16 parameters over one 256 MiB stride-0 view made a 4.29 GB .safetensors from a 36 KB input (exit 0);
- text made from shared tuples: a persistent id's error message and a legacy file's storage list were turned
  into text with ``str()``, which expands every path (2**24 paths: 6 s; 2**40: forever);
- a corrupt deflate stream raised ``zlib.error``, not ``CheckpointError``;
- a storage key with a newline made a two-line ``CheckpointError``;
- a tuple that holds itself through a list kept an unconverted copy of itself (internal ``ArraySpec`` values
  reached the output).

Bounds are counts (bytes charged, paths, lines); the CLI runs go through ``_bounded_cli`` (exit 2, one line,
nothing written, input unchanged).
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _bounded_cli import TIME_LIMIT
from hostile_files import (
    LEGACY_MAGIC_NUMBER,
    PickleWriter,
    state_dict_pickle,
    stem_tensors,
    torch_zip,
    tuple_dag,
    write_zip,
)
from focus_surgery.loader import CheckpointError, Transform, read_checkpoint
from focus_surgery.loader.containers import budgets_for

pytestmark = pytest.mark.usefixtures("loader_mode")  # every test once per loader mode (conftest)

STRIDE_ZERO = 1 << 13  # a (2**13, 2**13) float view of one float: 256 MiB logical


def _parameter_args(q: PickleWriter) -> PickleWriter:
    """``_rebuild_parameter(*args)`` with ``args = (stride-0 tensor, False)`` memoised at 900_000."""
    q.glob("torch._utils", "_rebuild_parameter").mark()
    q.tensor("z", 1, (STRIDE_ZERO, STRIDE_ZERO), (0, 0)).bool(False).tuple().put(900_000)
    return q.raw(pickle.REDUCE)


def _parameter_again(q: PickleWriter) -> PickleWriter:
    return q.glob("torch._utils", "_rebuild_parameter").get(900_000).raw(pickle.REDUCE)


def parameters_over_one_tensor(tmp: Path, names: int = 16) -> Path:
    """A stem state dict plus ``names`` parameters made from one memoised argument tuple (one tensor object)."""
    extra = {"huge0": _parameter_args, **{f"huge{i}": _parameter_again for i in range(1, names)}}
    pkl, storages = state_dict_pickle(stem_tensors(), extra)
    storages["z"] = struct.pack("<f", 1.0)
    return torch_zip(tmp / "parameters-over-one-tensor.pt", pkl, storages)


def dup_tensor_list(tmp: Path, numel: int, copies: int) -> Path:
    """``{"x": [t, t, ...]}``: one stride-0 uint8 tensor pushed again by DUP (no memo)."""
    p = PickleWriter().raw(pickle.EMPTY_DICT).str("x").raw(pickle.EMPTY_LIST).mark()
    p.tensor("z", 1, (numel,), (0,), storage="ByteStorage")
    for _ in range(copies - 1):
        p.raw(pickle.DUP)
    p.raw(pickle.APPENDS + pickle.SETITEM)
    return torch_zip(tmp / "dup.pt", p.stop(), {"z": b"\x01"})


def pid_dag(tmp: Path, levels: int) -> Path:
    """A persistent id ``("x", dag)`` whose second item has 2**levels paths (refused: not a storage)."""
    p = PickleWriter().mark().str("x")
    tuple_dag(p, levels)
    return torch_zip(tmp / f"pid-dag-{levels}.pt", p.tuple().raw(pickle.BINPERSID).stop())


def legacy_with_keys(tmp: Path, keys_pickle: bytes, name: str = "legacy-keys.pt") -> Path:
    out = bytearray(PickleWriter().int(LEGACY_MAGIC_NUMBER).stop() + PickleWriter().int(1001).stop())
    out += PickleWriter().dict({"little_endian": True}).stop() + PickleWriter().dict({"a": 1}).stop()
    path = tmp / name
    path.write_bytes(bytes(out + keys_pickle))
    return path


def keys_dag(tmp: Path, levels: int) -> Path:
    """A legacy file whose storage-key list holds a tuple of 2**levels paths."""
    p = PickleWriter().raw(pickle.EMPTY_LIST).mark()
    tuple_dag(p, levels)
    return legacy_with_keys(tmp, p.raw(pickle.APPENDS).stop(), f"legacy-keys-dag-{levels}.pt")


def corrupt_deflate(tmp: Path) -> Path:
    """A deflated data.pkl whose stream is not deflate (its first block has an invalid type)."""
    path = tmp / "corrupt-deflate.pt"
    pkl = PickleWriter().dict({"a": 1}).stop()
    write_zip(path, {"archive/data.pkl": pkl, "archive/version": b"3\n"}, {"archive/data.pkl": zipfile.ZIP_DEFLATED})
    data = bytearray(path.read_bytes())
    start = data.index(b"data.pkl") + len(b"data.pkl")  # the local header's name, then the compressed stream
    data[start : start + 6] = b"\xff" * 6
    path.write_bytes(bytes(data))
    return path


def newline_key(tmp: Path) -> Path:
    """A tensor over storage ``"0\\nok forged.pt"``, which the archive does not hold."""
    pkl = PickleWriter().dict({"w": lambda q: q.tensor("0\nok forged.pt", 4, (4,), (1,))}).stop()
    return torch_zip(tmp / "newline-key.pt", pkl, {"0": bytes(16)})


def legacy_newline_key(tmp: Path) -> Path:
    """A legacy file whose one storage ``"a\\nb"`` declares more than the file holds."""
    pkl = PickleWriter().dict({"w": lambda q: q.tensor("a\nb", 1 << 30, (4,), (1,))}).stop()
    return legacy_with_keys(tmp, pkl + PickleWriter().value(["a\nb"]).stop(), "legacy-newline-key.pt")


_ARRAY = pickle.dumps(np.arange(3, dtype=np.float32), protocol=2)[2:-1]  # opcodes of a numpy array, no header/STOP


def tuple_cycle(tmp: Path, with_array: bool = True) -> Path:
    """``{"a": t}`` with ``x = []; t = (x, value); x.append(t)``: a tuple holding itself through a list."""
    p = PickleWriter().raw(pickle.EMPTY_DICT).str("a")
    p.raw(pickle.EMPTY_LIST).put(100_000).raw(pickle.POP).mark().get(100_000)
    p.raw(_ARRAY) if with_array else p.int(7)
    p.tuple().put(100_001).get(100_000).get(100_001).raw(pickle.APPEND + pickle.POP + pickle.SETITEM)
    return torch_zip(tmp / f"tuple-cycle{'-array' if with_array else ''}.pt", p.stop())


def refused(path: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message, message
    return message


# ------------------------------------------------------------------------------------------------ tensors charged


def test_parameters_made_again_over_one_tensor_are_charged(tmp_path):
    """16 parameters from one memoised (tensor, False) tuple: 16 views of 256 MiB, charged 16 times (refused);
    one such parameter loads, charged once."""
    refused(parameters_over_one_tensor(tmp_path), "a parameter made again over one tensor", "logical size")
    one = parameters_over_one_tensor(tmp_path, names=1)
    content = read_checkpoint(one).content
    assert content["huge0"].shape == (STRIDE_ZERO, STRIDE_ZERO)


def test_parameter_made_again_charged_at_the_limit(tmp_path):
    """Two parameters over one stride-0 byte tensor: their logical size may reach the file's tensor budget (each
    counted) and not one byte more."""

    def build(numel: int) -> Path:
        return torch_zip(tmp_path / f"two-{numel}.pt", _two_parameters(numel), {"z": b"\x01"})

    size = build(2).stat().st_size
    limit = budgets_for(size).tensors.limit
    assert limit % 2 == 0
    inside = build(limit // 2)
    assert inside.stat().st_size == size
    content = read_checkpoint(inside).content
    assert sum(t.numel() for t in content.values()) == limit and content["a"] is not content["b"]
    refused(build(limit // 2 + 1), "logical size", f"({limit:,})")


def _two_parameters(numel: int) -> bytes:
    p = PickleWriter().raw(pickle.EMPTY_DICT).mark().str("a")
    p.glob("torch._utils", "_rebuild_parameter").mark()
    p.tensor("z", 1, (numel,), (0,), storage="ByteStorage").raw(pickle.NEWFALSE).tuple().put(9).raw(pickle.REDUCE)
    p.str("b").glob("torch._utils", "_rebuild_parameter").get(9).raw(pickle.REDUCE)
    return p.raw(pickle.SETITEMS).stop()


def test_tensor_pushed_again_by_dup_is_charged(tmp_path):
    """DUP is a second use, as GET is: n copies of a view may reach the tensor budget, not one byte more."""
    size = dup_tensor_list(tmp_path, 4, 4).stat().st_size
    limit = budgets_for(size).tensors.limit
    assert limit % 4 == 0
    content = read_checkpoint(dup_tensor_list(tmp_path, limit // 4, 4)).content
    assert len(content["x"]) == 4 and sum(t.numel() for t in content["x"]) == limit
    refused(dup_tensor_list(tmp_path, limit // 4 + 1, 4), "logical size")


# ------------------------------------------------------------------------------------------------ text from files


def test_persistent_id_message_never_expands_a_shared_tuple(tmp_path):
    """The refused persistent id is named by its kind, not by str() of what it holds (2**16 paths here; the CLI
    test below has 2**40)."""
    message = refused(pid_dag(tmp_path, 16), "persistent id")
    assert "((" not in message and len(message) < 200 + len(str(tmp_path)), message


def test_legacy_storage_keys_are_text(tmp_path):
    """torch writes the storage keys as text; a list holding anything else is corrupt (never turned into text)."""
    message = refused(keys_dag(tmp_path, 16), "corrupt storage list")
    assert "((" not in message, message
    refused(legacy_with_keys(tmp_path, PickleWriter().value([1]).stop()), "corrupt storage list")


def test_corrupt_deflate_stream_is_a_checkpoint_error(tmp_path):
    refused(corrupt_deflate(tmp_path), "not a torch checkpoint", "decompressing")


@pytest.mark.parametrize("build", [newline_key, legacy_newline_key])
def test_storage_key_with_a_newline_is_one_line(build, tmp_path):
    message = refused(build(tmp_path), "storage")
    assert "ok forged.pt'" in message or "'a\\nb'" in message, message


# ------------------------------------------------------------------------------------------------ Transform


def test_tuple_holding_itself_never_keeps_an_unconverted_copy(tmp_path):
    """A tuple met inside itself cannot be replaced there by its converted copy: refused, not half converted."""
    refused(tuple_cycle(tmp_path), "contains itself")
    content = read_checkpoint(tuple_cycle(tmp_path, with_array=False)).content  # nothing to convert: kept as is
    t = content["a"]
    assert t[1] == 7 and t[0][0] is t


def test_transform_rebuilds_tuples_shared_without_a_cycle():
    """A tuple shared by two lists (no cycle) is rebuilt once and both lists get the same copy."""
    marker = object()
    shared = (marker, 1)
    a, b = [shared], [shared]
    out = Transform(lambda obj: "new" if obj is marker else obj)([a, b])
    assert out[0][0] == ("new", 1) and out[0][0] is out[1][0]


# ------------------------------------------------------------------------------------------------ the real CLI


CLI_CASES = {
    "parameters-over-one-tensor": (parameters_over_one_tensor, ("convert", "{src}", "{dst}.safetensors"), "logical"),
    "pid-dag-40": (lambda tmp: pid_dag(tmp, 40), ("inspect", "{src}"), "persistent id"),
    "legacy-keys-dag-40": (lambda tmp: keys_dag(tmp, 40), ("inspect", "{src}"), "storage list"),
    "corrupt-deflate": (corrupt_deflate, ("convert", "{src}", "{dst}.pt"), "not a torch checkpoint"),
    "newline-key": (newline_key, ("inspect", "{src}"), "missing"),
    "tuple-cycle": (tuple_cycle, ("convert", "{src}", "{dst}.pt"), "contains itself"),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_refuses_with_one_line(name, cli, tmp_path):
    build, command, word = CLI_CASES[name]
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = build(src_dir)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    dst = out_dir / "result"
    args = [src if a == "{src}" else dst.with_suffix(a[5:]) if a.startswith("{dst}") else a for a in command]
    outcome = cli.run(*args)
    assert not outcome.timed_out, f"hang: killed after {TIME_LIMIT:.0f} s: {outcome}"
    assert outcome.signal is None and outcome.returncode == 2, str(outcome)
    lines = outcome.stderr_lines
    assert len(lines) == 1 and src.name in lines[0] and word in lines[0], str(outcome)
    assert "forged" not in lines[0] or "\\n" in lines[0], lines[0]
    assert sorted(out_dir.iterdir()) == [], "output or temporary file left behind"
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before, "input modified"
    assert outcome.peak_rss < 2 << 30, str(outcome)  # the unfixed loader wrote 4.29 GB at 5 GB RSS
