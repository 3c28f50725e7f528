"""YOLOv5's training schedule for LegacyDetect models against v7.0's own train.py: the same optimizer steps and the
same weights after each of the first 3 epochs of fine-tuning (fixture: tests/fixtures/yolov5-train/, made by the
original train.py; the original code never runs here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import focus_surgery  # noqa: F401  (registers the rows and the training hooks)
from focus_surgery.yolov5.schedule import lagging_scheduler, seeded_generators, yolov5_warmup_iterations

from _yolo_synthetic_data import write_dataset

FIXTURES = Path(__file__).parent / "fixtures"
REF = FIXTURES / "yolov5-train" / "v7.0-finetune.npz"
LAST = FIXTURES / "yolov5-train" / "v7.0-last.pt"  # train.py's last.pt: model and ema (see its README)
REF_LAST = FIXTURES / "yolov5-train" / "v7.0-from-last.npz"
NO_AUGMENTATION = dict(
    hsv_h=0, hsv_s=0, hsv_v=0, degrees=0, translate=0, scale=0, shear=0, perspective=0, flipud=0, fliplr=0, mosaic=0
)
NO_AUGMENTATION.update(mixup=0, copy_paste=0, close_mosaic=0)


def test_warmup_iterations_as_train_py():
    assert yolov5_warmup_iterations(3.0, 4) == 100  # the floor
    assert yolov5_warmup_iterations(3.0, 100) == 300
    assert yolov5_warmup_iterations(0.0, 1000) == 100


def test_lagging_scheduler_is_one_epoch_behind():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lagging_scheduler(opt, lambda e: 1.0 - e / 10)
    sched.last_epoch = -1
    lrs = []
    for _ in range(3):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.9]  # train.py: epoch e trains at lf(e - 1) after warm-up


def test_seeded_generators_restore_the_global_state():
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    with seeded_generators(1):
        inside = np.random.rand()
    assert np.random.rand() == expected
    np.random.seed(1)
    assert inside == np.random.rand()


def _train(
    tmp_path: Path, schedule: bool, src: Path = FIXTURES / "yolov5-val" / "yolov5s-v7.0-w0.0625-nc3-seed7.pt", epochs=3
) -> tuple[list[int], dict[int, dict[str, torch.Tensor]]]:
    """Fine-tune the v7.0 checkpoint ``src`` as the fixture's train.py run did; optimizer steps and float32 weights
    per epoch (key ``"anchors"``: the head's anchors after the first batch)."""
    from ultralytics import YOLO

    from focus_surgery.yolov5.convert import convert_yolov5, save_conversion

    data = write_dataset(tmp_path / "data", n_train=32, n_val=2, size=64, seed=3)
    dst = tmp_path / "converted.pt"
    conv = convert_yolov5(src)
    if not schedule:
        for m in (conv.model, conv.training_model):
            if m is not None:
                m.yaml["yolov5_hyp"] = {**m.yaml.get("yolov5_hyp", {}), "schedule": 0}
    save_conversion(conv, dst, "conv")
    steps, states, per_epoch = {"n": 0}, {}, []
    step = torch.optim.SGD.step

    def counted(self, *args, **kwargs):
        steps["n"] += 1
        return step(self, *args, **kwargs)

    def epoch_end(trainer):
        per_epoch.append(steps["n"])
        states[trainer.epoch] = {
            k: v.detach().float().clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()
        }

    def batch_end(trainer):
        states.setdefault("anchors", trainer.model.model[-1].anchors.detach().float().clone())

    model = YOLO(dst)
    model.add_callback("on_train_epoch_end", epoch_end)
    model.add_callback("on_train_batch_end", batch_end)
    torch.optim.SGD.step = counted
    try:
        model.train(
            data=str(data),
            epochs=epochs,
            batch=8,
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
            name="run",
            exist_ok=True,
            verbose=False,
            **NO_AUGMENTATION,
        )
    finally:
        torch.optim.SGD.step = step
    return per_epoch, states


@pytest.mark.slow
def test_fine_tuning_follows_v7_train_py(tmp_path):
    """32 images, batch 8, 3 epochs: train.py makes 4, 8, 10 optimizer steps (warm-up of 100 iterations,
    accumulation ramping to 64 / 8); the weights agree to float32 noise after epoch 1 and stay within its growth."""
    ref = np.load(REF)
    per_epoch, states = _train(tmp_path / "yolov5", schedule=True)
    assert per_epoch == ref["steps_per_epoch"].tolist() == [4, 8, 10]
    # measured (max |ours - train.py| over every weight and BatchNorm statistic): 5.5e-7, 2.2e-5, 9.8e-5 (epoch 0:
    # median 6e-8, float32 rounding, which the warm-up's growing learning rate then amplifies); bounds about 4x
    bounds = {0: 2e-6, 1: 1e-4, 2: 4e-4}
    for epoch, bound in bounds.items():
        assert _worst(states, ref, epoch) <= bound, (epoch, _worst(states, ref, epoch))
    # Ultralytics' own schedule (warm-up capped by the epoch count, accumulation capped): 2 steps, far weights
    plain_steps, plain = _train(tmp_path / "ultralytics", schedule=False)
    assert plain_steps[-1] < 10
    assert _worst(plain, ref, 2) > 10 * bounds[2]


def _worst(states: dict, ref, epoch: int) -> float:
    """Largest |ours - train.py| over every weight and BatchNorm statistic after ``epoch``."""
    return max(
        float(np.abs(states[epoch][k[3:]].numpy() - ref[k]).max())
        for k in ref.files
        if k.startswith(f"e{epoch}/") and "num_batches" not in k
    )


@pytest.mark.slow
def test_last_pt_fine_tunes_its_model_and_evolves_anchors_as_train_py(tmp_path):
    """A last.pt written by v7.0's train.py (``model`` and a far ``ema``), fine-tuned with ``anchor_t`` 1.5 (best
    possible recall 0.73 < 0.98): train.py tunes ``ckpt['model']`` and evolves new anchors from its seeded generators,
    rounded to float16 by ``model.half().float()``; so does the Ultralytics trainer with YOLOv5's schedule."""
    from focus_surgery.yolov5.convert import convert_yolov5

    ref = np.load(REF_LAST)
    conv = convert_yolov5(LAST)
    ema, model = conv.model.state_dict(), conv.training_model.state_dict()
    apart = max(float((ema[k] - model[k]).abs().max()) for k in ema if ema[k].is_floating_point())
    assert apart > 0.1  # measured 0.18
    per_epoch, states = _train(tmp_path / "yolov5", schedule=True, src=LAST, epochs=2)
    assert per_epoch == ref["steps_per_epoch"].tolist() == [4, 8]
    anchors = states.pop("anchors")
    assert not torch.equal(anchors, conv.model.model[-1].anchors.float())  # evolved
    assert torch.equal(anchors, torch.from_numpy(ref["anchors"]))  # the same anchors, float16-rounded
    assert torch.equal(anchors, anchors.half().float())
    # measured: 7.7e-7 after epoch 1, 8.2e-6 after epoch 2 (float32 rounding amplified by the rising learning rate);
    # fine-tuned from the EMA (Ultralytics' choice) instead: 0.16 and 0.14
    for epoch, bound in {0: 2e-6, 1: 1e-4}.items():
        assert _worst(states, ref, epoch) <= bound, (epoch, _worst(states, ref, epoch))
