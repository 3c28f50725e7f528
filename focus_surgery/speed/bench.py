"""The benchmark behind ``focus-surgery bench`` and ``bench/run.py``.

Four parts, each returning plain dicts (JSON-ready):

* ``bench_stems``: every exact form of real stems (YOLOv5 n/s/m/l/x Focus, TResNet-M space-to-depth) at real
  shapes, forward and forward + backward, timed side by side with the form ``optimize`` picks and with a square
  matmul of the same FLOP count: median time, ratio to the fastest, peak memory, GFLOP/s.
* ``bench_conversion``: converting a YOLOv5x-size checkpoint vs a plain ``torch.load`` + ``torch.save`` of the
  same file, side by side in fresh processes: time ratio and peak memory over file size.
* ``bench_onnx``: ONNX export of the Focus (slicing) and converted stems, and the Focus graph rewritten by
  ``convert_onnx`` (graph surgery on the exported file): node counts and onnxruntime latency, side by side.
* ``bench_folder``: ``convert DIR OUTDIR --workers N`` on a folder of small checkpoints: files per second by N.
* ``plot_latency``: latency vs batch per form.

On the CPU the full grid of shapes takes hours, so the default there is a reduced set (``CPU_DEFAULT``); the full
grid (``FULL``) is the default when a GPU is present.
"""

from __future__ import annotations

import copy
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..demo import randomize_batchnorm
from ..layers import ConvBnAct, Focus, SpaceToDepth
from .optimize import optimize
from .stem_forms import build_form, form_names, strided_block
from .timing import matmul_reference, median, peak_memory_bytes, time_interleaved

FOLDED = "focus_slices -> folded"  # the exported Focus graph after ONNX surgery (convert model.onnx)
OPTIMIZED = "optimize"  # the row of the form optimize() picked for the case, re-timed side by side
MATMUL = "matmul"


def _yolov5_stem(width: int) -> Callable[[], nn.Module]:
    return lambda: Focus(3, width, k=3)  # YOLOv5 <= v5.0: Focus(3, 64 * width_multiple, 3)


def _tresnet_m_stem() -> nn.Module:
    # TResNet-M: SpaceToDepth(4) then a 3x3 conv 48 -> 64, BN and leaky ReLU (timm's conv1)
    return nn.Sequential(SpaceToDepth(4, "timm"), ConvBnAct(48, 64, 3, 1, act=nn.LeakyReLU(0.01)))


STEMS: dict[str, Callable[[], nn.Module]] = {
    "yolov5n": _yolov5_stem(16),
    "yolov5s": _yolov5_stem(32),
    "yolov5m": _yolov5_stem(48),
    "yolov5l": _yolov5_stem(64),
    "yolov5x": _yolov5_stem(80),
    "tresnet_m": _tresnet_m_stem,
}
MODES = ("forward", "forward+backward")


@dataclass(frozen=True)
class Case:
    """One measured shape: stem, square image size, batch, mode."""

    stem: str
    size: int
    batch: int
    mode: str


def grid(stems, sizes: dict[str, tuple[int, ...]], batches, modes) -> list[Case]:
    return [Case(s, z, b, m) for s in stems for z in sizes[s] for b in batches for m in modes]


_FULL_SIZES = {**{s: (640, 1280) for s in STEMS if s.startswith("yolov5")}, "tresnet_m": (224, 448)}
FULL = grid(list(STEMS), _FULL_SIZES, (1, 8, 32), MODES)
# 2 CPU cores: the full grid would take hours. YOLOv5s at batch 1 and 8 in both modes (where the issue saw the winner
# flip), n and x forward, s at 1280, TResNet-M at 224.
CPU_DEFAULT = (
    grid(["yolov5s"], {"yolov5s": (640,)}, (1, 8), MODES)
    + grid(["yolov5n", "yolov5x"], {s: (640,) for s in STEMS}, (1, 8), ("forward",))
    + grid(["yolov5s"], {"yolov5s": (1280,)}, (1,), ("forward",))
    + grid(["tresnet_m"], {"tresnet_m": (224,)}, (1, 8), ("forward",))
    + grid(["tresnet_m"], {"tresnet_m": (224,)}, (1,), ("forward+backward",))
)
QUICK = [Case("yolov5n", 32, 1, "forward"), Case("yolov5n", 32, 2, "forward+backward")]


def default_cases(device: torch.device, quick: bool = False) -> list[Case]:
    if quick:
        return QUICK
    return FULL if device.type == "cuda" else CPU_DEFAULT


def _split(text: str | None, cast=str) -> list:
    return [cast(item.strip()) for item in text.split(",") if item.strip()] if text else []


def cases_from_flags(stems: str | None, sizes: str | None, batches: str | None, modes: str | None) -> list[Case] | None:
    """Cases from the command line's comma lists; None (the defaults) when no list is given.

    Missing lists default to yolov5s, the stem's first real size (640 for YOLOv5, 224 for TResNet), batch 1 and
    both modes.
    """
    if not any((stems, sizes, batches, modes)):
        return None
    stem_list = _split(stems) or ["yolov5s"]
    unknown = [s for s in stem_list if s not in STEMS] + [m for m in _split(modes) if m not in MODES]
    if unknown:
        raise ValueError(f"unknown stem or mode {unknown[0]!r}: stems are {', '.join(STEMS)}; modes {', '.join(MODES)}")
    try:
        size_list, batch_list = _split(sizes, int), _split(batches, int) or [1]
    except ValueError:
        raise ValueError("--sizes and --batches take comma-separated integers, e.g. --sizes 640,1280") from None
    bs = {s: 4 if s == "tresnet_m" else 2 for s in stem_list}
    bad = [z for s in stem_list for z in size_list if z % bs[s] or z <= 0]
    if bad or any(b <= 0 for b in batch_list):
        raise ValueError(
            f"image sizes must be positive multiples of the stem's block size (2, 4 for tresnet_m), "
            f"batches positive; got sizes {size_list}, batches {batch_list}"
        )
    size_map = {s: tuple(size_list) or (_FULL_SIZES[s][0],) for s in stem_list}
    return grid(stem_list, size_map, batch_list, _split(modes) or list(MODES))


def environment(device: torch.device) -> dict[str, Any]:
    """Machine, versions and date, printed with every result."""
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            info["cpu"] = f"{names[0]} ({len(names)} logical cores)"
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------------------- stems


def stem_flops(block: nn.Module, x_shape: tuple[int, ...], backward: bool) -> float:
    """Multiply-add FLOPs (2 per MAC) of the stem's strided conv on ``x_shape``; x2 with the weight gradient.

    The input image needs no gradient, so backward costs one more conv-sized product (the weight gradient).
    """
    conv = block if isinstance(block, nn.Conv2d) else block.conv
    with torch.no_grad():
        out = nn.functional.conv2d(
            torch.empty(1, *x_shape[1:], device="meta"), conv.weight.to("meta"), None, conv.stride, conv.padding
        )
    o, c, kh, kw = conv.weight.shape
    flops = 2.0 * x_shape[0] * o * out.shape[2] * out.shape[3] * c * kh * kw
    return flops * (2 if backward else 1)


def _call(module: nn.Module, x: torch.Tensor, backward: bool) -> Callable[[], object]:
    params = [p for p in module.parameters() if p.requires_grad]
    if not backward:

        def forward():
            with torch.no_grad():
                return module(x)

        return forward

    def forward_backward():
        for p in params:
            p.grad = None
        module(x).sum().backward()

    return forward_backward


def bench_case(
    case: Case,
    device: torch.device,
    repeats: int = 10,
    warmup: int = 2,
    forms: list[str] | None = None,
    memory: bool = True,
) -> dict[str, Any]:
    """Time every form of ``case.stem`` side by side (plus optimize's pick and a same-FLOP matmul).

    Returns:
        (dict): The case, optimize's choice, the matmul reference and one row per form (median_ms, ratio to the
        fastest form, peak_mb, gflops, fraction of the matmul's GFLOP/s).
    """
    torch.manual_seed(0)
    backward = case.mode == "forward+backward"
    stem = randomize_batchnorm(STEMS[case.stem]()).to(device).train(backward)
    block = strided_block(stem)
    forms = forms or form_names()
    x = torch.rand(case.batch, 3, case.size, case.size, generator=torch.Generator().manual_seed(0)).to(device)
    modules: dict[str, nn.Module] = {name: build_form(block, name) for name in forms}
    # optimize() on its own timing run, then its pick re-timed here with the others: is it really the fastest?
    picked = (
        optimize(
            nn.Sequential(copy.deepcopy(stem)),
            x,
            forms=forms,
            backward=backward,
            repeats=max(3, repeats // 2),
            warmup=1,
            verify=False,
        )[1]
        .stems[0]
        .chosen
    )
    modules[OPTIMIZED] = copy.deepcopy(stem) if picked == "original" else build_form(block, picked)
    flops = stem_flops(block, tuple(x.shape), backward)
    mm, mm_flops = matmul_reference(flops, device)
    calls = {name: _call(module, x, backward) for name, module in modules.items()}
    calls[MATMUL] = mm
    times = time_interleaved(calls, device, repeats, warmup)
    medians = {name: median(t) for name, t in times.items()}
    fastest = min(medians[name] for name in forms)
    mm_gflops = mm_flops / medians[MATMUL] / 1e9
    rows = []
    for name in [*forms, OPTIMIZED]:
        gflops = flops / medians[name] / 1e9
        rows.append(
            {
                "form": name if name != OPTIMIZED else f"{OPTIMIZED} -> {picked}",
                "median_ms": medians[name] * 1e3,
                "ratio_to_fastest": medians[name] / fastest,
                "peak_mb": peak_memory_bytes(calls[name], device) / 2**20 if memory else None,
                "gflops": gflops,
                "fraction_of_matmul": gflops / mm_gflops,
            }
        )
    return {
        "stem": case.stem,
        "size": case.size,
        "batch": case.batch,
        "mode": case.mode,
        "device": str(device),
        "repeats": repeats,
        "flops": flops,
        "optimize_picked": picked,
        "matmul": {"n": round((mm_flops / 2) ** (1 / 3)), "median_ms": medians[MATMUL] * 1e3, "gflops": mm_gflops},
        "fastest_form": min(forms, key=lambda n: medians[n]),
        "forms": rows,
    }


def bench_stems(
    cases: list[Case],
    device: torch.device,
    repeats: int = 10,
    warmup: int = 2,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    results = []
    for index, case in enumerate(cases):
        if progress:
            progress(f"[{index + 1}/{len(cases)}] {case.stem} {case.size}x{case.size} batch {case.batch} {case.mode}")
        results.append(bench_case(case, device, repeats, warmup, memory=memory))
    return results


# ----------------------------------------------------------------------------------------------------- conversion


def make_yolov5x_size_state_dict(target_params: int = 87_000_000, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like YOLOv5x (<= v5.0): a Focus stem (80 x 12 x 3 x 3) then conv + BN layers.

    Widths cycle through YOLOv5x's (160 ... 1280), kernels 1x1 and 3x3, until ``target_params`` is reached, so
    the file has YOLOv5x's size and hundreds of tensors, as a real one has. Values are random.
    """
    generator = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv_bn(prefix: str, shape: tuple[int, int, int, int]) -> None:
        sd[f"{prefix}.conv.weight"] = torch.randn(shape, generator=generator) * 0.05
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            sd[f"{prefix}.bn.{name}"] = torch.full((shape[0],), fill)
        sd[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)

    conv_bn("model.0.conv", (80, 12, 3, 3))
    widths = [160, 320, 640, 1280]
    total, layer = 80 * 12 * 9, 1
    while total < target_params:
        c = widths[(layer // 6) % len(widths)]
        k = 3 if layer % 2 else 1
        cin = c if k == 3 else 2 * c
        shape = (c, cin, k, k)
        if total + c * cin * k * k > target_params and c > 160:
            c, cin = 160, 160
            shape = (c, cin, k, k)
        conv_bn(f"model.{layer}", shape)
        total += c * cin * k * k
        layer += 1
    return sd


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))


LOADER_KINDS = {"load": "copy", "load-mmap": "mmap", "load-mmap-nocrc": "mmap-nocrc"}  # safe loader modes


def convert_once(kind: str, src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, float]:
    """One timed run of ``kind``:

    * ``"plain"`` (torch.load + torch.save), ``"plain+fsync"`` (the same, flushed to disk), ``"copy"`` (a plain file
      copy, ``shutil.copyfile``: the physical floor of any conversion);
    * ``"convert"`` (a state dict's steps in the CLI's pipeline: safe load in mode mmap, remap of the stem, atomic
      save flushed to disk) and ``"convert-no-fsync"`` (the same without the flush);
    * ``"load"``, ``"load-mmap"``, ``"load-mmap-nocrc"`` (the safe loader alone, ``loader.read_checkpoint`` in mode
      copy / mmap / mmap-nocrc), ``"torch-load"`` and ``"torch-load-mmap"`` (``torch.load(weights_only=True)``,
      without and with ``mmap=True``).

    Peak memory is the process's resident high-water mark (VmHWM, reset through ``/proc/self/clear_refs`` just
    before the work) minus its resident size then; ``ru_maxrss`` (never reset) where /proc is unavailable. Mapped
    file pages a run reads count as resident (they are the page cache's, shared and dropped under pressure).
    """
    import shutil

    from ..checkpoint_io import save_checkpoint
    from ..loader import read_checkpoint
    from ..state_dict import convert_state_dict

    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before, peak_of = _status_bytes("VmRSS"), (lambda: _status_bytes("VmHWM"))
    except OSError:
        import resource

        before, peak_of = 0, (lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    t0 = time.perf_counter()
    if kind in LOADER_KINDS:
        read_checkpoint(src, LOADER_KINDS[kind])
    elif kind.startswith("torch-load"):
        torch.load(src, map_location="cpu", weights_only=True, mmap=kind == "torch-load-mmap")
    elif kind == "copy":
        shutil.copyfile(src, dst)
    elif kind.startswith("plain"):
        torch.save(torch.load(src, map_location="cpu", weights_only=True), dst)
        if kind == "plain+fsync":
            with open(dst, "rb") as handle:
                os.fsync(handle.fileno())
    else:
        # the pipeline's steps for a state dict: the loader mode it uses (mmap), remap, atomic save
        content, _ = convert_state_dict(read_checkpoint(src, "mmap").checkpoint().state_dict, "conv")
        save_checkpoint(content, dst, fsync=kind == "convert")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_before": before, "peak_rss": peak_of()}


_CONVERT_JOB = (
    "import json, sys; from focus_surgery.speed.bench import convert_once; "
    "print(json.dumps(convert_once(*sys.argv[1:4])))"
)


def _run_job(kind: str, src: Path, dst: Path, isolate: bool) -> dict[str, float]:
    if not isolate:
        return convert_once(kind, src, dst)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [
                str(Path(__file__).resolve().parents[2]),  # the checkout
                os.environ.get("PYTHONPATH", ""),
            ]
        ),
    )
    out = subprocess.run(
        [sys.executable, "-c", _CONVERT_JOB, kind, str(src), str(dst)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_conversion(
    target_params: int = 87_000_000, repeats: int = 3, folder: str | None = None, isolate: bool = True
) -> dict[str, Any]:
    """Convert a YOLOv5x-size checkpoint vs plain torch.load + torch.save of it, alternating runs.

    With ``isolate`` each run is a fresh process (imports excluded from the time), so its resident high-water
    mark minus its resident size before the work is the memory that run needed; without it (quick mode) runs
    share this process and memory freed by one run may be reused by the next. Both read the same file from the
    page cache (a first, dropped round warms it); before each run the earlier output is deleted and dirty pages
    are flushed (``os.sync``), untimed, so no run pays for another's writes.
    """
    with tempfile.TemporaryDirectory(dir=folder, prefix="focus-surgery-bench-") as tmp:
        src = Path(tmp) / "yolov5x_size.pt"
        sd = make_yolov5x_size_state_dict(target_params)
        params = sum(v.numel() for v in sd.values() if v.is_floating_point())
        torch.save(sd, src)
        del sd
        size = src.stat().st_size
        kinds = ["plain", "convert", "plain+fsync", "convert-no-fsync", "copy", *LOADER_KINDS]
        kinds += ["torch-load", "torch-load-mmap"]
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for index in range(repeats + 1):  # the first round warms the page cache and is dropped
            for kind in kinds if index % 2 == 0 else kinds[::-1]:
                dst = Path(tmp) / f"{kind}.pt"
                dst.unlink(missing_ok=True)  # no run pays for deleting an earlier output
                if hasattr(os, "sync"):
                    os.sync()  # nor for flushing an earlier run's dirty pages (the kernel throttles the next writer)
                result = _run_job(kind, src, dst, isolate)
                if index:
                    runs[kind].append(result)
    med = {k: median([r["seconds"] for r in v]) for k, v in runs.items()}
    mem = {k: max(r["peak_rss"] - r["rss_before"] for r in v) for k, v in runs.items()}
    return {
        "parameters": params,
        "file_mb": size / 2**20,
        "repeats": repeats,
        "isolated_processes": isolate,
        "plain_load_save_s": med["plain"],
        "convert_s": med["convert"],
        "time_ratio": med["convert"] / med["plain"],
        "plain_fsync_s": med["plain+fsync"],
        "convert_no_fsync_s": med["convert-no-fsync"],
        "time_ratio_same_durability": med["convert"] / med["plain+fsync"],
        "time_ratio_no_fsync": med["convert-no-fsync"] / med["plain"],
        "plain_peak_mb": mem["plain"] / 2**20,
        "convert_peak_mb": mem["convert"] / 2**20,
        "convert_peak_over_file_size": mem["convert"] / size,
        "plain_peak_over_file_size": mem["plain"] / size,
        "load_s": med["load"],
        "torch_load_s": med["torch-load"],
        "load_time_ratio": med["load"] / med["torch-load"],
        "load_mb_per_s": size / 2**20 / med["load"],
        "load_peak_over_file_size": mem["load"] / size,
        "copy_s": med["copy"],
        "convert_over_copy": med["convert"] / med["copy"],
        "load_mmap_s": med["load-mmap"],
        "load_mmap_nocrc_s": med["load-mmap-nocrc"],
        "torch_load_mmap_s": med["torch-load-mmap"],
        "load_mmap_over_torch_load": med["load-mmap"] / med["torch-load"],
        "load_mmap_over_torch_mmap": med["load-mmap"] / med["torch-load-mmap"],
        "load_mmap_nocrc_over_torch_mmap": med["load-mmap-nocrc"] / med["torch-load-mmap"],
        "seconds": {k: med[k] for k in kinds},
        "peak_over_file_size": {k: mem[k] / size for k in kinds},
    }


def bench_folder(
    count: int = 200, workers: tuple[int, ...] = (1, 2), repeats: int = 3, folder: str | None = None
) -> dict[str, Any]:
    """``focus-surgery convert DIR OUTDIR --workers N`` on ``count`` small state-dict checkpoints, interleaved.

    Each run is the real CLI in a fresh process; its time less the same CLI's time on a folder of one file (start-up:
    imports and the fork server, paid once per run) gives the files per second of the folder itself.
    """
    with tempfile.TemporaryDirectory(dir=folder, prefix="focus-surgery-bench-folder-") as tmp:
        many, one = Path(tmp) / "many", Path(tmp) / "one"
        many.mkdir(), one.mkdir()
        sd = make_yolov5x_size_state_dict(20_000)
        for index in range(count):
            torch.save(sd, many / f"ckpt{index:04d}.pt")
        torch.save(sd, one / "ckpt.pt")
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
        )

        def run(src: Path, n: int) -> float:
            out = Path(tmp) / "out"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "focus_surgery", "convert", str(src), str(out), "--workers", str(n), "--json"],
                env=env,
                check=True,
                capture_output=True,
            )
            return time.perf_counter() - t0

        times: dict[int, list[float]] = {n: [] for n in workers}
        start: dict[int, list[float]] = {n: [] for n in workers}
        for index in range(repeats):
            for n in workers if index % 2 == 0 else workers[::-1]:
                start[n].append(run(one, n))
                times[n].append(run(many, n))
    rows = []
    for n in workers:
        total, fixed = median(times[n]), median(start[n])
        # below the start-up's own noise (a tiny folder on a busy machine) the rate is not measured: None
        rate = (count - 1) / (total - fixed) if total > fixed else None
        rows.append({"workers": n, "seconds": total, "startup_s": fixed, "files_per_s": rate})
    base = rows[0]["files_per_s"]
    for row in rows:
        row["speedup"] = row["files_per_s"] / base if base and row["files_per_s"] else None
    return {"files": count, "repeats": repeats, "cpu_count": os.cpu_count(), "rows": rows}


# ----------------------------------------------------------------------------------------------------------- ONNX


def bench_onnx(
    stem: str = "yolov5s",
    size: int = 640,
    batch: int = 1,
    repeats: int = 20,
    forms: tuple[str, ...] = ("focus_slices", "conv", "pixel_unshuffle", "space_to_depth"),
) -> dict[str, Any]:
    """Export each form to ONNX (opset 17): node counts by type and onnxruntime CPU latency, interleaved.

    The exported ``focus_slices`` graph is also rewritten by ``onnx_graph.fold`` (what ``focus-surgery convert
    model.onnx`` does) and timed in the same interleaved rounds as row ``focus_slices -> folded``.
    """
    import warnings

    import onnx
    import onnxruntime as ort

    from ..onnx_graph import fold

    torch.manual_seed(0)
    block = strided_block(randomize_batchnorm(STEMS[stem]()).eval())
    x = torch.rand(batch, 3, size, size)
    sessions, nodes, models = {}, {}, {}
    for name in forms:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                build_form(block, name).eval(),
                (x,),
                buffer,
                dynamo=False,
                opset_version=17,
                input_names=["images"],
                output_names=["out"],
            )
        models[name] = onnx.load_from_string(buffer.getvalue())
    if "focus_slices" in models:
        models[FOLDED] = fold(models["focus_slices"])[0]
    for name, model in models.items():
        counts: dict[str, int] = {}
        for node in model.graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        nodes[name] = counts
        options = ort.SessionOptions()
        options.log_severity_level = 3
        sessions[name] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    calls = {name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()}
    times = time_interleaved(calls, torch.device("cpu"), repeats, 2)
    medians = {name: median(t) for name, t in times.items()}
    fastest = min(medians.values())
    return {
        "stem": stem,
        "size": size,
        "batch": batch,
        "onnxruntime": ort.__version__,
        "forms": [
            {
                "form": name,
                "nodes": sum(nodes[name].values()),
                "slice": nodes[name].get("Slice", 0),
                "concat": nodes[name].get("Concat", 0),
                "node_types": nodes[name],
                "median_ms": medians[name] * 1e3,
                "ratio_to_fastest": medians[name] / fastest,
            }
            for name in models
        ],
        "focus_over_conv": medians["focus_slices"] / medians["conv"]
        if "conv" in medians and "focus_slices" in medians
        else None,
        "surgery": {
            "nodes_before": sum(nodes["focus_slices"].values()),
            "nodes_after": sum(nodes[FOLDED].values()),
            "median_ms_before": medians["focus_slices"] * 1e3,
            "median_ms_after": medians[FOLDED] * 1e3,
            "before_over_after": medians["focus_slices"] / medians[FOLDED],
        }
        if FOLDED in medians
        else None,
    }


# ----------------------------------------------------------------------------------------------------------- report


def run_benchmark(
    device: torch.device | str | None = None,
    cases: list[Case] | None = None,
    quick: bool = False,
    repeats: int | None = None,
    conversion: bool = True,
    onnx: bool = True,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
    folder: bool = True,
    workers: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Run every part; ``quick`` uses tiny shapes, a tiny checkpoint and a folder of 3 files (seconds, for tests).

    ``workers``: the ``--workers`` values the folder part compares (default 1 and the cores this process may use,
    at least 2)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cases = cases or default_cases(device, quick)
    repeats = repeats or (2 if quick else 10 if device.type == "cuda" else 7)
    result: dict[str, Any] = {"environment": environment(device), "quick": quick}
    result["stems"] = bench_stems(cases, device, repeats, 1 if quick else 2, memory, progress)
    if conversion:
        if progress:
            progress("conversion of a YOLOv5x-size checkpoint")
        result["conversion"] = bench_conversion(
            1_000_000 if quick else 87_000_000, 1 if quick else 5, isolate=not quick
        )
    if folder:
        from ..limits import available_cores

        workers = workers or ((1,) if quick else tuple(sorted({1, max(2, available_cores())})))
        if progress:
            progress(f"folder of {3 if quick else 200} small checkpoints, --workers {', '.join(map(str, workers))}")
        result["folder"] = bench_folder(3 if quick else 200, workers, 1 if quick else 2)
    if onnx:
        if progress:
            progress("ONNX export and onnxruntime")
        try:
            result["onnx"] = bench_onnx(size=32 if quick else 640, repeats=3 if quick else 20)
        except ImportError as error:
            result["onnx"] = {"skipped": f"onnx / onnxruntime not installed ({error})"}
    return result


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _loader_rows(conv: dict[str, Any]) -> list[str]:
    """The side-by-side rows of issue 19 (absent from results written before it)."""
    if "seconds" not in conv:
        return []
    sec, peak = conv["seconds"], conv["peak_over_file_size"]
    rows = [
        ("plain file copy (`shutil.copyfile`, the floor)", "copy"),
        ("safe loader, mode mmap (every CRC-32 checked)", "load-mmap"),
        ("safe loader, mode mmap-nocrc (storages' CRC-32s not checked)", "load-mmap-nocrc"),
        ("torch.load(weights_only=True, mmap=True) alone", "torch-load-mmap"),
    ]
    lines = [f"| {label} | {sec[k]:.2f} | {peak[k] * conv['file_mb']:.0f} | {peak[k]:.2f} |" for label, k in rows]
    lines += [
        "",
        f"Side by side: conversion **{conv['convert_over_copy']:.2f}x** a file copy; safe loader (copy) "
        f"**{conv['load_time_ratio']:.2f}x** torch.load; mmap **{conv['load_mmap_over_torch_load']:.2f}x** "
        f"torch.load and **{conv['load_mmap_over_torch_mmap']:.2f}x** torch.load(mmap=True); mmap-nocrc "
        f"**{conv['load_mmap_nocrc_over_torch_mmap']:.2f}x** torch.load(mmap=True). Mapped pages a run reads count "
        "in its peak (page cache, shared).",
    ]
    return lines


def format_report(result: dict[str, Any]) -> str:
    """Markdown tables of a ``run_benchmark`` result."""
    env = result["environment"]
    lines = [
        f"Measured {env['date_utc']} on {env.get('gpu') or env['cpu']}, {env['cpu_threads']} torch threads, "
        f"torch {env['torch']}, Python {env['python']} (device {env['device']}); "
        f"{result['stems'][0]['repeats'] if result['stems'] else 0} interleaved rounds per shape.",
        "",
        "| stem | image | batch | mode | form | median ms | x fastest | peak MB | GFLOP/s | % of matmul |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in result["stems"]:
        for row in sorted(case["forms"], key=lambda r: r["median_ms"]):
            peak = f"{row['peak_mb']:.1f}" if row["peak_mb"] is not None else "-"
            lines.append(
                f"| {case['stem']} | {case['size']} | {case['batch']} | {case['mode']} | {row['form']} | "
                f"{row['median_ms']:.2f} | {row['ratio_to_fastest']:.2f} | {peak} | {row['gflops']:.1f} | "
                f"{100 * row['fraction_of_matmul']:.0f} |"
            )
    lines += [
        "",
        "Per shape: fastest form, optimize's pick (re-timed side by side), matmul reference:",
        "",
        "| stem | image | batch | mode | fastest | optimize picked | optimize x fastest | matmul GFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in result["stems"]:
        opt = next(r for r in case["forms"] if r["form"].startswith(OPTIMIZED))
        lines.append(
            f"| {case['stem']} | {case['size']} | {case['batch']} | {case['mode']} | {case['fastest_form']} | "
            f"{case['optimize_picked']} | {opt['ratio_to_fastest']:.2f} | {case['matmul']['gflops']:.1f} |"
        )
    conv = result.get("conversion")
    if conv:
        lines += [
            "",
            f"Checkpoint conversion ({conv['parameters'] / 1e6:.1f}M parameters, {conv['file_mb']:.0f} MB file, "
            f"median of {conv['repeats']} alternating runs"
            f"{' in fresh processes' if conv['isolated_processes'] else ' in one process'}):",
            "",
            "| | seconds | peak RSS MB | peak / file size |",
            "|---|---|---|---|",
            f"| torch.load + torch.save | {conv['plain_load_save_s']:.2f} | {conv['plain_peak_mb']:.0f} | "
            f"{conv['plain_peak_over_file_size']:.2f} |",
            f"| focus-surgery convert | {conv['convert_s']:.2f} | {conv['convert_peak_mb']:.0f} | "
            f"{conv['convert_peak_over_file_size']:.2f} |",
            f"| torch.load + torch.save + fsync | {conv['plain_fsync_s']:.2f} | | |",
            f"| focus-surgery convert without fsync | {conv['convert_no_fsync_s']:.2f} | | |",
            f"| safe loader alone (`loader.read_checkpoint`) | {conv['load_s']:.2f} | "
            f"{conv['load_peak_over_file_size'] * conv['file_mb']:.0f} | {conv['load_peak_over_file_size']:.2f} |",
            f"| torch.load(weights_only=True) alone | {conv['torch_load_s']:.2f} | | |",
            *_loader_rows(conv),
            "",
            f"Conversion / plain load+save: **{conv['time_ratio']:.2f}x** as the CLI does it (it flushes the file "
            f"to disk before the atomic rename); **{conv['time_ratio_same_durability']:.2f}x** against a plain "
            f"load+save flushed the same way; **{conv['time_ratio_no_fsync']:.2f}x** without the flush.",
            "",
            f"Targets (issue 19): conversion <= 0.5x plain load+save (measured **{conv['time_ratio']:.2f}x**), "
            f"<= 2x a file copy (measured **{conv.get('convert_over_copy', float('nan')):.2f}x**), peak memory "
            f"<= 0.25x the file (measured **{conv['convert_peak_over_file_size']:.2f}x**).",
            "",
            f"Safe loader: {conv['load_mb_per_s']:.0f} MB/s, **{conv['load_time_ratio']:.2f}x** torch.load's time, "
            f"peak memory **{conv['load_peak_over_file_size']:.2f}x** the file (bound: 2x the file + 256 MiB).",
        ]
    folder = result.get("folder")
    if folder:
        lines += [
            "",
            f"Folder conversion (`convert DIR OUTDIR --workers N`, {folder['files']} small state dicts, the CLI in a "
            f"fresh process, median of {folder['repeats']} interleaved runs, {folder['cpu_count']} CPUs; start-up "
            "measured on a folder of one file and subtracted):",
            "",
            "| --workers | seconds | start-up s | files / s | x --workers 1 |",
            "|---|---|---|---|---|",
            *(
                f"| {r['workers']} | {r['seconds']:.1f} | {r['startup_s']:.1f} | {_num(r['files_per_s'], 1)} | "
                f"{_num(r['speedup'], 2)} |"
                for r in folder["rows"]
            ),
        ]
    onnx_result = result.get("onnx")
    if onnx_result and "forms" in onnx_result:
        lines += [
            "",
            f"ONNX (opset 17, {onnx_result['stem']} stem, {onnx_result['batch']}x3x{onnx_result['size']}x"
            f"{onnx_result['size']}, onnxruntime {onnx_result['onnxruntime']} CPU):",
            "",
            "| form | nodes | Slice | Concat | median ms | x fastest |",
            "|---|---|---|---|---|---|",
        ]
        for row in onnx_result["forms"]:
            lines.append(
                f"| {row['form']} | {row['nodes']} | {row['slice']} | {row['concat']} | "
                f"{row['median_ms']:.2f} | {row['ratio_to_fastest']:.2f} |"
            )
        surgery = onnx_result.get("surgery")
        if surgery:
            lines.append(
                f"\nONNX surgery on the exported Focus graph (`focus-surgery convert model.onnx`): "
                f"{surgery['nodes_before']} -> {surgery['nodes_after']} nodes, onnxruntime median "
                f"{surgery['median_ms_before']:.2f} -> {surgery['median_ms_after']:.2f} ms "
                f"(original / rewritten **{surgery['before_over_after']:.2f}x**, same rounds)."
            )
        if onnx_result.get("focus_over_conv"):
            lines.append(
                f"\nFocus (slicing) / converted conv latency in onnxruntime: **{onnx_result['focus_over_conv']:.2f}x**."
            )
    elif onnx_result:
        lines.append(f"\nONNX: {onnx_result['skipped']}")
    return "\n".join(lines)


def plot_latency(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Latency vs batch per form, one panel per (stem, image size, mode) that has more than one batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels: dict[tuple, list[dict]] = {}
    for case in result["stems"]:
        panels.setdefault((case["stem"], case["size"], case["mode"]), []).append(case)
    panels = {k: v for k, v in panels.items() if len(v) > 1} or panels
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, ((stem, size, mode), cases) in zip(axes.flat, sorted(panels.items())):
        cases = sorted(cases, key=lambda c: c["batch"])
        for form in [r["form"] for r in cases[0]["forms"] if not r["form"].startswith(OPTIMIZED)]:
            ms = [next(r["median_ms"] for r in c["forms"] if r["form"] == form) for c in cases]
            ax.plot(
                [c["batch"] for c in cases],
                ms,
                marker="o",
                label=form,
                linestyle="--" if form.endswith("channels_last") else "-",
            )
        batches = [c["batch"] for c in cases]
        ax.set(title=f"{stem} {size}x{size} {mode}", xlabel="batch", ylabel="median ms", xscale="log", yscale="log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    env = result["environment"]
    fig.suptitle(
        f"Stem latency per exact form - {env.get('gpu') or env['cpu']}, torch {env['torch']}, {env['date_utc']}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
