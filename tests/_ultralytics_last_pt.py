"""Write the ``last.pt`` of an interrupted Ultralytics training run (issue 9): the file a user resumes from.

Ultralytics strips a checkpoint only when training finishes; until then ``last.pt`` holds the optimizer state, the
EMA and the model with its ``args`` as an ``ultralytics.utils.IterableSimpleNamespace``. A real two-epoch run on a
synthetic dataset (a few 64 px images) is started in a child process, and ``last.pt`` is copied as it was after
epoch 1, i.e. what an interruption during epoch 2 leaves. Offline, CPU, no AMP check, no plots, no workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "tests" / "fixtures" / "yolo-focus-tiny.yaml"

_TRAIN = r"""
import shutil, sys
from pathlib import Path
import numpy as np
from PIL import Image
from ultralytics import YOLO

work, out = Path(sys.argv[1]), Path(sys.argv[2])
rng = np.random.default_rng(0)
for split in ("train", "val"):
    (work / "images" / split).mkdir(parents=True, exist_ok=True)
    (work / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(work / "images" / split / f"{i}.png")
        (work / "labels" / split / f"{i}.txt").write_text(f"{i % 3} 0.5 0.5 0.4 0.4\n")
data = work / "data.yaml"
data.write_text(f"path: {work}\ntrain: images/train\nval: images/val\nnames: {{0: a, 1: b, 2: c}}\n")


def keep_first_epoch(trainer):
    if trainer.epoch == 0:  # last.pt as the interrupted run leaves it (before the final strip_optimizer)
        shutil.copyfile(trainer.last, out)


model = YOLO(sys.argv[3])
model.add_callback("on_model_save", keep_first_epoch)
model.train(data=str(data), epochs=2, imgsz=64, batch=2, workers=0, amp=False, plots=False, device="cpu",
            project=str(work / "runs"), name="run", exist_ok=True, verbose=False, val=False, seed=0)
"""


def write_interrupted_last_pt(tmp: Path) -> Path:
    """Train the tiny Focus detector for two epochs in ``tmp``; return ``last.pt`` as it was after epoch 1."""
    out = tmp / "last.pt"
    env = dict(
        os.environ,
        YOLO_OFFLINE="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        YOLO_CONFIG_DIR=str(tmp / "ultralytics-config"),
    )
    result = subprocess.run(
        [sys.executable, "-c", _TRAIN, str(tmp / "train"), str(out), str(TINY_YAML)],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=300,
    )
    if result.returncode or not out.is_file():
        raise RuntimeError(f"Ultralytics training failed: {result.stderr[-2000:]}")
    return out
