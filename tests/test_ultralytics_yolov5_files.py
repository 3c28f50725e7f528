"""``YOLO("yolov5s.pt")`` after ``import focus_surgery``: a YOLOv5-repository file opened by Ultralytics, rebuilt and
converted in memory (issue 22 item 1); Ultralytics' own files through Ultralytics' own code path, unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import focus_surgery  # noqa: F401 - registers the hooks once Ultralytics is imported
from focus_surgery.cli import main
from focus_surgery.files import convert_file
from tests._yolov5_legacy_helpers import assert_within_tolerance, compare_to_reference

pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn import tasks  # noqa: E402

from focus_surgery.integrations import register  # noqa: E402
from focus_surgery.integrations import ultralytics_load  # noqa: E402

V5 = Path(__file__).parent / "fixtures" / "yolov5-legacy" / "yolov5s-v5.0-d0.33-w0.125-nc3-seed102-fp32.pt"
LITE = Path(__file__).parent / "fixtures" / "yolov5-forks" / "v5lite-g-9d649a6-d0.33-w0.125-nc3-fp16.pt"


@pytest.fixture(scope="module", autouse=True)
def _hooked():
    register()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image() -> np.ndarray:
    return (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_yolo_opens_a_yolov5_file_in_memory_as_convert_would_write_it(tmp_path):
    src = tmp_path / "yolov5s.pt"
    shutil.copy(V5, src)
    before = _files(tmp_path), src.read_bytes()
    model = YOLO(str(src))
    assert (_files(tmp_path), src.read_bytes()) == before  # nothing written, the input untouched
    record = model.ckpt["focus_surgery"]
    assert model.task == "detect" and record["max_abs_err"] < 1e-9 and record["stem_after"].startswith("Conv(6x6")
    assert type(model.model.model[0]).__name__ == "Conv" and model.model.model[0].conv.kernel_size == (6, 6)
    assert_within_tolerance(compare_to_reference(model.model, V5))  # the YOLOv5 code's own outputs
    converted = tmp_path / "out" / "converted.pt"
    converted.parent.mkdir()
    convert_file(src, converted)
    written = YOLO(str(converted))
    sa, sb = model.model.state_dict(), written.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # what `convert` writes
    a = model.predict(_image(), imgsz=64, verbose=False)[0].boxes.data
    b = written.predict(_image(), imgsz=64, verbose=False)[0].boxes.data
    assert torch.equal(a, b)


def test_ultralytics_files_take_ultralytics_own_path(tmp_path):
    """Ultralytics' function is called once with the same arguments and its result returned as it is; our reader is
    never asked."""
    original = getattr(tasks.torch_safe_load, ultralytics_load._WRAPPED_MARK)
    sentinel = ({"model": object()}, "x.pt")
    spy = mock.Mock(return_value=sentinel)
    wrapped = ultralytics_load._wrap(spy)
    with mock.patch.object(ultralytics_load, "_yolov5_content", side_effect=AssertionError("asked")):
        assert wrapped("x.pt", safe_only=True) is sentinel
    spy.assert_called_once_with("x.pt", safe_only=True)
    # a real current Ultralytics file through the installed hook: what Ultralytics' own function returns
    path = tmp_path / "tiny.pt"
    YOLO("yolov8n.yaml").save(str(path))
    with mock.patch.object(ultralytics_load, "_yolov5_content", side_effect=AssertionError("asked")):
        model, ckpt = tasks.load_checkpoint(str(path))
    theirs, _ = original(str(path))
    assert "focus_surgery" not in ckpt and sorted(ckpt) == sorted(theirs)
    sa, sb = model.state_dict(), theirs["model"].float().state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_other_refusals_stay_ultralytics_own(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(TypeError, match="not a loadable checkpoint"):
        YOLO(str(bad))


def test_a_fork_ultralytics_cannot_hold_is_refused_with_the_way_to_convert_it(tmp_path):
    with pytest.raises(ValueError, match=r"RepVGGBlock.*--layout yolov5"):
        YOLO(str(LITE))
    assert _files(tmp_path) == []


def test_focus_surgery_yolo_predicts_with_a_yolov5_file_and_names_the_command_in_errors(tmp_path, capsys):
    import cv2

    image = tmp_path / "image.png"
    cv2.imwrite(str(image), _image())
    args = [f"source={image}", "imgsz=64", "device=cpu", f"project={tmp_path / 'runs'}", "name=p", "save=False"]
    assert main(["yolo", "predict", f"model={V5}", *args]) == 0
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a pickle")
    assert main(["yolo", "predict", f"model={bad}", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"focus-surgery: error: yolo predict model={bad} ") and ": : " not in err


@pytest.mark.slow
def test_yolov5_file_validates_trains_and_exports(tmp_path):
    from _yolo_synthetic_data import write_dataset

    data = write_dataset(tmp_path / "data", n_train=4, n_val=2)
    tiny = dict(imgsz=64, batch=2, workers=0, device="cpu", plots=False, project=str(tmp_path / "runs"), exist_ok=True)
    model = YOLO(str(V5))
    metrics = model.val(data=str(data), name="val", **tiny)
    assert 0.0 <= metrics.box.map50 <= 1.0
    model = YOLO(str(V5))
    model.train(data=str(data), epochs=1, amp=False, name="train", **tiny)
    assert (tmp_path / "runs" / "train" / "weights" / "last.pt").is_file()
    src = tmp_path / "yolov5s.pt"  # Ultralytics exports beside the file it opened
    shutil.copy(V5, src)
    exported = Path(YOLO(str(src)).export(format="torchscript", imgsz=64))
    assert exported.parent == tmp_path and exported.is_file()
    runs = YOLO(str(exported), task="detect").predict(_image(), imgsz=64, verbose=False)
    assert len(runs) == 1


def test_a_failed_float64_check_opens_nothing(tmp_path):
    import functools

    from focus_surgery.errors import VerificationFailed
    from focus_surgery.yolov5 import convert as yolov5_convert

    strict = functools.partial(yolov5_convert.convert_yolov5, tolerance=-1.0)  # no error is small enough
    with mock.patch.object(yolov5_convert, "convert_yolov5", strict):
        with pytest.raises(VerificationFailed, match="float64 check"):
            YOLO(str(V5))
