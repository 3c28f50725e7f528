"""A conversion says what it leaves that needs focus-surgery to load, and how to get a plain file (issue 22 item 5)."""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path

import pytest

import focus_surgery  # noqa: F401 - our YAML rows
from focus_surgery.cli import main
from focus_surgery.report import error_exit

pytest.importorskip("ultralytics")


def _pickled_modules(path: Path) -> set[str]:
    """Modules named by the GLOBAL opcodes of a zip checkpoint's pickle."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    return {arg.split(" ")[0] for op, arg, _ in pickletools.genops(io.BytesIO(data)) if op.name == "GLOBAL"}


@pytest.fixture(scope="module")
def spd_checkpoint(tmp_path_factory) -> Path:
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("spd") / "yolov8n-spd.pt"
    YOLO("yolov8n-spd.yaml").save(str(path))  # configs/yolov8-spd.yaml: an SPD-Conv stem and SPD-Conv downsamplers
    return path


def test_scope_stem_says_what_still_needs_focus_surgery_and_how_to_get_a_plain_file(spd_checkpoint, tmp_path, capsys):
    dst = tmp_path / "stem.pt"
    assert main(["convert", str(spd_checkpoint), str(dst)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"converted {spd_checkpoint} -> {dst}")  # what was done comes first
    assert any("was already a current Ultralytics model; only the conversion above changed it" in x for x in lines)
    left = [x for x in lines if "still holds focus-surgery layers" in x]
    assert len(left) == 1 and "SPDConv x" in left[0] and "--scope all" in left[0]
    assert any(m.startswith("focus_surgery.") for m in _pickled_modules(dst))  # what the line says is true
    assert main(["convert", str(spd_checkpoint), str(tmp_path / "j.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["needs_focus_surgery"]["SPDConv"] == report["scope_all_converts"] > 0
    assert "SpaceToDepth" not in report["needs_focus_surgery"]  # the one inside each SPDConv is not counted again


def test_scope_all_leaves_a_plain_file_and_says_nothing_more(spd_checkpoint, tmp_path, capsys):
    dst = tmp_path / "all.pt"
    assert main(["convert", str(spd_checkpoint), str(dst), "--scope", "all", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "needs_focus_surgery" not in report and "still holds" not in report["summary"]
    assert not any(m.startswith("focus_surgery.") for m in _pickled_modules(dst))


def test_yolov5_conversion_says_its_head_needs_focus_surgery(tmp_path, capsys):
    src = Path(__file__).parent / "fixtures" / "yolov5-legacy" / "yolov5s-v5.0-d0.33-w0.125-nc3-seed102-fp32.pt"
    assert main(["convert", str(src), str(tmp_path / "u.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["needs_focus_surgery"] == {"LegacyDetect": 1} and "--layout yolov5" in report["summary"]


@pytest.mark.parametrize("source, dst", [("", ""), ("", "out.pt"), ("in.pt", "")])
@pytest.mark.parametrize("error", [TypeError("boom"), MemoryError(), KeyboardInterrupt()])
def test_error_lines_never_show_an_empty_field(source, dst, error, capsys):
    error_exit(error, source, dst)
    err = capsys.readouterr().err.strip()
    assert ": :" not in err and ":  " not in err and not err.startswith(": ") and "error: :" not in err


def test_review_json_of_an_ultralytics_file_keeps_its_note_key(spd_checkpoint, tmp_path, capsys):
    """Review: ``--json`` keys of existing outputs stay; an Ultralytics file's report had ``note`` before issue 22."""
    assert main(["convert", str(spd_checkpoint), str(tmp_path / "j.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["note"] == "already a current Ultralytics model; its stem was converted"
    assert not report["summary"].startswith(f"{spd_checkpoint} is already")  # the text still begins with the change


def test_review_scope_all_is_not_offered_as_a_plain_file_for_a_target_that_adds_our_layers(tmp_path, capsys):
    """Review: ``--to s2d`` writes SPD-Conv layers; ``--scope all --to s2d`` would add more of them, never a plain
    file, so the line must not say it would."""
    from ultralytics import YOLO

    src = tmp_path / "v8.pt"
    YOLO("yolov8n.yaml").save(str(src))
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "s2d.pt"), "--to", "s2d", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["needs_focus_surgery"] == {"SPDConv": 1}  # what the file holds is still said
    assert "--scope all" not in report["summary"] and "plain file" not in report["summary"]
    assert "scope_all_converts" not in report
