"""Training LegacyDetect models (converted YOLOv5 checkpoints, YAMLs with a LegacyDetect row) with Ultralytics'
trainer and YOLOv5's loss: the loss goes down, checkpoints load, resume and convert back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import focus_surgery  # noqa: F401  (registers the rows and the loss hook)
from focus_surgery.yolov5.hyp import HYP_KEY
from focus_surgery.yolov5.loss import YOLOv5Loss
from focus_surgery.yolov5.training import legacy_head, yolov5_criterion

from _yolo_synthetic_data import write_dataset

pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402

V4_FIXTURE = Path(__file__).parent / "fixtures" / "yolov5-legacy" / "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt"
TRAIN = dict(
    imgsz=64,
    batch=4,
    workers=0,
    amp=False,
    plots=False,
    device="cpu",
    exist_ok=True,
    verbose=False,
    warmup_epochs=0,
    val=True,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic"), n_train=8, n_val=8)


def _fixed_batch(data: Path) -> dict[str, torch.Tensor]:
    """The validation images (64 px, no augmentation) and labels as one Ultralytics batch."""
    import cv2

    root = data.parent
    imgs, idx, cls, boxes = [], [], [], []
    for k, path in enumerate(sorted((root / "images" / "val").glob("*.png"))):
        imgs.append(torch.from_numpy(cv2.imread(str(path))[..., ::-1].copy()).permute(2, 0, 1).float() / 255)
        rows = np.loadtxt(root / "labels" / "val" / f"{path.stem}.txt", ndmin=2)
        idx += [k] * len(rows)
        cls.append(torch.from_numpy(rows[:, :1]).float())
        boxes.append(torch.from_numpy(rows[:, 1:]).float())
    return {
        "img": torch.stack(imgs),
        "batch_idx": torch.tensor(idx, dtype=torch.float32),
        "cls": torch.cat(cls),
        "bboxes": torch.cat(boxes),
    }


def _loss(model: torch.nn.Module, batch: dict) -> float:
    """YOLOv5 loss of ``model`` (eval mode: BatchNorm statistics fixed) on ``batch``, gains for 64 px."""
    model = model.float().eval()
    model.args = {"imgsz": 64}
    with torch.no_grad():
        return float(yolov5_criterion(model)(model(batch["img"]), batch)[0])


def test_criterion_hook_picks_yolov5_loss_only_for_legacy_heads():
    legacy = YOLO("configs/yolov5n-focus-legacy.yaml").model
    legacy.args = {"imgsz": 640}
    assert isinstance(legacy.init_criterion(), YOLOv5Loss)
    from ultralytics.cfg import get_cfg

    plain = YOLO("yolov8n.yaml").model
    plain.args = get_cfg()
    assert not isinstance(plain.init_criterion(), YOLOv5Loss)


@pytest.mark.slow
def test_yaml_model_trains_and_lowers_the_loss(data, tmp_path):
    """configs/yolov5-focus-legacy.yaml with anchors 6x too large for 64 px images: autoanchor replaces them at the
    start (YOLOv5's default), then two epochs lower the loss."""
    import yaml

    cfg = yaml.safe_load(Path("configs/yolov5-focus-legacy.yaml").read_text())
    cfg["anchors"] = [[a * 6 for a in row] for row in cfg["anchors"]]
    path = tmp_path / "yolov5n-legacy.yaml"  # scale letter n in the name, as for Ultralytics' YAMLs
    path.write_text(yaml.safe_dump(cfg))
    model = YOLO(path)
    model.train(data=str(data), epochs=2, project=str(tmp_path), name="yaml", optimizer="SGD", lr0=0.02, **TRAIN)
    anchors = model.trainer.model.yaml["anchors"]
    assert anchors != cfg["anchors"] and max(max(row) for row in anchors) < 64  # autoanchor fitted 64 px labels
    fresh = tmp_path / "yolov5n-fitted.yaml"  # the untrained model with the fitted anchors: the loss before
    fresh.write_text(yaml.safe_dump({**cfg, "anchors": anchors}))
    batch = _fixed_batch(data)
    before = _loss(YOLO(fresh).model, batch)
    weights = tmp_path / "yaml" / "weights"
    csv = (tmp_path / "yaml" / "results.csv").read_text().splitlines()
    assert "train/obj_loss" in csv[0] and len(csv) == 3  # Ultralytics' logging with YOLOv5's loss names
    for name in ("last.pt", "best.pt"):
        trained = YOLO(weights / name)
        assert legacy_head(trained.model) is not None and trained.model.yaml["anchors"] == anchors
        px = (legacy_head(trained.model).anchors * legacy_head(trained.model).stride.view(-1, 1, 1)).view(3, -1)
        assert torch.allclose(px.float(), torch.tensor(anchors), atol=0.02)  # the buffer and the YAML agree
        after = _loss(trained.model, batch)
        assert after < before, (name, before, after)
        assert isinstance(
            trained.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)[0].boxes.data, torch.Tensor
        )
    # the trained Focus model converts with focus-surgery (Focus -> one 6x6 stride-2 conv), verified
    out = tmp_path / "conv.pt"
    run = subprocess.run(
        [sys.executable, "-m", "focus_surgery", "convert", str(weights / "last.pt"), str(out), "--verify"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert type(YOLO(out).model.model[0]).__name__ == "Conv"


@pytest.mark.slow
def test_converted_checkpoint_fine_tunes_resumes_and_converts(data, tmp_path):
    converted = tmp_path / "v4-conv.pt"
    run = subprocess.run(
        [sys.executable, "-m", "focus_surgery", "convert", str(V4_FIXTURE), str(converted)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    model = YOLO(converted)
    assert model.model.yaml[HYP_KEY]["lrf"] == 0.2  # the checkpoint's own hyp travels in the YAML
    assert model.model.yaml["yolov5_release"] == "v4.0" and yolov5_criterion(model.model).corners_wh  # exact release

    def interrupt(trainer):  # a crash right after epoch 1 was saved
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    model.add_callback("on_model_save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.train(data=str(data), epochs=2, project=str(tmp_path), name="ft", **TRAIN)
    last = tmp_path / "ft" / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None
    assert ckpt["train_args"]["lrf"] == 0.2  # YOLOv5's value replaced Ultralytics' default 0.01
    resumed = YOLO(last)
    resumed.train(resume=True)
    assert resumed.trainer.start_epoch == 1  # continued, not restarted
    final = torch.load(last, weights_only=False)
    assert final["train_args"]["epochs"] == 2 and len((tmp_path / "ft" / "results.csv").read_text().splitlines()) == 3
    for name in ("last.pt", "best.pt"):
        trained = YOLO(tmp_path / "ft" / "weights" / name)
        assert legacy_head(trained.model) is not None and trained.model.yaml[HYP_KEY]["lrf"] == 0.2
    back = tmp_path / "focus.pt"
    run = subprocess.run(
        [sys.executable, "-m", "focus_surgery", "convert", str(last), str(back), "--to", "focus", "--verify"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert type(YOLO(back).model.model[0]).__name__ == "Focus"


@pytest.fixture(scope="module")
def v2_converted(tmp_path_factory) -> Path:
    v2 = Path(__file__).parent / "fixtures" / "yolov5-legacy" / "yolov5s-v2.0-d0.33-w0.125-nc3-seed104-fp16.pt"
    converted = tmp_path_factory.mktemp("v2") / "v2.pt"
    assert subprocess.run([sys.executable, "-m", "focus_surgery", "convert", str(v2), str(converted)]).returncode == 0
    return converted


@pytest.mark.parametrize("nc", [3, 2])
def test_old_release_layers_survive_the_trainer_rebuild(v2_converted, tmp_path, nc):
    """A v2.0 model (LeakyReLU, YOLOv5's BottleneckCSP) is trained as loaded, not as its YAML rebuilds it (SiLU)."""
    from ultralytics.models.yolo.detect.train import DetectionTrainer

    converted = v2_converted
    data = write_dataset(tmp_path / "data", n_train=2, n_val=2, nc=nc)
    loaded = YOLO(converted).model.float().eval()
    trainer = DetectionTrainer(overrides={"model": str(converted), "data": str(data), "device": "cpu"})
    built = trainer.get_model(cfg=loaded.yaml, weights=loaded, verbose=False).eval()
    acts = {type(m).__name__ for m in built.modules() if "ReLU" in type(m).__name__ or "SiLU" in type(m).__name__}
    assert acts == {"LeakyReLU"}
    assert legacy_head(built).nc == nc and all(p.requires_grad for p in built.parameters())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        if nc == 3:
            assert torch.equal(built(x)[0], loaded(x)[0])
        else:  # new head, same body
            assert torch.equal(built.model[:-1][0](x), loaded.model[0](x))
