"""The benchmark runs on tiny shapes and reports what it promises; no timing is asserted (shared machine)."""

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import focus_surgery as fs
from focus_surgery.speed import bench
from focus_surgery.checkpoint_io import load_checkpoint
from focus_surgery.cli import main
from focus_surgery.demo import build_focus_model, randomize_batchnorm
from focus_surgery.state_dict import find_stem
from focus_surgery.speed.stem_forms import form_names
from focus_surgery.speed.timing import peak_memory_bytes, time_interleaved

ROOT = Path(__file__).resolve().parent.parent
FOCUS_YAML = ROOT / "tests" / "fixtures" / "yolo-focus-tiny.yaml"  # Ultralytics model with a Focus stem


def _cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "focus_surgery", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_bench_case_reports_every_form_side_by_side():
    case = bench.bench_case(bench.Case("yolov5n", 32, 2, "forward+backward"), torch.device("cpu"), repeats=2, warmup=1)
    names = [row["form"] for row in case["forms"]]
    assert names[:-1] == form_names() and names[-1] == f"optimize -> {case['optimize_picked']}"
    assert case["optimize_picked"] in {*form_names(), "original"}
    ratios = [row["ratio_to_fastest"] for row in case["forms"][:-1]]
    assert min(ratios) == 1.0 and all(r >= 1.0 for r in ratios)
    # 2 FLOPs per MAC, x2 for the weight gradient: 16 out, 16x16 output, 3 in x 6x6 kernel, batch 2
    assert case["flops"] == 2 * 2 * 16 * 16 * 16 * 3 * 36 * 2
    for row in case["forms"]:
        assert row["median_ms"] > 0 and math.isfinite(row["gflops"]) and row["peak_mb"] > 0
        assert row["fraction_of_matmul"] == pytest.approx(row["gflops"] / case["matmul"]["gflops"])


def test_interleaved_timing_and_peak_memory_primitives():
    calls = {"a": lambda: torch.ones(1000).sum(), "b": lambda: torch.ones(10).sum()}
    times = time_interleaved(calls, torch.device("cpu"), repeats=4, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
    # a 4 MiB float32 tensor allocated and freed inside the call is seen by the peak measurement
    peak = peak_memory_bytes(lambda: torch.empty(1024, 1024).fill_(1).sum(), torch.device("cpu"))
    assert 4 * 2**20 <= peak < 8 * 2**20


def test_cases_from_flags():
    assert bench.cases_from_flags(None, None, None, None) is None
    cases = bench.cases_from_flags("yolov5s,tresnet_m", None, "1,8", "forward")
    assert [(c.stem, c.size, c.batch) for c in cases] == [
        ("yolov5s", 640, 1),
        ("yolov5s", 640, 8),
        ("tresnet_m", 224, 1),
        ("tresnet_m", 224, 8),
    ]
    with pytest.raises(ValueError, match="unknown stem"):
        bench.cases_from_flags("yolov9", None, None, None)
    with pytest.raises(ValueError, match="multiples"):
        bench.cases_from_flags("tresnet_m", "226", None, None)
    assert len(bench.FULL) == 6 * 2 * 3 * 2  # the grid: 6 stems, 2 sizes, 3 batches, 2 modes


def test_yolov5x_size_checkpoint_and_conversion_measurement(tmp_path):
    sd = bench.make_yolov5x_size_state_dict(2_000_000)
    params = sum(v.numel() for v in sd.values() if v.is_floating_point())
    assert 2_000_000 <= params < 2_300_000  # stops at the first layer past the target
    assert find_stem(sd).form == "focus" and list(sd["model.0.conv.conv.weight"].shape) == [80, 12, 3, 3]
    result = bench.bench_conversion(200_000, repeats=1, folder=str(tmp_path), isolate=False)
    assert result["time_ratio"] > 0 and result["file_mb"] > 0.7
    assert not list(tmp_path.iterdir())  # the temporary files are gone


def test_cli_bench_quick_json_and_plot(tmp_path):
    plot = tmp_path / "latency.png"
    done = _cli("bench", "--quick", "--json", "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["date_utc"] and env["device"] == "cpu"
    assert [(c["stem"], c["batch"], c["mode"]) for c in result["stems"]] == [
        (c.stem, c.batch, c.mode) for c in bench.QUICK
    ]
    assert result["conversion"]["convert_s"] > 0
    conv = result["conversion"]  # issue 19: every loader mode, torch.load's two modes and a file copy side by side
    assert set(conv["seconds"]) == {
        *bench.LOADER_KINDS,
        "torch-load",
        "torch-load-mmap",
        "copy",
        "copy+fsync",
        "plain",
        "convert",
        "convert-verify",
        "plain+fsync",
        "convert-no-fsync",
        "convert-rewrite",
    }
    assert all(v > 0 for v in conv["seconds"].values()) and conv["load_mmap_over_torch_mmap"] > 0
    folder = result["folder"]
    assert folder["files"] == 3 and [r["workers"] for r in folder["rows"]] == [1] and folder["rows"][0]["seconds"] > 0
    assert "Folder conversion" in bench.format_report(result) and "mmap-nocrc" in bench.format_report(result)
    assert "Own memory" in bench.format_report(result) and conv["own_peak_over_file_size"]["convert"] >= 0
    onnx = {row["form"]: row for row in result["onnx"]["forms"]}
    assert onnx["focus_slices"]["slice"] > 0 and onnx["focus_slices"]["concat"] == 1
    assert onnx["conv"]["slice"] == 0 and onnx["conv"]["concat"] == 0
    folded, surgery = onnx[bench.FOLDED], result["onnx"]["surgery"]  # the exported Focus graph after ONNX surgery
    assert folded["slice"] == 0 and folded["concat"] == 0 and folded["median_ms"] > 0
    assert surgery["nodes_after"] < surgery["nodes_before"] == onnx["focus_slices"]["nodes"]
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_bench_bad_flags(capsys):
    assert main(["bench", "--stems", "yolov9"]) == 2
    err = capsys.readouterr().err
    assert "unknown stem" in err and "Traceback" not in err


def test_cli_convert_to_fastest_model_checkpoint_in_half(tmp_path, capsys):
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(str(FOCUS_YAML), verbose=False).eval()
    randomize_batchnorm(model)
    src, dst = tmp_path / "model.pt", tmp_path / "fastest.pt"
    torch.save({"model": copy.deepcopy(model).half(), "ema": None, "epoch": 3}, src)
    before = src.read_bytes()
    assert main(["convert", str(src), str(dst), "--to", "fastest", "--input-size", "64", "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chosen"] in {*form_names(), "original"}
    assert src.read_bytes() == before  # the input is never touched
    out = load_checkpoint(dst)
    assert out.content["epoch"] == 3 and next(out.model.parameters()).dtype == torch.float16  # dtype kept
    if report["chosen"] != "original":
        assert type(out.model.model[0]).__name__ == "StemForm" and out.model.model[0].form == report["chosen"]
        assert (
            report["verification"]["passed"] and report["max_abs_err"] <= 1e-10 * report["verification"]["output_scale"]
        )
    check = fs.verify(model.half(), out.model, input_shape=(1, 3, 64, 96))  # float64 copies of the same fp16 weights
    assert check.passed and check.max_abs_err <= 1e-12 * max(1.0, check.output_scale)


def test_cli_convert_to_fastest_state_dict(tmp_path, capsys):
    model = build_focus_model()
    src = tmp_path / "sd.pt"
    torch.save(model.state_dict(), src)
    dst = tmp_path / "sd_fast.pt"
    assert main(["convert", str(src), str(dst), "--to", "fastest", "--input-size", "64", "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chosen"] in ("focus", "conv") and set(report["median_ms"]) == {"focus", "conv"}
    converted = load_checkpoint(dst).state_dict
    assert find_stem(converted).form == report["chosen"]
    if report["chosen"] == "conv":  # converted: verified in float64
        assert report["verification"]["passed"] and report["max_abs_err"] <= 1e-12
    else:  # already the faster layout: written unchanged
        assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())
