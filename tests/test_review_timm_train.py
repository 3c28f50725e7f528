"""Review of timm train.py checkpoints (branch timm-s2d): defects found, each pinned by a test.

* a file naming a huge (or control-character) architecture got a refusal whose fix (``give --order``) was cut off the
  printed line, the arch name filling it;
"""

from __future__ import annotations

from pathlib import Path

import torch

from focus_surgery.cli import main


def _tiny_tresnet_like(path: Path, arch: str) -> Path:
    """A train.py-shaped file whose stem conv reads 48 = 3 x 4 x 4 channels (a weightless space-to-depth of 4)."""
    torch.manual_seed(0)
    state = {"body.conv1.conv.weight": torch.randn(4, 48, 3, 3), "head.fc.weight": torch.randn(2, 4)}
    torch.save({"epoch": 0, "arch": arch, "state_dict": state}, path)
    return path


def test_a_huge_arch_name_does_not_push_the_fix_off_the_line(capsys, tmp_path):
    src = _tiny_tresnet_like(tmp_path / "last.pth.tar", "tresnet_q\x1b[2J\r\n" + "y" * 100_000)
    assert main(["convert", str(src), str(tmp_path / "out.pth.tar")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --order: timm" in err and "\x1b" not in err, err[-300:]
    assert len(err) < 2_000  # the name is shown shortened, not 100 000 characters of it
    assert not (tmp_path / "out.pth.tar").exists()
    assert main(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "give --order: timm" in out and len(out) < 2_000
