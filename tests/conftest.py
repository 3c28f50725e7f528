"""Test set-up: no network, Ultralytics settings kept out of the home folder, deterministic seeds."""

import os
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "focus-surgery-ultralytics-config"))
os.makedirs(os.environ["YOLO_CONFIG_DIR"], exist_ok=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # one thread per xdist worker: 2 workers on 2 cores, no oversubscription


LOADER_MODES = ("copy", "mmap", "mmap-nocrc")  # focus_surgery.loader.LOAD_MODES (a test checks they agree)


@pytest.fixture(params=LOADER_MODES)
def loader_mode(request, monkeypatch) -> str:
    """Run a test once per safe-loader mode: ``FOCUS_SURGERY_LOAD_MODE`` is the default of ``read_checkpoint`` and
    of the CLI's pipeline, here and in the CLI's children (``_bounded_cli`` passes it on), so every attack suite
    that uses it runs against the copying, the mapped and the mapped-without-CRC paths."""
    monkeypatch.setenv("FOCUS_SURGERY_LOAD_MODE", request.param)
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """One CLI fork server per test module (``_bounded_cli.BoundedCLI``): each run is still the CLI's ``main`` in a
    process of its own (working directory, time and address-space limit), the imports paid once."""
    from _bounded_cli import BoundedCLI

    server = BoundedCLI(tmp_path_factory.mktemp("cli-runs"))
    yield server
    server.close()


# ------------------------------------------------------------------------------------------ no silent skips in CI
# `./run test` (what CI runs) sets FOCUS_SURGERY_NO_SKIPS=1: it installs every optional package the tests use and
# the repository holds every fixture, so a skip there means a test that should have run did not. Each skip becomes
# a failure that names its reason (a module skipped at import becomes a collection error). Plain `pytest` without
# the variable keeps ordinary skips, e.g. for a missing optional third-party package.
NO_SKIPS = os.environ.get("FOCUS_SURGERY_NO_SKIPS", "") not in ("", "0")


def _no_skip(report, what: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{what} was skipped under FOCUS_SURGERY_NO_SKIPS=1 (./run test, CI): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        _no_skip(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    report = (yield).get_result()
    if NO_SKIPS and report.skipped:
        _no_skip(report, collector.nodeid)
