"""YOLOv5, the rest of the family: --layout yolov5, v1.0 (`md`), nn.* rows, C3TR, heads without an Ultralytics
counterpart (Segment / Classify), the yolov3 repository."""

import json
from pathlib import Path

import pytest
import torch

import focus_surgery as fs
from focus_surgery.cli import main
from focus_surgery.files import convert_file, inspect_file
from focus_surgery.sources import load
from focus_surgery.sources.records_io import save_records
from focus_surgery.yolov5.rebuild import read_yolov5_checkpoint, rebuild
from focus_surgery.loader import record_class
from tests._yolov5_legacy_helpers import (
    MODELS,
    assert_within_tolerance,
    compare_to_reference,
    make_yolov5_style_checkpoint,
)

pytest.importorskip("ultralytics")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _edited(src: Path, dst: Path, edit) -> Path:
    """A copy of a YOLOv5-repository file with its records edited, written back in the same pickle layout."""
    loaded = load(src)
    edit(loaded.content)
    save_records(loaded.content, dst)
    return dst


def test_yolov5_layout_output_loads_as_a_yolov5_file_and_matches_the_original_code(tmp_path):
    src, dst = MODELS["v2.0"], tmp_path / "v2-conv.pt"
    report = convert_file(src, dst, layout="yolov5", verify=True)
    assert report["layout"] == "yolov5" and report["verification"]["passed"] and report["max_abs_err"] < 1e-9
    before, after = read_yolov5_checkpoint(src), read_yolov5_checkpoint(dst)
    assert after.model.qualname == "models.yolo.Model" and after.dtype == torch.float16
    assert after.model.get("yaml")["backbone"][0] == [-1, 1, "Conv", [64, 6, 2, 2]]
    sa, sb = before.model.state_dict(), after.model.state_dict()
    w = sa["model.0.conv.conv.weight"]
    assert torch.equal(sb["model.0.conv.weight"], fs.focus_to_conv_weight(w, 2, "yolov5"))
    renamed = {k.replace("model.0.conv.", "model.0.", 1): v for k, v in sa.items()}
    assert list(renamed) == list(sb) and all(
        torch.equal(v, sb[k]) for k, v in renamed.items() if k != "model.0.conv.weight"
    )
    model, _ = rebuild(after)
    assert_within_tolerance(compare_to_reference(model, src))  # the original code's outputs
    back = tmp_path / "v2-focus.pt"
    convert_file(dst, back, layout="yolov5", to="focus")
    restored = read_yolov5_checkpoint(back).model.state_dict()
    assert list(restored) == list(sa) and all(torch.equal(restored[k], sa[k]) for k in sa)  # bit-exact round trip


def test_v1_keeps_its_architecture_under_md(tmp_path):
    def to_v1(content):
        model = content["model"]
        model.state["md"] = model.state.pop("yaml")

    src = _edited(MODELS["v2.0"], tmp_path / "v1.pt", to_v1)
    info = inspect_file(src)
    assert info["release"] == "v1.0" and info["converts"].startswith("yes")
    report = convert_file(src, tmp_path / "out.pt", verify=True)
    assert report["release"] == "v1.0" and report["max_abs_err"] < 1e-9


def test_nn_rows_and_c3tr(tmp_path):
    yaml = read_yolov5_checkpoint(MODELS["v6.0"]).model.get("yaml")
    yaml["backbone"][8] = [-1, 1, "C3TR", [1024]]  # YOLOv5's transformer block (nn.Linear, nn.MultiheadAttention)
    yaml["backbone"][9] = [-1, 1, "nn.MaxPool2d", [5, 1, 2]]  # a torch row Ultralytics resolves itself
    path = tmp_path / "c3tr.pt"
    live = make_yolov5_style_checkpoint(yaml, path)
    model, _ = rebuild(read_yolov5_checkpoint(path))
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x)[0], live(x)[0])
    report = convert_file(path, tmp_path / "out.pt", to="focus", verify=True)
    assert report["max_abs_err"] < 1e-9


@pytest.mark.parametrize("head", ["Segment", "Classify"])
def test_heads_without_an_ultralytics_counterpart_convert_in_the_yolov5_layout(tmp_path, capsys, head):
    def rename_head(content):
        model = content["model"]
        rows = model.children()["model"].state["_modules"]
        last = list(rows)[-1]
        module = "models.yolo" if head == "Segment" else "models.common"
        new = record_class(f"{module}.{head}")()
        new.state.update(rows[last].state)
        rows[last] = new
        model.state["yaml"]["head"][-1][2] = head

    src = _edited(MODELS["v6.0"], tmp_path / f"{head}.pt", rename_head)
    # asked for explicitly, the Ultralytics layout is refused; by default the YOLOv5 layout is written (issue 22)
    code = main(["convert", str(src), str(tmp_path / "u.pt"), "--to", "focus", "--layout", "ultralytics"])
    err = capsys.readouterr().err
    assert code == 2 and f"the head is '{head}'" in err and "--layout yolov5" in err and str(src) in err
    assert main(["convert", str(src), str(tmp_path / "d.pt"), "--to", "focus"]) == 0
    out = capsys.readouterr().out
    assert "written in the YOLOv5 repository's own layout (--layout yolov5)" in out and f"the head is '{head}'" in out
    code = main(
        ["convert", str(src), str(tmp_path / "y.pt"), "--to", "focus", "--layout", "yolov5", "--verify", "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["stem_after"] == "Focus(3x3)" and report["verification"]["passed"]
    assert read_yolov5_checkpoint(tmp_path / "y.pt").model.children()["model"].children()["0"].name == "Focus"


def test_yolov3_repository_is_recognised(tmp_path):
    def as_yolov3(content):
        content["model"].state["yaml_file"] = "models/yolov3.yaml"

    src = _edited(MODELS["v6.0"], tmp_path / "yolov3.pt", as_yolov3)
    assert inspect_file(src)["release"] == "yolov3 repository (v9.x)"


def test_v1_head_rows_are_refused_in_the_ultralytics_layout_and_convert_in_the_yolov5_layout(tmp_path, capsys):
    """v1.0's yaml ends with nn.Conv2d output rows and a Detect without convs (models/yolov5s.yaml at v1.0)."""

    def to_v1_head(content):
        model = content["model"]
        model.state["md"] = model.state.pop("yaml")
        model.state["md"]["head"][-2] = [-1, 1, "nn.Conv2d", ["na * (nc + 5)", 1, 1]]

    src = _edited(MODELS["v2.0"], tmp_path / "v1.pt", to_v1_head)
    assert main(["convert", str(src), str(tmp_path / "u.pt"), "--layout", "ultralytics"]) == 2
    err = capsys.readouterr().err
    assert "'nn.Conv2d' (v1.0's head" in err and "--layout yolov5" in err and str(src) in err
    report = convert_file(src, tmp_path / "y.pt", layout="yolov5", verify=True)
    assert report["release"] == "v1.0" and report["verification"]["passed"]  # weights: stem remapped, rest identical
    written = load(tmp_path / "y.pt").content["model"]
    assert "yaml" not in written.state and written.get("md")["backbone"][0][2:] == ["Conv", [64, 6, 2, 2]]


@pytest.mark.parametrize("release", ["v2.0", "v4.0"])
def test_yolov5_layout_loads_in_the_yolov5_code(tmp_path, release):
    """--layout yolov5 output run by (a test-only copy of) the current YOLOv5 code: the original code's outputs."""
    import sys

    import numpy as np

    from tests._yolov5_legacy_helpers import BOX_REL_TOL, SCORE_TOL, fixture_inputs

    src, dst = MODELS[release], tmp_path / "conv.pt"
    convert_file(src, dst, layout="yolov5")
    code = str(Path(__file__).parent / "family_models" / "yolov5")
    sys.path.insert(0, code)
    try:
        from models.yolo import attempt_load

        original, converted = attempt_load(src), attempt_load(dst)
        assert type(converted.model[0]).__name__ == "Conv" and converted.model[0].conv.kernel_size == (6, 6)
        x = fixture_inputs()["256"]
        with torch.no_grad():
            ours = converted(x)[0].numpy()
            theirs64, ours64 = original.double()(x.double())[0], converted.double()(x.double())[0]
    finally:
        sys.path.remove(code)
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]
    out = np.load(src.with_suffix(".ref.npz"))["out_256"]  # the original code's float32 output (B, N, 5 + nc)
    assert np.abs(ours[..., :4] - out[..., :4]).max() <= BOX_REL_TOL * np.abs(out[..., :4]).max()
    assert np.abs(ours[..., 4:] - out[..., 4:]).max() <= SCORE_TOL
    assert float((ours64 - theirs64).abs().max() / theirs64.abs().max()) <= 1e-9
