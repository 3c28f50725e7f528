"""The mutation check kept true (scripts/mutation_check.py), in the reduced form CI runs: every mutant still applies
(its snippet is in its file exactly once, its tests exist), a stale one stops the run loudly, and a few mutants run
end to end and are caught. ``./run mutants`` runs them all."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_check", module)
    spec.loader.exec_module(module)
    return module


mc = _script()
ALL = mc.MUTANTS + mc.LOADER_MUTANTS


def test_every_mutant_applies():
    assert mc.stale(ALL) == []
    assert len({m.name for m in ALL}) == len(ALL)  # --only selects by name
    assert all(m.old != m.new and m.tests for m in ALL)


@pytest.mark.parametrize(
    "words",
    [
        ("tolerance", "float32", "dtype"),  # verification at its threshold
        ("zero taps", "yolov7: the EMA"),  # paths no fixture had
        ("memory limit 1024x", "forward guard"),  # limits at their edge
        ("anchor_t", "recall threshold", "timm"),  # defaults from other projects
        ("nesting depth", "total storage size", "EMPTY_SET", "tensor budget"),  # loader bounds
    ],
)
def test_each_class_of_the_issue_has_mutants(words):
    names = [m.name for m in ALL]
    for word in words:
        assert any(word in name for name in names), word


def test_a_stale_mutant_stops_the_run_loudly(monkeypatch, capsys):
    gone = mc.Mutant("planted stale mutant", "focus_surgery/verify.py", "text that is not in the file", "x", ("t",))
    assert mc.stale([gone]) == [
        "planted stale mutant: its snippet is in focus_surgery/verify.py 0 times, not once",
        "planted stale mutant: its tests ['t'] do not exist",
    ]
    monkeypatch.setattr(mc, "MUTANTS", [*mc.MUTANTS, gone])
    assert mc.main(["--only", "planted stale"]) == 2
    err = capsys.readouterr().err
    assert "STALE: 1 mutant(s)" in err and "planted stale mutant" in err
    with pytest.raises(SystemExit, match="stale mutants"):
        mc.check([gone], timeout=60)


def test_a_few_mutants_are_caught_end_to_end():
    """On a temporary copy of the repository (the working tree is never edited): cheap mutants of two classes."""
    chosen = [m for m in ALL if m.name in ("verify tolerance 1000x looser", mc.RECT_TAPS)]
    assert len(chosen) == 2
    results = mc.check(chosen, timeout=600)
    assert [(r[0].name, r[1]) for r in results] == [(m.name, "caught") for m in chosen], results


def test_a_selection_of_no_mutant_runs_nothing(monkeypatch, capsys):
    # review: --only naming loader mutants without --loader selected none, and the baseline run of "their tests"
    # (none) ran pytest with no path: the whole suite, for minutes, on a copy of the repository
    ran: list = []
    monkeypatch.setattr(mc, "_run_tests", lambda *a, **k: ran.append(a) or (0, ""))
    monkeypatch.setattr(mc, "_copy_repository", lambda d: ran.append(d) or d)
    assert mc.main(["--only", "zip copy drops"]) == 2  # a loader mutant, without --loader
    err = capsys.readouterr().err
    assert "no mutant" in err and "--loader" in err and "\n" not in err.strip()
    with pytest.raises(SystemExit, match="no mutant"):
        mc.check([], timeout=60)
    assert ran == []
