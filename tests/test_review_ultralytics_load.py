"""Review of ``integrations.ultralytics_load`` (issue 22 item 1): attacks on the ``torch_safe_load`` hook."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import focus_surgery  # noqa: F401 - registers the hooks once Ultralytics is imported

pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402

from focus_surgery.errors import CheckpointError  # noqa: E402
from focus_surgery.integrations import register  # noqa: E402

V5 = Path(__file__).parent / "fixtures" / "yolov5-legacy" / "yolov5s-v5.0-d0.33-w0.125-nc3-seed102-fp32.pt"


@pytest.fixture(scope="module", autouse=True)
def _hooked():
    register()


def test_yolov5s_pt_opens_the_users_file_not_ultralytics_u_model(tmp_path, monkeypatch):
    """Ultralytics renames a path without a 'u' from 'yolov5s.pt' to 'yolov5su.pt' before reading it (and downloads
    that one when it is missing): the user's own YOLOv5 file must be what ``YOLO("yolov5s.pt")`` opens, never another
    model that happens to lie beside it (or on the internet)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(V5, "yolov5s.pt")
    YOLO("yolov8n.yaml").save("yolov5su.pt")  # what Ultralytics would read instead (a current Ultralytics file)
    model = YOLO("yolov5s.pt")
    assert "focus_surgery" in model.ckpt  # the YOLOv5 file converted in memory
    first = model.model.model[0]
    assert type(first).__name__ == "Conv" and first.conv.kernel_size == (6, 6)
    assert model.model.model[-1].nc == 3  # the fixture's 3 classes, not yolov8n's 80


def test_an_ultralytics_file_under_a_renamed_name_keeps_ultralytics_behaviour(tmp_path, monkeypatch):
    """Not a YOLOv5-repository file: Ultralytics' own rename and load stand, unchanged."""
    monkeypatch.chdir(tmp_path)
    YOLO("yolov8n.yaml").save("yolov5s.pt")
    YOLO("yolov8n.yaml").save("yolov5su.pt")
    model = YOLO("yolov5s.pt")
    assert "focus_surgery" not in model.ckpt and model.ckpt_path.endswith("yolov5su.pt")


def test_an_upper_case_suffix_opens_as_ultralytics_reads_it(tmp_path):
    """Ultralytics reads ``best.PT`` as a ``.pt`` (its suffix checks lower-case it): the YOLOv5 file opens too."""
    src = tmp_path / "best.PT"
    shutil.copy(V5, src)
    model = YOLO(str(src))
    assert "focus_surgery" in model.ckpt and model.model.model[0].conv.kernel_size == (6, 6)


def test_a_yolov5_file_found_in_ultralytics_weights_dir_opens(tmp_path, monkeypatch):
    """Ultralytics looks a missing relative path up in its ``weights_dir`` (and reads the file there): a YOLOv5 file
    found there opens too, instead of Ultralytics' refusal of the very file it read."""
    from unittest import mock

    import ultralytics.utils

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(V5, weights / "best.pt")
    monkeypatch.chdir(tmp_path)
    settings = {**ultralytics.utils.SETTINGS, "weights_dir": weights}  # a plain dict: the user's settings untouched
    with mock.patch.object(ultralytics.utils, "SETTINGS", settings):
        model = YOLO("best.pt")
    assert "focus_surgery" in model.ckpt and model.ckpt_path == str(weights / "best.pt")


def test_a_hostile_yolov5_file_never_reaches_ultralytics_full_unpickler(tmp_path):
    """Ultralytics' own reader unpickles with full pickle (running what the file names) before it finds the
    ``models.*`` classes missing: a file naming YOLOv5's classes goes to our safe loader only, so a payload spliced
    into a real YOLOv5 file is refused in one line and never runs."""
    import pickle

    from hostile_files import YOLOV5_FILE, splice_item

    marker = tmp_path / "pwned"

    def payload(p):
        return p.glob("os", "system").mark().str(f"touch {marker}").tuple().raw(pickle.REDUCE)

    src = splice_item(YOLOV5_FILE, tmp_path / "best.pt", "wandb_id", payload)
    with pytest.raises(CheckpointError, match="os"):
        YOLO(str(src))
    assert not marker.exists()
