"""Regenerate the sample checkpoints in checkpoints/ (random weights, fixed seeds; no download).

./run  # once, to create .venv
.venv/bin/python scripts/make_sample_checkpoints.py
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from focus_surgery.demo import build_focus_model, randomize_batchnorm

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "checkpoints"

TINY_YOLO_FOCUS_YAML = ROOT / "tests" / "fixtures" / "yolo-focus-tiny.yaml"  # also used by the tests


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
    model = YOLO(str(TINY_YOLO_FOCUS_YAML))
    randomize_batchnorm(model.model, seed=0)
    model.model.names = {0: "widget", 1: "gadget", 2: "gizmo"}
    path = OUT / "yolo-focus-tiny.pt"
    model.save(str(path))
    return path


if __name__ == "__main__":
    for made in (make_state_dict(), make_ultralytics_checkpoint()):
        print(f"wrote {made.relative_to(ROOT)} ({made.stat().st_size / 1e3:.0f} kB)")
