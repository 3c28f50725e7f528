"""Review of issue 22 item 4 (YOLOv5 forks in the YOLOv5 layout): the JSON of existing outputs keeps its keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from focus_surgery.cli import main

pytest.importorskip("ultralytics")

LITE = Path(__file__).parent / "fixtures" / "yolov5-forks" / "v5lite-g-9d649a6-d0.33-w0.125-nc3-fp16.pt"


def test_layout_yolov5_verification_keeps_its_json_keys(tmp_path, capsys):
    """``convert --layout yolov5 --verify --json`` of a model with no Ultralytics counterpart gave ``verification``
    with ``compared``, ``tensors`` (a count), ``max_abs_err``, ``passed``, ``problem`` before the stem was also run in
    float64: those keys (and the count's type) stay, the stem's check is added."""
    assert main(["convert", str(LITE), str(tmp_path / "o.pt"), "--layout", "yolov5", "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    check = report["verification"]
    assert {"compared", "tensors", "max_abs_err", "passed", "problem"} <= set(check)
    assert isinstance(check["tensors"], int) and check["tensors"] > 0 and check["passed"] is True
    assert check["max_abs_err"] == report["max_abs_err"] and 0.0 <= check["max_abs_err"] < 1e-12
    assert check["stem"]["passed"] is True and check["stem"]["dtype"] == "float64"  # the stem run in float64
