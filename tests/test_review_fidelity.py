"""Review of the faithful writer (``loader.pickler``) on files the loader reads: what it writes must load back the
same, with the same sharing, in the same protocol."""

from __future__ import annotations

import sys
import types

import torch

from focus_surgery.checkpoint_io import save_checkpoint
from focus_surgery.loader import NamedReference, read_checkpoint
from tests.test_fidelity import content_pickle


def _fake_yolo(monkeypatch):
    yolo = types.ModuleType("models.yolo")

    class Detect:
        def forward(self):
            pass

    Detect.__module__, Detect.__qualname__, yolo.Detect = "models.yolo", "Detect", Detect
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    monkeypatch.setitem(sys.modules, "models.yolo", yolo)
    return Detect


def test_a_reference_reached_before_its_owner_record_is_written_once_and_stays_shared(tmp_path, monkeypatch):
    """``self.fn = self.forward`` pickles as ``getattr(record, 'forward')`` inside the record's own state; reached
    first from outside, the reference is met again while its owner is written. The writer crashed (pickle's memo
    AssertionError); it must write it once, shared, as pickle itself does (POP + GET)."""
    detect = _fake_yolo(monkeypatch)
    record = detect()
    record.fn, record.w = record.forward, torch.ones(2)
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"a": record.fn, "b": record}, src)
    loaded = read_checkpoint(src)
    assert loaded.content["a"] is loaded.content["b"].state["fn"]
    save_checkpoint(loaded.content, dst, like=loaded)
    again = read_checkpoint(dst)
    assert isinstance(again.content["a"], NamedReference)
    assert again.content["a"] is again.content["b"].state["fn"]
    assert again.content["a"].pickled[1][0] is again.content["b"]
    assert again.globals == loaded.globals


def test_a_protocol_1_file_is_written_back_in_protocol_1_and_loads(tmp_path):
    """A protocol-1 pickle has no PROTO opcode: the loader took it for protocol 0, and the writer then wrote the
    storages' persistent ids as protocol-0 text, a file nothing can read."""
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"w": torch.arange(4.0), "n": 3}, src, pickle_protocol=1)
    loaded = read_checkpoint(src)
    assert loaded.protocol == 1
    save_checkpoint(loaded.content, dst, like=loaded)
    again = read_checkpoint(dst)
    assert again.protocol == 1
    assert torch.equal(again.content["w"], torch.arange(4.0)) and again.content["n"] == 3


def test_a_record_whose_state_is_a_pair_of_values_keeps_them(tmp_path, monkeypatch):
    """A class whose ``__getstate__`` returns a 2-tuple that is not ``(dict, slots)`` (here ``(3, [4])``): the loader
    took it for ``(dict, slots)`` and kept neither value, and the writer wrote ``(None, {})`` - data lost. Kept as
    the state it was, written back byte for byte."""

    detect = _fake_yolo(monkeypatch)
    detect.__getstate__ = lambda self: (3, [4])
    detect.__setstate__ = lambda self, state: None
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"d": detect()}, src)
    loaded = read_checkpoint(src)
    assert loaded.content["d"].state == {"__state__": (3, [4])}
    save_checkpoint(loaded.content, dst, like=loaded)
    assert content_pickle(dst) == content_pickle(src)


def test_a_protocol_1_record_is_written_back_through_copyreg_reconstructor(tmp_path, monkeypatch):
    """Protocol 0/1 pickles build a plain object by ``copyreg._reconstructor(cls, object, None)``; the loader
    remembered that (``pickled_by``) but the writer wrote a NEWOBJ (a protocol-2 opcode), dropping two of the file's
    globals. Written back byte for byte, under the same globals."""
    detect = _fake_yolo(monkeypatch)
    record = detect()
    record.w, record.stride = torch.ones(2), [8, 16]
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"d": record, "again": record}, src, pickle_protocol=1)
    loaded = read_checkpoint(src)
    assert loaded.content["d"].pickled_by == "reconstructor"
    save_checkpoint(loaded.content, dst, like=loaded)
    assert read_checkpoint(dst).globals == loaded.globals
    assert content_pickle(dst) == content_pickle(src)


def test_a_stand_in_inside_a_slice_is_written_back(tmp_path):
    """The loader builds slices (an allowed constructor) of anything, a path included; ``needs_faithful`` did not
    look inside them, so the C pickler met the stand-in and the write failed. Written back byte for byte."""
    import pathlib

    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"s": slice(pathlib.PosixPath("a", "b"), None, 2), "w": torch.ones(1)}, src)
    loaded = read_checkpoint(src)
    save_checkpoint(loaded.content, dst, like=loaded)
    assert content_pickle(dst) == content_pickle(src)


def test_a_record_in_the_optimizer_state_is_copied_with_it(tmp_path, monkeypatch):
    """The optimizer entry is deep-copied before its stem momentum is remapped; a record in it (an mmengine
    ``HistoryBuffer``) raised TypeError ('cannot be pickled') and the conversion stopped. Converted; the record is
    written back under its own class with its state."""
    from focus_surgery.files import convert_file
    from tests.family_models.mmengine.tiny_focus_net import TinyFocusNet

    logging = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        pass

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = "mmengine.logging.history_buffer", "HistoryBuffer"
    logging.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "mmengine.logging.history_buffer", logging)
    buffer = HistoryBuffer()
    buffer.max_length = 7
    sd = TinyFocusNet().state_dict()
    optimizer = {"state": {}, "param_groups": [{"params": [0]}], "history": buffer}
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": sd, "optimizer": optimizer}, src)
    monkeypatch.delitem(sys.modules, "mmengine.logging.history_buffer")
    convert_file(src, dst)
    out = read_checkpoint(dst).content["optimizer"]["history"]
    assert out.qualname == "mmengine.logging.history_buffer.HistoryBuffer" and out.state == {"max_length": 7}


def test_a_legacy_file_of_protocol_4_reads_each_pickle_with_its_own_memo(tmp_path):
    """A legacy file is five pickles; torch reads each with a fresh memo. Read with one memo, protocol 4's MEMOIZE
    (index = memo size) numbered the content's objects after the header pickles' and its GETs fetched the wrong
    objects: 'collections.Counter' was read as 'torch.Counter' and refused (or, worse, other values swapped)."""
    import collections

    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    content = {"m": collections.Counter([1, 1, 2]), "w": torch.ones(3), "t": "torch"}
    torch.save(content, src, pickle_protocol=4, _use_new_zipfile_serialization=False)
    loaded = read_checkpoint(src)
    assert loaded.content["m"] == content["m"] and loaded.content["t"] == "torch"
    assert torch.equal(loaded.content["w"], content["w"])
    assert "collections.Counter" in loaded.globals and loaded.protocol == 4
    save_checkpoint(loaded.content, dst, like=loaded)
    again = read_checkpoint(dst)
    assert again.container == "legacy" and again.protocol == 4 and again.globals == loaded.globals
    assert again.content["m"] == content["m"]
