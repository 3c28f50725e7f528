"""Review of ``convert --verify`` of a zip copy (``compare.same_bits``' shortcuts, ``zip_rewrite.copied_views``): what
the shortcuts call the same bits must be what a full bit-for-bit comparison calls so, and the proof must refuse
whatever that comparison would refuse."""

from __future__ import annotations

import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from test_zip_copy_proof import swap_is_refused

from focus_surgery.errors import CheckpointError, VerificationFailed
from focus_surgery.files import convert_file
from focus_surgery.loader import zip_rewrite
from focus_surgery.sources import compare

STEM = "model.0.conv.conv.weight"


def _quantized(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two quantized tensors over one storage (as ``torch._utils._rebuild_qtensor`` builds them), scales 0.1 and
    ``scale``: the same bytes, other values where ``scale`` is not 0.1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of quantized dtypes
        q = torch.quantize_per_tensor(torch.linspace(-1, 1, 8), 0.1, 0, torch.qint8)
        other = torch._empty_affine_quantized([8], scale=scale, zero_point=0, dtype=torch.qint8)
    other.set_(q.untyped_storage(), 0, [8], [1])
    return q, other


def test_same_memory_read_as_other_values_is_not_same_bits() -> None:
    """Views of the very same memory that read it as other values (a conjugate or negative bit, another quantizer)
    are not the same bits; nor are tensors without data (meta), which have no bits to be the same."""
    x = torch.tensor([1 + 2j, -3 + 0.5j], dtype=torch.complex64)
    assert compare.same_bits(x, x.clone()) and compare.same_bits(x, x)
    assert not compare.same_bits(x, x.conj())  # the same bytes, the conjugate values
    assert not compare.same_bits(x, torch._neg_view(x))
    q, other = _quantized(0.2)
    assert q.untyped_storage().data_ptr() == other.untyped_storage().data_ptr()
    assert not compare.same_bits(q, other)  # the same int8 bytes, twice the values
    assert compare.same_bits(q, _quantized(0.1)[1]) and compare.same_bits(q, q)
    meta = torch.empty(3, device="meta")
    with pytest.raises((RuntimeError, TypeError)):  # nothing to compare: never "the same bits"
        compare.same_bits(meta, torch.empty(3, device="meta"))


def _shared_storage_file(tmp_path: Path) -> Path:
    """A state dict whose square kernels are views with offsets and strides into one shared storage."""
    torch.manual_seed(0)
    base = torch.randn(4 * 64 * 64 * 9)
    sd = {STEM: torch.randn(16, 12, 3, 3)}
    for i in range(4):  # four views of one storage, at four offsets; one of them transposed (other strides)
        view = base[i * 64 * 64 * 9 : (i + 1) * 64 * 64 * 9].view(64, 64, 3, 3)
        sd[f"model.{i + 1}.conv.weight"] = view.transpose(0, 1) if i == 2 else view
    path = tmp_path / "in.pt"
    torch.save(sd, path)
    return path


def test_shared_storage_views_copied_and_proven(tmp_path: Path) -> None:
    src = _shared_storage_file(tmp_path)
    report = convert_file(src, tmp_path / "out.pt", to="conv", verify=True)
    assert report["verification"]["passed"] and report["write"]["path"] == "zip-copy"
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    for key, value in torch.load(src, weights_only=True).items():
        if key != STEM:
            assert torch.equal(value.view(torch.int32), back[key].view(torch.int32))
            assert (value.storage_offset(), value.stride()) == (back[key].storage_offset(), back[key].stride())


@pytest.mark.parametrize("bug", ["offset", "stride", "other-view"])
def test_a_view_pickled_with_the_right_key_but_another_view_is_refused(tmp_path: Path, monkeypatch, bug: str) -> None:
    """The writer pickles a kept tensor under its copied storage key but with another offset or strides (or the view
    of another tensor of the same storage): the key alone proves nothing, the view is compared and the proof fails."""
    src = _shared_storage_file(tmp_path)
    real = zip_rewrite._pickled

    def wrong_view(content, like):
        content = dict(content)
        t = content["model.2.conv.weight"]
        if bug == "offset":
            content["model.2.conv.weight"] = t.as_strided(t.shape, t.stride(), t.storage_offset() + 1)
        elif bug == "stride":
            content["model.2.conv.weight"] = t.as_strided(t.shape, (t.stride(1), t.stride(0), 3, 1))
        else:
            content["model.2.conv.weight"] = content["model.4.conv.weight"]
        return real(content, like)

    monkeypatch.setattr(zip_rewrite, "_pickled", wrong_view)
    with pytest.raises(VerificationFailed, match="differ"):
        convert_file(src, tmp_path / "out.pt", to="conv", verify=True)
    assert not (tmp_path / "out.pt").exists()


def _corrupt(path: Path, record: str) -> None:
    """Flip one data byte of ``record`` (its CRC-32 left as it was)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/" + record))
    at = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[at + 26 : at + 30])
    raw[at + 30 + name_len + extra_len + min(5, info.file_size - 1)] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("stray", [False, True])  # the zip copy checks the input; the torch.save fallback
@pytest.mark.parametrize("record", ["data/0", "data/1", "version"])  # the stem's, the shared storage's, a small one
def test_a_corrupt_input_record_is_refused_under_verify(tmp_path: Path, record: str, stray: bool) -> None:
    """The proof's own read of the input skips the storages' CRC-32s (the copy checks them): a corrupt record is
    still refused, one line, nothing written, whichever writer ran."""
    src = _shared_storage_file(tmp_path)
    if stray:  # a storage record the pickle does not use: torch.save writes without it, so the copy does not apply
        with zipfile.ZipFile(src, "a") as archive:
            archive.writestr(archive.infolist()[0].filename.split("/")[0] + "/data/999", b"\0" * 64)
    _corrupt(src, record)
    with pytest.raises(CheckpointError, match="CRC-32") as error:
        convert_file(src, tmp_path / "out.pt", to="conv", verify=True)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("mode", ["copy", "mmap", "mmap-nocrc"])
def test_user_load_mode_keeps_the_proof(tmp_path: Path, monkeypatch, mode: str) -> None:
    """``FOCUS_SURGERY_LOAD_MODE`` replaces every read's mode (the proof's own reads too): the copy is still proven,
    and a kept tensor written as another one of its storage is still refused."""
    monkeypatch.setenv("FOCUS_SURGERY_LOAD_MODE", mode)
    src = _shared_storage_file(tmp_path)
    report = convert_file(src, tmp_path / "ok.pt", to="conv", verify=True)
    assert report["verification"]["passed"] and report["write"]["copied_identical"]["passed"]
    swap_is_refused(src, tmp_path, monkeypatch)


def test_copied_views_keeps_both_reads_storages_alive(tmp_path: Path) -> None:
    """The predicate answers by storage address: the reads' storages it names stay alive as long as it does, so a
    storage made after the reads were dropped never takes the address of one and passes as copied."""
    import gc

    from focus_surgery.checkpoint_io import save_checkpoint
    from focus_surgery.loader import read_checkpoint

    src = _shared_storage_file(tmp_path)
    loaded = read_checkpoint(src, "mmap-nocrc")
    content = dict(loaded.content)
    content[STEM] = torch.zeros(16, 3, 6, 6)
    with zip_rewrite.recording() as outcomes:
        save_checkpoint(content, tmp_path / "out.pt", like=loaded)
    original, written = read_checkpoint(src, "mmap-nocrc"), read_checkpoint(tmp_path / "out.pt", "mmap-nocrc")
    proven = zip_rewrite.copied_views(outcomes[0], original.stats, written.stats)
    b = written.content["model.1.conv.weight"]
    addresses = {t.untyped_storage()._cdata for t in original.content.values()}
    del original, written, loaded, content
    gc.collect()
    fresh = [torch.empty(64, 64, 3, 3) for _ in range(64)]
    assert not {t.untyped_storage()._cdata for t in fresh} & addresses  # no address of the reads reused
    assert not any(proven(t.view(64, 64, 3, 3), b) for t in fresh)
