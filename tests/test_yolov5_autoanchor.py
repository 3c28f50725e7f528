"""YOLOv5's autoanchor (focus_surgery.yolov5.autoanchor) against the original v7.0 check_anchors: same labels, same
seeds, same anchors (fixtures made by the original code: tests/fixtures/yolov5-autoanchor/)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from focus_surgery.yolov5.autoanchor import check_anchors, kmeans
from focus_surgery.yolov5.detect import LegacyDetect

FIXTURES = Path(__file__).parent / "fixtures" / "yolov5-autoanchor"
CASES = sorted(p.stem for p in FIXTURES.glob("*.npz"))


def _case(name: str):
    ref = np.load(FIXTURES / f"{name}.npz")
    stride = ref["stride"]
    px = (ref["anchors_before"] * stride[:, None, None]).reshape(len(stride), -1).tolist()
    head = LegacyDetect(3, px, [8] * len(stride), stride.tolist(), anchor_grid_buffer=True)
    head._buffers["anchors"] = torch.from_numpy(ref["anchors_before"]).clone()
    labels = np.split(ref["labels"][:, 1:], np.cumsum(ref["counts"])[:-1])  # xywh per image
    return ref, head, labels


@pytest.mark.parametrize("name", CASES)
def test_same_anchors_as_the_original(name):
    ref, head, labels = _case(name)
    seed = int(ref["seed"])
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    report = check_anchors(head, ref["shapes"], labels, thr=float(ref["thr"]), imgsz=int(ref["imgsz"]))
    expected = torch.from_numpy(ref["anchors_after"])
    assert torch.equal(head.anchors, expected), (head.anchors - expected).abs().max()
    changed = not np.array_equal(ref["anchors_before"], ref["anchors_after"])
    assert report["replaced"] == changed
    if changed:  # the pixel buffer YOLOv5 v1.0-v5.0 files carry follows
        assert torch.allclose(head.anchor_grid.view(-1, 2), (expected * head.stride.view(-1, 1, 1)).view(-1, 2))


def test_cases_cover_every_branch():
    outcomes = {
        n: not np.array_equal(*(np.load(FIXTURES / f"{n}.npz")[k] for k in ("anchors_before", "anchors_after")))
        for n in CASES
    }
    assert outcomes == {
        "v7.0-elongated": True,
        "v7.0-few-labels": True,
        "v7.0-good-fit": False,
        "v7.0-tiny-boxes": True,
    }


def test_other_seed_other_anchors():
    """The result depends on the generators' state (the comparison above can fail)."""
    ref, head, labels = _case("v7.0-elongated")
    random.seed(99), np.random.seed(99)
    check_anchors(head, ref["shapes"], labels, thr=4.0, imgsz=int(ref["imgsz"]))
    assert not torch.equal(head.anchors, torch.from_numpy(ref["anchors_after"]))


def test_kmeans_separates_clusters():
    np.random.seed(0)
    obs = np.concatenate([np.random.randn(20, 2) * 0.1, np.random.randn(20, 2) * 0.1 + 5]).astype(np.float32)
    centres = kmeans(obs, 2, iterations=3)
    assert sorted(np.round(centres[:, 0]).tolist()) == [0.0, 5.0]
