"""Ultralytics YAML rows: registration, channel bookkeeping, configs/, errors, fuse/pickle, whole-model surgery."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from _stem_check import assert_same_stem
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")
ultralytics = pytest.importorskip("ultralytics")  # optional third-party package

import focus_surgery as fs  # noqa: E402
from focus_surgery.demo import randomize_batchnorm  # noqa: E402
from focus_surgery.integrations import ultralytics as fs_ultralytics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# config file -> (name to build it with, scale letter included; what row 0 builds)
CONFIG_FILES = {
    "yolov5-focus.yaml": ("yolov5n-focus.yaml", "ultralytics.nn.modules.conv.Focus"),
    "yolov5-focus-legacy.yaml": ("yolov5n-focus-legacy.yaml", "ultralytics.nn.modules.conv.Focus"),
    "yolov5-v6stem.yaml": ("yolov5n-v6stem.yaml", "ultralytics.nn.modules.conv.Conv"),
    "yolov8-s2d4.yaml": ("yolov8n-s2d4.yaml", "focus_surgery.layers.SpaceToDepth"),
    "yolov8-spd.yaml": ("yolov8n-spd.yaml", "focus_surgery.layers.SPDConv"),
}


def _yolo(path: Path, root: Path | None = None):
    """``YOLO("<path relative to root>")`` run from ``root`` (the file's folder by default), as a user runs
    ``YOLO("configs/...")`` from the checkout.

    Ultralytics drops the scale letter from the whole path string (``digits + [nslmx]``), so a folder named like
    ``wt4merge`` would be misread; a bare file name is what the scale convention expects.
    """
    from ultralytics import YOLO

    root = root or path.parent
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return YOLO(str(path.relative_to(root)), verbose=False)
    finally:
        os.chdir(cwd)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _parse(yaml_text: str, ch: int = 3):
    """Run the (hooked) Ultralytics parser on a YAML string: (nn.Sequential, save list)."""
    import yaml
    from ultralytics.nn import tasks

    return tasks.parse_model(yaml.safe_load(yaml_text), ch=ch, verbose=False)


# ------------------------------------------------------------------------------------------------------ registration


def test_register_is_idempotent_and_hooks_the_installed_version():
    from ultralytics.nn import tasks

    first = fs.register()
    parser = tasks.parse_model
    assert fs.register() == first and first["ultralytics"] == ultralytics.__version__  # (timm too, if installed)
    assert tasks.parse_model is parser  # not wrapped twice
    assert fs_ultralytics.is_registered()
    assert getattr(parser, "__focus_surgery_original__").__module__ == "ultralytics.nn.tasks"
    assert ultralytics.nn.parse_model is parser  # the re-export is hooked too
    low, high = fs_ultralytics._SUPPORTED_RANGE
    assert low <= fs_ultralytics.version_tuple(ultralytics.__version__) < high, "installed version not in range"


def test_unregister_restores_ultralytics_parser_then_register_again():
    from ultralytics.nn import tasks

    fs.register()
    fs_ultralytics.unregister()
    try:
        assert not fs_ultralytics.is_registered()
        with pytest.raises(KeyError, match="SpaceToDepth"):  # Ultralytics alone does not know the row
            _parse("nc: 1\nbackbone:\n  - [-1, 1, SpaceToDepth, [2]]\nhead: []\n")
    finally:
        fs.register()
    assert (
        fs_ultralytics.is_registered()
        and tasks.parse_model(  # back in business
            {"backbone": [[-1, 1, "SpaceToDepth", [2]]], "head": []}, ch=3, verbose=False
        )[0][0].block_size
        == 2
    )


@pytest.mark.parametrize("missing", ["HGStem", "parse_model"])
def test_unhookable_ultralytics_fails_naming_supported_versions(missing):
    from ultralytics.nn import tasks

    fake = types.SimpleNamespace(**{n: getattr(tasks, n) for n in fs_ultralytics._NEEDED_GLOBALS if n != missing})
    with pytest.raises(RuntimeError) as info:
        fs_ultralytics._hook(fake, "9.9.9")
    message = str(info.value)
    assert missing in message and fs_ultralytics.SUPPORTED_VERSIONS in message and "9.9.9" in message
    assert "\n" not in message


def test_parser_with_other_signature_is_refused():
    fake = types.SimpleNamespace(parse_model=lambda cfg, channels: None, Conv=1, Concat=1, HGStem=1)
    with pytest.raises(RuntimeError, match=r"parse_model\(d, ch, verbose\).*ultralytics>=8\.4\.190,<8\.5"):
        fs_ultralytics.check_hookable(fake, "8.4.0")


_FRESH = """
import sys
{first}
import focus_surgery
assert ("ultralytics" in sys.modules) == {expect_loaded}, "import focus_surgery must not import ultralytics"
from ultralytics import YOLO
model = YOLO(sys.argv[1], verbose=False)
print(type(model.model.model[0]).__name__)
"""


@pytest.mark.parametrize("first", ["", "import ultralytics.nn.tasks"])
def test_import_focus_surgery_registers_before_or_after_ultralytics(first):
    """Automatic registration, lazily: importing focus_surgery never imports Ultralytics itself."""
    script = _FRESH.format(first=first, expect_loaded=bool(first))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script, "configs/yolov8n-s2d4.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "focus-surgery:" not in out.stderr  # no registration warning
    assert out.stdout.strip().splitlines()[-1] == "SpaceToDepth"


def test_import_without_ultralytics_stays_quiet():
    """No Ultralytics: import focus_surgery works, installs no hook, and register() has nothing to hook."""
    script = (
        "import sys; sys.modules['ultralytics'] = None; sys.modules['timm'] = None  # neither installed\n"
        "import focus_surgery as fs\n"
        "from focus_surgery.import_hooks import _FINDER\n"
        "assert 'ultralytics.nn.tasks' not in _FINDER.callbacks\n"
        "print(fs.register())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "{}", out.stderr[-2000:]


# -------------------------------------------------------------------------------------------------------- configs


@pytest.fixture(scope="module")
def config_models():
    """Each configs/ file built once with YOLO("configs/<name with scale letter>.yaml")."""
    models = {}
    for file, (name, _) in CONFIG_FILES.items():
        assert (CONFIGS / file).is_file()
        models[file] = _yolo(CONFIGS / name, root=ROOT)  # YOLO("configs/yolov5n-focus.yaml")
    return models


def test_every_config_is_tested():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(CONFIG_FILES)
    readme = (CONFIGS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in CONFIG_FILES)


@pytest.mark.parametrize("file", sorted(CONFIG_FILES))
def test_config_builds_and_runs(config_models, file):
    model = config_models[file].model.eval()
    stem = model.model[0]
    assert stem.type == CONFIG_FILES[file][1] == f"{type(stem).__module__}.{type(stem).__qualname__}"
    assert model.yaml["scale"] == "n"
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    with torch.no_grad():
        y = model(torch.rand(2, 3, 64, 96))[0]
    per_cell = 3 if file == "yolov5-focus-legacy.yaml" else 1  # YOLOv5's head predicts 3 anchors per cell
    assert y.shape == (2, 4 + 80, per_cell * (8 * 12 + 4 * 6 + 2 * 3))  # boxes + classes for the P3, P4, P5 cells
    assert [m.i for m in model.model] == list(range(len(model.model)))
    for m in model.model[:8]:
        if m.type.startswith("focus_surgery."):
            assert m.np == sum(p.numel() for p in m.parameters())


def test_focus_config_converts_into_the_v6_config(config_models):
    """The two YOLOv5 configs are one model: the converted Focus model's weights load strictly into the v6 one."""
    focus = randomize_batchnorm(copy.deepcopy(config_models["yolov5-focus.yaml"].model), seed=2).eval()
    v6 = copy.deepcopy(config_models["yolov5-v6stem.yaml"].model).eval()
    original = copy.deepcopy(focus)
    fs.convert(focus, to="conv", verify=False)  # the check below is the verification
    v6.load_state_dict(focus.state_dict(), strict=True)
    assert v6.model[0].conv.weight.shape == (16, 3, 6, 6)
    assert_same_stem(original, v6, torch.rand(2, 3, 64, 96))  # stem map and raw outputs, float64, each to 1e-10


def test_scale_letters_scale_our_rows_like_ultralytics_conv(tmp_path):
    """SPDConv rows and Conv rows with the same c2 get the same channels at every scale (width and max_channels)."""
    text = (CONFIGS / "yolov8-spd.yaml").read_text().replace("l: [1.00, 1.00, 512]", "l: [0.33, 0.375, 256]")
    twin = text.replace("SPDConv, [64, 3]]", "Conv, [64, 3, 2]]")
    for c2 in (128, 256, 512, 1024):
        twin = twin.replace(f"SPDConv, [{c2}, 3]]", f"Conv, [{c2}, 3, 2]]")
    assert "SPDConv, [" not in twin
    _write(tmp_path, "yolov8-spd.yaml", text)
    _write(tmp_path, "yolov8-twin.yaml", twin)
    for scale in "nl":  # n: width 0.25; l (made small here): width 0.375, capped by max_channels 256
        spd = _yolo(tmp_path / f"yolov8{scale}-spd.yaml").model
        plain = _yolo(tmp_path / f"yolov8{scale}-twin.yaml").model
        for i in (0, 1, 3, 5, 7, 16, 19):
            assert type(spd.model[i]).__name__ == "SPDConv" and spd.model[i].f == plain.model[i].f
            assert spd.model[i].conv.conv.out_channels == plain.model[i].conv.out_channels
            assert spd.model[i].conv.conv.in_channels == 4 * plain.model[i].conv.in_channels
        widths = [spd.model[i].conv.conv.out_channels for i in (0, 1, 3, 5, 7)]
        assert widths == ([16, 32, 64, 128, 256] if scale == "n" else [24, 48, 96, 96, 96])  # capped: 256 * 0.375


MIXED_YAML = """
nc: 2
scales:
  n: [0.5, 0.25, 256]
backbone:
  - [-1, 1, Focus, [64, 3, 1, None, 1, True, 4, timm]]  # 0  ours: block 4, timm order; 3*16 -> scaled 16
  - [-1, 1, SpaceToDepth, [2, pixel_unshuffle]]  # 1  16 -> 64
  - [-1, 1, Conv, [1024, 1, 1]]  # 2  capped to 256, scaled 64
  - [-1, 1, DepthToSpace, [2]]  # 3  64 -> 16 channels, x2 resolution
  - [-1, 1, SPDConv, [100, 3, 2, yolov5]]  # 4  scaled 25 -> 32
head:
  - [-1, 1, SPDConv, [32]]  # 5  k=3 default, scaled 8
  - [[-1, 5], 1, Concat, [1]]  # 6  16
  - [-1, 1, Conv, [32, 1, 1]]  # 7  8
"""


def test_rows_anywhere_with_channel_bookkeeping():
    model, save = _parse(MIXED_YAML)
    types_ = [type(m).__name__ for m in model]
    assert types_ == ["Focus", "SpaceToDepth", "Conv", "DepthToSpace", "SPDConv", "SPDConv", "Concat", "Conv"]
    focus = model[0]
    assert type(focus) is fs.Focus and (focus.s2d.block_size, focus.s2d.order) == (4, "timm")
    assert focus.conv.conv.in_channels == 48 and focus.conv.conv.out_channels == 16
    assert type(focus.conv).__module__ == "ultralytics.nn.modules.conv"  # Ultralytics Conv inside: fuse() fuses it
    assert model[2].conv.in_channels == 64 and model[2].conv.out_channels == 64
    assert model[4].conv.conv.in_channels == 64 and model[4].conv.conv.out_channels == 32
    assert model[5].conv.conv.in_channels == 128 and model[5].conv.conv.out_channels == 8
    assert save == [5]
    assert [(m.i, m.f) for m in model] == [(0, -1), (1, -1), (2, -1), (3, -1), (4, -1), (5, -1), (6, [-1, 5]), (7, -1)]
    x = torch.rand(1, 3, 64, 64)
    y, outs = x, []
    for m in model.eval():
        y = y if m.f == -1 else [y, outs[m.f[1]]]
        y = m(y)
        outs.append(y)
    assert [o.shape[1] for o in outs] == [16, 64, 64, 16, 32, 8, 16, 8]
    assert [o.shape[-1] for o in outs] == [16, 8, 8, 16, 8, 4, 4, 4]


def test_rows_in_the_head_with_skip_connections():
    """Our rows reading an earlier row (absolute from) and a Concat over them."""
    model, save = _parse(MIXED_YAML.replace("[-1, 1, SPDConv, [32]]  # 5", "[2, 1, SpaceToDepth, []]  # 5"))
    assert type(model[5]).__name__ == "SpaceToDepth" and model[5].f == 2 and save == [2, 5]
    assert model[7].conv.in_channels == 2 * 64 * 4  # Concat of row 5 (row 2's 64 channels * 4) with itself


def test_yaml_activation_applies_to_our_rows():
    model, _ = _parse("activation: nn.ReLU()\n" + MIXED_YAML)
    assert isinstance(model[0].conv.act, nn.ReLU) and isinstance(model[4].conv.act, nn.ReLU)


def test_focus_row_with_ultralytics_arguments_builds_ultralytics_focus():
    """Block 2, yolov5 order: Ultralytics' own Focus, so the checkpoint loads with plain Ultralytics."""
    from ultralytics.nn.modules import Focus as UltralyticsFocus

    model, _ = _parse("backbone:\n  - [-1, 1, Focus, [32, 3, 1, None, 1, False, 2, yolov5]]\nhead: []\n")
    assert type(model[0]) is UltralyticsFocus and isinstance(model[0].conv.act, nn.Identity)
    assert model[0].conv.conv.weight.shape == (32, 12, 3, 3)


def test_fuse_and_pickle_round_trip(tmp_path):
    path = _write(tmp_path, "mixed.yaml", MIXED_YAML + "  - [[7, 4], 1, Detect, [nc]]\n")
    yolo = _yolo(path)
    model = randomize_batchnorm(yolo.model, seed=3).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before = model(x)[0]
        restored = torch.load(io.BytesIO(_saved(model)), weights_only=False)  # Ultralytics pickles whole models
        assert type(restored.model[0]) is fs.Focus and restored.model[0].yaml_row.startswith("YAML row 0")
        assert torch.equal(restored(x)[0], before)
    fused = copy.deepcopy(model).double().fuse(verbose=False)  # folded in float64: exact to round-off
    inner = [fused.model[0].conv, fused.model[4].conv, fused.model[5].conv]
    assert all(not hasattr(m, "bn") and m.conv.bias is not None for m in inner)  # BatchNorm folded
    assert_same_stem(model, fused, x)
    saved = tmp_path / "mixed.pt"
    yolo.save(saved)
    again = _yolo(saved).model.float()
    assert type(again.model[4]) is fs.SPDConv
    in_fp16 = copy.deepcopy(model).half()  # Ultralytics saves in fp16: the same values, exactly
    assert again.state_dict().keys() == in_fp16.state_dict().keys()
    assert all(torch.equal(t.float(), again.state_dict()[k]) for k, t in in_fp16.state_dict().items())
    assert_same_stem(in_fp16, again, x)


def _saved(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------- errors

BAD_ROWS = {
    "unknown order": ("[-1, 1, SpaceToDepth, [2, nchw]]", r"unknown space-to-depth order 'nchw'"),
    "bad block size": ("[-1, 1, Focus, [16, 3, 1, None, 1, True, 1]]", r"block_size must be an integer >= 2"),
    "too many args": (
        "[-1, 1, SPDConv, [16, 3, 2, yolov5, 7]]",
        r"5 arguments; SPDConv args are \[c2, k, block_size, order\]",
    ),
    "missing c2": ("[-1, 1, SPDConv, []]", r"first argument must be the output channels c2"),
    "repeats": ("[-1, 2, SpaceToDepth, [2]]", r"repeats n=2; SpaceToDepth rows take n=1"),
    "two inputs": ("[[-1, -1], 1, DepthToSpace, [2]]", r"DepthToSpace takes one input"),
    "channels": ("[-1, 1, DepthToSpace, [8]]", r"16 input channels are not divisible by block_size\*\*2 = 64"),
    "wrong type": ("[-1, 1, SpaceToDepth, [two]]", r"block_size must be an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_fail_with_one_line_naming_the_row(case):
    row, message = BAD_ROWS[case]
    with pytest.raises(ValueError, match=message) as info:
        _parse(f"nc: 1\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\n  - {row}\nhead: []\n")
    text = str(info.value)
    assert text.startswith("YAML row 1 [") and "\n" not in text


def test_bad_row_reading_the_image_names_row_zero():
    with pytest.raises(ValueError, match=r"^YAML row 0 \[-1, 1, 'DepthToSpace', \[2\]\]: 3 input channels"):
        _parse("backbone:\n  - [-1, 1, DepthToSpace, [2]]\nhead: []\n")


def test_block_size_not_dividing_the_feature_map_names_the_row(tmp_path):
    """Ultralytics probes strides with a 256x256 input: a block size of 3 does not divide it."""
    text = MIXED_YAML.replace("[2, pixel_unshuffle]", "[3, pixel_unshuffle]") + "  - [[-1], 1, Detect, [nc]]\n"
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ValueError) as info:
        _yolo(path)
    text = str(info.value)
    assert text.startswith("YAML row 1 [-1, 1, 'SpaceToDepth', [3, 'pixel_unshuffle']]: feature map 64x64")
    assert "not divisible by block_size 3" in text and "\n" not in text


# ------------------------------------------------------------------------------------------- extra rows (public API)


class _InputProbe(nn.Module):
    """A Detect-style test head: records the channels of its inputs and concatenates their pooled features."""

    def __init__(self, nc: int, ch: list[int]):
        super().__init__()
        self.nc, self.ch = nc, list(ch)

    def forward(self, xs):
        return torch.cat([x.mean((2, 3)) for x in xs], 1)


def test_register_yaml_module_for_another_row():
    fs_ultralytics.register_yaml_module("InputProbe", _InputProbe, "inputs", ("nc",))
    fs_ultralytics.register_yaml_module("Halve", nn.Identity, lambda c1, args: c1, ())  # callable rule, one input
    try:
        model, save = _parse(
            "nc: 7\nscales:\n  s: [1, 0.5, 1024]\nbackbone:\n  - [-1, 1, Conv, [32, 3, 2]]\n"
            "  - [-1, 1, SpaceToDepth, []]\n  - [-1, 1, Halve, []]\nhead:\n  - [[0, 2], 1, InputProbe, [nc]]\n"
        )
        probe = model[3]
        assert isinstance(probe, _InputProbe) and probe.nc == 7 and probe.ch == [16, 64]
        assert save == [0, 2] and probe.f == [0, 2]
        assert fs_ultralytics.registered_yaml_modules()["InputProbe"].signature() == "InputProbe args are [nc]"
    finally:
        for name in ("InputProbe", "Halve"):
            fs_ultralytics._ROWS.pop(name)
    with pytest.raises(ValueError, match="channels_rule must be"):
        fs_ultralytics.register_yaml_module("Bad", nn.Identity, "double")


# ------------------------------------------------------------------------------------------- whole-model surgery


@pytest.mark.parametrize("file", ["yolov8-s2d4.yaml", "yolov8-spd.yaml"])
def test_whole_model_to_s2d_and_back_is_exact(config_models, file):
    model = randomize_batchnorm(copy.deepcopy(config_models[file].model), seed=5).eval()
    reference = copy.deepcopy(model)
    shape = (1, 3, 32, 32)  # the smallest input the stride-32 models take; the last check uses a larger one
    to_conv = fs.convert(model, to="conv", scope="all", input_shape=shape)
    assert not to_conv.skipped and to_conv.verification.max_rel_err <= 1e-10
    assert not [m for m in model.modules() if type(m).__module__.startswith("focus_surgery")]  # all folded
    to_s2d = fs.convert(model, to="s2d", scope="all", input_shape=shape)
    strided = 7 if file == "yolov8-spd.yaml" else 6  # every conv with stride 2 (and the folded stride-4 stem)
    assert len(to_s2d.replaced) == strided and not to_s2d.skipped
    assert all(type(model.get_submodule(r.path)) is fs.SPDConv for r in to_s2d.replaced)
    assert to_s2d.verification.max_rel_err <= 1e-10
    back = fs.convert(model, to="conv", scope="all", input_shape=shape)
    assert len(back.replaced) == strided and back.verification.max_rel_err <= 1e-10
    final = fs.verify(reference, model, input_shape=(2, 3, 64, 96))
    assert final.passed and final.max_rel_err <= 1e-10, final
    if file == "yolov8-s2d4.yaml":  # SpaceToDepth row folded into the next conv row, an Identity keeps the routing
        stem, conv = model.model[0], model.model[1]
        assert type(stem) is nn.Identity and (stem.i, stem.f) == (0, -1)
        assert conv.conv.kernel_size == (12, 12) and conv.conv.stride == (4, 4) and conv.conv.in_channels == 3
        assert model.yaml["backbone"][:2] == [[-1, 1, "nn.Identity", []], [-1, 1, "Conv", [128, 12, 4, 4]]]
    _assert_plain_ultralytics_rebuilds(model)


def _assert_plain_ultralytics_rebuilds(model: nn.Module) -> None:
    """Ultralytics' own parser (ours unhooked) rebuilds the converted model from its YAML: same weights and outputs."""
    from ultralytics.nn.tasks import DetectionModel

    fs_ultralytics.unregister()
    try:
        rebuilt = DetectionModel(copy.deepcopy(model.yaml), verbose=False).eval()
    finally:
        fs.register()
    assert not [m for m in rebuilt.modules() if type(m).__module__.startswith("focus_surgery")]
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x)[0], model(x)[0])


def test_yaml_rows_follow_the_stem_both_ways(config_models):
    model = copy.deepcopy(config_models["yolov5-focus.yaml"].model).eval()
    fs.convert(model, to="conv", verify=False)  # exactness is checked elsewhere; this is about the YAML
    assert model.yaml["backbone"][0] == [-1, 1, "Conv", [64, 6, 2, 2]]
    fs.convert(model, to="focus", verify=False)
    assert model.yaml["backbone"][0] == [-1, 1, "Focus", [64, 3, 1, 1]]
    assert config_models["yolov5-focus.yaml"].model.yaml["backbone"][0] == [-1, 1, "Focus", [64, 3]]  # copy's own
    fs.convert(model, to="s2d", scope="all", verify=False)  # SPDConv with explicit padding: no row says it, left
    assert model.yaml["backbone"][1] == [-1, 1, "Conv", [128, 3, 2]]


def test_space_to_depth_used_twice_is_named_not_folded():
    model, _ = _parse(
        "backbone:\n  - [-1, 1, SpaceToDepth, [2]]\n  - [-1, 1, Conv, [16, 3, 1]]\n"
        "  - [[-1, 0], 1, Concat, [1]]\nhead: []\n"
    )
    report = fs.convert(model, to="conv", scope="all", verify=False)
    assert not report.replaced
    reason = "space-to-depth output is used by more than the next conv"
    assert [(s.path, s.reason) for s in report.skipped] == [("0", reason)]
    assert "used by more than the next conv" in json.dumps(report.to_dict())
