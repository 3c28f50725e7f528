"""YOLOv5-repository checkpoints: safe loading, exact rebuild, conversion, Ultralytics use, bad input."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _yolov5_legacy_helpers import (
    BOX_REL_TOL,
    FIXTURES,
    MODELS,
    SCORE_TOL,
    SHARED_FIXTURES,
    YOLOV5S6_V50_YAML,
    assert_within_tolerance,
    compare_to_reference,
    fixture_inputs,
    make_yolov5_style_checkpoint,
    sha256,
    write_old_style_checkpoint,
    write_old_zip_checkpoint,
)

from focus_surgery.checkpoint_io import CheckpointError
from focus_surgery.cli import main
from focus_surgery.yolov5.convert import load_yolov5_safetensors
from focus_surgery.yolov5.detect import LegacyDetect
from focus_surgery.loader import Record, read_checkpoint
from focus_surgery.surgery import convert
from focus_surgery.yolov5.rebuild import describe, read_yolov5_checkpoint, rebuild
from tests._markers import marker_state

REPO = Path(__file__).resolve().parents[1]
RELEASES = list(MODELS)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread avoids OpenMP spin-waits on a busy machine (30-100x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each fixture converted once through the command line (in process): (new .pt, JSON report)."""
    folder = tmp_path_factory.mktemp("converted")
    results = {}
    for release, src in MODELS.items():
        dst = folder / f"{release}.pt"
        assert main(["convert", str(src), str(dst), "--verify", "--json"]) == 0
        results[release] = dst
    return results


# ------------------------------------------------------------------------------------------------ safe loading


@pytest.mark.parametrize("release", RELEASES)
def test_reads_every_fixture_as_inert_records(release):
    content = read_checkpoint(MODELS[release]).content
    model = content["model"]
    assert isinstance(model, Record) and model.qualname == "models.yolo.Model"
    assert "models" not in sys.modules and "models.yolo" not in sys.modules  # nothing of YOLOv5 was imported
    kinds = {r.qualname for _, r in model.named_modules()}
    assert "models.yolo.Detect" in kinds and all(isinstance(r, Record) for _, r in model.named_modules())
    assert isinstance(content["best_fitness"], np.ndarray) and content["best_fitness"].dtype == np.float64


@pytest.mark.parametrize("container", ["pre-1.6", "zip-1.6"])
def test_old_containers_and_numpy_core_names(tmp_path, container):
    """Files as torch 1.5 (pre-1.6 container) or 1.6-1.8 (older zip) with numpy 1.x wrote them."""
    old = tmp_path / "old.pt"
    if container == "pre-1.6":  # also without torch 2.x's private module attributes
        write_old_style_checkpoint(MODELS["v2.0"], old)
        assert not old.read_bytes().startswith(b"PK")
    else:
        write_old_zip_checkpoint(MODELS["v2.0"], old)
    assert b"numpy.core.multiarray" in old.read_bytes() and b"numpy._core" not in old.read_bytes()
    ckpt = read_yolov5_checkpoint(old)
    if container == "pre-1.6":
        assert "_forward_hooks_with_kwargs" not in ckpt.model.state
    assert ckpt.metadata["best_fitness"] == pytest.approx([0.066771], abs=1e-6)
    model, _ = rebuild(ckpt)
    original, _ = rebuild(read_yolov5_checkpoint(MODELS["v2.0"]))
    theirs = original.state_dict()
    assert all(torch.equal(t, theirs[k]) for k, t in model.state_dict().items())  # the very same weights
    x = fixture_inputs()["192x320"]
    with torch.no_grad():
        assert torch.equal(model(x)[0], original(x)[0])


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker  # under the test's tmp_path: no path shared with other checkouts or runs

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["malicious"] = tmp_path / "malicious.pt"
    torch.save({"epoch": -1, "model": None, "wandb_id": _Evil(tmp_path / "PWNED")}, files["malicious"])
    files["truncated"] = tmp_path / "truncated.pt"
    data = MODELS["v4.0"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])  # the shared set's recipe: first floor(n/2) bytes
    files["random"] = tmp_path / "random.pt"
    files["random"].write_bytes(np.random.default_rng(12345).bytes(65536))
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    return files


def test_restricted_unpickler_refuses_foreign_globals(tmp_path):
    marker = tmp_path / "PWNED"
    payloads = ((_Evil(marker), r"posix\.system"), (eval, r"__builtin__\.eval"), (pickle.loads, r"pickle\.loads"))
    for payload, name in payloads:
        path = tmp_path / "bad.pt"
        torch.save({"x": payload}, path)
        with pytest.raises(CheckpointError, match=name):
            read_checkpoint(path).content
    assert not marker.exists()


@pytest.mark.parametrize(
    "kind", ["malicious", "shared-malicious", "truncated", "random", "empty", "directory", "missing"]
)
@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, kind, command):
    fixed_marker = marker_state()
    files = _hostile_files(tmp_path)
    files["directory"] = tmp_path / "a_folder"
    files["directory"].mkdir()
    files["missing"] = tmp_path / "missing.pt"
    if kind == "shared-malicious":  # the fixture set's own malicious file, in the repository or beside it
        found = [p for p in (FIXTURES, SHARED_FIXTURES) if (p / "malicious_reduce.pt").is_file()]
        if not found:
            pytest.skip("malicious_reduce.pt fixture not present")
        files[kind] = found[0] / "malicious_reduce.pt"
    src = files[kind]
    before = sha256(src) if src.is_file() else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    taken = command == "convert" and kind == "directory"
    if taken:
        (out_dir / "taken.pt").write_bytes(b"x")  # a folder input needs an output folder, not a file
        argv = ["convert", src, out_dir / "taken.pt"]
    else:
        argv = ["convert", src, out_dir / "new.pt", "--verify"] if command == "convert" else ["inspect", src]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(src) in err
    if kind in ("malicious", "shared-malicious"):
        assert "posix.system" in err and "nothing was executed" in err
    assert sorted(p.name for p in out_dir.iterdir()) == (["taken.pt"] if taken else [])
    assert not (tmp_path / "PWNED").exists() and marker_state() == fixed_marker
    if before is not None:
        assert sha256(src) == before


# ------------------------------------------------------------------------------------------------ reconstruction


@pytest.mark.parametrize("release", RELEASES)
def test_rebuilt_model_matches_original_code(release):
    from ultralytics.nn.tasks import DetectionModel

    model, _ = rebuild(read_yolov5_checkpoint(MODELS[release]))
    assert type(model) is DetectionModel and isinstance(model.model[-1], LegacyDetect)
    expected_act = {"v2.0": "LeakyReLU", "v4.0": "SiLU", "v6.0": "SiLU"}[release]
    assert type(model.model[1].act).__name__ == expected_act
    assert_within_tolerance(compare_to_reference(model, MODELS[release]))


@pytest.mark.parametrize("variant", ["P6 (v5.0 yolov5s6)", "v3.x Hardswish"])
def test_synthetic_yolov5_layouts(tmp_path, capsys, variant):
    """Layouts the fixture set lacks, written in the YOLOv5 repository's pickle layout with random weights."""
    path = tmp_path / "model.pt"
    if variant.startswith("P6"):
        live = make_yolov5_style_checkpoint(YOLOV5S6_V50_YAML, path)
        release, levels, n = "v4.0-v5.0", 4, 3 * (32 * 32 + 16 * 16 + 8 * 8 + 4 * 4)
    else:
        yaml = read_yolov5_checkpoint(MODELS["v2.0"]).model.get("yaml")
        live = make_yolov5_style_checkpoint(yaml, path, conv_act=torch.nn.Hardswish())
        release, levels, n = "v3.0-v3.1", 3, 3 * (32 * 32 + 16 * 16 + 8 * 8)
    ckpt = read_yolov5_checkpoint(path)
    model, _ = rebuild(ckpt)
    assert describe(ckpt)["release"] == release and len(model.model[-1].m) == levels
    x = fixture_inputs()["256"]
    with torch.no_grad():
        ours, theirs = model(x)[0], live(x)[0]
    assert ours.shape == (2, 4 + ckpt.model.get("nc"), n) and torch.equal(ours, theirs)
    code, out, _ = run_cli(capsys, "convert", path, tmp_path / "new.pt", "--verify", "--json")
    assert code == 0 and json.loads(out)["max_abs_err"] < 1e-9


def test_legacy_detect_output_layout():
    """(B, 4 + nc, N) in eval with N in YOLOv5's order (level, anchor, y, x); raw logits per level in training."""
    head = LegacyDetect(nc=2, anchors=[[10, 13, 16, 30], [30, 61, 62, 45]], ch=[4, 8], stride=[8, 16]).eval()
    x = [torch.randn(1, 4, 4, 6), torch.randn(1, 8, 2, 3)]
    y, raw = head(x)
    assert y.shape == (1, 6, 2 * 4 * 6 + 2 * 2 * 3)
    p = raw[1][0, 1, 1, 2].sigmoid()  # level 1, anchor 1, y=1, x=2
    n = 2 * 4 * 6 + 1 * 2 * 3 + 1 * 3 + 2
    expected_xy = (p[:2] * 2 - 0.5 + torch.tensor([2.0, 1.0])) * 16
    expected_wh = (p[2:4] * 2) ** 2 * torch.tensor([62.0, 45.0])
    torch.testing.assert_close(y[0, :4, n], torch.cat((expected_xy, expected_wh)))
    torch.testing.assert_close(y[0, 4:, n], p[5:] * p[4])
    assert [tuple(r.shape) for r in head.train()(x)] == [(1, 2, 4, 6, 7), (1, 2, 2, 3, 7)]


# ------------------------------------------------------------------------------------------------ conversion


def test_cli_convert_verify_json_subprocess(tmp_path):
    """The real command, once: exit 0, one JSON object, float64 error ~1e-10 or below."""
    dst = tmp_path / "new.pt"
    env = {**os.environ, "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "focus_surgery", "convert", str(MODELS["v4.0"]), str(dst), "--verify", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert 0 <= report["max_abs_err"] < 1e-9
    assert report["stem_before"].startswith("Focus") and report["stem_after"] == "Conv(6x6, stride 2, padding 2)"
    assert dst.is_file()


@pytest.mark.parametrize("release", RELEASES)
def test_converted_checkpoint_loads_in_ultralytics(converted, release):
    from ultralytics import YOLO

    import focus_surgery  # noqa: F401  (LegacyDetect must be importable for YOLO())

    src_ckpt = read_yolov5_checkpoint(MODELS[release])
    ckpt = torch.load(converted[release], map_location="cpu", weights_only=False)
    params = list(ckpt["model"].parameters())
    assert params[0].dtype == src_ckpt.dtype  # the source dtype is kept
    meta = ckpt["focus_surgery"]
    assert meta["source_dtype"] == str(src_ckpt.dtype).replace("torch.", "")
    assert ckpt["epoch"] == src_ckpt.metadata["epoch"]
    assert ckpt["best_fitness"] == pytest.approx(src_ckpt.metadata["best_fitness"][0])
    assert meta["yolov5"]["hyp"] == src_ckpt.metadata["hyp"] and meta["max_abs_err"] < 1e-9
    yolo = YOLO(str(converted[release]))
    model = yolo.model
    assert yolo.task == "detect" and model.names == {0: "widget", 1: "gadget", 2: "gizmo"}
    assert model.yaml["nc"] == 3 and model.stride.tolist() == [8.0, 16.0, 32.0]
    stem = model.model[0]
    assert type(stem).__name__ == "Conv" and stem.conv.kernel_size == (6, 6) and stem.conv.stride == (2, 2)
    assert_within_tolerance(compare_to_reference(model, MODELS[release]))


def test_verify_command_compares_in_float64(converted, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "verify", MODELS["v4.0"], converted["v4.0"], "--json")
    assert code == 0 and json.loads(out)["max_abs_err"] < 1e-9
    code, out, _ = run_cli(capsys, "verify", MODELS["v2.0"], converted["v4.0"], "--json")  # another model: fails
    assert code == 1 and not json.loads(out)["passed"]


def test_predict_and_onnx_export(converted, tmp_path):
    import onnxruntime as ort
    from ultralytics import YOLO

    src = tmp_path / "model.pt"
    src.write_bytes(converted["v2.0"].read_bytes())
    yolo = YOLO(str(src))
    image = (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8)
    results = yolo.predict(image, imgsz=256, conf=0.001, verbose=False)
    boxes = results[0].boxes
    assert len(boxes) > 0 and boxes.xyxy.shape[1] == 4 and int(boxes.cls.max()) < 3
    onnx_file = yolo.export(format="onnx", imgsz=256, simplify=False, verbose=False)
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    x = fixture_inputs()["256"][:1]
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch_out = YOLO(str(src)).model.float().eval()(x)[0].numpy()
    assert onnx_out.shape == torch_out.shape == (1, 7, 4032)
    assert np.abs(onnx_out[:, :4] - torch_out[:, :4]).max() <= BOX_REL_TOL * np.abs(torch_out[:, :4]).max()
    assert np.abs(onnx_out[:, 4:] - torch_out[:, 4:]).max() <= SCORE_TOL


def test_to_focus_keeps_or_makes_a_focus_stem(tmp_path, capsys):
    from ultralytics import YOLO

    for release in ("v2.0", "v6.0"):  # a Focus stays; a v6 conv stem becomes a Focus
        dst = tmp_path / f"{release}-focus.pt"
        code, out, _ = run_cli(capsys, "convert", MODELS[release], dst, "--to", "focus", "--verify", "--json")
        report = json.loads(out)
        assert code == 0 and report["stem_after"].startswith("Focus") and report["max_abs_err"] < 1e-9
        model = YOLO(str(dst)).model
        assert type(model.model[0]).__name__ == "Focus" and model.model[0].conv.conv.kernel_size == (3, 3)
        original, _ = rebuild(read_yolov5_checkpoint(MODELS[release]))
        if release == "v2.0":  # untouched: the very same weights
            theirs = model.state_dict()
            assert all(torch.equal(t, theirs[k]) for k, t in original.state_dict().items())
        else:  # float64 check of the rewritten stem on the fixture input
            x = fixture_inputs()["192x320"].double()
            with torch.no_grad():
                a, b = original.double()(x)[0], model.double()(x)[0]
            assert (a - b).abs().max() < 1e-9


def test_safetensors_and_json_rebuild_without_pickle(converted, tmp_path, capsys):
    dst = tmp_path / "model.safetensors"
    code, _, _ = run_cli(capsys, "convert", MODELS["v2.0"], dst, "--verify", "--json")
    assert code == 0
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["dtype"] == "float16" and config["architecture"]["yaml"]["backbone"][0][2] == "Conv"
    from safetensors import safe_open

    with safe_open(str(dst), "pt") as handle:
        assert handle.get_tensor("model.0.conv.weight").dtype == torch.float16
    model = load_yolov5_safetensors(dst)
    assert type(model.model[0]).__name__ == "Conv" and isinstance(model.model[-1], LegacyDetect)
    from_pt = torch.load(converted["v2.0"], map_location="cpu", weights_only=False)["model"].float()
    theirs = from_pt.state_dict()
    assert model.state_dict().keys() == theirs.keys()
    assert all(torch.equal(t, theirs[k]) for k, t in model.state_dict().items())
    x = fixture_inputs()["192x320"]
    with torch.no_grad():
        assert torch.equal(model(x)[0], from_pt.eval()(x)[0])
    code, out, _ = run_cli(capsys, "verify", MODELS["v2.0"], dst, "--json")
    assert code == 0 and json.loads(out)["max_abs_err"] < 1e-9


V50_FP32 = FIXTURES / "yolov5s-v5.0-d0.33-w0.125-nc3-seed102-fp32.pt"  # the v6.0 file holds it converted by hand
# every real model of the fixture set (all copied into the repository), except the two other tests' subjects
OTHER_MODELS = [p for p in sorted(FIXTURES.glob("yolov5s-*.pt")) if p not in (V50_FP32, MODELS["v6.0"])]


def _rebuild_compare_convert(path: Path):
    """Rebuild a real file, match the original code's outputs, convert to the 6x6 stem, match them again."""
    model, _ = rebuild(read_yolov5_checkpoint(path))
    assert_within_tolerance(compare_to_reference(model, path))
    report = convert(model, to="conv", verify=True, input_shape=(1, 3, 64, 96))
    assert report.max_abs_err < 1e-9 and report.replaced[0].new_weight_shape[2:] == [6, 6]
    assert_within_tolerance(compare_to_reference(model, path))
    return model


def test_v50_converts_to_the_hand_made_v60_file_bit_for_bit():
    """End to end on real files (both in the repository, so this always runs): v5.0 Focus -> v6.0 6x6 stem."""
    model = _rebuild_compare_convert(V50_FP32)
    expected, _ = rebuild(read_yolov5_checkpoint(MODELS["v6.0"]))
    ours = model.state_dict()
    for key, tensor in expected.state_dict().items():
        assert torch.equal(ours[key], tensor), key  # the same permutation, bit for bit


@pytest.mark.parametrize("path", OTHER_MODELS, ids=lambda p: p.name[:30])
def test_every_fixture_model_matches_the_original_code_before_and_after(path):
    """Each real file of the fixture set (v2.0-v5.0, fp16 and fp32, 3 and 80 classes): rebuilt and converted."""
    _rebuild_compare_convert(path)


def test_hostile_json_architecture_is_refused(tmp_path, capsys):
    """The JSON beside a .safetensors is user input too: unknown layer names are refused, strings never evaluated."""
    dst = tmp_path / "model.safetensors"
    assert main(["convert", str(MODELS["v2.0"]), str(dst)]) == 0
    config_file = tmp_path / "model.json"
    config = json.loads(config_file.read_text())
    marker = tmp_path / "PWNED"
    config["architecture"]["yaml"]["activation"] = f"__import__('os').system('touch {marker}')"
    config_file.write_text(json.dumps(config))
    assert isinstance(load_yolov5_safetensors(dst).model[-1], LegacyDetect) and not marker.exists()
    config["architecture"]["yaml"]["backbone"][1][2] = "torch_safe_load"
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="torch_safe_load"):
        load_yolov5_safetensors(dst)


# ------------------------------------------------------------------------------------------------ inspect


@pytest.mark.parametrize(
    "release, expected_release, stem, act, dtype",
    [
        ("v2.0", "v2.0", "Focus", "LeakyReLU", "float16"),
        ("v4.0", "v4.0-v5.0", "Focus", "SiLU", "float16"),
        ("v6.0", "v6.0-v7.0", "Conv", "SiLU", "float32"),
    ],
)
def test_inspect(capsys, release, expected_release, stem, act, dtype):
    code, out, _ = run_cli(capsys, "inspect", MODELS[release], "--json")
    assert code == 0
    info = json.loads(out)
    assert info["release"] == expected_release and info["stem"].startswith(stem) and info["stem_activation"] == act
    assert info["nc"] == 3 and info["names"] == ["widget", "gadget", "gizmo"] and info["dtype"] == dtype
    assert info["anchors"] == [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
    assert info["converts"].startswith("yes")
    ckpt = read_yolov5_checkpoint(MODELS[release])
    assert info["epoch"] == ckpt.metadata["epoch"] and info["best_fitness"] == ckpt.metadata["best_fitness"][0]
    code, text, _ = run_cli(capsys, "inspect", MODELS[release])
    assert code == 0 and expected_release in text and "converts: yes" in text and "best fitness" in text
    assert describe(ckpt)["parameters"] == sum(p.numel() for p in rebuild(ckpt)[0].parameters())


# ------------------------------------------------------------------------------------------------ folders


def test_folder_conversion_carries_on_and_reports(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    (src / "a.pt").write_bytes(MODELS["v2.0"].read_bytes())
    (src / "nested" / "b.pt").write_bytes(MODELS["v6.0"].read_bytes())
    (src / "broken.pt").write_bytes(np.random.default_rng(12345).bytes(4096))
    (src / "notes.txt").write_text("not a checkpoint")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "convert", src, out, "--verify", "--workers", "2", "--json")
    assert code == 2
    summary = json.loads(stdout)
    assert sorted(Path(r["src"]).name for r in summary["converted"]) == ["a.pt", "b.pt"]
    assert [Path(f["file"]).name for f in summary["failed"]] == ["broken.pt"]
    assert "not a" in summary["failed"][0]["reason"]
    assert (out / "a.pt").is_file() and (out / "nested" / "b.pt").is_file() and not (out / "broken.pt").exists()
    assert "2/3" in err or "3/3" in err  # progress bar on stderr
    (src / "broken.pt").unlink()
    code, stdout, _ = run_cli(capsys, "convert", src, tmp_path / "out2")
    assert code == 0 and "converted 2, failed 0" in stdout


# ------------------------------------------------------------------------------------------------ other bad input


def test_current_ultralytics_checkpoint(converted, tmp_path, capsys):
    """Already Ultralytics: said so; a Focus stem is converted, a conv stem leaves nothing to do (exit 0, nothing
    written: issue 20 asked for "nothing to do" where this exited 2 with "no stem to convert")."""
    with_focus = tmp_path / "focus.pt"
    assert main(["convert", str(MODELS["v4.0"]), str(with_focus), "--to", "focus"]) == 0
    capsys.readouterr()
    code, out, err = run_cli(capsys, "convert", with_focus, tmp_path / "conv.pt", "--verify")
    assert code == 0 and "already a current Ultralytics model" in out
    before = sha256(converted["v4.0"])
    code, out, err = run_cli(capsys, "convert", converted["v4.0"], tmp_path / "again.pt")
    assert code == 0 and "already a current Ultralytics model" in out and len(out.strip().splitlines()) == 1
    assert out.startswith("nothing to do: ") and not err
    assert not (tmp_path / "again.pt").exists() and sha256(converted["v4.0"]) == before


def test_unwritable_destination(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for dst in (blocker / "new.pt", tmp_path / "no_such_folder" / "new.pt", tmp_path / "new.onnx"):
        code, _, err = run_cli(capsys, "convert", MODELS["v2.0"], dst)
        assert code == 2 and str(dst) in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


@contextlib.contextmanager
def _as_nobody():
    """Run the block with the real and effective ids of ``nobody``; the saved ids stay root's, so they come back."""
    os.setresgid(65534, 65534, 0)
    os.setresuid(65534, 65534, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)


def test_folder_without_write_permission(tmp_path, capsys):
    """A read-only folder is refused with one line, also when the tests run as root (as CI does): root may write
    anywhere, so there the same CLI call runs in this process with the ids of ``nobody``."""
    folder = Path(tempfile.mkdtemp(prefix="focus-surgery-unwritable-"))  # tmp_path's parents are 0700 (root only)
    try:
        folder.chmod(0o755)
        src = folder / "v2.0.pt"
        shutil.copyfile(MODELS["v2.0"], src)
        src.chmod(0o644)
        locked = folder / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        assert run_cli(capsys, "convert", src, tmp_path / "warm.pt")[0] == 0  # imports every module the CLI needs
        with _as_nobody() if os.geteuid() == 0 else contextlib.nullcontext():
            code, _, err = run_cli(capsys, "convert", src, locked / "new.pt")
        assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1, err
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(folder)


def test_interrupted_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    def interrupted_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    before = sha256(MODELS["v2.0"])
    monkeypatch.setattr(torch, "save", interrupted_save)
    code, _, err = run_cli(capsys, "convert", MODELS["v2.0"], tmp_path / "new.pt")
    assert code == 2 and "interrupted" in err
    assert list(tmp_path.iterdir()) == [] and sha256(MODELS["v2.0"]) == before
