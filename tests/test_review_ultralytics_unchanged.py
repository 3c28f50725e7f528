"""Review: the YOLOv5 schedule hooks (``optimizer_step``, ``preprocess_batch``, warm-up, scheduler, pipeline) leave
Ultralytics' own models training exactly as Ultralytics' unwrapped trainer trains them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import focus_surgery  # noqa: F401  (installs the training hooks)
from focus_surgery.yolov5.training import WRAPPED_MARK

from _yolo_synthetic_data import write_dataset

pytest.importorskip("ultralytics")


def _train(tmp_path: Path, data: Path, name: str) -> tuple[int, dict[str, torch.Tensor]]:
    """Two epochs of a tiny YOLOv8 from its YAML: optimizer steps and the final float32 weights."""
    from ultralytics import YOLO

    steps = {"n": 0}
    step = torch.optim.SGD.step

    def counted(self, *args, **kwargs):
        steps["n"] += 1
        return step(self, *args, **kwargs)

    model = YOLO("yolov8n.yaml")
    torch.optim.SGD.step = counted
    try:
        model.train(
            data=str(data),
            epochs=2,
            batch=4,
            nbs=8,  # accumulate ramps to 2: the first epoch ends with gradients pending (ni 2), stepped at ni 3
            imgsz=64,
            device="cpu",
            workers=0,
            seed=0,
            deterministic=True,
            val=False,
            plots=False,
            amp=False,
            optimizer="SGD",
            project=str(tmp_path),
            name=name,
            exist_ok=True,
            verbose=False,
            mosaic=0,
        )
    finally:
        torch.optim.SGD.step = step
    state = {k: v.detach().float().clone() for k, v in model.model.state_dict().items() if v.is_floating_point()}
    return steps["n"], state


@pytest.mark.slow
def test_ultralytics_model_trains_as_without_the_hooks(tmp_path):
    """10 images, batch 4, nbs 8, 2 epochs: the warm-up ramps ``accumulate`` to 2 so gradients are pending at the
    first epoch's end (carried over by Ultralytics, dropped by YOLOv5's v2.0+ schedule) and gradients are clipped:
    any hook that reached this model would change its steps or weights. Bit for bit."""
    from ultralytics.models.yolo.detect import train as train_module

    data = write_dataset(tmp_path / "data", n_train=10, n_val=2, size=64, seed=3)
    hooked = _train(tmp_path, data, "hooked")
    cls = train_module.DetectionTrainer
    wrapped = {k: v for k, v in vars(cls).items() if hasattr(v, WRAPPED_MARK)}
    assert {"optimizer_step", "preprocess_batch", "_build_train_pipeline", "_setup_scheduler"} <= set(wrapped)
    try:
        for k, v in wrapped.items():
            setattr(cls, k, getattr(v, WRAPPED_MARK))
        plain = _train(tmp_path, data, "plain")
    finally:
        for k, v in wrapped.items():
            setattr(cls, k, v)
    assert hooked[0] == plain[0]
    assert hooked[1].keys() == plain[1].keys()
    for k in plain[1]:
        assert torch.equal(hooked[1][k], plain[1][k]), k
