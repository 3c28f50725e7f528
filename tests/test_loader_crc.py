"""The loader's CRC-32: ISA-L's (optional accelerator) and zlib's agree, and either refuses a corrupted storage."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import torch

from focus_surgery.loader import CheckpointError, containers, crc, read_checkpoint


@pytest.mark.parametrize("size", [0, 1, 63, 64, 4097, 1 << 20])
def test_the_accelerator_computes_zlibs_crc32(size):
    data = os.urandom(size)
    assert crc.crc32(data) == zlib.crc32(data)
    assert crc.crc32(np.frombuffer(data, dtype=np.uint8)) == zlib.crc32(data)  # the loader passes mapped arrays


def test_the_dev_environment_has_the_accelerator():
    """requirements-dev.txt installs ``isal``: CI and the bench measure the fast path (users may go without)."""
    assert crc.CRC32_IMPLEMENTATION == "isal"


@pytest.mark.parametrize("implementation", [zlib.crc32, crc.crc32], ids=["zlib", "accelerator"])
@pytest.mark.parametrize("mode", ["copy", "mmap"])
def test_a_flipped_bit_is_refused_by_either_crc(tmp_path, monkeypatch, implementation, mode):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(4096.0)}, path)
    data = bytearray(path.read_bytes())
    data[bytes(data).index(torch.arange(4096.0).numpy().tobytes()) + 9999] ^= 0x01
    path.write_bytes(bytes(data))
    monkeypatch.setattr(containers, "crc32", implementation)
    with pytest.raises(CheckpointError, match=r"data/0' fails its CRC-32 check"):
        read_checkpoint(path, mode)
