"""Helpers for the YOLOv5-repository checkpoint tests: fixtures, reference comparison, old-format writer."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "yolov5-legacy"
SHARED_FIXTURES = Path(  # the project's full set, beside the checkout unless the variable says where
    os.environ.get("FOCUS_SURGERY_SHARED_FIXTURES")
    or Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "yolov5-legacy"
)
MODELS = {
    "v2.0": FIXTURES / "yolov5s-v2.0-d0.33-w0.125-nc3-seed104-fp16.pt",
    "v4.0": FIXTURES / "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt",
    "v6.0": FIXTURES / "yolov5s-v6.0-convstem-d0.33-w0.125-nc3-seed102-fp32-expected.pt",
}
# sha256 of the fixture inputs (inputs.npz of the shared fixture set); regenerated here from their recipe
INPUT_SHA256 = {
    "256": "206439bbb74c8e8e760f4456323a67f2ac22bcc0afc407a0d180e1fc3e40ef54",
    "192x320": "79c9ffeb8a894f216fc038335bde582b6f495c2cfcb1d1128fd3c052f405a85d",
}
# Tolerances of the issue (float32 weights against the original code's float32 outputs)
LOGIT_TOL, BOX_REL_TOL, SCORE_TOL = 1e-3, 2e-4, 1e-3


@contextlib.contextmanager
def modules_installed(fake: dict):
    """Temporarily put stand-in modules (e.g. YOLOv5's ``models.common``) in ``sys.modules``, then restore."""
    saved = {name: sys.modules.get(name) for name in fake}
    sys.modules.update(fake)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def fixture_inputs() -> dict[str, torch.Tensor]:
    """The two fixture inputs, from the recipe in the fixture README, checked against their recorded hashes."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 256, 256)
    torch.manual_seed(1)
    x2 = torch.rand(1, 3, 192, 320)
    inputs = {"256": x, "192x320": x2}
    for tag, t in inputs.items():
        assert hashlib.sha256(t.numpy().tobytes()).hexdigest() == INPUT_SHA256[tag], f"input {tag} differs"
    return inputs


def reference(path: Path) -> dict[str, np.ndarray]:
    ref = np.load(path.with_suffix(".ref.npz"))
    return {k: ref[k] for k in ref.files}


def compare_to_reference(model: torch.nn.Module, path: Path) -> dict[str, float]:
    """Run ``model`` (float32, eval) on both inputs; the worst errors against the original code's outputs.

    ``y`` of the model is (B, 4 + nc, N) (xywh px, obj*cls); the reference ``out`` is YOLOv5's (B, N, 5 + nc).
    Returns the max logit error, box error relative to the largest box coordinate, and score error.
    """
    ref = reference(path)
    errors = {"logits": 0.0, "boxes_rel": 0.0, "scores": 0.0}
    model = model.float().eval()
    with torch.no_grad():
        for tag, x in fixture_inputs().items():
            y, raw = model(x)
            out = ref[f"out_{tag}"]
            y = y.permute(0, 2, 1).numpy()
            assert y.shape == (out.shape[0], out.shape[1], out.shape[2] - 1), (y.shape, out.shape)
            box_scale = np.abs(out[..., :4]).max()
            errors["boxes_rel"] = max(errors["boxes_rel"], float(np.abs(y[..., :4] - out[..., :4]).max() / box_scale))
            scores = out[..., 5:] * out[..., 4:5]
            errors["scores"] = max(errors["scores"], float(np.abs(y[..., 4:] - scores).max()))
            for i, r in enumerate(raw):
                logits = ref[f"train_{tag}_{i}"]
                assert r.shape == logits.shape
                errors["logits"] = max(errors["logits"], float(np.abs(r.numpy() - logits).max()))
    return errors


def assert_within_tolerance(errors: dict[str, float]) -> None:
    assert errors["logits"] <= LOGIT_TOL, errors
    assert errors["boxes_rel"] <= BOX_REL_TOL, errors
    assert errors["scores"] <= SCORE_TOL, errors


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------ a file as torch 1.5 / numpy 1.x wrote it

# Private nn.Module attributes that torch 2.x adds and 2020-era files lack
NEW_PRIVATE_ATTRIBUTES = {
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
    "_backward_pre_hooks",
    "_non_persistent_buffers_set",
    "_is_full_backward_hook",
}


def write_old_style_checkpoint(src: Path, dst: Path) -> None:
    """Re-write a fixture the way a 2020 release file looks: torch's pre-1.6 (non-zip) container, numpy arrays under
    ``numpy.core``, and module dicts without torch 2.x's private attributes. Trusted test data only: the records are
    turned back into objects of stand-in classes registered as ``models.yolo`` / ``models.common`` for the save.
    """
    from focus_surgery.loader import Record, read_checkpoint

    content = read_checkpoint(src).content
    fake = {name: types.ModuleType(name) for name in ("models", "models.yolo", "models.common")}

    def revive(value):
        if isinstance(value, Record):
            module, _, name = value.qualname.rpartition(".")
            if module.startswith("torch.nn.modules."):
                cls = getattr(__import__(module, fromlist=[name]), name)
            else:
                cls = getattr(fake[module], name, None)
                if cls is None:
                    cls = type(name, (), {"__module__": module, "__qualname__": name})
                    setattr(fake[module], name, cls)
            obj = cls.__new__(cls)
            state = {k: revive(v) for k, v in value.state.items() if k not in NEW_PRIVATE_ATTRIBUTES}
            if "_parameters" in state:
                state["_parameters"] = type(state["_parameters"])(
                    (k, None if v is None else torch.nn.Parameter(v, requires_grad=False))
                    for k, v in state["_parameters"].items()
                )
            obj.__dict__.update(state)
            return obj
        if isinstance(value, dict):
            return type(value)((k, revive(v)) for k, v in value.items())
        if isinstance(value, list):
            return [revive(v) for v in value]
        return value

    with modules_installed(fake):
        torch.save(revive(content), dst, _use_new_zipfile_serialization=False)
    data = dst.read_bytes()
    assert b"numpy._core.multiarray" in data and data[:2] == b"\x80\x02"
    dst.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def write_old_zip_checkpoint(src: Path, dst: Path) -> None:
    """Re-write a fixture as torch 1.6-1.8 zipped it: records under ``archive/``, none of the records later torch
    versions add (``.format_version``, ``.storage_alignment``, ``byteorder``, ``.data/serialization_id``), and numpy
    arrays pickled under ``numpy.core``.
    """
    import zipfile

    newer = (".format_version", ".storage_alignment", "byteorder", ".data/serialization_id")
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as new:
        for name in old.namelist():
            inner = name.split("/", 1)[1]
            if inner in newer:
                continue
            data = old.read(name)
            if inner == "data.pkl":
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            new.writestr(f"archive/{inner}", data)


YOLOV5S6_V50_YAML = {  # models/hub/yolov5s6.yaml of YOLOv5 v5.0 (P6: four levels, strides 8-64), narrowed
    "nc": 5,
    "depth_multiple": 0.33,
    "width_multiple": 0.125,
    "anchors": [
        [19, 27, 44, 40, 38, 94],
        [96, 68, 86, 152, 180, 137],
        [140, 301, 303, 264, 238, 542],
        [436, 615, 739, 380, 925, 792],
    ],
    "backbone": [
        [-1, 1, "Focus", [64, 3]],
        [-1, 1, "Conv", [128, 3, 2]],
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 9, "C3", [256]],
        [-1, 1, "Conv", [512, 3, 2]],
        [-1, 9, "C3", [512]],
        [-1, 1, "Conv", [768, 3, 2]],
        [-1, 3, "C3", [768]],
        [-1, 1, "Conv", [1024, 3, 2]],
        [-1, 1, "SPP", [1024, [3, 5, 7]]],
        [-1, 3, "C3", [1024, False]],
    ],
    "head": [
        [-1, 1, "Conv", [768, 1, 1]],
        [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
        [[-1, 8], 1, "Concat", [1]],
        [-1, 3, "C3", [768, False]],
        [-1, 1, "Conv", [512, 1, 1]],
        [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [256, 1, 1]],
        [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]],
        [-1, 3, "C3", [256, False]],
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 20], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 16], 1, "Concat", [1]],
        [-1, 3, "C3", [768, False]],
        [-1, 1, "Conv", [768, 3, 2]],
        [[-1, 12], 1, "Concat", [1]],
        [-1, 3, "C3", [1024, False]],
        [[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]],
    ],
}


def make_yolov5_style_checkpoint(
    yaml: dict, dst: Path, seed: int = 0, conv_act: torch.nn.Module | None = None
) -> torch.nn.Module:
    """Write a synthetic checkpoint laid out as the YOLOv5 repository pickles it (``models.yolo.Model`` holding
    ``models.common.*`` layers and a ``models.yolo.Detect`` with ``anchors`` / ``anchor_grid`` buffers), for
    architectures the fixture set lacks. The weights are random; returns the live model it was written from.
    """
    import contextlib
    import copy
    import io

    from ultralytics.nn.tasks import DetectionModel

    from focus_surgery.yolov5.detect import LegacyDetect

    torch.manual_seed(seed)
    body = copy.deepcopy(yaml)
    detect_row = body["head"].pop()
    with contextlib.redirect_stdout(io.StringIO()):
        model = DetectionModel(body, ch=3, verbose=False)
    rows = body["backbone"] + body["head"]  # the layers feeding Detect are CSP blocks: channels = width * args[0]
    ch = [int(math.ceil(rows[i][3][0] * yaml["width_multiple"] / 8) * 8) for i in detect_row[0]]
    strides = [8.0, 16.0, 32.0, 64.0][: len(yaml["anchors"])]
    head = LegacyDetect(yaml["nc"], yaml["anchors"], ch, strides)
    head.i, head.f = len(model.model), detect_row[0]
    model.model.append(head)
    model.save = sorted(
        {
            x
            for row in body["backbone"] + yaml["head"]
            for x in ([row[0]] if isinstance(row[0], int) else row[0])
            if x != -1
        }
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.25), m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.eps, m.momentum = 1e-3, 0.03
            elif isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(1.5)
        if conv_act is not None:  # e.g. v3.x: Hardswish in every Conv block
            for m in model.modules():
                if type(m).__name__ == "Conv":
                    m.act = copy.deepcopy(conv_act)
                elif type(m).__name__ == "BottleneckCSP":  # its own activation stayed LeakyReLU until v6.0
                    m.act = torch.nn.LeakyReLU(0.1, inplace=True)
    model.eval()
    fake = {name: types.ModuleType(name) for name in ("models", "models.yolo", "models.common")}

    def fake_class(module: str, name: str) -> type:
        if not hasattr(fake[module], name):
            setattr(fake[module], name, type(name, (), {"__module__": module, "__qualname__": name}))
        return getattr(fake[module], name)

    def as_yolov5(m: torch.nn.Module):
        kind = type(m)
        if kind.__module__.startswith("torch.nn"):
            cls = kind
        elif kind is LegacyDetect:
            cls = fake_class("models.yolo", "Detect")
        elif kind is DetectionModel:
            cls = fake_class("models.yolo", "Model")
        else:
            cls = fake_class("models.common", kind.__name__)
        obj = cls.__new__(cls)
        state = {k: v for k, v in vars(m).items() if k not in ("cv2", "cv3")}
        state["_modules"] = type(m._modules)((k, as_yolov5(v)) for k, v in m._modules.items())
        if kind is DetectionModel:
            state.update(
                yaml=copy.deepcopy(yaml),
                names=[f"class{i}" for i in range(yaml["nc"])],
                nc=yaml["nc"],
                stride=torch.tensor(strides),
                hyp={"lr0": 0.01, "box": 0.05},
            )
        if "type" in state:  # YOLOv5 records its own module path per row
            state["type"] = f"{cls.__module__}.{cls.__qualname__}"
        obj.__dict__.update(state)
        return obj

    with modules_installed(fake):
        content = {
            "epoch": -1,
            "best_fitness": np.array([0.25]),
            "model": as_yolov5(copy.deepcopy(model).half()),
            "optimizer": None,
            "wandb_id": None,
        }
        torch.save(content, dst)
    return model.half().float()
