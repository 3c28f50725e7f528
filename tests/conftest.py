"""Test set-up: no network, Ultralytics settings kept out of the home folder, deterministic seeds."""

import os
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "focus-surgery-ultralytics-config"))
os.makedirs(os.environ["YOLO_CONFIG_DIR"], exist_ok=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # one thread per xdist worker: 2 workers on 2 cores, no oversubscription


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
