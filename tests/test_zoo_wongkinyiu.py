"""yolov7 / YOLOR (paper) checkpoints: ReOrg + Conv stems converted in the records, written back in the family's
own pickle layout, loaded with (a test-only copy of) the family's code and compared with the original outputs."""

import contextlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery import stems
from focus_surgery.files import convert_file, inspect_file, verify_files
from focus_surgery.sources.yolov7 import SPACE_TO_DEPTH
from tests.family_models.reorg import ReOrg

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "focus-family"
FAMILY_CODE = ROOT / "tests" / "family_models" / "wongkinyiu"
FILES = {"yolov7": "yolov7-e6-w003125_stripped", "yolor-paper": "yolor-paper-w6-w0046875_stripped"}
REL_TOL = 1e-9


@contextlib.contextmanager
def family_code():
    """The family's ``models`` package on sys.path (as ``attempt_load`` has it), removed afterwards."""
    sys.path.insert(0, str(FAMILY_CODE))
    try:
        yield
    finally:
        sys.path.remove(str(FAMILY_CODE))
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]


def attempt_load(path):
    """As the repositories' ``attempt_load`` (without fuse): EMA if present, float, eval."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt, ckpt["ema" if ckpt.get("ema") else "model"].float().eval()


def run64(model):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 256, 256)[:1]  # the references' input, batch item 0
    with torch.no_grad():
        return model.double()(x.double())[0][0]


def test_reorg_table_is_what_the_family_code_computes():
    info = stems.recognize(ReOrg(), 3)
    assert SPACE_TO_DEPTH["models.common.ReOrg"] == (info.block_size, info.order) == (2, "yolov5")


@pytest.fixture(scope="module", params=sorted(FILES))
def converted(request, tmp_path_factory):
    family = request.param
    src = FIXTURES / f"{FILES[family]}.pt"
    dst = tmp_path_factory.mktemp(family) / "converted.pt"
    report = convert_file(src, dst, verify=True)
    return family, src, dst, report


def test_report_and_inspect(converted):
    family, src, dst, report = converted
    assert report["source"] == "yolov7" and report["kind"] == family
    assert report["verification"]["passed"] and report["max_abs_err"] < 1e-12
    assert report["replaced"][0]["rows"] == [0, 1] and report["replaced"][0]["weight"] == [[8, 12, 3, 3], [8, 3, 6, 6]]
    info = inspect_file(src)
    assert info["kind"] == family and info["stems"][0]["rows"] == [0, 1] and info["stems"][0]["order"] == "yolov5"
    assert "already converted" in inspect_file(dst)["summary"]  # issue 24: was "no ReOrg + Conv stem found"


def test_outputs_match_the_original_code(converted):
    family, src, dst, _ = converted
    ref = np.load(FIXTURES / f"{FILES[family]}.ref.npz")
    with family_code():
        original_ckpt, original = attempt_load(src)
        ckpt, model = attempt_load(dst)
        assert type(model).__module__ == "models.yolo" and isinstance(model.model[0], nn.Identity)
        conv = model.model[1].conv
        assert (conv.in_channels, conv.kernel_size, conv.stride, conv.padding) == (3, (6, 6), (2, 2), (2, 2))
        theirs, ours = run64(original), run64(model)
    rows = torch.from_numpy(ref["rows"])
    expected = torch.from_numpy(ref["output_float64"])
    scale = float(expected.abs().max())
    assert float((theirs[rows] - expected).abs().max()) <= REL_TOL * scale  # the test-only code is the family's
    error = float((ours[rows] - expected).abs().max()) / scale
    full = float((ours - theirs).abs().max()) / float(theirs.abs().max())
    print(f"{family}: converted vs original code, float64: rel {error:.2e} (stored rows), {full:.2e} (all)")
    assert error <= REL_TOL and full <= REL_TOL


def test_every_other_tensor_and_key_is_bit_identical(converted):
    family, src, dst, _ = converted
    with family_code():
        before, after = torch.load(src, weights_only=False), torch.load(dst, weights_only=False)
    assert list(before) == list(after)
    assert all(after[k] == before[k] for k in before if not isinstance(before[k], (nn.Module, np.ndarray)))
    sa, sb = before["model"].state_dict(), after["model"].state_dict()
    assert list(sa) == list(sb)
    w = sa["model.1.conv.weight"]
    assert torch.equal(sb["model.1.conv.weight"], fs.focus_to_conv_weight(w, 2, "yolov5"))
    assert sb["model.1.conv.weight"].dtype == torch.float16
    assert all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa if k != "model.1.conv.weight")
    assert not any(p.requires_grad for p in after["model"].parameters())  # as strip_optimizer left it


def test_yaml_rows_rebuild_the_converted_stem(converted):
    """The fine-tuning path rebuilds the model from model.yaml and takes the weights whose shapes match."""
    family, src, dst, _ = converted
    with family_code():
        model = torch.load(dst, weights_only=False)["model"]
    yaml = model.yaml
    assert yaml["backbone"][0] == [-1, 1, "nn.Identity", []]
    c2 = yaml["backbone"][1][3][0]
    assert yaml["backbone"][1][2:] == ["Conv", [c2, 6, 2, 2]]
    width = yaml["width_multiple"]
    scaled = math.ceil(c2 * width / 8) * 8  # make_divisible(c2 * width, 8), as their parse_model scales Conv rows
    conv = nn.Conv2d(3, scaled, 6, 2, 2, bias=False)  # Conv(c1=3, c2, k=6, s=2, p=2): yaml [c2, 6, 2, 2]
    bn = nn.BatchNorm2d(scaled)
    sd = model.state_dict()
    conv.load_state_dict({"weight": sd["model.1.conv.weight"]}, strict=True)
    bn.load_state_dict({k[len("model.1.bn.") :]: v for k, v in sd.items() if k.startswith("model.1.bn.")}, strict=True)
    assert len(yaml["backbone"]) + len(yaml["head"]) == len(model.model)  # row indices unchanged


def test_verify_says_what_it_compared(converted):
    _, src, dst, _ = converted
    result = verify_files(src, dst)
    assert result["passed"] and result["tensors"] > 100 and "stem remapped (reorg -> conv" in result["compared"]


def test_verify_of_two_different_models_fails():
    result = verify_files(FIXTURES / f"{FILES['yolov7']}.pt", FIXTURES / f"{FILES['yolor-paper']}.pt")
    assert not result["passed"] and "keys differ" in result["problem"]
