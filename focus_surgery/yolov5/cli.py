"""``convert DIR OUTDIR``: every checkpoint under a folder through ``files.convert_one``, with a summary.

(Moving to ``focus_surgery/folder.py``, which runs each file in an isolated child process.)
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..checkpoint_io import CheckpointError
from ..files import convert_one

CHECKPOINT_SUFFIXES = (".pt", ".pth")


def _worker(job: tuple[str, str, dict]) -> tuple[str, dict | None, str | None]:
    src, dst, options = job
    args = argparse.Namespace(**options)
    if args.workers > 1:  # parallelism comes from the processes; threads inside them would only contend
        import torch

        torch.set_num_threads(1)
    try:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        return src, convert_one(src, dst, args), None  # one JSON-able dict per file
    except Exception as error:  # noqa: BLE001 - one bad file must not stop the batch; its reason is reported
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        return src, None, message


def _progress(done: int, total: int, name: str) -> None:
    width = 24
    filled = width * done // max(total, 1)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name[-40:]:<40}", end="", file=sys.stderr)
    if done == total:
        print(file=sys.stderr)


def convert_folder(args: argparse.Namespace) -> int:
    """``convert DIR OUTDIR``: every ``.pt``/``.pth`` under DIR to the same relative path under OUTDIR."""
    src_dir, out_dir = Path(args.src), Path(args.dst)
    if (out_dir.exists() and not out_dir.is_dir()) or (
        not out_dir.exists() and out_dir.suffix in (*CHECKPOINT_SUFFIXES, ".safetensors")
    ):
        raise CheckpointError(
            f"{src_dir}: is a directory, not a checkpoint file (to convert every checkpoint in it, give an output folder)"
        )
    if out_dir.resolve() == src_dir.resolve():
        raise CheckpointError(f"{out_dir}: output folder must differ from the input folder")
    files = sorted(p for p in src_dir.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    files = [p for p in files if out_dir.resolve() not in p.resolve().parents]
    if not files:
        raise CheckpointError(f"{src_dir}: no .pt / .pth files in this folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in vars(args).items() if k != "handler"}
    jobs = [(str(p), str(out_dir / p.relative_to(src_dir)), options) for p in files]
    workers = max(1, int(getattr(args, "workers", 1) or 1))
    results: list[tuple[str, dict | None, str | None]] = []
    if workers == 1:
        for job in jobs:
            results.append(_worker(job))
            _progress(len(results), len(jobs), Path(job[0]).name)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_worker, jobs):
                results.append(result)
                _progress(len(results), len(jobs), Path(result[0]).name)
    converted = [r for _, r, e in results if r is not None]
    failed = [{"file": s, "reason": e} for s, r, e in results if r is None]
    summary = {"src": str(src_dir), "dst": str(out_dir), "converted": converted, "failed": failed}
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(f"converted {len(converted)}, failed {len(failed)} (of {len(results)} files under {src_dir})")
        for item in converted:
            err = item.get("max_abs_err")
            print(f"  ok    {item['src']} -> {item['dst']}" + (f" (max_abs_err={err:.3e})" if err is not None else ""))
        for item in failed:
            print(f"  FAIL  {item['file']}: {item['reason']}")
    return 2 if failed else 0
