"""Mutation check: plant known bugs one at a time and see whether the tests catch each.

    ./run mutants                                           # every mutant, the loader's too (30-60 min on 2 cores)
    .venv/bin/python scripts/mutation_check.py              # every mutant but the loader's
    .venv/bin/python scripts/mutation_check.py --list       # the mutants and the tests each runs
    .venv/bin/python scripts/mutation_check.py --only order,pad  # mutants whose name contains "order" or "pad"
    .venv/bin/python scripts/mutation_check.py --loader     # also the loader's mutants (LOADER_MUTANTS below)

Before anything runs, every mutant must apply: its snippet found exactly once in its file. One that does not (the
code moved) stops the run with exit status 2 and names each stale mutant and its file: re-point it, the list must
not silently stop testing anything. CI runs the reduced form (tests/test_mutation_check.py): that every mutant
applies, and a few mutants end to end.

The repository is copied once into a temporary folder; each mutant edits one file of that copy (an exact snippet
replaced), runs its tests there with ``pytest -x``, and the file is put back. The working tree is never touched.
A mutant is "caught" when its tests fail, "SURVIVED" when they pass (a hole in the tests). Exit status 1 if any
mutant survived.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    """One planted bug: in ``path`` (relative to the repository), ``old`` (exactly once) becomes ``new``."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MATHS = ("tests/test_orders.py", "tests/test_layers.py", "tests/test_remap.py", "tests/test_state_dict.py")
SURGERY = ("tests/test_surgery.py", "tests/test_ultralytics_core.py", "tests/test_verify.py")
STATE_DICT = ("tests/test_state_dict.py", "tests/test_cli.py")
EDGES_VERIFY = ("tests/test_edges_verify.py",)
RECT_TAPS = "strided conv -> s2d: height and width zero taps swapped"
EDGES_DEFAULTS = ("tests/test_edges_defaults.py",)

MUTANTS = [
    # the maths: channel orders, weight remapping, space-to-depth
    Mutant(
        "yolov5 order given timm's layout",
        "focus_surgery/orders.py",
        '"yolov5": ("x", "y", "c"),',
        '"yolov5": ("y", "x", "c"),',
        MATHS,
    ),
    Mutant(
        "focus_to_conv_weight swaps dy and dx",
        "focus_surgery/remap.py",
        "return canonical.permute(0, 1, 4, 2, 5, 3)",
        "return canonical.permute(0, 1, 4, 3, 5, 2)",
        MATHS,
    ),
    Mutant(
        "conv_to_focus_weight swaps dy and dx",
        "focus_surgery/remap.py",
        ".permute(0, 1, 3, 5, 2, 4)  # (O, C, dy, dx, kh, kw)",
        ".permute(0, 1, 5, 3, 2, 4)",
        MATHS,
    ),
    Mutant(
        "strided conv -> s2d pad shifted by one block",
        "focus_surgery/remap.py",
        "pad_before = (padding + before) // stride",
        "pad_before = (padding + before) // stride + 1",
        MATHS,
    ),
    Mutant(
        "SpaceToDepth transposes the blocks",
        "focus_surgery/layers.py",
        "[_AXIS[a] for a in CHANNEL_LAYOUT[order]] + [2, 4]",
        "[_AXIS[a] for a in CHANNEL_LAYOUT[order]] + [4, 2]",
        MATHS,
    ),
    # module surgery
    Mutant(
        "surgery gives the converted stem fresh BatchNorm statistics",
        "focus_surgery/stems/build.py",
        "    new_block.conv = conv\n    return new_block",
        "    new_block.conv = conv\n    for m in new_block.modules():\n"
        "        if isinstance(m, nn.BatchNorm2d):\n            m.reset_running_stats()\n    return new_block",
        SURGERY,
    ),
    Mutant(
        "surgery folds with the yolov5 order whatever the stem's",
        "focus_surgery/stems/build.py",
        "s2d_to_strided_conv(conv.weight.detach(), block_size, pad, order)",
        's2d_to_strided_conv(conv.weight.detach(), block_size, pad, "yolov5")',
        SURGERY,
    ),
    Mutant(
        "surgery swaps the height and width padding of a strided stem",
        "focus_surgery/stems/build.py",
        "padding = (block_size * pad[2], block_size * pad[0])",
        "padding = (block_size * pad[0], block_size * pad[2])",
        SURGERY,
    ),
    # verification
    Mutant(
        "verify compares only the first output",
        "focus_surgery/stems/check.py",
        "enumerate(zip(ref_out, cand_out))",
        "enumerate(zip(ref_out[:1], cand_out[:1]))",
        SURGERY,
    ),
    Mutant(
        "verify tolerance a million times looser",
        "focus_surgery/stems/check.py",
        "passed = max_abs <= tolerance * max(1.0, scale)",
        "passed = max_abs <= 1e6 * tolerance * max(1.0, scale)",
        SURGERY,
    ),
    Mutant(
        "verify runs in the models' own dtype",
        "focus_surgery/verify.py",
        "dtype: torch.dtype | None = torch.float64,",
        "dtype: torch.dtype | None = None,",
        SURGERY,
    ),
    # state dicts and the command line's --verify
    Mutant(
        "state dict: BatchNorm left under the Focus names",
        "focus_surgery/state_dict.py",
        'elif key.startswith(old_inner + "bn.") or key == old_inner + "conv.bias":',
        'elif key == old_inner + "conv.bias":',
        STATE_DICT,
    ),
    Mutant(
        "convert --verify never fails a state dict",
        "focus_surgery/sources/plain.py",
        'report.problem = next((c["problem"] for c in checks if not c["passed"]), None)',
        "report.problem = None",
        STATE_DICT,
    ),
    Mutant(
        "convert --verify ignores tensors outside the stem",
        "focus_surgery/sources/compare.py",
        'passed = failed is None and rest["passed"]',
        "passed = failed is None",
        STATE_DICT,
    ),
    # atomic writes
    Mutant(
        "atomic write leaves its temporary file on failure",
        "focus_surgery/atomic_io.py",
        "    except (OSError, RuntimeError) as error:\n"
        "        for tmp in temporaries:\n            tmp.unlink(missing_ok=True)\n",
        "    except (OSError, RuntimeError) as error:\n",
        STATE_DICT,
    ),
    Mutant(
        "atomic write writes the destination in place",
        "focus_surgery/atomic_io.py",
        "                write(str(tmp))\n",
        "                write(str(destination))\n"
        "                tmp.write_bytes(destination.read_bytes())\n",
        STATE_DICT,
    ),
    Mutant(
        "atomic write skips the folder permission check",
        "focus_surgery/atomic_io.py",
        "if not os.access(folder, os.W_OK):",
        "if False:",
        ("tests/test_yolov5_legacy.py::test_folder_without_write_permission",),
    ),
    # YOLOv5 head decoding
    Mutant(
        "LegacyDetect centre offset 0.5 dropped",
        "focus_surgery/yolov5/detect.py",
        "* 2.0 - 0.5 + grid)",
        "* 2.0 + grid)",
        ("tests/test_yolov5_legacy.py",),
    ),
    # issue 23: verification at its threshold, in float64, with dtypes
    Mutant(
        "verify tolerance 1000x looser",
        "focus_surgery/stems/check.py",
        "DEFAULT_TOLERANCE = 1e-10",
        "DEFAULT_TOLERANCE = 1e-7",
        EDGES_VERIFY,
    ),
    Mutant(
        "verify compares the outputs in float32",
        "focus_surgery/stems/check.py",
        "a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)",
        "a64, b64 = a.detach().to(torch.float32), b.detach().to(torch.float32)",
        EDGES_VERIFY,
    ),
    Mutant(
        "state-dict comparison in float32",
        "focus_surgery/sources/compare.py",
        "0.0 if same else float((a[key].detach().double() - b[key].detach().double()).abs().max())",
        "0.0 if same else float((a[key].detach().float() - b[key].detach().float()).abs().max())",
        EDGES_VERIFY,
    ),
    Mutant(
        "state-dict comparison ignores dtypes",
        "focus_surgery/sources/compare.py",
        "if a[key].dtype != b[key].dtype:",
        "if False:",
        EDGES_VERIFY,
    ),
    Mutant(
        "state-dict conversion writes other tensors as float32",
        "focus_surgery/state_dict.py",
        "        else:\n            result[key] = value\n",
        "        else:\n            result[key] = value.float() if value.is_floating_point() else value\n",
        EDGES_VERIFY,
    ),
    # issue 23: paths no fixture had
    Mutant(
        RECT_TAPS,
        "focus_surgery/remap.py",
        "F.pad(weight, (zw0, zw1, zh0, zh1))",
        "F.pad(weight, (zh0, zh1, zw0, zw1))",
        ("tests/test_edges_remap.py",),
    ),
    Mutant(
        "yolov7: the EMA written back unconverted",
        "focus_surgery/sources/yolov7.py",
        "        for key, model in models.items():\n            rows = stem_rows(model, options.scope)",
        '        for key, model in [(k, m) for k, m in models.items() if k != "ema"]:\n'
        "            rows = stem_rows(model, options.scope)",
        ("tests/test_zoo_yolov7_ema.py",),
    ),
    Mutant(
        "darknet --verify ignores the stem's dtype",
        "focus_surgery/sources/proof.py",
        "if changed is not None:",
        "if False:",
        ("tests/test_zoo_half_ema.py",),
    ),
    Mutant(
        "darknet stem written as float32",
        "focus_surgery/sources/darknet.py",
        "return F.pad(focus_to_conv_weight(weight, block_size, order), (1, 0, 1, 0))",
        "return F.pad(focus_to_conv_weight(weight, block_size, order), (1, 0, 1, 0)).float()",
        ("tests/test_zoo_half_ema.py",),
    ),
    # issue 23: limits at their edge
    Mutant(
        "folder per-file memory limit 1024x",
        "focus_surgery/folder.py",
        "limit = _address_space() + memory",
        "limit = _address_space() + memory * 1024",
        ("tests/test_edges_limits.py",),
    ),
    Mutant(
        "folder --max-memory default 1024x",
        "focus_surgery/cli.py",
        "        default=8.0,\n",
        "        default=8192.0,\n",
        ("tests/test_edges_limits.py",),
    ),
    Mutant(
        "forward guard lets one byte more through",
        "focus_surgery/limits.py",
        "if nbytes > self.max_bytes:",
        "if nbytes > self.max_bytes + 1:",
        ("tests/test_edges_limits.py",),
    ),
    Mutant(
        "forward guard counts elements, not bytes",
        "focus_surgery/limits.py",
        "t.numel() * t.element_size()",
        "t.numel()",
        ("tests/test_edges_limits.py",),
    ),
    # issue 23: defaults taken from other projects
    Mutant(
        "YOLOv5 anchor_t default changed",
        "focus_surgery/yolov5/hyp.py",
        '"anchor_t": 4.0,',
        '"anchor_t": 3.0,',
        EDGES_DEFAULTS,
    ),
    Mutant(
        "autoanchor recall threshold changed",
        "focus_surgery/yolov5/autoanchor.py",
        "BPR_THRESHOLD = 0.98",
        "BPR_THRESHOLD = 0.97",
        EDGES_DEFAULTS,
    ),
    Mutant(
        "timm ResNet cfg interpolation not timm's",
        "focus_surgery/integrations/timm_models/resnet.py",
        ', interpolation="bilinear")',
        ")",
        EDGES_DEFAULTS,
    ),
]

# ---------------------------------------------------------------------------------------------- loader mutants
# The safe loader is moving to focus_surgery/loader/ (the lead's rewrite): these entries name today's files.
# After a move, change `path` (and `old` where the code changed); a mutant whose snippet is gone stops the run.
# The guard tests (tests/test_checkpoint_guards.py) use only load_checkpoint and the CLI, so they need no change.
LOADER = (
    "tests/test_checkpoint_guards.py",
    "tests/test_loader.py",
    "tests/test_loader_bounds.py",
    "tests/test_loader_keywords.py",
    "tests/test_loader_review.py",
    "tests/test_cli.py",
    "tests/test_yolov5_legacy.py",
)
LOADER_MUTANTS = [
    Mutant(
        "loader imports classes from __main__ modules",
        "focus_surgery/loader/layers.py",
        'if "__main__" in module_name.split(".") or',
        "if",
        LOADER,
    ),
    Mutant(
        "loader lets a tensor reach past its storage",
        "focus_surgery/loader/rebuilders.py",
        "if extent > available:",
        "if False:",
        LOADER,
    ),
    Mutant(
        "loader reads big-endian zip archives",
        "focus_surgery/loader/containers.py",
        'archive.read(order).strip() not in (b"little", b"")',
        "False",
        LOADER,
    ),
    Mutant(
        "loader reads big-endian legacy files",
        "focus_surgery/loader/containers.py",
        'not sys_info.get("little_endian", True)',
        "False",
        LOADER,
    ),
    Mutant(
        "loader accepts a short zip storage",
        "focus_surgery/loader/containers.py",
        "if info.file_size < nbytes:",
        "if False:",
        LOADER,
    ),
    Mutant(
        "loader accepts a legacy storage larger than the file",
        "focus_surgery/loader/containers.py",
        "if declared[0] > file_size - handle.tell():",
        "if False:",
        LOADER,
    ),
    Mutant(
        "loader skips the CRC-32 of storages",
        "focus_surgery/loader/containers.py",
        "if crc is not None and crc != info.CRC:",
        "if False:",
        LOADER,
    ),
    Mutant(
        "unpickler reads any global as an inert record",
        "focus_surgery/loader/unpickler.py",
        "        raise RefusedGlobal(qualname)",
        "        return record_class(qualname)",
        LOADER,
    ),
    Mutant(
        "unpickler sets the state of any object",
        "focus_surgery/loader/unpickler.py",
        "if not isinstance(target, _BUILDABLE):",
        "if False:",
        LOADER,
    ),
    Mutant(
        "unpickler passes keyword arguments to constructors",
        "focus_surgery/loader/unpickler.py",
        "if kwargs:  # keyword arguments",
        "if False:  # keyword arguments",
        LOADER,
    ),
    Mutant(
        "unpickler hashes any dictionary key",
        "focus_surgery/loader/unpickler.py",
        '    raise Refused(f"a dictionary key or set member',
        '    return\n    raise Refused(f"a dictionary key or set member',
        LOADER,
    ),
    # issue 23: loader bounds at their edge (the lines as they are on this branch)
    Mutant(
        "loader nesting depth limit 100x",
        "focus_surgery/loader/walk.py",
        "MAX_DEPTH = 200  #",
        "MAX_DEPTH = 20000  #",
        LOADER,
    ),
    Mutant(
        "loader: legacy files' total storage size unchecked",
        "focus_surgery/loader/containers.py",
        "if declared[0] > file_size - handle.tell():",
        "if False:",
        LOADER,
    ),
    Mutant(
        "loader: EMPTY_SET charged as a plain opcode",
        "focus_surgery/loader/unpickler.py",
        '_codes("EMPTY_SET EMPTY_DICT',
        '_codes("EMPTY_DICT',
        LOADER,
    ),
    Mutant(
        "loader: tensor budget 64x",
        "focus_surgery/loader/containers.py",
        "return Budgets(2 * file_size + TENSOR_SLACK_BYTES,",
        "return Budgets(128 * file_size + TENSOR_SLACK_BYTES,",
        LOADER,
    ),
    Mutant(
        "tensors' logical size unbounded",
        "focus_surgery/loader/rebuilders.py",
        "        if self.used > self.limit:",
        "        if False:",
        LOADER,
    ),
    Mutant(
        "zip copy drops a record's last partial write",
        "focus_surgery/loader/zip_rewrite.py",
        "    for start in range(0, len(view), COPY_BUFFER_BYTES):\n        out.write(",
        "    for start in range(0, len(view) // COPY_BUFFER_BYTES * COPY_BUFFER_BYTES, COPY_BUFFER_BYTES):\n"
        "        out.write(",
        ("tests/test_review_chunk.py",),
    ),
    Mutant(
        "zip copy hands write() a whole new record",
        "focus_surgery/loader/zip_rewrite.py",
        "                _write(out, payload)",
        "                out.write(payload)",
        ("tests/test_zip_copy.py",),
    ),
    Mutant(
        "pair source imports YOLOv5's modules to ask a plain file",
        "focus_surgery/sources/yolov5.py",
        "from ..yolov5.pair_format import CONFIG_FORMAT",
        "from ..yolov5.convert import CONFIG_FORMAT",
        ("tests/test_review_chunk.py",),
    ),
]


def _copy_repository(destination: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "runs", "*.egg-info", "out")
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def _run_tests(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[int | None, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        "FOCUS_SURGERY_NO_SKIPS": "0",
        "OMP_NUM_THREADS": "1",
        "YOLO_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    failed = next((line for line in lines if line.startswith(("FAILED", "ERROR"))), lines[-1] if lines else "")
    return result.returncode, failed[:150]


def stale(mutants: list[Mutant], root: Path = ROOT) -> list[str]:
    """Why each mutant that does not apply to the tree at ``root`` does not (its file is missing, or its snippet is
    there 0 or several times); empty when every mutant applies."""
    problems = []
    for mutant in mutants:
        file = root / mutant.path
        if not file.is_file():
            problems.append(f"{mutant.name}: {mutant.path} does not exist")
            continue
        found = file.read_text().count(mutant.old)
        if found != 1:
            problems.append(f"{mutant.name}: its snippet is in {mutant.path} {found} times, not once")
        missing = [t for t in mutant.tests if not (root / t.split("::")[0]).is_file()]
        if missing:
            problems.append(f"{mutant.name}: its tests {missing} do not exist")
    return problems


def check(mutants: list[Mutant], timeout: int) -> list[tuple[Mutant, str, str, float]]:
    """Run each mutant's tests on a temporary copy; (mutant, verdict, detail, seconds) per mutant.

    Raises:
        SystemExit: A mutant does not apply (stale), or the tests fail without any mutant.
    """
    if not mutants:
        raise SystemExit("no mutant to check (pytest given no test would run the whole suite)")
    problems = stale(mutants)
    if problems:
        raise SystemExit("stale mutants (re-point them):\n  " + "\n  ".join(problems))
    results = []
    with tempfile.TemporaryDirectory(prefix="focus-surgery-mutants-") as tmp:
        copy = _copy_repository(Path(tmp) / "repo")
        baseline = sorted({t for m in mutants for t in m.tests})
        code, detail = _run_tests(copy, tuple(baseline), timeout * 3)
        if code != 0:
            raise SystemExit(f"the tests fail without any mutant ({detail}): fix them first")
        for mutant in mutants:
            file = copy / mutant.path
            original = file.read_text()
            start = time.perf_counter()
            file.write_text(original.replace(mutant.old, mutant.new))
            try:
                code, detail = _run_tests(copy, mutant.tests, timeout)
            finally:
                file.write_text(original)
            verdict = "SURVIVED" if code == 0 else "caught"
            results.append((mutant, verdict, detail, time.perf_counter() - start))
            print(f"{verdict:8s} {mutant.name} ({results[-1][3]:.0f} s): {detail}", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the mutants whose name contains one of these texts (comma-separated)")
    parser.add_argument("--loader", action="store_true", help="also the loader's mutants (LOADER_MUTANTS)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutant (default 600)")
    args = parser.parse_args(argv)
    mutants = MUTANTS + (LOADER_MUTANTS if args.loader else [])
    mutants = [m for m in mutants if not args.only or any(t in m.name for t in args.only.split(","))]
    if not mutants and not args.list:  # else the baseline runs pytest on no path: the whole suite
        print(f"no mutant named {args.only!r}; --list shows them (the loader's need --loader)", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    problems = stale(mutants)
    if problems:
        names = [m.name for m in mutants if stale([m])]
        print(f"STALE: {len(names)} mutant(s) no longer apply; re-point them in {__file__}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    results = check(mutants, args.timeout)
    print("| mutant | file | verdict | first failing test |\n|---|---|---|---|")
    for mutant, verdict, detail, _ in results:
        print(f"| {mutant.name} | `{mutant.path}` | {verdict} | {detail.replace('|', '/')} |")
    bad = [r for r in results if r[1] != "caught"]  # SURVIVED
    print(
        f"\n{len(results) - len(bad)}/{len(results)} caught"
        + (f"; not caught: {', '.join(r[0].name for r in bad)}" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
