"""Shipped configs: listed one line each, and found by name (scale letter included) as Ultralytics finds its own."""

from __future__ import annotations

from pathlib import Path

import pytest

import focus_surgery as fs
from focus_surgery.model_configs import config_dir, find_config

ROOT = Path(__file__).resolve().parents[1]

# A local config under one of our names: 1 class, a plain Conv stem (the shipped yolov8-spd.yaml has an SPDConv stem).
LOCAL_YAML = """
nc: 1
scales:
  n: [0.33, 0.25, 1024]
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 1, Conv, [256, 3, 2]]
head:
  - [[2], 1, Detect, [nc]]
"""


def test_every_config_is_listed_with_one_line():
    listed = fs.list_configs()
    assert sorted(listed) == sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    for name, what in listed.items():
        assert "\n" not in what and len(what) > 40, (name, what)
        assert what.startswith(f"build as {name.split('-')[0][:6]}{{n,s,m,l,x}}-"), what
    assert listed["yolov8-spd.yaml"].startswith("build as yolov8{n,s,m,l,x}-spd.yaml: SPD-Conv YOLO")


def test_find_config_searches_only_the_shipped_folder():
    shipped = {p.name: p.read_bytes() for p in config_dir().glob("*.yaml")}  # installed, or the checkout's configs/
    assert shipped == {p.name: p.read_bytes() for p in (ROOT / "configs").glob("*.yaml")}
    assert Path(find_config("yolov8-spd.yaml")) == config_dir() / "yolov8-spd.yaml"
    for name in (
        "yolov8n-spd.yaml",
        "yolov8.yaml",
        "configs/yolov8-spd.yaml",
        str(config_dir() / "yolov8-spd.yaml"),
        "yolov8-spd.pt",
        "",
        "*.yaml",
    ):
        assert find_config(name) is None, name


ultralytics = pytest.importorskip("ultralytics")


def _build(name: str):
    from ultralytics import YOLO

    return YOLO(name, verbose=False).model


def test_config_by_name_with_scale_letter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no such file here: found in the shipped folder, as Ultralytics finds yolov8n.yaml
    nano, small = _build("yolov8n-spd.yaml"), _build("yolov8s-spd.yaml")
    assert (
        type(nano.model[0]) is fs.SPDConv and nano.yaml["scale"] == "n" and nano.yaml["yaml_file"] == "yolov8n-spd.yaml"
    )
    assert (nano.model[0].conv.conv.out_channels, small.model[0].conv.conv.out_channels) == (16, 32)
    legacy = _build("yolov5n-focus-legacy.yaml")
    assert type(legacy.model[-1]).__name__ == "LegacyDetect" and legacy.yaml["scale"] == "n"


@pytest.mark.parametrize("local_name", ["yolov8-spd.yaml", "yolov8n-spd.yaml"])
def test_local_file_of_the_same_name_wins(tmp_path, monkeypatch, local_name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / local_name).write_text(LOCAL_YAML)
    model = _build("yolov8n-spd.yaml")
    assert type(model.model[0]).__name__ == "Conv" and model.yaml["nc"] == 1


def test_ultralytics_names_and_errors_are_untouched(tmp_path, monkeypatch):
    from focus_surgery.integrations import ultralytics as fs_ultralytics

    monkeypatch.chdir(tmp_path)
    assert type(_build("yolov8n.yaml").model[0]).__name__ == "Conv"  # Ultralytics' own config
    with pytest.raises(FileNotFoundError, match="'yolov8-nothere.yaml' does not exist"):
        _build("yolov8n-nothere.yaml")
    fs_ultralytics.unregister()  # Ultralytics alone does not know our configs
    try:
        with pytest.raises(FileNotFoundError, match="'yolov8-spd.yaml' does not exist"):
            _build("yolov8n-spd.yaml")
    finally:
        fs.register()
    assert type(_build("yolov8n-spd.yaml").model[0]) is fs.SPDConv
