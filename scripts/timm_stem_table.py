"""Write the timm stem-conversion table (README.md) from a real run: every architecture built with random weights,
its stem converted to the other form and back, each step verified in float64.

Usage: python scripts/timm_stem_table.py [--out README.md] [NAME ...]
Without --out the table is printed; with it, the block between the TABLE markers of that file is replaced.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import focus_surgery  # noqa: E402,F401  (registers our timm models once timm is imported)
from focus_surgery.integrations.timm_check import ARCHITECTURES, markdown_table, stem_round_trip  # noqa: E402
from focus_surgery.surgery import ConversionError  # noqa: E402

BEGIN, END = "<!-- TABLE BEGIN (scripts/timm_stem_table.py) -->", "<!-- TABLE END -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="timm architectures (default: the README list)")
    parser.add_argument("--out", type=pathlib.Path, help="markdown file whose TABLE block is replaced")
    args = parser.parse_args(argv)
    rows = []
    failed = []
    for name in args.names or list(ARCHITECTURES):
        start = time.perf_counter()
        try:
            rows.append(stem_round_trip(name))
        except (ConversionError, RuntimeError) as error:  # listed under the table: the README says what is not done
            failed.append(f"* `{name}`: {str(error).removeprefix(f'{name}: ')}")
            print(f"{name}: {error}", file=sys.stderr)
            continue
        print(f"{name}: {rows[-1].max_rel_err:.1e} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    table = markdown_table(rows) + ("\n\nNot converted:\n\n" + "\n".join(failed) if failed else "")
    if args.out is None:
        print(table)
        return 0
    text = args.out.read_text() if args.out.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        print(f"error: {args.out} has no {BEGIN} ... {END} block; add one where the table goes", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    args.out.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
