"""Every YOLOv5 release's own loss (v1.0 ... v7.0, master), and the release travelling from a checkpoint to the loss.

References: tests/fixtures/yolov5-loss-releases/release-*.npz and file-*.npz, computed by each release's original
``compute_loss`` / ``ComputeLoss`` and ``train.py`` gain scaling (make_fixture.py there), in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from focus_surgery.yolov5.detect import LegacyDetect
from focus_surgery.yolov5.loss import YOLOv5Loss, corners_wh_release
from focus_surgery.yolov5.loss_rules import RELEASES, release_rules, rules_release, scale_gains

FIXTURES = Path(__file__).parent / "fixtures"
LOSS = FIXTURES / "yolov5-loss-releases"
CASES = sorted(p.stem for p in LOSS.glob("release-*.npz"))


def _load(path: Path) -> dict:
    data = np.load(path)
    return {k: data[k] for k in data.files}


def _head(ref: dict) -> LegacyDetect:
    anchors, stride = torch.from_numpy(ref["anchors"]), torch.from_numpy(ref["stride"])
    nc = ref["p0"].shape[-1] - 5
    px = (anchors * stride.view(-1, 1, 1)).reshape(len(stride), -1).tolist()
    head = LegacyDetect(nc, px, [8] * len(stride), stride.tolist(), anchor_grid_buffer=False).double()
    head._buffers["anchors"] = anchors.clone()  # bit-exact grid units, as the release held them
    return head


def _assert_same(parts: torch.Tensor, total: torch.Tensor, ref: dict, what: str) -> None:
    for name, ours in zip(("lbox", "lobj", "lcls"), parts.tolist()):
        theirs = float(ref[name][0])
        assert ours == theirs, (what, name, ours, theirs)
    assert total.item() == float(ref["loss"]), (what, total.item(), float(ref["loss"]))


def test_every_release_has_a_fixture():
    assert sorted({c.split("-")[1] for c in CASES}) == sorted(RELEASES)


@pytest.mark.parametrize("case", CASES)
def test_release_loss_is_bit_identical(case):
    """Gains scaled as the release's train.py scales them, then its loss: the same floats, component by component."""
    ref = _load(LOSS / f"{case}.npz")
    release = str(ref["release"])
    head = _head(ref)
    hyp = {**json.loads(str(ref["hyp"])), "label_smoothing": float(ref["label_smoothing"])}
    scaled = scale_gains(hyp, head.nl, head.nc, int(ref["imgsz"]), release)
    theirs = json.loads(str(ref["scaled"]))
    for key in ("box", "obj", "cls"):
        assert scaled[key] == theirs[key], (case, key, scaled[key], theirs[key])
    assert scaled["label_smoothing"] == theirs.get("label_smoothing", 0.0)  # v1.0-v4.0 ignore it
    p = [torch.from_numpy(ref[f"p{i}"]).requires_grad_() for i in range(head.nl)]
    total, parts = YOLOv5Loss(head, scaled, release=release).compute(p, torch.from_numpy(ref["targets"]))
    _assert_same(parts, total, ref, case)
    total.backward()
    assert all(torch.isfinite(pi.grad).all() for pi in p)


def test_releases_differ_where_their_rules_differ():
    """v4.0 and v5.0 read the same outputs differently (balance, eps, smoothing), as do v6.1, v6.2 and v7.0."""
    ref = _load(LOSS / "release-v4.0-1.npz")
    head = _head(ref)
    hyp = {**json.loads(str(ref["hyp"])), "label_smoothing": 0.1}
    p = [torch.from_numpy(ref[f"p{i}"]) for i in range(head.nl)]
    targets = torch.from_numpy(ref["targets"])
    parts = {
        r: YOLOv5Loss(head, scale_gains(hyp, head.nl, head.nc, 128, r), release=r).compute(p, targets)[1]
        for r in ("v4.0", "v5.0", "v6.1", "v6.2", "v7.0", "master")
    }
    assert not torch.allclose(parts["v4.0"], parts["v5.0"], rtol=1e-3)
    for a, b in (("v6.1", "v6.2"), ("v6.2", "v7.0"), ("v6.1", "v7.0")):
        assert not torch.equal(parts[a][0], parts[b][0]), (a, b)


def test_recorded_ranges_take_their_newest_release():
    assert rules_release("v6.0-v7.0") == "v7.0" and not corners_wh_release("v6.0-v7.0")
    assert rules_release("v6.0-v7.0 (with a Focus stem)") == "v7.0"
    assert rules_release("v4.0-v5.0") == "v5.0" and rules_release("v1.0-v2.0") == "v2.0"
    assert rules_release(None) == "v7.0" and rules_release("yolov3 repository (v9.x)") == "v7.0"
    assert corners_wh_release("v6.1") and corners_wh_release("v4.0") and not corners_wh_release("v6.2")
    assert release_rules("v4.0").level_balance(3) == [4.0, 1.0, 0.3]
    assert release_rules("v5.0").level_balance(3) == [4.0, 1.0, 0.4]
    with pytest.raises(ValueError, match="at most 4 levels"):
        release_rules("v3.1").level_balance(5)


FILES = {
    "v4.0": FIXTURES / "yolov5-legacy" / "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp32.pt",
    "v7.0": FIXTURES / "yolov5-val" / "yolov5s-v7.0-w0.0625-nc3-seed7.pt",
}


@pytest.mark.parametrize("release", sorted(FILES))
def test_release_travels_from_the_file_to_the_loss(release, tmp_path):
    """A file written by YOLOv5 vX converts (stem kept) and loads in Ultralytics; the criterion Ultralytics' trainer
    builds reads the release from the file and gives vX's ComputeLoss on the same input and targets (float64)."""
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    from focus_surgery.yolov5.convert import convert_yolov5, save_conversion
    from focus_surgery.yolov5.training import yolov5_criterion

    ref = _load(LOSS / f"file-{release}.npz")
    dst = tmp_path / "converted.pt"
    save_conversion(convert_yolov5(FILES[release], to="focus"), dst, "focus")
    model = YOLO(dst).model.double().train()
    assert model.yaml["yolov5_release"] == release
    model.args = {"imgsz": int(ref["imgsz"])}
    criterion = model.init_criterion()  # what Ultralytics' trainer calls
    assert isinstance(criterion, YOLOv5Loss) and criterion.rules.release == release
    assert yolov5_criterion(model).rules.release == release
    targets = torch.from_numpy(ref["targets"])
    batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:]}
    total, items = criterion(model(torch.from_numpy(ref["x"])), batch)
    parts = torch.stack([items[k] for k in ("box_loss", "obj_loss", "cls_loss")]).view(-1)
    theirs = torch.tensor([float(ref[k][0]) for k in ("lbox", "lobj", "lcls")], dtype=torch.float64)
    # the forward passes differ by float64 rounding only (Ultralytics' SiLU / Focus vs the release's)
    assert torch.allclose(parts, theirs, rtol=1e-12, atol=0), (parts - theirs).abs().max()
    assert abs(total.item() - float(ref["loss"])) <= 1e-12 * float(ref["loss"])
