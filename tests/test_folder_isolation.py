"""Folder conversion isolates each file: a crash, a hang or a memory blow-up fails that file alone."""

from pathlib import Path

from focus_surgery.folder import convert_isolated
from tests._folder_workers import by_content


def _jobs(tmp_path: Path, kinds: list[str]) -> list[tuple[str, str]]:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    jobs = []
    for i, kind in enumerate(kinds):
        src = tmp_path / "in" / f"{i}-{kind}.pt"
        src.write_text(kind)
        jobs.append((str(src), str(tmp_path / "out" / src.name)))
    return jobs


def test_crash_memory_and_errors_fail_alone(tmp_path):
    kinds = ["ok", "segfault", "ok", "memory", "error", "ok"]
    jobs = _jobs(tmp_path, kinds)
    outcomes = convert_isolated(jobs, by_content, {}, workers=2, memory_bytes=1 << 30)  # the default timeout (300 s)
    by_kind = dict(zip(kinds, outcomes))
    for outcome, kind in zip(outcomes, kinds):
        if kind == "ok":
            assert outcome.error is None and Path(outcome.dst).read_text() == "ok"
    assert "crashed (SIGSEGV)" in by_kind["segfault"].error
    assert "memory limit" in by_kind["memory"].error
    assert by_kind["error"].error.endswith("not a checkpoint") and "\n" not in by_kind["error"].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0-ok.pt", "2-ok.pt", "5-ok.pt"]  # no debris


def test_hangs_are_stopped_at_the_timeout(tmp_path):
    """Only files that never finish run under the short timeout, so no machine load can make a good file time out;
    nothing measures the run's wall clock (the hangs sleep an hour: the run ends only if they are stopped)."""
    kinds = ["hang", "tempfile-then-hang", "hang"]
    outcomes = convert_isolated(_jobs(tmp_path, kinds), by_content, {}, workers=2, timeout_s=2)
    assert all("longer than 2 s" in o.error and o.result is None for o in outcomes), outcomes
    assert list((tmp_path / "out").iterdir()) == []  # the temporary file of the stopped child is removed


def test_results_come_back_in_job_order(tmp_path):
    jobs = _jobs(tmp_path, ["ok"] * 5)
    outcomes = convert_isolated(jobs, by_content, {}, workers=3)
    assert [o.src for o in outcomes] == [src for src, _ in jobs]
    assert all(o.result == {"src": o.src, "dst": o.dst} for o in outcomes)
