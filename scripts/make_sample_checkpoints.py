"""Regenerate the sample checkpoints in checkpoints/ (random weights, fixed seeds; no download).

    ./run  # once, to create .venv
    .venv/bin/python scripts/make_sample_checkpoints.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from focus_surgery.demo import build_focus_model, randomize_batchnorm

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "checkpoints"

TINY_YOLO_FOCUS_YAML = """\
# A tiny YOLOv8-style detector whose stem is the YOLOv5 Focus (space-to-depth + 3x3 conv).
nc: 3
backbone:
  - [-1, 1, Focus, [16, 3]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, C2f, [32, True]]
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, C2f, [64, True]]
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, SPPF, [64, 5]]
head:
  - [-1, 1, nn.Upsample, [None, 2, nearest]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 1, C2f, [64]]
  - [[9, 6], 1, Detect, [nc]]
"""


def make_state_dict() -> Path:
    """focus-backbone.pt: the demo backbone's state dict (YOLOv5 Focus stem at model.0)."""
    state = {f"model.{k}": v for k, v in build_focus_model(seed=0).state_dict().items()}
    path = OUT / "focus-backbone.pt"
    torch.save(state, path)
    return path


def make_ultralytics_checkpoint() -> Path:
    """yolo-focus-tiny.pt: an Ultralytics checkpoint built from TINY_YOLO_FOCUS_YAML, BatchNorm randomised."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "yolo-focus-tiny.yaml"
        cfg.write_text(TINY_YOLO_FOCUS_YAML)
        model = YOLO(str(cfg))
    randomize_batchnorm(model.model, seed=0)
    model.model.names = {0: "widget", 1: "gadget", 2: "gizmo"}
    path = OUT / "yolo-focus-tiny.pt"
    model.save(str(path))
    return path


if __name__ == "__main__":
    for made in (make_state_dict(), make_ultralytics_checkpoint()):
        print(f"wrote {made.relative_to(ROOT)} ({made.stat().st_size / 1e3:.0f} kB)")
