"""Review of the pipeline renovation (#18): defects found, each pinned by a test.

Options a source cannot honour are refused with one line (never silently ignored); the registry's order does not
depend on registration order; the layering checker gives every module a floor (none silently on the top floor).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from focus_surgery.cli import main
from focus_surgery.sources import SOURCES, load, register_source, source_for

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "checkpoints" / "focus-backbone.pt"
ULTRALYTICS = ROOT / "checkpoints" / "yolo-focus-tiny.pt"
ONNX = ROOT / "tests" / "fixtures" / "onnx-yolov5" / "yolov5s-v5.0-static128-torchscript.onnx"


def _refused(capsys, tmp_path, src: Path, *flags: str, names: str) -> None:
    """``convert src`` with ``flags``: exit 2, one line on stderr naming ``names``, nothing written, input kept."""
    before = src.read_bytes()
    dst = tmp_path / f"out{src.suffix}"
    assert main(["convert", str(src), str(dst), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("focus-surgery: error: ") and names in err, err
    assert list(tmp_path.iterdir()) == [] and src.read_bytes() == before


def test_tolerance_refused_for_a_source_that_does_not_read_it(capsys, tmp_path):
    """--tolerance bounds ONNX verification only; a state dict's check used to ignore it silently."""
    _refused(capsys, tmp_path, PLAIN, "--verify", "--tolerance", "1e-3", names="--tolerance")


def test_block_size_refused_for_a_model_file(capsys, tmp_path):
    """--block-size / --order give a state dict's stem geometry; a model file has its own and used to ignore them."""
    _refused(capsys, tmp_path, ULTRALYTICS, "--block-size", "4", names="--block-size")
    _refused(capsys, tmp_path, ULTRALYTICS, "--order", "tf", names="--order")


def test_input_size_refused_without_fastest(capsys, tmp_path):
    """--input-size / --batch are the shape --to fastest times; with --to conv they were ignored."""
    _refused(capsys, tmp_path, PLAIN, "--input-size", "64", names="--to fastest")
    _refused(capsys, tmp_path, PLAIN, "--batch", "4", names="--to fastest")


@pytest.mark.skipif(not ONNX.exists(), reason="ONNX fixture")
def test_tolerance_without_verify_refused(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    _refused(capsys, tmp_path, ONNX, "--tolerance", "1e-3", names="add --verify")


def test_valid_own_options_still_accepted(capsys, tmp_path):
    """The options a source reads stay accepted (the default values given explicitly too)."""
    dst = tmp_path / "a.pt"
    assert main(["convert", str(PLAIN), str(dst), "--block-size", "2", "--order", "yolov5", "--verify"]) == 0
    assert dst.exists()
    dst = tmp_path / "u.pt"
    assert main(["convert", str(ULTRALYTICS), str(dst), "--block-size", "2", "--input-size", "640"]) == 0
    assert dst.exists()


def test_registry_answer_independent_of_registration_order():
    """Shuffled registration gives the same asking order and the same source for each file."""
    saved = list(SOURCES)
    expected = [s.name for s in saved]
    files = [load(PLAIN), load(ULTRALYTICS)]
    answers = [source_for(x).name for x in files]
    try:
        for seed in range(6):
            shuffled = list(saved)
            random.Random(seed).shuffle(shuffled)
            SOURCES.clear()
            for source in shuffled:
                register_source(source)
            assert [s.name for s in SOURCES] == expected
            assert [source_for(x).name for x in files] == answers
    finally:
        SOURCES[:] = saved


def test_layering_every_module_has_its_own_floor():
    """A module missing from the floor table used to fall under the package's own entry (the top floor), so a new
    module could import anything and the 'give it a floor' refusal never fired for the real package."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import test_layering as layering
    finally:
        sys.path.pop(0)
    with pytest.raises(KeyError, match="not in the floor table"):
        layering.floor("focus_surgery.brand_new_module", layering.FLOORS)
    graph = layering.package_imports(layering.PACKAGE)
    for module in graph:  # every real module resolves without the package's fallback
        layering.floor(module, layering.FLOORS)


def test_contributing_names_what_the_code_has():
    """Every "`name` in `path`" of CONTRIBUTING.md names something that file defines (step 2 of "Adding a checkpoint
    family" named a `RECORD_MODULES` that allowlist.py never had)."""
    import re

    text = (ROOT / "CONTRIBUTING.md").read_text()
    pairs = re.findall(r"`([A-Za-z_][\w.]*)(?:\(\))?`\s+in\s+`((?:focus_surgery|tests)/[\w/]+\.py)`", text)
    assert len(pairs) >= 2, pairs
    for name, path in pairs:
        assert re.search(rf"\b{re.escape(name.split('.')[-1])}\b", (ROOT / path).read_text()), (name, path)


def test_layout_refused_for_a_source_with_one_layout(capsys, tmp_path):
    """--layout yolov5 on a file that is written in its own layout (state dict, Ultralytics) was silently ignored."""
    _refused(capsys, tmp_path, PLAIN, "--layout", "yolov5", names="drop --layout yolov5")
    _refused(capsys, tmp_path, ULTRALYTICS, "--layout", "yolov5", names="drop --layout yolov5")


def test_layering_sees_imports_by_call(tmp_path):
    """``importlib.import_module("focus_surgery.cli")`` in a low module was an upward import the checker missed."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import test_layering as layering
    finally:
        sys.path.pop(0)
    files = {
        "focus_surgery/__init__.py": "",
        "focus_surgery/low.py": "import importlib\ndef f():\n    return importlib.import_module('focus_surgery.high')",
        "focus_surgery/mid.py": "def g():\n    return __import__('focus_surgery.high', fromlist=['x'])\n",
        "focus_surgery/pkg/__init__.py": "",
        "focus_surgery/pkg/a.py": "import importlib\nB = importlib.import_module('.b', __package__)\n",
        "focus_surgery/pkg/b.py": "",
        "focus_surgery/high.py": "import importlib\nM = importlib.import_module(name_from_somewhere)\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = layering.package_imports(tmp_path / "focus_surgery")
    assert graph["focus_surgery.low"] == graph["focus_surgery.mid"] == {"focus_surgery.high"}
    assert graph["focus_surgery.pkg.a"] == {"focus_surgery.pkg.b"} and graph["focus_surgery.high"] == set()
    floors = {"focus_surgery": 9, "focus_surgery.low": 0, "focus_surgery.mid": 0, "focus_surgery.high": 1}
    floors["focus_surgery.pkg"] = 0
    assert layering.upward(graph, floors) == [
        "focus_surgery.low (0) -> focus_surgery.high (1)",
        "focus_surgery.mid (0) -> focus_surgery.high (1)",
    ]


def _report_of(i: int) -> dict:
    """A converted file's JSON form of about 60 values (a yolov7 report with its replaced rows is of this size)."""
    rows = [{"rows": [r, r + 1], "weight": [[8, 12, 3, 3], [8, 3, 6, 6]], "block_size": 2} for r in range(4)]
    return {"src": f"in/{i}.pt", "dst": f"out/{i}.pt", "source": "yolov7", "to": "conv", "replaced": rows}


def test_folder_json_keeps_every_file(capsys, tmp_path, monkeypatch):
    """A folder run's JSON was bounded as ONE report (20,000 values): past ~300 files the later files' reports were
    silently dropped from "converted". Each file's report is bounded on its own."""
    import argparse

    from focus_surgery import folder

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.pt").write_bytes(b"")
    n = 500

    def fake_isolated(jobs, *args, **kwargs):
        return [folder.FileOutcome(f"in/{i}.pt", f"out/{i}.pt", result=_report_of(i)) for i in range(n)]

    monkeypatch.setattr(folder, "convert_isolated", fake_isolated)
    args = argparse.Namespace(src=str(tmp_path / "in"), dst=str(tmp_path / "out"), json=True, workers=1)
    args.timeout, args.max_memory = 10.0, 1.0
    assert folder.convert_folder(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["converted"] == [_report_of(i) for i in range(n)]


def test_bench_json_keeps_every_case(capsys, monkeypatch):
    """`bench --json` of a large sweep (sizes x batches x modes) lost its later cases to the 20,000-value bound meant
    for values read from files; the benchmark's own measurements are printed whole."""
    from focus_surgery.speed import bench

    cases = [
        {"stem": "yolov5s", "batch": b, "forms": [{"form": f, "median_ms": 1.0 + b} for f in "abcdef"]}
        for b in range(1500)
    ]
    result = {"environment": {"device": "cpu"}, "stems": cases}
    monkeypatch.setattr(bench, "run_benchmark", lambda *a, **k: result)
    assert main(["bench", "--json", "--no-onnx", "--no-conversion", "--no-memory"]) == 0
    assert json.loads(capsys.readouterr().out) == result


@pytest.mark.skipif(not ONNX.exists(), reason="ONNX fixture")
def test_readme_onnx_example_is_what_convert_prints(capsys, tmp_path):
    """The ONNX report now renders through ``ConvertReport`` (``converted A -> B (N stem(s) folded, ...)``); README's
    example still showed the old head (``A -> B: N stem(s) folded, ... (opset 12)``)."""
    import re

    pytest.importorskip("onnxruntime")
    readme = (ROOT / "README.md").read_text()
    example = next(t for t in readme.splitlines() if t.startswith("converted yolov5s-v4.onnx"))
    assert main(["convert", str(ONNX), str(tmp_path / "o.onnx")]) == 0
    printed = capsys.readouterr().out.splitlines()[0]

    def shape(text: str) -> str:
        return re.sub(r"\d+", "N", text.split(" -> ", 1)[1].split(" ", 1)[1])

    assert shape(printed) == shape(example), (printed, example)
