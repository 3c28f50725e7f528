"""Defaults copied from other projects, against the values read from those projects' own files when the fixtures were
built: YOLOv5's hyp files and ``check_anchors`` (tests/fixtures/yolov5-defaults/), timm's model cfgs
(tests/fixtures/timm-defaults/). Each JSON is written by the ``make_fixture.py`` next to it."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from focus_surgery.yolov5 import autoanchor, hyp
from focus_surgery.yolov5.detect import LegacyDetect

FIXTURES = Path(__file__).parent / "fixtures"
YOLOV5 = json.loads((FIXTURES / "yolov5-defaults" / "defaults.json").read_text())["releases"]


def test_v5_hyp_is_hyp_scratch_of_v5():
    assert hyp.HYP_SCRATCH_V5 == YOLOV5["v5.0"]["hyp"]["data/hyp.scratch.yaml"]
    assert YOLOV5["v5.0"]["train"]["hyp_default"] == "'data/hyp.scratch.yaml'"


def test_v7_hyp_is_hyp_scratch_low_of_v7():
    assert hyp.HYP_SCRATCH_LOW_V7 == YOLOV5["v7.0"]["hyp"]["data/hyps/hyp.scratch-low.yaml"]
    assert YOLOV5["v7.0"]["train"]["hyp_default"].endswith("'data/hyps/hyp.scratch-low.yaml'")


def test_base_hyp_starts_from_v7_defaults():
    base = hyp.base_hyp(None)
    source = YOLOV5["v7.0"]["hyp"]["data/hyps/hyp.scratch-low.yaml"]
    assert {k: base[k] for k in source} == source
    assert base["anchor_t"] == source["anchor_t"] == 4.0  # the loss's and autoanchor's threshold


@pytest.mark.parametrize("release", ["v5.0", "v7.0"])
def test_every_hyp_file_of_a_release_maps_onto_known_keys(release):
    """A stored hyp of that release (any of its hyp files) is read key by key: no key is unknown to us."""
    known = set(hyp.base_hyp(None))
    for path, values in YOLOV5[release]["hyp"].items():
        assert set(values) <= known, (path, set(values) - known)
        loaded = hyp.base_hyp(values)
        assert {k: loaded[k] for k in values} == {k: float(v) for k, v in values.items()}


def test_check_anchors_defaults_and_threshold_are_v7s():
    theirs = YOLOV5["v7.0"]["check_anchors"]
    ours = inspect.signature(autoanchor.check_anchors).parameters
    assert ours["thr"].default == theirs["thr"] and ours["imgsz"].default == theirs["imgsz"]
    assert autoanchor.BPR_THRESHOLD == theirs["bpr_threshold"]["value"]
    assert theirs["bpr_threshold"]["op"] == "Gt"  # v7.0 keeps the anchors when bpr > threshold
    assert YOLOV5["v7.0"]["train"]["check_anchors_thr_is_hyp_anchor_t"]
    kmean = inspect.signature(autoanchor.kmean_anchors).parameters
    for name in ("thr", "gen"):  # img_size has no default in ours (always passed)
        assert kmean[name].default == YOLOV5["v7.0"]["kmean_anchors"][name], name


def _head() -> LegacyDetect:
    return LegacyDetect(3, [[10, 10, 20, 20, 40, 40]], [8], [8.0], anchor_grid_buffer=True)


@pytest.mark.parametrize("good,bad,recomputed", [(49, 1, False), (48, 1, True), (50, 0, False)])
def test_check_anchors_at_its_recall_threshold(good, bad, recomputed):
    """49 of 50 targets fit (best possible recall 0.98 in float32, i.e. just above 0.98): kept, as v7.0's
    ``bpr > 0.98`` keeps them; 48 of 49 (0.9796, just below): recomputed."""
    np.random.seed(0), torch.manual_seed(0)
    fit = np.tile([0.5, 0.5, 20 / 640, 20 / 640], (good, 1))  # 20 px: an anchor exactly, whatever the jitter
    far = np.tile([0.5, 0.5, 600 / 640, 2 / 640], (bad, 1))  # 600 x 2 px: ratio 15 to every anchor
    labels = [np.concatenate([fit, far])]
    report = autoanchor.check_anchors(_head(), np.array([[640, 640]]), labels, imgsz=640)
    assert report["bpr"] == pytest.approx(good / (good + bad), abs=1e-6)
    assert (report["new_bpr"] is not None) is recomputed


# ------------------------------------------------------------------------------------------------------------ timm
TIMM = json.loads((FIXTURES / "timm-defaults" / "defaults.json").read_text())["_cfg"]
COPIED = ("num_classes", "input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "license")
OURS = {  # our model -> (timm family whose _cfg it copies, its stem conv, its classifier)
    "resnet18_s2d": ("resnet", "conv1.1", "fc"),
    "resnet50_s2d_focus": ("resnet", "conv1.1", "fc"),
    "convnext_atto_s2d": ("convnext", "stem.1", "head.fc"),
}


def _listify(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", sorted(OURS))
def test_timm_cfgs_are_the_families_defaults(name):
    pytest.importorskip("timm")
    from timm.models import get_pretrained_cfg

    import focus_surgery  # noqa: F401 - registers our models

    family, first_conv, classifier = OURS[name]
    cfg = get_pretrained_cfg(name).to_dict()
    assert {k: _listify(cfg[k]) for k in COPIED} == {k: TIMM[family][k] for k in COPIED}
    assert (cfg["first_conv"], cfg["classifier"]) == (first_conv, classifier)  # ours: the stem conv after the s2d
