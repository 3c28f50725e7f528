"""YOLOv5 forks written by their own code (issue 22 item 4): yolov5-face (10 landmark outputs per anchor), YOLOv5-Lite
(``RepVGGBlock`` rows) and YOLOv5 v1.0 (``md``, a plain-conv head). An Ultralytics model cannot hold them, so by
default their stem converts with every other record kept in place, and the report says which layout and why.

The fixtures' README says how they were made and how the converted files were loaded by each fork's own loader
(``checks.json``); here the outputs are compared in float64 with the forks' own outputs stored beside them."""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from focus_surgery.cli import main
from focus_surgery.files import convert_file, inspect_file
from focus_surgery.loader import read_checkpoint
from focus_surgery.yolov5.rebuild import NoUltralyticsCounterpart, leaf_spec, make_leaf, read_yolov5_checkpoint, rebuild

pytest.importorskip("ultralytics")

FIXTURES = Path(__file__).parent / "fixtures" / "yolov5-forks"
FILES = {
    "face": FIXTURES / "yolov5s-face-34d991d-d0.33-w0.0625-nc1-fp16.pt",
    "lite": FIXTURES / "v5lite-g-9d649a6-d0.33-w0.125-nc3-fp16.pt",
    "v1": FIXTURES / "yolov5s-v1.0-d0.33-w0.125-nc3-fp16.pt",
}
WHY = {
    "face": "its Detect has 16 outputs per anchor, 10 beyond YOLOv5's 5 + nc",
    "lite": "yaml layer 1 is 'RepVGGBlock', which has no supported Ultralytics counterpart",
    "v1": "yaml layer 18 is 'nn.Conv2d' (v1.0's head",
}
REL_64 = 1e-12  # float64 against the fork's own float64 outputs, relative to their scale


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _refs(kind: str) -> dict[str, np.ndarray]:
    return dict(np.load(FILES[kind].with_suffix(".ref.npz")))


def _pickle_globals(path: Path) -> set[str]:
    """The ``module name`` of every GLOBAL opcode of a zip checkpoint's pickle (protocol 2, as torch.save writes)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    ops = list(pickletools.genops(io.BytesIO(data)))
    assert not any(op.name == "STACK_GLOBAL" for op, _, _ in ops)  # every global is spelled in its opcode
    return {arg for op, arg, _ in ops if op.name == "GLOBAL"}


def _recorded_layer(record) -> torch.nn.Sequential:
    """A recorded YOLOv5 ``Conv`` block (conv, bn, act) rebuilt from its recorded hyper-parameters (BatchNorm's eps
    included), weights loaded, in float64."""
    layers = [make_leaf(leaf_spec(record.children()[name])) for name in ("conv", "bn", "act")]
    block = torch.nn.Sequential(*layers)
    block.load_state_dict(
        {
            f"{i}.{k}": v
            for i, name in enumerate(("conv", "bn", "act"))
            for k, v in record.children()[name].state_dict().items()
        }
    )
    return block.double().eval()


@pytest.mark.parametrize("kind", list(FILES))
def test_fork_converts_by_default_in_its_own_layout_and_says_why(kind, tmp_path, capsys):
    src, dst = FILES[kind], tmp_path / "converted.pt"
    before = src.read_bytes()
    converts = inspect_file(src)["converts"]
    assert converts.startswith("yes, in the YOLOv5 repository's own layout") and WHY[kind] in converts
    assert main(["convert", str(src), str(dst), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "written in the YOLOv5 repository's own layout (--layout yolov5)" in text and WHY[kind] in text
    assert main(["convert", str(src), str(tmp_path / "j.pt"), "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "yolov5" and WHY[kind] in report["layout_reason"] and report["verification"]["passed"]
    assert report["stem_before"] == "Focus(3x3)" and report["stem_after"] == "Conv(6x6, stride 2, padding 2)"
    assert src.read_bytes() == before
    # torch >= 2.6 loads with weights_only=True by default: the output adds no pickle global the original lacks
    assert _pickle_globals(dst) <= _pickle_globals(src)
    # asked for explicitly, the Ultralytics layout is refused with the reason
    assert main(["convert", str(src), str(tmp_path / "u.pt"), "--layout", "ultralytics"]) == 2
    assert WHY[kind] in capsys.readouterr().err and not (tmp_path / "u.pt").exists()
    # a .safetensors cannot hold the YOLOv5 layout: refused, nothing written
    assert main(["convert", str(src), str(tmp_path / "s.safetensors")]) == 2
    assert "a pickle: use .pt or .pth" in capsys.readouterr().err and not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize("kind", list(FILES))
def test_fork_output_matches_the_forks_own_outputs_in_float64(kind, tmp_path):
    """Layer 0 of the converted file (one 6x6 stride-2 conv, its BatchNorm and activation as recorded) run in float64
    equals the fork's own Focus layer 0; every other tensor and record is
    the original's, bit for bit (so the whole model computes what the fork's code computed: checks.json)."""
    src, dst = FILES[kind], tmp_path / "converted.pt"
    convert_file(src, dst)
    refs = _refs(kind)
    x = torch.from_numpy(refs["input"])
    before, after = read_yolov5_checkpoint(src), read_yolov5_checkpoint(dst)
    sa, sb = before.model.state_dict(), after.model.state_dict()
    assert "model.0.conv.weight" in sb and sb["model.0.conv.weight"].shape[-2:] == (6, 6)
    with torch.no_grad():
        stem = _recorded_layer(after.model.children()["model"].children()["0"])(x).numpy()
    assert np.abs(stem - refs["stem"]).max() <= REL_64 * np.abs(refs["stem"]).max()
    renamed = {k.replace("model.0.conv.", "model.0.", 1): v for k, v in sa.items()}
    assert list(renamed) == list(sb)
    assert all(torch.equal(v, sb[k]) for k, v in renamed.items() if k != "model.0.conv.weight")
    rows_a = before.model.children()["model"].children()
    rows_b = after.model.children()["model"].children()
    assert [r.qualname for k, r in rows_a.items() if k != "0"] == [r.qualname for k, r in rows_b.items() if k != "0"]
    assert rows_b["0"].qualname == "models.common.Conv"
    checks = {c["kind"]: c for c in json.loads((FIXTURES / "checks.json").read_text())}
    assert checks[kind]["max_abs_err"] <= REL_64 * checks[kind]["scale"]  # measured in the fork's own code


def test_face_head_runs_rebuilt_in_float64_against_the_forks_outputs(tmp_path):
    """yolov5-face: everything but the head has Ultralytics twins; rebuilt with its 16-output head (raw logits),
    original and converted give yolov5-face's own per-level logits in float64."""
    src, dst = FILES["face"], tmp_path / "converted.pt"
    with pytest.raises(NoUltralyticsCounterpart, match="10 beyond"):
        rebuild(read_yolov5_checkpoint(src))
    report = convert_file(src, dst, verify=True)
    assert report.proof == "model"  # the written file read back, rebuilt with its head, run against the original
    assert report["verification"]["compared"] == "the written file loaded back and run against the original in float64"
    refs = _refs("face")
    x = torch.from_numpy(refs["input"])
    for path in (src, dst):
        model = rebuild(read_yolov5_checkpoint(path), extra_outputs=True)[0].double().eval()
        with torch.no_grad():
            raw = model(x)
        assert len(raw) == 3
        for i, level in enumerate(raw):
            ref = refs[f"raw_{i}"]
            assert level.shape == ref.shape and level.shape[-1] == 16
            assert np.abs(level.numpy() - ref).max() <= REL_64 * np.abs(ref).max()


def test_v1_is_read_as_v1_wrote_it(tmp_path):
    src, dst = FILES["v1"], tmp_path / "converted.pt"
    info = inspect_file(src)
    assert info["release"] == "v1.0"
    convert_file(src, dst)
    model = read_checkpoint(dst).content["model"]
    assert "yaml" not in model.state and model.get("md")["backbone"][0][2:] == ["Conv", [64, 6, 2, 2]]
    assert model.get("md")["head"][-1][2] == "Detect" and model.get("md")["head"][-2][2] == "nn.Conv2d"
    back = tmp_path / "back.pt"
    convert_file(dst, back, to="focus")  # and back: bit for bit the original weights
    restored = read_yolov5_checkpoint(back).model.state_dict()
    original = read_yolov5_checkpoint(src).model.state_dict()
    assert list(restored) == list(original) and all(torch.equal(restored[k], original[k]) for k in original)
