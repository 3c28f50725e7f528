"""Review of timm train.py checkpoints (branch timm-s2d): defects found, each pinned by a test.

* a file naming a huge (or control-character) architecture got a refusal whose fix (``give --order``) was cut off the
  printed line, the arch name filling it;
* a stem whose BatchNorm has other channels than its conv (a corrupt or mixed EMA copy) crashed ``--verify`` inside
  torch with a cut-off message naming nothing; now one line naming both entries and the copy;
* ``verify`` compared the first of a file's state dicts only (PASS with the EMA copy destroyed);
* ``out.SAFETENSORS`` was accepted (suffixes read in lower case) and written as a torch pickle.
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


def test_a_stem_whose_batchnorm_has_other_channels_is_refused_in_one_line_naming_them(capsys, tmp_path):
    """A corrupt / mixed file (here its EMA copy): the stem conv has 5 output channels, its BatchNorm 8. ``--verify``
    crashed inside torch (``Error(s) in loading state_dict for BatchNorm2d:``, the detail cut), naming nothing."""
    torch.manual_seed(0)
    good = {"body.conv1.conv.weight": torch.randn(8, 48, 3, 3), "body.conv1.bn.weight": torch.rand(8) + 0.5}
    good.update({"body.conv1.bn.bias": torch.randn(8), "body.conv1.bn.running_mean": torch.randn(8)})
    good.update({"body.conv1.bn.running_var": torch.rand(8) + 0.5})
    bad = dict(good, **{"body.conv1.conv.weight": torch.randn(5, 48, 3, 3)})
    src = tmp_path / "last.pth.tar"
    torch.save({"epoch": 0, "arch": "tresnet_m", "state_dict": good, "state_dict_ema": bad}, src)
    before = src.read_bytes()
    assert main(["convert", str(src), str(tmp_path / "out.pth.tar"), "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "body.conv1.bn" in err and "5" in err and "8" in err, err
    assert "5 output channels" in err and "(under 'state_dict_ema')" in err
    assert not (tmp_path / "out.pth.tar").exists() and src.read_bytes() == before


def test_verify_compares_every_copy_a_file_holds_not_only_the_first(tmp_path):
    """A timm train.py file holds the model twice (``state_dict``, ``state_dict_ema``) and ``convert`` writes both;
    ``verify original converted`` compared the first only and printed PASS with the EMA copy destroyed."""
    from focus_surgery.files import convert_file, verify_files

    src = Path(__file__).resolve().parent / "fixtures" / "timm-train" / "last.pth.tar"
    good, bad = tmp_path / "conv.pth.tar", tmp_path / "bad.pth.tar"
    convert_file(src, good)
    same = verify_files(src, good)
    assert same["passed"] and same["tensors"] == 2 * 98 and "state_dict_ema" in same["compared"], same
    ckpt = torch.load(good, weights_only=False)
    ckpt["state_dict_ema"]["head.fc.weight"] += 1  # the EMA copy only
    torch.save(ckpt, bad)
    check = verify_files(src, bad)
    assert not check["passed"] and "state_dict_ema" in check["problem"], check
    assert check["summary"].startswith("FAIL")


def test_an_upper_case_safetensors_output_is_refused_not_written_as_a_pickle(capsys, tmp_path):
    """``suffix_of`` reads suffixes in lower case (``.PTH.TAR``), but the writers test ``== ".safetensors"``:
    ``out.SAFETENSORS`` was accepted and written as a torch pickle under a safetensors name."""
    src = Path(__file__).resolve().parents[1] / "checkpoints" / "focus-backbone.pt"
    dst = tmp_path / "out.SAFETENSORS"
    assert main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ".safetensors" in err, err
    assert not dst.exists()
