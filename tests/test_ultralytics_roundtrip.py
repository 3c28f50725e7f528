"""The round trip a user does: train a Focus-stem YAML model, convert it with the CLI, deploy it without focus-surgery.

Every step runs in its own Python process, as it would for a user: training (with focus-surgery imported, so the YAML
rows build), ``python -m focus_surgery convert``, then loading, predicting and ONNX export with plain Ultralytics in a
process where importing focus_surgery is impossible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _stem_check import TOLERANCE, relative_errors

pytest.importorskip("ultralytics")  # optional third-party packages
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
IMGSZ = 64

TRAIN = """
import sys
import focus_surgery  # registers the YAML rows
from ultralytics import YOLO

config, data, project = sys.argv[1:4]
model = YOLO(config)
model.train(data=data, epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False, val=False,
            project=project, name="train", exist_ok=True, verbose=False, seed=0)
"""

# Loads a checkpoint, runs the torch model and its Ultralytics ONNX export on the same input, reports as JSON.
DEPLOY = """
import copy, json, sys
import numpy as np
if sys.argv[4] == "plain":
    sys.modules["focus_surgery"] = None  # any attempt to import it now fails
import torch
import onnx, onnxruntime
from ultralytics import YOLO

weights, image, out = sys.argv[1:4]
yolo = YOLO(weights)
model = yolo.model.float().eval()
x = torch.from_numpy(np.load(out + "/input.npy"))
with torch.no_grad():
    y = model(x)[0].numpy()
np.save(out + "/torch.npy", y)
model64, seen = copy.deepcopy(model).double(), []  # float64: the stem's feature map and every raw output
model64.model[0].register_forward_hook(lambda module, args, output: seen.append(output))
def flat(o):
    if isinstance(o, torch.Tensor):
        return [o]
    return [t for v in (o.values() if isinstance(o, dict) else o) for t in flat(v)]
with torch.no_grad():
    np.savez(out + "/float64.npz", *[t.numpy() for t in [*seen[:1], *flat(model64(x.double()))]])
from ultralytics.nn.tasks import DetectionModel  # what Ultralytics does to train the checkpoint again
rebuilt = DetectionModel(copy.deepcopy(model.yaml), nc=model.nc, verbose=False).eval()
rebuilt.load_state_dict(model.state_dict(), strict=True)
with torch.no_grad():
    rebuilt_error = float((rebuilt(x)[0] - model(x)[0]).abs().max())
boxes = yolo.predict(image, imgsz=64, conf=0.0, max_det=5, verbose=False)[0].boxes.data.numpy()
onnx_path = yolo.export(format="onnx", imgsz=64, simplify=False, dynamic=False, verbose=False)
graph = onnx.load(onnx_path).graph
producers = {o: n for n in graph.node for o in n.output}
first_conv = next(n for n in graph.node if n.op_type == "Conv")
stem, stack = [], [i for i in first_conv.input if i in producers]  # everything between the image and the first conv
while stack:
    node = producers[stack.pop()]
    stem.append(node.op_type)
    stack += [i for i in node.input if i in producers]
session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
y_onnx = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
print(json.dumps({
    "modules": sorted({type(m).__module__ for m in model.modules()}),
    "focus_surgery_imported": sys.modules.get("focus_surgery") is not None,
    "stem_ops": stem, "first_conv_input": first_conv.input[0], "graph_input": graph.input[0].name,
    "first_conv_kernel": [list(a.ints) for a in first_conv.attribute if a.name == "kernel_shape"][0],
    "rebuilt_error": rebuilt_error, "onnx_vs_torch": float(np.abs(y_onnx - y).max()),
    "scale": float(np.abs(y).max()), "boxes": boxes.tolist(),
}))
"""


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stderr[-3000:]}"
    return result


def _write_dataset(root: Path, n: int = 8) -> tuple[Path, Path]:
    """A tiny two-class detection set: coloured rectangles on grey, YOLO labels (class cx cy w h, normalised)."""
    import cv2

    rng = np.random.default_rng(0)
    images, labels = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for k in range(n):
        image = np.full((IMGSZ, IMGSZ, 3), 90, np.uint8)
        lines = []
        for _ in range(2):
            cls = int(rng.integers(2))
            w, h = (int(v) for v in rng.integers(12, 28, 2))
            x0, y0 = (int(v) for v in rng.integers(0, IMGSZ - 28, 2))
            image[y0 : y0 + h, x0 : x0 + w] = (40, 40, 220) if cls == 0 else (40, 200, 40)
            lines.append(f"{cls} {(x0 + w / 2) / IMGSZ:.6f} {(y0 + h / 2) / IMGSZ:.6f} {w / IMGSZ:.6f} {h / IMGSZ:.6f}")
        cv2.imwrite(str(images / f"{k}.png"), image)
        (labels / f"{k}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n  0: red\n  1: green\n")
    return data, images / "0.png"


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roundtrip")
    data, image = _write_dataset(tmp / "data")
    _run(["-c", TRAIN, "configs/yolov5n-focus.yaml", str(data), str(tmp / "runs")])  # as a user does, from the root
    trained = tmp / "runs" / "train" / "weights" / "last.pt"
    converted = tmp / "converted.pt"
    cli = _run(["-m", "focus_surgery", "convert", str(trained), str(converted), "--to", "conv", "--verify", "--json"])
    reports = {}
    x = np.random.default_rng(1).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    for name, weights, mode in (("trained", trained, "with"), ("converted", converted, "plain")):
        out = tmp / name
        out.mkdir()
        np.save(out / "input.npy", x)
        result = _run(["-c", DEPLOY, str(weights), str(image), str(out), mode])
        reports[name] = json.loads(result.stdout.strip().splitlines()[-1])
        reports[name]["torch"] = np.load(out / "torch.npy")
        with np.load(out / "float64.npz") as arrays:
            reports[name]["float64"] = [torch.from_numpy(arrays[f"arr_{i}"]) for i in range(len(arrays.files))]
    return {"cli": json.loads(cli.stdout), **reports}


def test_cli_converts_the_trained_focus_stem_exactly(round_trip):
    cli = round_trip["cli"]
    (replaced,) = cli["replaced"]
    assert replaced["old_type"] == "ultralytics.nn.modules.conv.Focus"  # the default Focus row is Ultralytics' own
    assert replaced["new_type"] == "ultralytics.nn.modules.conv.Conv"
    assert (replaced["old_weight_shape"], replaced["new_weight_shape"]) == ([16, 12, 3, 3], [16, 3, 6, 6])
    assert cli["verification"]["passed"] and cli["verification"]["dtype"] == "float64"
    assert cli["verification"]["max_rel_err"] <= 1e-10 and cli["max_abs_err"] <= 1e-10


def test_plain_ultralytics_loads_the_converted_model_and_predicts_the_same(round_trip):
    trained, converted = round_trip["trained"], round_trip["converted"]
    assert not converted["focus_surgery_imported"]
    assert not [m for m in converted["modules"] if m.startswith("focus_surgery")]
    scale = float(np.abs(trained["torch"]).max())
    error = float(np.abs(converted["torch"] - trained["torch"]).max())
    print(f"converted vs trained (float32 torch): max_abs_err={error:.3e}, output scale {scale:.1f}")
    assert error <= 1e-4 * max(1.0, scale), f"converted model differs by {error:.3e} (scale {scale:.1f})"
    # what sees the stem: its feature map and every raw output in float64, each relative to its own scale
    errors = relative_errors(trained["float64"], converted["float64"])
    print(f"float64 relative errors: stem map {errors[0]:.1e}, raw outputs up to {max(errors[1:]):.1e}")
    assert len(errors) > 2 and max(errors) <= TOLERANCE, errors
    assert converted["rebuilt_error"] == 0.0  # model.yaml follows the surgery: plain Ultralytics can train it again
    boxes_a, boxes_b = np.array(trained["boxes"]), np.array(converted["boxes"])
    assert boxes_a.shape == boxes_b.shape and boxes_a.shape[0] > 0
    np.testing.assert_allclose(boxes_b, boxes_a, atol=1e-3)


def test_onnx_export_of_the_converted_model_has_a_plain_conv_stem(round_trip):
    trained, converted = round_trip["trained"], round_trip["converted"]
    assert "Slice" in trained["stem_ops"]  # Ultralytics' Focus exports as four Slices and a Concat
    assert converted["stem_ops"] == [] and converted["first_conv_input"] == converted["graph_input"]
    assert converted["first_conv_kernel"] == [6, 6]
    for report in (trained, converted):
        print(f"onnxruntime vs torch: max_abs_err={report['onnx_vs_torch']:.3e} (scale {report['scale']:.1f})")
        assert report["onnx_vs_torch"] <= 1e-4 * max(1.0, report["scale"]), report["onnx_vs_torch"]
