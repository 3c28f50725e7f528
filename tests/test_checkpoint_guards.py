"""The loader's guards, through its public entry points only (``load_checkpoint`` and the CLI's exit code 2 with one
line), on hostile files written here byte by byte: pickle opcodes by hand, zip archives with ``zipfile``."""

from __future__ import annotations

import pickle
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from focus_surgery.checkpoint_io import CheckpointError, load_checkpoint
from focus_surgery.cli import main

# ------------------------------------------------------------------------------------------ pickle opcodes by hand


def text(s: str) -> bytes:
    """BINUNICODE: a str."""
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def small_int(n: int) -> bytes:
    """BININT1 (0-255) or BININT (4 bytes)."""
    return b"K" + bytes([n]) if 0 <= n < 256 else b"J" + struct.pack("<i", n)


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def pickle_dict(entries: dict[str, bytes]) -> bytes:
    """Protocol 2: ``{key: <object the opcodes build>}``."""
    body = b"".join(text(k) + v + b"s" for k, v in entries.items())  # SETITEM after each pair
    return b"\x80\x02}" + body + b"."


def layer_object(module: str, name: str) -> bytes:
    """An object of class module.name made as torch.save makes layers: cls.__new__(cls) (NEWOBJ), then BUILD."""
    return global_(module, name) + b")\x81}" + text("training") + b"\x88sb"


def tensor(storage_key: str, storage_numel: int, size: int, offset: int = 0) -> bytes:
    """``torch._utils._rebuild_tensor_v2(<float storage>, offset, (size,), (1,), False, OrderedDict())``."""
    persistent = b"(" + text("storage") + global_("torch", "FloatStorage") + text(storage_key) + text("cpu")
    persistent += small_int(storage_numel) + b"tQ"  # MARK ... TUPLE, BINPERSID
    args = persistent + small_int(offset) + small_int(size) + b"\x85" + small_int(1) + b"\x85" + b"\x89"
    args += global_("collections", "OrderedDict") + b")R"
    return global_("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


# ------------------------------------------------------------------------------------------ torch zip archives


def zip_checkpoint(
    path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None, byteorder: bytes = b"little"
) -> Path:
    """A torch zip checkpoint with these records, laid out as ``torch.save`` lays them out (read back by torch)."""
    template = path.with_suffix(".template")
    torch.save({"w": torch.zeros(1)}, template)  # borrow torch's own version records
    with zipfile.ZipFile(template) as source:
        prefix = source.namelist()[0].split("/")[0]
        kept = {
            n: source.read(n)
            for n in source.namelist()
            if n.split("/", 1)[1] in ("version", ".format_version", ".storage_alignment")
        }
    template.unlink()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, raw in (storages or {}).items():
            archive.writestr(f"{prefix}/data/{key}", raw)
        for name, raw in kept.items():
            archive.writestr(name, raw)
    return path


FOUR_FLOATS = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


def assert_refused(path: Path, capsys, *needles: str) -> None:
    """``load_checkpoint`` raises CheckpointError naming the problem, and the CLI says it in one line with exit 2."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and all(n in message.replace(str(path), "") for n in needles), message
    for command in (["inspect", str(path)], ["convert", str(path), str(path.with_name("never.pt"))]):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and all(n in err.replace(str(path), "") for n in needles), err
    assert not path.with_name("never.pt").exists()


def test_hand_written_archive_loads_when_it_is_honest(tmp_path):
    """The builders above make files the loader reads: the refusals below are about the one thing each changes."""
    path = zip_checkpoint(tmp_path / "ok.pt", pickle_dict({"w": tensor("0", 4, 4)}), {"0": FOUR_FLOATS})
    assert torch.equal(load_checkpoint(path).content["w"], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    path = zip_checkpoint(tmp_path / "view.pt", pickle_dict({"w": tensor("0", 4, 2, offset=2)}), {"0": FOUR_FLOATS})
    assert torch.equal(load_checkpoint(path).content["w"], torch.tensor([3.0, 4.0]))


# ------------------------------------------------------------------------------------------ __main__ imports


@pytest.mark.parametrize("module", ["focus_surgery.__main__", "__main__", "torch.nn.__main__"])
def test_no_class_is_imported_from_a_main_module(tmp_path, capsys, monkeypatch, module):
    """Importing ``focus_surgery.__main__`` would run the CLI inside the loading process: refused by name."""
    monkeypatch.delitem(sys.modules, "focus_surgery.__main__", raising=False)  # so importing it would run it
    path = zip_checkpoint(tmp_path / "main.pt", pickle_dict({"model": layer_object(module, "Stem")}))
    assert_refused(path, capsys, "refused to load", f"{module}.Stem")
    assert "focus_surgery.__main__" not in sys.modules


# ------------------------------------------------------------------------------------------ tensor extents


@pytest.mark.parametrize("size,offset", [(100, 0), (5, 0), (3, 2)])
def test_tensor_reaching_past_its_storage_is_refused(tmp_path, capsys, size, offset):
    """A 4-element storage cannot back 5 elements, nor 3 from offset 2: no read past the end of the buffer."""
    path = zip_checkpoint(tmp_path / "extent.pt", pickle_dict({"w": tensor("0", 4, size, offset)}), {"0": FOUR_FLOATS})
    assert_refused(path, capsys, "not a torch checkpoint", f"element {offset + size} of a storage of 4")


# ------------------------------------------------------------------------------------------ big-endian files


def test_big_endian_zip_checkpoint_is_refused(tmp_path, capsys):
    path = zip_checkpoint(tmp_path / "big.pt", pickle_dict({"w": tensor("0", 4, 4)}), {"0": FOUR_FLOATS}, b"big")
    assert_refused(path, capsys, "big-endian")


def test_big_endian_legacy_checkpoint_is_refused(tmp_path, capsys):
    """torch's pre-1.6 format: magic number, protocol version, then sys info saying the writer was big-endian."""
    path = tmp_path / "big-legacy.pt"
    magic, protocol = 0x1950A86A20F9469CFC6C, 1001
    sys_info = {"protocol_version": protocol, "little_endian": False, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    path.write_bytes(b"".join(pickle.dumps(v, protocol=2) for v in (magic, protocol, sys_info, {}, [])))
    assert_refused(path, capsys, "big-endian")


# ------------------------------------------------------------------------------------------ truncated storages


@pytest.mark.parametrize("records", [{"0": FOUR_FLOATS[:12]}, {}], ids=["short", "missing"])
def test_truncated_or_missing_zip_storage_is_refused(tmp_path, capsys, records):
    path = zip_checkpoint(tmp_path / "short.pt", pickle_dict({"w": tensor("0", 4, 4)}), records)
    assert_refused(path, capsys, "storage 0 is " + ("truncated" if records else "missing"))


def test_truncated_legacy_storage_is_refused(tmp_path, capsys):
    """A pre-1.6 file cut inside its raw storage bytes."""
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.arange(64.0)}, whole, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(whole).content["w"], torch.arange(64.0))
    path = tmp_path / "cut.pt"
    path.write_bytes(whole.read_bytes()[:-100])
    assert_refused(path, capsys, "more than the file holds")  # its declared size is checked before any allocation
