"""The benchmark behind ``focus-surgery bench`` and ``bench/run.py``; every part returns JSON-ready dicts.

``bench_case`` times every exact form of real stems (YOLOv5 n-x Focus, TResNet-M) side by side with optimize's pick
and a same-FLOP matmul; ``bench_conversion`` converts a YOLOv5x-size checkpoint vs plain torch.load + torch.save;
``bench_folder`` times ``convert DIR OUTDIR --workers N``; ``bench_onnx`` compares exported forms and the Focus graph
after ONNX surgery in onnxruntime. The full grid (``FULL``) is the default on a GPU, ``CPU_DEFAULT`` on the CPU.
"""

from __future__ import annotations

import copy
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..demo import randomize_batchnorm
from ..layers import ConvBnAct, Focus, SpaceToDepth
from .optimize import _step, optimize
from .stem_forms import build_form, form_names, strided_block
from .timing import matmul_reference, median, peak_memory_bytes, time_interleaved

FOLDED = "focus_slices -> folded"  # the exported Focus graph after ONNX surgery (convert model.onnx)
OPTIMIZED = "optimize"  # the row of the form optimize() picked for the case, re-timed side by side
MATMUL = "matmul"


def _tresnet_m_stem() -> nn.Module:
    # TResNet-M: SpaceToDepth(4) then a 3x3 conv 48 -> 64, BN and leaky ReLU (timm's conv1)
    return nn.Sequential(SpaceToDepth(4, "timm"), ConvBnAct(48, 64, 3, 1, act=nn.LeakyReLU(0.01)))


# YOLOv5 <= v5.0: Focus(3, 64 * width_multiple, 3)
STEMS: dict[str, Callable[[], nn.Module]] = {
    **{f"yolov5{n}": partial(Focus, 3, w, k=3) for n, w in zip("nsmlx", (16, 32, 48, 64, 80))},
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
_224, _640 = {"tresnet_m": (224,)}, {s: (640,) for s in STEMS}
CPU_DEFAULT = (
    grid(["yolov5s"], _640, (1, 8), MODES)
    + grid(["yolov5n", "yolov5x"], _640, (1, 8), ("forward",))
    + grid(["yolov5s"], {"yolov5s": (1280,)}, (1,), ("forward",))
    + grid(["tresnet_m"], _224, (1, 8), ("forward",))
    + grid(["tresnet_m"], _224, (1,), ("forward+backward",))
)
QUICK = [Case("yolov5n", 32, 1, "forward"), Case("yolov5n", 32, 2, "forward+backward")]


def _split(text: str | None, cast=str) -> list:
    return [cast(item.strip()) for item in text.split(",") if item.strip()] if text else []


def cases_from_flags(stems: str | None, sizes: str | None, batches: str | None, modes: str | None) -> list[Case] | None:
    """Cases from the command line's comma lists; None (the defaults) when no list is given.

    Missing lists default to yolov5s, the stem's first real size (640 / 224), batch 1 and both modes.
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
    bad = [z for s in stem_list for z in size_list if z % (4 if s == "tresnet_m" else 2) or z <= 0]
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
    """FLOPs (2 per multiply-add) of the stem's strided conv on ``x_shape``; x2 for the weight gradient in backward.

    The input image needs no gradient, so backward costs one more conv-sized product.
    """
    conv = block if isinstance(block, nn.Conv2d) else block.conv
    o, c, kh, kw = conv.weight.shape
    meta = torch.empty(1, *x_shape[1:], device="meta")
    out = nn.functional.conv2d(meta, conv.weight.to("meta"), None, conv.stride, conv.padding)
    return 2.0 * x_shape[0] * o * out.shape[2] * out.shape[3] * c * kh * kw * (2 if backward else 1)


def bench_case(
    case: Case,
    device: torch.device,
    repeats: int = 10,
    warmup: int = 2,
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
    forms = form_names()
    x = torch.rand(case.batch, 3, case.size, case.size, generator=torch.Generator().manual_seed(0)).to(device)
    modules: dict[str, nn.Module] = {name: build_form(block, name) for name in forms}
    # optimize() on its own timing run, then its pick re-timed here with the others: is it really the fastest?
    _, report = optimize(
        nn.Sequential(copy.deepcopy(stem)), x, forms, backward, repeats=max(3, repeats // 2), warmup=1, verify=False
    )
    picked = report.stems[0].chosen
    modules[OPTIMIZED] = copy.deepcopy(stem) if picked == "original" else build_form(block, picked)
    flops = stem_flops(block, tuple(x.shape), backward)
    mm, mm_flops = matmul_reference(flops, device)
    calls = {name: _step(module, (x,), backward) for name, module in modules.items()}
    medians = {name: median(t) for name, t in time_interleaved({**calls, MATMUL: mm}, device, repeats, warmup).items()}
    fastest = min(medians[name] for name in forms)
    mm_gflops = mm_flops / medians[MATMUL] / 1e9
    gflops = {name: flops / seconds / 1e9 for name, seconds in medians.items()}
    rows = [
        {
            "form": name if name != OPTIMIZED else f"{OPTIMIZED} -> {picked}",
            "median_ms": medians[name] * 1e3,
            "ratio_to_fastest": medians[name] / fastest,
            "peak_mb": peak_memory_bytes(calls[name], device) / 2**20 if memory else None,
            "gflops": gflops[name],
            "fraction_of_matmul": gflops[name] / mm_gflops,
        }
        for name in [*forms, OPTIMIZED]
    ]
    return {
        **asdict(case),
        "device": str(device),
        "repeats": repeats,
        "flops": flops,
        "optimize_picked": picked,
        "matmul": {"n": round((mm_flops / 2) ** (1 / 3)), "median_ms": medians[MATMUL] * 1e3, "gflops": mm_gflops},
        "fastest_form": min(forms, key=lambda n: medians[n]),
        "forms": rows,
    }


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
    total, layer = 80 * 12 * 9, 1
    while total < target_params:
        c, k = (160, 320, 640, 1280)[(layer // 6) % 4], 3 if layer % 2 else 1
        cin = c if k == 3 else 2 * c
        if total + c * cin * k * k > target_params and c > 160:
            c = cin = 160  # a small last layer: the total stops just past the target
        conv_bn(f"model.{layer}", (c, cin, k, k))
        total += c * cin * k * k
        layer += 1
    return sd


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))


LOADER_KINDS = {"load": "copy", "load-mmap": "mmap", "load-mmap-nocrc": "mmap-nocrc"}  # safe loader modes


def convert_once(kind: str, src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, float]:
    """One timed run of ``kind`` (a key of ``KINDS``; ``convert`` is a state dict's steps in the CLI's pipeline: safe
    load in mode mmap, remap of the stem, atomic save flushed to disk, which copies the input's unchanged records byte
    for byte (``loader.zip_rewrite``); ``convert-rewrite`` the same steps writing every record anew with
    ``torch.save``, as before the zip copy).

    Peak memory is the process's resident high-water mark (VmHWM, reset through ``/proc/self/clear_refs`` just
    before the work) minus its resident size then; ``ru_maxrss`` (never reset) where /proc is unavailable. Mapped
    file pages a run reads count as resident (they are the page cache's, shared and dropped under pressure);
    ``peak_anon`` is the run's own memory (``RssAnon``, sampled every 2 ms: the kernel keeps no high-water mark of it).
    """
    import threading

    from ..checkpoint_io import save_checkpoint
    from ..files import convert_file
    from ..loader import read_checkpoint
    from ..state_dict import convert_state_dict

    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before, peak_of = _status_bytes("VmRSS"), (lambda: _status_bytes("VmHWM"))
    except OSError:
        import resource

        before, peak_of = 0, (lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    anon = [_status_bytes("RssAnon") if os.path.exists("/proc/self/status") else 0]
    anon_before, stop = anon[0], threading.Event()

    def sample() -> None:
        while anon_before and not stop.wait(0.002):
            anon[0] = max(anon[0], _status_bytes("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if kind in LOADER_KINDS:
        read_checkpoint(src, LOADER_KINDS[kind])
    elif kind.startswith("torch-load"):
        torch.load(src, map_location="cpu", weights_only=True, mmap=kind == "torch-load-mmap")
    elif kind.startswith("copy"):
        shutil.copyfile(src, dst)
        if kind == "copy+fsync":
            with open(dst, "rb") as handle:
                os.fsync(handle.fileno())
    elif kind in ("convert", "convert-verify"):  # the CLI's pipeline itself
        convert_file(src, dst, to="conv", verify=kind == "convert-verify")
    elif kind.startswith("plain"):
        torch.save(torch.load(src, map_location="cpu", weights_only=True), dst)
        if kind == "plain+fsync":
            with open(dst, "rb") as handle:
                os.fsync(handle.fileno())
    else:  # the pipeline's steps for a state dict, unflushed (its loader mode and zip copy), or rewritten as before
        loaded = read_checkpoint(src, "mmap-nocrc" if kind == "convert-no-fsync" else "mmap")
        content, _ = convert_state_dict(loaded.checkpoint().state_dict, "conv")
        like = loaded if kind != "convert-rewrite" else None  # like: the zip copy, as the CLI writes
        save_checkpoint(content, dst, fsync=kind != "convert-no-fsync", like=like)
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return {"seconds": seconds, "rss_before": before, "peak_rss": peak_of(), "peak_anon": anon[0] - anon_before}


def _child_env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, for the fresh processes a run is timed in."""
    checkout = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, PYTHONPATH=os.pathsep.join([checkout, os.environ.get("PYTHONPATH", "")]))


_CONVERT_JOB = (  # what the pipeline imports is imported before the clock starts, as torch is for torch.load
    "import json, sys; import focus_surgery.files, focus_surgery.yolov5.convert; "
    "from focus_surgery.speed.bench import convert_once; "
    "print(json.dumps(convert_once(*sys.argv[1:4])))"
)


def _run_job(kind: str, src: Path, dst: Path, isolate: bool) -> dict[str, float]:
    if not isolate:
        return convert_once(kind, src, dst)
    command = [sys.executable, "-c", _CONVERT_JOB, kind, str(src), str(dst)]
    out = subprocess.run(command, capture_output=True, text=True, env=_child_env(), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# every kind ``convert_once`` runs, in the order the runs alternate and the report lists them: (the result key of its
# median seconds, its label in the report, whether the report shows its peak memory)
KINDS = {
    "plain": ("plain_load_save_s", "torch.load + torch.save", True),
    "convert": ("convert_s", "focus-surgery convert", True),
    "convert-verify": ("convert_verify_s", "focus-surgery convert --verify (the stem proof, read back)", True),
    "plain+fsync": ("plain_fsync_s", "torch.load + torch.save + fsync", False),
    "convert-no-fsync": ("convert_no_fsync_s", "focus-surgery convert without fsync", False),
    "convert-rewrite": (
        "convert_rewrite_s",
        "focus-surgery convert, every record rewritten (before the zip copy)",
        True,
    ),
    "load": ("load_s", "safe loader alone (`loader.read_checkpoint`)", True),
    "torch-load": ("torch_load_s", "torch.load(weights_only=True) alone", False),
    "copy": ("copy_s", "plain file copy (`shutil.copyfile`, the floor)", True),
    "copy+fsync": ("copy_fsync_s", "plain file copy + fsync (the floor at the CLI's durability)", False),
    "load-mmap": ("load_mmap_s", "safe loader, mode mmap (every CRC-32 checked)", True),
    "load-mmap-nocrc": ("load_mmap_nocrc_s", "safe loader, mode mmap-nocrc (storages' CRC-32s not checked)", True),
    "torch-load-mmap": ("torch_load_mmap_s", "torch.load(weights_only=True, mmap=True) alone", True),
}
# result key -> (kind, kind): the ratio of their median times
_TIME_RATIOS = {
    "time_ratio": ("convert", "plain"),
    "time_ratio_same_durability": ("convert", "plain+fsync"),
    "time_ratio_no_fsync": ("convert-no-fsync", "plain"),
    "load_time_ratio": ("load", "torch-load"),
    "convert_over_copy": ("convert", "copy"),
    "convert_over_copy_same_durability": ("convert", "copy+fsync"),
    "convert_no_fsync_over_copy": ("convert-no-fsync", "copy"),
    "verify_time_ratio": ("convert-verify", "plain"),
    "verify_over_copy_same_durability": ("convert-verify", "copy+fsync"),
    "rewrite_time_ratio": ("convert-rewrite", "plain"),
    "load_mmap_over_torch_load": ("load-mmap", "torch-load"),
    "load_mmap_over_torch_mmap": ("load-mmap", "torch-load-mmap"),
    "load_mmap_nocrc_over_torch_mmap": ("load-mmap-nocrc", "torch-load-mmap"),
}


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
    kinds = list(KINDS)
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(dir=folder, prefix="focus-surgery-bench-") as tmp:
        src = Path(tmp) / "yolov5x_size.pt"
        sd = make_yolov5x_size_state_dict(target_params)
        params = sum(v.numel() for v in sd.values() if v.is_floating_point())
        torch.save(sd, src)
        del sd
        size = src.stat().st_size
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
    own = {k: max(r.get("peak_anon", 0) for r in v) for k, v in runs.items()}
    return {
        "parameters": params,
        "file_mb": size / 2**20,
        "repeats": repeats,
        "isolated_processes": isolate,
        **{key: med[kind] for kind, (key, *_) in KINDS.items()},
        **{key: med[a] / med[b] for key, (a, b) in _TIME_RATIOS.items()},
        "plain_peak_mb": mem["plain"] / 2**20,
        "convert_peak_mb": mem["convert"] / 2**20,
        "convert_peak_over_file_size": mem["convert"] / size,
        "plain_peak_over_file_size": mem["plain"] / size,
        "load_mb_per_s": size / 2**20 / med["load"],
        "load_peak_over_file_size": mem["load"] / size,
        "seconds": {k: med[k] for k in kinds},
        "peak_over_file_size": {k: mem[k] / size for k in kinds},
        "own_peak_over_file_size": {k: own[k] / size for k in kinds},
    }


def bench_folder(
    count: int = 200, workers: tuple[int, ...] = (1, 2), repeats: int = 3, folder: str | None = None
) -> dict[str, Any]:
    """``focus-surgery convert DIR OUTDIR --workers N`` on ``count`` small state-dict checkpoints, interleaved.

    Each run is the real CLI in a fresh process; its time less the same CLI's time on a folder of one file (start-up:
    imports and the fork server, paid once per run) gives the files per second of the folder itself.
    """
    times: dict[int, list[float]] = {n: [] for n in workers}
    start: dict[int, list[float]] = {n: [] for n in workers}
    with tempfile.TemporaryDirectory(dir=folder, prefix="focus-surgery-bench-folder-") as tmp:
        many, one, out = Path(tmp) / "many", Path(tmp) / "one", Path(tmp) / "out"
        many.mkdir(), one.mkdir()
        sd = make_yolov5x_size_state_dict(20_000)
        for index in range(count):
            torch.save(sd, many / f"ckpt{index:04d}.pt")
        torch.save(sd, one / "ckpt.pt")

        def run(src: Path, n: int) -> float:
            shutil.rmtree(out, ignore_errors=True)
            command = [sys.executable, "-m", "focus_surgery", "convert", str(src), str(out), "--workers", str(n)]
            t0 = time.perf_counter()
            subprocess.run([*command, "--json"], env=_child_env(), check=True, capture_output=True)
            return time.perf_counter() - t0

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


_EXPORT = {"dynamo": False, "opset_version": 17, "input_names": ["images"], "output_names": ["out"]}


def bench_onnx(
    stem: str = "yolov5s",
    size: int = 640,
    batch: int = 1,
    repeats: int = 20,
) -> dict[str, Any]:
    """Export each form to ONNX (opset 17): node counts by type and onnxruntime CPU latency, interleaved.

    The exported ``focus_slices`` graph is also rewritten by ``onnx_graph.fold`` (what ``focus-surgery convert
    model.onnx`` does) and timed in the same interleaved rounds as row ``focus_slices -> folded``.
    """
    import warnings
    from collections import Counter

    import onnx
    import onnxruntime as ort

    from ..onnx_graph import fold

    torch.manual_seed(0)
    block = strided_block(randomize_batchnorm(STEMS[stem]()).eval())
    x = torch.rand(batch, 3, size, size)
    models = {}
    for name in ("focus_slices", "conv", "pixel_unshuffle", "space_to_depth"):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(build_form(block, name).eval(), (x,), buffer, **_EXPORT)
        models[name] = onnx.load_from_string(buffer.getvalue())
    models[FOLDED] = fold(models["focus_slices"])[0]
    nodes = {name: dict(Counter(node.op_type for node in model.graph.node)) for name, model in models.items()}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    feed = {"images": x.numpy()}
    calls = {}
    for name, model in models.items():
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        calls[name] = partial(session.run, None, feed)
    medians = {name: median(t) for name, t in time_interleaved(calls, torch.device("cpu"), repeats, 2).items()}
    fastest = min(medians.values())
    rows = [
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
    ]
    before, after = medians["focus_slices"], medians[FOLDED]
    return {
        "stem": stem,
        "size": size,
        "batch": batch,
        "onnxruntime": ort.__version__,
        "forms": rows,
        "focus_over_conv": before / medians["conv"],
        "surgery": {
            "nodes_before": sum(nodes["focus_slices"].values()),
            "nodes_after": sum(nodes[FOLDED].values()),
            "median_ms_before": before * 1e3,
            "median_ms_after": after * 1e3,
            "before_over_after": before / after,
        },
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
    cases = cases or (QUICK if quick else FULL if device.type == "cuda" else CPU_DEFAULT)
    repeats = repeats or (2 if quick else 10 if device.type == "cuda" else 7)
    say = progress or (lambda line: None)
    result: dict[str, Any] = {"environment": environment(device), "quick": quick}
    result["stems"] = []
    for index, case in enumerate(cases):
        say(f"[{index + 1}/{len(cases)}] {case.stem} {case.size}x{case.size} batch {case.batch} {case.mode}")
        result["stems"].append(bench_case(case, device, repeats, 1 if quick else 2, memory))
    if conversion:
        say("conversion of a YOLOv5x-size checkpoint")
        result["conversion"] = bench_conversion(
            1_000_000 if quick else 87_000_000, 1 if quick else 5, isolate=not quick
        )
    if folder:
        from ..limits import available_cores

        workers = workers or ((1,) if quick else tuple(sorted({1, max(2, available_cores())})))
        say(f"folder of {3 if quick else 200} small checkpoints, --workers {', '.join(map(str, workers))}")
        result["folder"] = bench_folder(3 if quick else 200, workers, 1 if quick else 2)
    if onnx:
        say("ONNX export and onnxruntime")
        try:
            result["onnx"] = bench_onnx(size=32 if quick else 640, repeats=3 if quick else 20)
        except ImportError as error:
            result["onnx"] = {"skipped": f"onnx / onnxruntime not installed ({error})"}
    return result


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _head(*columns: str) -> list[str]:
    """A markdown table's header and rule."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _conversion_lines(conv: dict[str, Any]) -> list[str]:
    mb, where = conv["file_mb"], "in fresh processes" if conv["isolated_processes"] else "in one process"
    seconds, peak = conv["seconds"], conv["peak_over_file_size"]
    lines = [
        f"Checkpoint conversion ({conv['parameters'] / 1e6:.1f}M parameters, {mb:.0f} MB file, "
        f"median of {conv['repeats']} alternating runs {where}):",
        "",
        "| | seconds | peak RSS MB | peak / file size |",
        "|---|---|---|---|",
    ]
    for kind, (_, label, show_peak) in KINDS.items():
        memory = f"{peak[kind] * mb:.0f} | {peak[kind]:.2f}" if show_peak else "|"
        lines.append(f"| {label} | {seconds[kind]:.2f} | {memory} |")
    return lines + [
        "",
        f"Side by side: conversion **{conv['convert_over_copy']:.2f}x** a file copy; safe loader (copy) "
        f"**{conv['load_time_ratio']:.2f}x** torch.load; mmap **{conv['load_mmap_over_torch_load']:.2f}x** "
        f"torch.load and **{conv['load_mmap_over_torch_mmap']:.2f}x** torch.load(mmap=True); mmap-nocrc "
        f"**{conv['load_mmap_nocrc_over_torch_mmap']:.2f}x** torch.load(mmap=True). Mapped pages a run reads "
        "count in its peak (page cache, shared).",
        "",
        f"Conversion / plain load+save: **{conv['time_ratio']:.2f}x** as the CLI does it (it flushes the file "
        f"to disk before the atomic rename); **{conv['time_ratio_same_durability']:.2f}x** against a plain "
        f"load+save flushed the same way; **{conv['time_ratio_no_fsync']:.2f}x** without the flush.",
        "",
        f"Targets (issue 19): conversion <= 0.5x plain load+save (measured **{conv['time_ratio']:.2f}x**; "
        f"flushed alike **{conv['time_ratio_same_durability']:.2f}x**; with `--verify` "
        f"**{conv['verify_time_ratio']:.2f}x**), <= 2x a file copy (measured **{conv['convert_over_copy']:.2f}x**; "
        f"both flushed **{conv['convert_over_copy_same_durability']:.2f}x**; neither flushed "
        f"**{conv['convert_no_fsync_over_copy']:.2f}x**), peak memory <= 0.25x the file (measured "
        f"**{conv['convert_peak_over_file_size']:.2f}x**).{_verify_line(conv)}",
        *_own_memory_lines(conv),
        "",
        f"Safe loader: {conv['load_mb_per_s']:.0f} MB/s, **{conv['load_time_ratio']:.2f}x** torch.load's time, "
        f"peak memory **{conv['load_peak_over_file_size']:.2f}x** the file (bound: 2x the file + 256 MiB).",
    ]


def _verify_line(conv: dict[str, Any]) -> str:
    """``convert --verify`` against the same targets; absent from results written before it was measured."""
    if "verify_over_copy_same_durability" not in conv:
        return ""
    return (
        f" With `--verify` (the stem in float64, every record of the written file read back): "
        f"**{conv['verify_time_ratio']:.2f}x** a plain load+save, **{conv['verify_over_copy_same_durability']:.2f}x** "
        f"a file copy flushed alike, peak memory **{conv['peak_over_file_size']['convert-verify']:.2f}x** the file."
    )


def _own_memory_lines(conv: dict[str, Any]) -> list[str]:
    """Each run's own (anonymous) memory over the file size; absent from results written before it was measured."""
    own = conv.get("own_peak_over_file_size")
    if not own:
        return []
    shown = ", ".join(f"{KINDS[k][1]} **{own[k]:.3f}x**" for k in ("convert", "convert-rewrite", "plain") if k in own)
    return [
        "",
        f"Own memory (anonymous resident memory, sampled every 2 ms; mapped file pages are the page cache's): {shown}"
        " the file.",
    ]


def _onnx_lines(onnx: dict[str, Any]) -> list[str]:
    if "forms" not in onnx:
        return [f"\nONNX: {onnx['skipped']}"]
    lines = [
        "",
        f"ONNX (opset 17, {onnx['stem']} stem, {onnx['batch']}x3x{onnx['size']}x{onnx['size']}, onnxruntime "
        f"{onnx['onnxruntime']} CPU):",
        "",
        *_head("form", "nodes", "Slice", "Concat", "median ms", "x fastest"),
        *(
            f"| {r['form']} | {r['nodes']} | {r['slice']} | {r['concat']} | {r['median_ms']:.2f} | "
            f"{r['ratio_to_fastest']:.2f} |"
            for r in onnx["forms"]
        ),
    ]
    surgery = onnx["surgery"]
    return lines + [
        f"\nONNX surgery on the exported Focus graph (`focus-surgery convert model.onnx`): "
        f"{surgery['nodes_before']} -> {surgery['nodes_after']} nodes, onnxruntime median "
        f"{surgery['median_ms_before']:.2f} -> {surgery['median_ms_after']:.2f} ms "
        f"(original / rewritten **{surgery['before_over_after']:.2f}x**, same rounds).",
        f"\nFocus (slicing) / converted conv latency in onnxruntime: **{onnx['focus_over_conv']:.2f}x**.",
    ]


def format_report(result: dict[str, Any]) -> str:
    """Markdown tables of a ``run_benchmark`` result."""
    env, stems = result["environment"], result["stems"]
    lines = [
        f"Measured {env['date_utc']} on {env.get('gpu') or env['cpu']}, {env['cpu_threads']} torch threads, "
        f"torch {env['torch']}, Python {env['python']} (device {env['device']}); "
        f"{stems[0]['repeats'] if stems else 0} interleaved rounds per shape.",
        "",
        *_head("stem", "image", "batch", "mode", "form", "median ms", "x fastest", "peak MB", "GFLOP/s", "% of matmul"),
    ]
    for case in stems:
        shape = f"| {case['stem']} | {case['size']} | {case['batch']} | {case['mode']} |"
        for row in sorted(case["forms"], key=lambda r: r["median_ms"]):
            lines.append(
                f"{shape} {row['form']} | {row['median_ms']:.2f} | {row['ratio_to_fastest']:.2f} | "
                f"{_num(row['peak_mb'], 1)} | {row['gflops']:.1f} | {100 * row['fraction_of_matmul']:.0f} |"
            )
    lines += [
        "",
        "Per shape: fastest form, optimize's pick (re-timed side by side), matmul reference:",
        "",
        *_head("stem", "image", "batch", "mode", "fastest", "optimize picked", "optimize x fastest", "matmul GFLOP/s"),
    ]
    for case in stems:
        opt = next(r for r in case["forms"] if r["form"].startswith(OPTIMIZED))
        lines.append(
            f"| {case['stem']} | {case['size']} | {case['batch']} | {case['mode']} | {case['fastest_form']} | "
            f"{case['optimize_picked']} | {opt['ratio_to_fastest']:.2f} | {case['matmul']['gflops']:.1f} |"
        )
    if result.get("conversion"):
        lines += ["", *_conversion_lines(result["conversion"])]
    folder = result.get("folder")
    if folder:
        lines += [
            "",
            f"Folder conversion (`convert DIR OUTDIR --workers N`, {folder['files']} small state dicts, the CLI in a "
            f"fresh process, median of {folder['repeats']} interleaved runs, {folder['cpu_count']} CPUs; start-up "
            "measured on a folder of one file and subtracted):",
            "",
            *_head("--workers", "seconds", "start-up s", "files / s", "x --workers 1"),
            *(
                f"| {r['workers']} | {r['seconds']:.1f} | {r['startup_s']:.1f} | {_num(r['files_per_s'], 1)} | "
                f"{_num(r['speedup'], 2)} |"
                for r in folder["rows"]
            ),
        ]
    if result.get("onnx"):
        lines += _onnx_lines(result["onnx"])
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
        batches = [c["batch"] for c in cases]
        for form in [r["form"] for r in cases[0]["forms"] if not r["form"].startswith(OPTIMIZED)]:
            ms = [next(r["median_ms"] for r in c["forms"] if r["form"] == form) for c in cases]
            ax.plot(batches, ms, marker="o", label=form, linestyle="--" if form.endswith("channels_last") else "-")
        ax.set(title=f"{stem} {size}x{size} {mode}", xlabel="batch", ylabel="median ms", xscale="log", yscale="log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    env = result["environment"]
    title = f"Stem latency per exact form - {env.get('gpu') or env['cpu']}, torch {env['torch']}, {env['date_utc']}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
