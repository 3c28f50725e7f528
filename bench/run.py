"""Regenerate the speed results: ``python bench/run.py`` (or ``./run bench`` for the table alone).

Runs ``focus_surgery.speed.bench.run_benchmark`` with its defaults for this machine (the full grid of the issue on a
GPU,
the reduced CPU set otherwise), then writes

* ``bench/results/results.json``: every number,
* ``bench/results/latency_vs_batch.png``: latency vs batch per form,
* the tables between the ``results`` markers of ``README.md``.

Flags are those of ``focus-surgery bench`` (``--stems``, ``--sizes``, ``--batches``, ``--modes``, ``--repeats``,
``--device``, ``--quick``), plus ``--no-write`` to print without touching the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from focus_surgery.speed.bench import cases_from_flags, format_report, plot_latency, run_benchmark  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def write_doc(report: str, plot: Path, doc: Path = DOC) -> None:
    """Replace the text between the results markers of ``doc`` with ``report`` and a link to the plot."""
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc}: results markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    link = f"![latency vs batch per form]({Path('..') / plot.relative_to(ROOT)})"
    doc.write_text(f"{head}{START}\n{report}\n\n{link}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--stems", "--sizes", "--batches", "--modes", "--device"):
        parser.add_argument(flag)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the tables, write nothing")
    args = parser.parse_args(argv)
    result = run_benchmark(
        args.device,
        cases_from_flags(args.stems, args.sizes, args.batches, args.modes),
        args.quick,
        args.repeats,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    report = format_report(result)
    print(report)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        plot = plot_latency(result, RESULTS / "latency_vs_batch.png")
        write_doc(report, plot)
        print(f"wrote {RESULTS / 'results.json'}, {plot} and {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
