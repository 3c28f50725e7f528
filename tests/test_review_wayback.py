"""Review of ``convert --layout yolov5`` (the way back): what the written YOLOv5 file may pickle."""

from __future__ import annotations

import zipfile
import pickletools
from pathlib import Path

import pytest
import torch

from focus_surgery.cli import main

TRAINED = Path(__file__).parent / "fixtures" / "yolov5-wayback" / "v7.0-trained-ultralytics.pt"


def _globals(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL")}


def test_an_ultralytics_object_on_a_torch_layer_is_refused_not_pickled(tmp_path, capsys):
    """A torch layer kept as it is carried its ``__dict__`` into the YOLOv5 file: an Ultralytics namespace held as an
    attribute of a Conv2d was pickled as ``ultralytics.utils.IterableSimpleNamespace`` (YOLOv5 cannot load it)."""
    from ultralytics.utils import IterableSimpleNamespace

    ckpt = torch.load(TRAINED, weights_only=False)
    ckpt["model"].model[1].conv.note = IterableSimpleNamespace(a=1)
    src, dst = tmp_path / "odd.pt", tmp_path / "out.pt"
    torch.save(ckpt, src)
    code = main(["convert", str(src), str(dst), "--layout", "yolov5"])
    err = capsys.readouterr().err
    if code == 0:
        pytest.fail(f"written with globals {sorted(g for g in _globals(dst) if 'ultralytics' in g)}")
    assert code == 2 and err.count("\n") == 1 and "'note'" in err and "model.1.conv" in err
    assert not dst.exists()


def test_a_fused_model_is_refused_naming_the_fix(tmp_path, capsys):
    """A fused model (Conv+BN folded, ``Conv.forward`` bound to ``forward_fuse``) was refused with "has attribute
    'forward', which YOLOv5's Conv has not": the line named neither the cause nor what to do."""
    ckpt = torch.load(TRAINED, weights_only=False)
    ckpt["model"].fuse(verbose=False)
    src, dst = tmp_path / "fused.pt", tmp_path / "out.pt"
    torch.save(ckpt, src)
    assert main(["convert", str(src), str(dst), "--layout", "yolov5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fused" in err and "before fuse()" in err and not dst.exists()


@pytest.mark.parametrize("recorded", ["v6.0-v7.0", "v4.0-v5.0", "v3.0-v3.1"])
def test_a_release_range_written_as_its_oldest_says_the_loss_rules_change(recorded, tmp_path, capsys):
    """A model recording a range trains with the range's newest release's loss rules (``rules_release``); written as
    the oldest, the file reads back as that release exactly, so converted again it trains with other rules. The note
    said only "which every release of the range loads" (and no test ran the range path)."""
    from focus_surgery.yolov5.loss_rules import rules_release

    ckpt = torch.load(TRAINED, weights_only=False)
    ckpt["model"].yaml["yolov5_release"] = recorded
    src, dst = tmp_path / "range.pt", tmp_path / "out.pt"
    torch.save(ckpt, src)
    if recorded != "v6.0-v7.0":  # v6.0's layers (SPPF) are not in the older releases: refused by name
        assert main(["convert", str(src), str(dst), "--layout", "yolov5"]) == 2
        assert "has no class for" in capsys.readouterr().err and not dst.exists()
        return
    assert main(["convert", str(src), str(dst), "--layout", "yolov5", "--verify", "--json"]) == 0
    result = __import__("json").loads(capsys.readouterr().out)
    written = result["release"]
    assert written == "v6.0" and result["verification"]["release_read_back"] == written
    assert rules_release(written) != rules_release(recorded) == "v7.0"
    note = result["release_note"]
    assert f"{written}'s loss rules" in note and "v7.0's" in note and note in result["summary"]
