"""Reports are bounded and one line per fact (issue 25, item 4), through the real command line in a subprocess.

A value from a file reaches a report only through ``report.bounded`` (a DAG of shared lists costs its budget, not
its 2^40-leaf expansion), and every printed line is escaped (a newline in a value or a file name cannot start a
line of its own, nor cut an error message short).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bounded_cli import run_fresh  # noqa: E402

from focus_surgery.report import MAX_LINE, bounded, line  # noqa: E402

LIMIT = 300.0  # generous: a run takes seconds; an unbounded str() of the DAG below would not end


def _dag(levels: int = 40) -> list:
    """A list whose expansion has 2**levels leaves, pickled in a few hundred bytes (each level is shared)."""
    node: list = [1]
    for _ in range(levels):
        node = [node, node]
    return node


def _yolox(path: Path, epoch) -> Path:
    stem = {"backbone.backbone.stem.conv.conv.weight": torch.randn(8, 12, 3, 3)}
    torch.save({"start_epoch": epoch, "model": stem, "optimizer": {}, "best_ap": 0.0}, path)
    return path


def test_bounded_converter_limits_nodes_depth_and_strings():
    assert bounded({"a": [1, 2.5, "x"], 3: None}) == {"a": [1, 2.5, "x"], "3": None}
    dag = bounded(_dag(60))  # 2**60 leaves: visited within the node budget and the depth limit
    assert "<...>" in json.dumps(dag) and len(json.dumps(dag)) < 10_000_000
    assert bounded("x" * 10**6).endswith("<...>") and len(bounded("x" * 10**6)) < 5000
    assert bounded(2**200).startswith("<int of") and bounded(object()) == "<object>"
    assert line("a\nb\x1b[2J") == "a\\nb\\x1b[2J" and len(line("y" * (2 * MAX_LINE))) < MAX_LINE + 10


def test_inspect_of_a_shared_list_dag_is_bounded(tmp_path):
    src = _yolox(tmp_path / "dag.pt", _dag())
    before = src.read_bytes()
    outcome = run_fresh("inspect", src, limit=LIMIT)
    assert outcome.returncode == 0 and not outcome.timed_out, outcome
    lines = outcome.stdout.decode().splitlines()
    assert lines[0].startswith(f"{src}: YOLOX") and "<...>" in lines[0] and len(outcome.stdout) < 200_000
    assert src.read_bytes() == before


def test_darknet_json_report_with_a_dag_is_bounded(tmp_path):
    src = tmp_path / "darknet.pt"
    torch.save({"epoch": _dag(), "model": {"module_list.1.Conv2d.weight": torch.randn(8, 12, 3, 3)}}, src)
    outcome = run_fresh("inspect", src, "--json", limit=LIMIT)
    assert outcome.returncode == 0 and not outcome.timed_out, outcome
    report = json.loads(outcome.stdout)
    assert report["source"] == "darknet" and "<...>" in json.dumps(report["epoch"])


def test_newline_in_a_value_does_not_forge_a_line(tmp_path):
    src = _yolox(tmp_path / "forged.pt", "7\n  stem forged: focus form (convert --to conv)")
    outcome = run_fresh("inspect", src)
    assert outcome.returncode == 0, outcome
    lines = outcome.stdout.decode().splitlines()
    assert "epoch 7\\n  stem forged" in lines[0] and not any(x.startswith("  stem forged") for x in lines)


def test_error_naming_a_path_with_a_newline_stays_one_whole_line(tmp_path):
    src = tmp_path / "evil\nname.pt"
    src.write_bytes(b"not a checkpoint at all" * 8)
    out = tmp_path / "out"
    out.mkdir()
    outcome = run_fresh("convert", src, out / "x.pt")
    assert outcome.returncode == 2, outcome
    err = outcome.stderr.decode()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "evil\\nname.pt" in err and "not a torch checkpoint" in err  # the reason is not cut off
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("as_json", [False, True])
def test_folder_summary_cannot_be_forged_by_a_file_name(tmp_path, as_json):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    evil = src_dir / "bad.pt\n  ok    evil.pt"
    evil = evil.with_name(evil.name + ".pt")
    evil.write_bytes(b"\x00" * 64)
    outcome = run_fresh("convert", src_dir, out_dir, *(["--json"] if as_json else []))
    assert outcome.returncode == 2, outcome
    if as_json:
        summary = json.loads(outcome.stdout)
        assert summary["converted"] == [] and summary["failed"][0]["file"] == str(evil)
    else:
        lines = outcome.stdout.decode().splitlines()
        assert lines[0].startswith("converted 0, failed 1") and len(lines) == 2, lines
        assert lines[1].startswith("  FAIL  ") and "\\n  ok    evil.pt" in lines[1]
        assert not any(x.lstrip().startswith("ok") for x in lines)
    assert [p for p in out_dir.rglob("*") if p.is_file()] == []
