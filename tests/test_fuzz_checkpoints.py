"""Byte flips and truncations of the committed checkpoints (issue 9): every outcome is exit 0, 1 or 2 with a one-line
error, never a signal, never a hang. A fixed seed and a bounded count (``CASES``) keep it reproducible and short.

Half the flips land in the pickle (``data.pkl``), where a flipped byte changes opcodes, lengths and memo indices;
the rest anywhere in the file (storages, zip headers). Each case runs ``inspect`` or ``convert`` through the
bounded CLI runner (time and address-space limits, see ``_bounded_cli.py``).
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest

from _bounded_cli import TIME_LIMIT

pytestmark = pytest.mark.usefixtures("loader_mode")  # every test once per loader mode (conftest)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "yolov5-legacy").glob("yolov5s-*.pt")) + sorted(
    (ROOT / "checkpoints").glob("*.pt")
)
CASES, SEED = 40, 9


def pickle_span(path: Path) -> tuple[int, int]:
    """(start, end) byte offsets of the zip's stored data.pkl in the file."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(handle.read(2), "little"), int.from_bytes(handle.read(2), "little")
    start = info.header_offset + 30 + name_len + extra_len
    return start, start + info.compress_size


def mutations() -> list[tuple[str, Path, str, int, int]]:
    """(case id, fixture, kind, position, value): ``flip`` sets one byte, ``truncate`` cuts at position."""
    rng = random.Random(SEED)
    cases = []
    for i in range(CASES):
        fixture = FIXTURES[i % len(FIXTURES)]
        size = fixture.stat().st_size
        kind = ("flip-pickle", "flip-any", "truncate")[i % 3]
        if kind == "flip-pickle":
            start, end = pickle_span(fixture)
            position = rng.randrange(start, end)
        else:
            position = rng.randrange(1, size)
        cases.append((f"{i:02d}-{fixture.stem[:18]}-{kind}-{position}", fixture, kind, position, rng.randrange(256)))
    return cases


@pytest.mark.parametrize("case", mutations(), ids=lambda c: c[0])
def test_mutated_checkpoint_fails_cleanly(case, cli, tmp_path):
    name, fixture, kind, position, value = case
    data = bytearray(fixture.read_bytes())
    if kind == "truncate":
        data = data[:position]
    else:
        data[position] = value if data[position] != value else value ^ 0xFF
    src = tmp_path / f"{fixture.stem}-mutated.pt"
    src.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    command = ("inspect", src) if int(name[:2]) % 2 else ("convert", src, out / "converted.pt")
    outcome = cli.run(*command)
    assert not outcome.timed_out, f"hang (killed after {TIME_LIMIT:.0f} s): {outcome}"
    assert outcome.signal is None, f"crash: {outcome}"
    assert outcome.returncode in (0, 1, 2), str(outcome)
    if outcome.returncode:
        assert len(outcome.stderr_lines) == 1, f"{len(outcome.stderr_lines)} stderr lines: {outcome}"
        assert src.name in outcome.stderr_lines[0], outcome.stderr_lines[0]
        assert list(out.iterdir()) == [], "a failed conversion wrote something"
    assert src.read_bytes() == bytes(data), "input modified"
