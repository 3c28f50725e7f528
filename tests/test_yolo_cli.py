"""``focus-surgery yolo ...``: Ultralytics' own command line with our YAML rows, in a subprocess (as users run it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _yolo_synthetic_data import write_dataset

pytest.importorskip("ultralytics")
ROOT = Path(__file__).resolve().parents[1]
TINY = ["imgsz=64", "batch=4", "workers=0", "amp=False", "plots=False", "device=cpu", "exist_ok=True"]
YOLO_SCRIPT = Path(sys.executable).with_name("yolo")


def _run(cmd: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("yolo-cli")
    shutil.copytree(ROOT / "configs", work / "configs")  # relative model path: Ultralytics reads the scale letter
    write_dataset(work / "data", n_train=4, n_val=2)
    return work


@pytest.mark.slow
def test_train_val_predict_export(workdir):
    fs = [sys.executable, "-m", "focus_surgery", "yolo"]
    run = _run(
        fs
        + [
            "train",
            "model=configs/yolov8n-spd.yaml",
            "data=data/data.yaml",
            "epochs=1",
            f"project={workdir / 'runs'}",
            "name=spd",
            *TINY,
        ],
        workdir,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    best = workdir / "runs" / "spd" / "weights" / "best.pt"
    assert best.is_file()
    runs = f"project={workdir / 'runs'}"
    run = _run(fs + ["val", f"model={best}", "data=data/data.yaml", runs, "name=val", *TINY], workdir)
    assert run.returncode == 0 and "mAP50" in run.stdout + run.stderr, run.stderr[-2000:]
    image = workdir / "data" / "images" / "val" / "0.png"
    run = _run(
        fs
        + ["predict", f"model={best}", f"source={image}", "imgsz=64", "device=cpu", runs, "name=pred", "exist_ok=True"],
        workdir,
    )
    assert run.returncode == 0 and list((workdir / "runs" / "pred").glob("0.*")), run.stderr[-2000:]
    run = _run(fs + ["export", f"model={best}", "format=onnx", "imgsz=64", "device=cpu"], workdir)
    assert run.returncode == 0 and best.with_suffix(".onnx").is_file(), run.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(not YOLO_SCRIPT.is_file(), reason="Ultralytics' yolo script is not beside this Python")
def test_plain_yolo_cannot_see_our_rows_but_the_entry_can(workdir):
    """What the README says: plain ``yolo`` runs no focus-surgery code; ``focus-surgery yolo`` (or a
    ``sitecustomize.py`` that imports focus_surgery, on PYTHONPATH) makes the same command work."""
    image = workdir / "data" / "images" / "val" / "0.png"
    args = [
        "predict",
        "model=configs/yolov8n-spd.yaml",
        f"source={image}",
        "imgsz=64",
        "device=cpu",
        f"project={workdir / 'runs'}",
        "name=plain",
        "exist_ok=True",
    ]
    plain = _run([str(YOLO_SCRIPT), *args], workdir)
    assert plain.returncode != 0 and "SPDConv" in plain.stderr
    ours = _run([sys.executable, "-m", "focus_surgery", "yolo", *args], workdir)
    assert ours.returncode == 0, ours.stderr[-2000:]
    site = workdir / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import focus_surgery  # cheap: registers lazily\n")
    hooked = _run([str(YOLO_SCRIPT), *args], workdir, {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}"})
    assert hooked.returncode == 0, hooked.stderr[-2000:]
