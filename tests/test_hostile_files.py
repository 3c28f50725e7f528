"""Hostile checkpoint files (issue 9): every attack is refused with exit 2 and one line, quickly, in bounded memory,
writing nothing and leaving its input as it was; odd but valid files load.

The files come from ``hostile_files.py`` (one builder per attack class). Each run goes through the real CLI
``main`` in a child process with a wall-time limit and an address-space limit (``_bounded_cli.py``), so a crash, a
hang or a runaway allocation fails its own test and nothing else. Bounds asserted per run:

- time: ``TIME_LIMIT`` (30 s; a refusal takes well under 2 s here; the hangs of issue 9 ran for hours);
- memory: peak RSS at most ``MEMORY_MARGIN`` (256 MiB) above a valid YOLOv5 conversion's peak in the same server,
  and never an allocation failure under the 4 GiB address-space headroom (a size must be checked before it is
  allocated, not caught when the allocation fails);
- output: nothing in the output folder (no result, no temporary file), the input's bytes unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from _bounded_cli import TIME_LIMIT, run_fresh
from hostile_files import (
    HOSTILE,
    STATE_DICT_FILE,
    VALID_ODD,
    YOLOV5_FILE,
    cdata_bare,
    cdata_in_yolov5,
    lstm_layers,
    pwned_marker,
)

pytestmark = pytest.mark.usefixtures("loader_mode")  # every test once per loader mode (conftest)

MEMORY_MARGIN = 256 << 20
ALLOCATION_FAILURE = re.compile(r"MemoryError|can't allocate|cannot allocate|out of memory|bad_alloc|std::", re.I)
ESCAPES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f\x9b]")  # control bytes other than tab / newline


@pytest.fixture(scope="module")
def baseline_rss(cli, tmp_path_factory) -> int:
    """Peak RSS of a valid YOLOv5 conversion (the heaviest ordinary path: Ultralytics rebuild + save)."""
    out = tmp_path_factory.mktemp("baseline") / "converted.pt"
    outcome = cli.run("convert", YOLOV5_FILE, out)
    assert outcome.returncode == 0 and out.is_file(), str(outcome)
    return outcome.peak_rss


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else "not a regular file"


def argv(command: tuple[str, ...], src: Path, dst: Path) -> list[str | Path]:
    """``{src}`` / ``{dst}`` replaced; ``{dst}.safetensors`` swaps the output's suffix."""
    return [
        src if a == "{src}" else dst.with_suffix(a[5:]) if a.startswith("{dst}.") else dst if a == "{dst}" else a
        for a in command
    ]


def assert_refused(
    outcome, src: Path, out_dir: Path, before: str, baseline: int, message: str = "", wrong: str = ""
) -> None:
    """Exit 2, one stderr line naming the file, nothing written, input unchanged, time and memory bounded."""
    assert not outcome.timed_out, f"hang: killed after {TIME_LIMIT:.0f} s: {outcome}"
    assert outcome.signal is None, f"crash: {outcome}"
    assert outcome.returncode == 2, str(outcome)
    lines = outcome.stderr_lines
    assert len(lines) == 1, f"{len(lines)} stderr lines: {outcome}"
    assert src.name in lines[0], f"the message does not name {src.name}: {lines[0]}"
    assert not ALLOCATION_FAILURE.search(lines[0]), f"refused only when an allocation failed: {lines[0]}"
    if message:
        assert message in lines[0].lower(), f"message should say {message!r}: {lines[0]}"
    if wrong:
        assert wrong not in lines[0].lower(), f"untrue message ({wrong!r}): {lines[0]}"
    assert sorted(p.name for p in out_dir.iterdir()) == [], "output or temporary file left behind"
    assert digest(src) == before, "input modified"
    assert outcome.peak_rss <= baseline + MEMORY_MARGIN, (
        f"peak RSS {outcome.peak_rss / 2**20:.0f} MiB, bound {(baseline + MEMORY_MARGIN) / 2**20:.0f} MiB: {outcome}"
    )


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_is_refused(name, cli, baseline_rss, tmp_path, loader_mode):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir(), out_dir.mkdir()
    hostile = HOSTILE[name](src_dir)
    before = digest(hostile.path)
    if name == "crc_flip" and loader_mode == "mmap-nocrc":  # the loader computes no storage's CRC-32 in this mode,
        # but a zip checkpoint's conversion checks every record's as it copies it (loader.zip_rewrite): refused too
        outcome = cli.run(*argv(hostile.command, hostile.path, out_dir / "converted.pt"))
        assert_refused(outcome, hostile.path, out_dir, before, baseline_rss, hostile.message, hostile.wrong)
        os.environ["FOCUS_SURGERY_LOAD_MODE"] = "mmap"  # the same views with the check (monkeypatch restores it)
    outcome = cli.run(*argv(hostile.command, hostile.path, out_dir / "converted.pt"))
    assert_refused(outcome, hostile.path, out_dir, before, baseline_rss, hostile.message, hostile.wrong)
    assert not pwned_marker(src_dir).exists()


@pytest.mark.parametrize("command", [("inspect", "{src}"), ("convert", "{src}", "{dst}"), ("verify", "{src}", "{src}")])
def test_tensor_cdata_refused_by_every_command(command, cli, baseline_rss, tmp_path):
    """torch.Tensor(cdata=<int>) must never reach torch: inspect, convert and verify crashed with SIGSEGV."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    hostile = cdata_bare(tmp_path)
    before = digest(hostile.path)
    outcome = cli.run(*argv(command, hostile.path, out_dir / "converted.pt"))
    assert_refused(outcome, hostile.path, out_dir, before, baseline_rss)


@pytest.mark.parametrize("loader_mode", ["mmap"], indirect=True)  # process isolation, not the loader: the CLI's mode
def test_real_program_survives_tensor_cdata(tmp_path):
    """The same through ``python -m focus_surgery`` itself (no fork server): exit 2, not 139."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    hostile = cdata_in_yolov5(tmp_path)
    outcome = run_fresh("inspect", hostile.path)
    assert outcome.signal is None and outcome.returncode == 2, str(outcome)
    assert len(outcome.stderr_lines) == 1 and hostile.path.name in outcome.stderr_lines[0], str(outcome)


@pytest.mark.parametrize("name", list(VALID_ODD))
def test_odd_but_valid_file_loads(name, cli, tmp_path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir(), out_dir.mkdir()
    odd = VALID_ODD[name](src_dir)
    before = digest(odd.path)
    dst = out_dir / "converted.pt"
    outcome = cli.run(*argv(odd.command, odd.path, dst))
    assert outcome.returncode == 0, str(outcome)
    assert not ESCAPES.search(outcome.stdout + outcome.stderr), f"control bytes reach the terminal: {outcome.stdout!r}"
    if "{dst}" in odd.command:
        assert dst.is_file() and sorted(p.name for p in out_dir.iterdir()) == ["converted.pt"]
    assert digest(odd.path) == before


def test_non_utf8_name_converts_to_non_utf8_name(cli, tmp_path):
    """Both names undecodable: the output is written under the exact bytes asked for."""
    odd = VALID_ODD["non_utf8_name"](tmp_path)
    dst = tmp_path / os.fsdecode(b"out-\xfe.pt")
    outcome = cli.run("convert", odd.path, dst)
    assert outcome.returncode == 0 and dst.is_file(), str(outcome)


@pytest.mark.parametrize("loader_mode", ["mmap"], indirect=True)  # process isolation, not the loader: the CLI's mode
@pytest.mark.parametrize("workers", [1, 2])
def test_folder_run_survives_a_crashing_and_a_hanging_file(workers, cli, tmp_path):
    """convert DIR OUTDIR: the crashing file and the hanging one are reported as failed (exit 2), the good one
    converts, and the run ends within the per-file --timeout (folder mode isolates each file)."""
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    (src_dir / "good.pt").write_bytes(STATE_DICT_FILE.read_bytes())
    cdata_bare(src_dir).path.rename(src_dir / "crash.pt")
    lstm_layers(src_dir).path.rename(src_dir / "hang.pt")
    outcome = cli.run("convert", src_dir, out_dir, "--workers", str(workers), "--timeout", "10", limit=90)
    assert not outcome.timed_out and outcome.signal is None, str(outcome)
    written = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    assert written == ["good.pt"], f"the good file must convert, nothing else ({written}): {outcome}"
    assert outcome.returncode == 2, str(outcome)
    report = (outcome.stdout + outcome.stderr).decode()
    assert "crash.pt" in report and "hang.pt" in report, report


@pytest.mark.parametrize("loader_mode", ["mmap"], indirect=True)  # process isolation, not the loader: the CLI's mode
@pytest.mark.parametrize("workers", [1, 2])
def test_folder_run_survives_a_crashing_file(workers, cli, tmp_path):
    """Without --timeout: a file that crashes its converter is one failed file, not the end of the batch."""
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    (src_dir / "good.pt").write_bytes(STATE_DICT_FILE.read_bytes())
    cdata_bare(src_dir).path.rename(src_dir / "crash.pt")
    outcome = cli.run("convert", src_dir, out_dir, "--workers", str(workers), limit=90)
    assert not outcome.timed_out and outcome.signal is None, str(outcome)
    written = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    assert written == ["good.pt"], f"the good file must convert, nothing else ({written}): {outcome}"
    assert outcome.returncode == 2 and "crash.pt" in (outcome.stdout + outcome.stderr).decode(), str(outcome)
