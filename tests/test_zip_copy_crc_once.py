"""A converted zip checkpoint's bytes are CRC-checked once: by the zip copy as it streams them, not also by the load
(``files.convert_file`` loads in mode ``mmap-nocrc`` when it writes a torch file). Wherever the copy does not run
(another writer, nothing to do, a refusal), the load's CRC pass is made up, so a corrupt file is still refused as
corrupt, with one line, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from focus_surgery import conv_to_focus_weight
from focus_surgery.errors import CheckpointError, FocusSurgeryError
from focus_surgery.files import convert_file
from focus_surgery.loader import containers, zip_rewrite

STEM = "model.0.conv.conv.weight"


def _big_state_dict() -> dict[str, torch.Tensor]:
    sd = {STEM: torch.randn(16, 12, 3, 3)}
    for i in range(1, 6):
        sd[f"model.{i}.conv.weight"] = torch.randn(64, 64, 3, 3)
    return sd


def _flip_a_bit_of(path: Path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    data[bytes(data).index(tensor.numpy().tobytes()) + 101] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.fixture
def crc_bytes(monkeypatch) -> list[int]:
    """Bytes CRC-checked by our code (the loader's storages pass and the zip copy's stream)."""
    counted: list[int] = []

    def counting(data, value=0):
        counted.append(memoryview(data).nbytes)
        return original(data, value)

    original = containers.crc32
    monkeypatch.setattr(containers, "crc32", counting)
    monkeypatch.setattr(zip_rewrite, "crc32", counting)
    monkeypatch.delenv("FOCUS_SURGERY_LOAD_MODE", raising=False)
    return counted


def test_each_storage_byte_is_checked_once(tmp_path, crc_bytes):
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    sd = _big_state_dict()
    torch.save(sd, src)
    report = convert_file(src, dst, to="conv")
    assert report["write"]["path"] == "zip-copy"
    storage_bytes = sum(t.nbytes for t in sd.values())
    assert storage_bytes <= sum(crc_bytes) < storage_bytes * 1.1, (sum(crc_bytes), storage_bytes)  # not 2x


def test_a_corrupt_kept_storage_is_refused_by_the_copy(tmp_path, crc_bytes):
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    sd = _big_state_dict()
    torch.save(sd, src)
    _flip_a_bit_of(src, sd["model.3.conv.weight"])
    with pytest.raises(CheckpointError, match="CRC-32"):
        convert_file(src, dst, to="conv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"]


def test_a_corrupt_file_written_by_another_writer_is_refused(tmp_path, crc_bytes):
    """The stem is most of the file: the zip copy gains nothing and steps aside (torch.save writes); the CRC pass
    the load skipped runs before anything is put in place."""
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    sd = {STEM: torch.randn(64, 12, 3, 3), "model.1.bn.bias": torch.randn(64)}
    torch.save(sd, src)
    _flip_a_bit_of(src, sd["model.1.bn.bias"])
    with pytest.raises(CheckpointError, match="CRC-32"):
        convert_file(src, dst, to="conv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"]
    torch.save(sd, src)  # the same file intact: written by the other writer, so the test above saw that path
    assert convert_file(src, dst, to="conv")["write"]["path"] == "rewritten"


def test_a_corrupt_converted_file_is_refused_as_corrupt(tmp_path, crc_bytes):
    """Already what was asked (a conv stem asked to become a conv): the refusal reads the file whole first, as
    ``mmap`` would have, so a corrupt file is refused as corrupt, not as already converted."""
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    sd = _big_state_dict()
    torch.save(sd, src)
    converted = tmp_path / "conv.pt"
    convert_file(src, converted, to="conv")
    with pytest.raises(FocusSurgeryError, match="already in conv form"):
        convert_file(converted, dst, to="conv")
    again = torch.load(converted, weights_only=True)
    _flip_a_bit_of(converted, again["model.2.conv.weight"])
    with pytest.raises(CheckpointError, match="CRC-32"):
        convert_file(converted, dst, to="conv")
    assert not dst.exists()


def test_a_corrupt_stem_is_refused_as_corrupt_whatever_the_conversion_says(tmp_path, crc_bytes):
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    sd = _big_state_dict()
    sd[STEM] = conv_to_focus_weight(torch.randn(16, 3, 6, 6))
    torch.save(sd, src)
    _flip_a_bit_of(src, sd[STEM])
    with pytest.raises(CheckpointError, match="CRC-32"):
        convert_file(src, dst, to="conv", verify=True)
    assert not dst.exists()


def test_a_corrupt_file_with_nothing_to_do_is_refused(tmp_path, crc_bytes):
    """A YOLOv5 file already converted leaves nothing to do (exit 0, nothing written); corrupt, it is refused."""
    root = Path(__file__).resolve().parent / "fixtures" / "yolov5-legacy"
    legacy = sorted(root.glob("yolov5s-v4.0-*.pt"))[0]
    converted, dst = tmp_path / "converted.pt", tmp_path / "again.pt"
    convert_file(legacy, converted, to="conv")
    assert convert_file(converted, dst, to="conv").nothing_to_do
    model = torch.load(converted, weights_only=False)["model"]
    weight = next(p for p in model.state_dict().values() if p.numel() >= 1024)
    _flip_a_bit_of(converted, weight)
    with pytest.raises(CheckpointError, match="CRC-32"):
        convert_file(converted, dst, to="conv")
    assert not dst.exists()
