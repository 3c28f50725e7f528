"""Convert a YOLOv5-repository checkpoint into an Ultralytics checkpoint (``.pt``) or ``.safetensors`` + JSON.

The rebuilt model's Focus stem becomes ``Conv(c1, c2, 6, 2, 2)`` (or stays, ``to="focus"``; a v6+ conv stem can
become a Focus), measured in float64 against the rebuilt original before anything is written; writes are atomic.
The ``.safetensors`` form needs no pickle: ``load_yolov5_safetensors`` rebuilds the model from it and its JSON.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic_io import atomic_write_all
from ..checkpoint_io import CheckpointError, atomic_write, check_readable, safetensors_save, torch_save
from ..stems import check, plan
from ..surgery import ConversionError, apply_changes
from ..tensor_digest import tensors_digest
from ..verify import DEFAULT_TOLERANCE, VerificationReport
from .hyp import HYP_KEY, RELEASE_KEY, checkpoint_hyp
from .pair_format import CONFIG_FORMAT
from .rebuild import (
    LegacyArchitecture,
    LegacyCheckpoint,
    _is_yolov5_model,
    build_model,
    guess_release,
    load_weights,
    module_spec,
    read_yolov5_checkpoint,
    rebuild,
)
from .release import exact_release


@dataclass
class LegacyConversion:
    """A converted YOLOv5 model and what was done to it."""

    ckpt: LegacyCheckpoint
    model: nn.Module  # float32, eval
    arch: LegacyArchitecture  # of the converted model
    stem_before: str
    stem_after: str
    release: str  # guess_release(ckpt), asked once
    replaced: list
    verification: VerificationReport | None = None
    training_model: nn.Module | None = None  # a last.pt's ``model`` when ``model`` is its EMA (what train.py tunes)

    @property
    def max_abs_err(self) -> float | None:
        return self.verification.max_abs_err if self.verification else None


def _stem_name(model: nn.Module) -> str:
    stem = model.model[0]
    conv = next(m for m in stem.modules() if isinstance(m, nn.Conv2d))
    k = "x".join(map(str, conv.kernel_size))
    if type(stem).__name__ == "Focus":
        return f"Focus(space-to-depth + {k} conv)"
    return f"Conv({k}, stride {conv.stride[0]}, padding {conv.padding[0]})"


def _current_architecture(model: nn.Module, arch: LegacyArchitecture) -> LegacyArchitecture:
    """``arch`` updated to the live model: stem row (as the surgery's hook wrote it) and every torch leaf layer."""
    new = copy.deepcopy(arch)
    new.yaml["backbone"][0] = copy.deepcopy(model.yaml["backbone"][0])
    new.leaves = {
        path: module_spec(m)
        for path, m in model.named_modules()
        if path and not list(m.children()) and type(m).__module__.startswith("torch.nn")
    }
    return new


def convert_yolov5(
    src: str | os.PathLike | LegacyCheckpoint,
    to: str = "conv",
    measure: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> LegacyConversion:
    """Read, rebuild and convert a YOLOv5-repository checkpoint; nothing is written.

    Args:
        src: The ``.pt`` file, or its ``LegacyCheckpoint`` already read.
        to (str): ``"conv"`` (Focus -> one 6x6 stride-2 conv) or ``"focus"`` (keep, or make, a Focus stem).
        measure (bool): Compare converted and rebuilt original in float64 (``verification``).

    Raises:
        CheckpointError: Unreadable, hostile or unsupported file.
        ConversionError: The stem cannot be converted exactly.
    """
    if to not in ("conv", "focus"):
        raise ValueError(f"to={to!r}: a YOLOv5 checkpoint converts to 'conv' or 'focus'")
    ckpt = src if isinstance(src, LegacyCheckpoint) else read_yolov5_checkpoint(src)
    model, arch = rebuild(ckpt)
    stem_before = _stem_name(model)
    replaced, verification = _convert_stem(model, to, measure, tolerance)
    arch = _current_architecture(model, arch)
    result = LegacyConversion(ckpt, model, arch, stem_before, _stem_name(model), guess_release(ckpt), replaced)
    result.verification = verification
    if ckpt.model_key == "ema" and _is_yolov5_model(ckpt.content.get("model")):
        # a last.pt written during training: train.py fine-tunes ``model``, inference (attempt_load) uses ``ema``
        training, _ = rebuild(dataclasses.replace(ckpt, model_key="model"))
        training_check = _convert_stem(training, to, measure, tolerance)[1]
        if training_check is not None and (
            not training_check.passed or training_check.max_abs_err > verification.max_abs_err
        ):
            result.verification = training_check  # the worse of the two checks is the one reported
        result.training_model = training
    hyp = checkpoint_hyp(ckpt.metadata, ckpt.metadata.get("hyp"))
    if hyp:  # what training with Ultralytics reads (focus_surgery.yolov5.training)
        model.yaml[HYP_KEY] = {k: v for k, v in hyp.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    model.yaml[RELEASE_KEY] = exact_release(ckpt)  # the loss follows that release's rules (loss_rules)
    if result.training_model is not None:
        result.training_model.yaml = copy.deepcopy(model.yaml)
    return result


def _convert_stem(
    model: nn.Module, to: str, measure: bool, tolerance: float
) -> tuple[list[dict], VerificationReport | None]:
    """Plan, measure (float64, when ``measure``) and apply the stem conversion on ``model`` in place."""
    changes, skipped = plan(model, to, "stem")
    if skipped:
        raise ConversionError(f"{skipped[0].path}: {skipped[0].reason}")
    s = int(model.stride.max())  # a small non-square input every level divides: (2, 3, 2 * max_stride, 3 * max_stride)
    verification = check(model, changes, input_shape=(2, 3, 2 * s, 3 * s), tolerance=tolerance) if measure else None
    apply_changes(model, changes)  # its hook (sync_yaml) writes the stem's YAML row: the one place that does
    return [vars(c.record) for c in changes if c.record is not None], verification


def _metadata(conv: LegacyConversion, to: str) -> dict[str, Any]:
    return {
        "converted_by": "focus-surgery",
        "source": str(conv.ckpt.path),
        "source_format": "yolov5-repository checkpoint",
        "source_release": conv.release,
        "source_dtype": str(conv.ckpt.dtype).replace("torch.", ""),
        "to": to,
        "stem_before": conv.stem_before,
        "stem_after": conv.stem_after,
        "max_abs_err": conv.max_abs_err,
        "yolov5": conv.ckpt.metadata,
    }


def ultralytics_checkpoint(conv: LegacyConversion, to: str) -> dict[str, Any]:
    """The dict ``torch.save`` writes: Ultralytics' checkpoint layout, model in the source dtype.

    A last.pt's two models stay two: Ultralytics loads ``ema`` (as YOLOv5's attempt_load), training on YOLOv5's
    schedule takes ``model`` (as train.py; ``focus_surgery.yolov5.training``)."""
    import ultralytics

    def stored(module: nn.Module) -> nn.Module:
        module = copy.deepcopy(module)
        module = module.half() if conv.ckpt.dtype == torch.float16 else module
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    model = stored(conv.model)
    training = stored(conv.training_model) if conv.training_model is not None else None
    meta = conv.ckpt.metadata
    best = meta.get("best_fitness")
    best = best[0] if isinstance(best, list) and len(best) == 1 else best
    return {
        "date": datetime.now(timezone.utc).isoformat(),
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": meta.get("epoch", -1),
        "best_fitness": best if isinstance(best, (int, float)) or best is None else None,
        "model": training if training is not None else model,
        "ema": model if training is not None else None,
        "updates": None,
        "optimizer": None,
        "train_args": {"task": "detect", "imgsz": 640},
        "train_metrics": {},
        "train_results": {},
        "focus_surgery": _metadata(conv, to),
    }


def config_path(dst: str | os.PathLike) -> Path:
    """The JSON written beside a ``.safetensors`` output (``model.safetensors`` -> ``model.json``)."""
    return Path(dst).with_suffix(".json")


def _read_config(json_path: Path) -> Any:
    try:
        return json.loads(json_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{json_path}: unreadable JSON ({error})") from None


def save_conversion(conv: LegacyConversion, dst: str | os.PathLike, to: str) -> list[Path]:
    """Write ``dst`` (``.safetensors``: tensors + JSON; any other suffix: an Ultralytics checkpoint). Atomic.

    Returns:
        (list[Path]): The files written.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        content = ultralytics_checkpoint(conv, to)
        return [atomic_write(dst, lambda tmp: torch_save(content, tmp))]
    dtype = conv.ckpt.dtype if conv.ckpt.dtype.is_floating_point else torch.float32
    tensors = {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in conv.model.state_dict().items()
    }
    digest = tensors_digest(tensors)  # in both files: a pair from two different conversions is refused when read
    config = {
        "format": CONFIG_FORMAT,
        "tensors_sha256": digest,
        "dtype": str(dtype).replace("torch.", ""),
        "architecture": conv.arch.to_dict(),
        "metadata": _metadata(conv, to),
    }
    text = json.dumps(config, indent=1, default=str)
    json_dst = config_path(dst)
    if json_dst.resolve() == Path(conv.ckpt.path).resolve():
        raise CheckpointError(f"{json_dst}: would overwrite the input")
    if json_dst.exists() and not _is_our_config(json_dst):
        raise CheckpointError(
            f"{json_dst}: exists and was not written by focus-surgery; move it away or choose "
            "another output name (the architecture is written beside the .safetensors)"
        )
    metadata = {"format": CONFIG_FORMAT, "config": json_dst.name, "tensors_sha256": digest}
    return atomic_write_all(
        [  # both written in full first; then the tensors, then the JSON describing them
            (dst, lambda tmp: safetensors_save(tensors, tmp, metadata)),
            (json_dst, lambda tmp: Path(tmp).write_text(text)),
        ]
    )


def _is_our_config(path: Path) -> bool:
    """Whether ``path`` is an architecture JSON an earlier conversion wrote (safe to replace)."""
    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:  # never open a FIFO or a device: it could block
            return False
        return _read_config(path).get("format") == CONFIG_FORMAT
    except (OSError, CheckpointError, AttributeError):
        return False


def _check_pair(path: Path, json_path: Path, tensors: dict, stored: Any, described: Any) -> None:
    """Refuse a ``.safetensors`` + ``.json`` pair whose halves come from different conversions: both record the
    SHA-256 of the tensors they were written with (pairs written before that record neither, read as before)."""
    if stored is None and described is None:
        return
    actual = tensors_digest(tensors)
    if stored != actual or described != actual:
        raise CheckpointError(
            f"{path}: does not match {json_path.name} (the tensors' sha256 is {actual[:12]}..., the pair records "
            f"{str(stored)[:12]}... / {str(described)[:12]}...: written by two different conversions); convert again"
        )


def check_pair_digest(path: str | os.PathLike, tensors: dict, stored: Any) -> None:
    """``_check_pair`` for a pair read as a state dict (``inspect``, stem ``convert``), when there is a JSON beside.

    Raises:
        CheckpointError: The halves come from different conversions, or the JSON is unreadable.
    """
    path = Path(path)
    json_path = config_path(path)
    if not json_path.is_file():
        return  # a .safetensors alone: its stem converts without the architecture, as before
    config = _read_config(json_path)
    _check_pair(path, json_path, tensors, stored, config.get("tensors_sha256") if isinstance(config, dict) else None)


def load_yolov5_safetensors(path: str | os.PathLike) -> nn.Module:
    """Rebuild the Ultralytics model from a ``.safetensors`` written by ``save_conversion`` and its JSON; no pickle.

    Returns:
        (nn.Module): ``DetectionModel`` in float32, eval mode.
    """
    from safetensors.torch import load

    path = check_readable(path)
    json_path = config_path(path)
    if not json_path.is_file():
        raise CheckpointError(f"{path}: its architecture file {json_path.name} is missing")
    config = _read_config(json_path)
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise CheckpointError(f"{json_path}: not a focus-surgery YOLOv5 architecture file")
    try:
        data = path.read_bytes()  # bytes, not a path: file names need not be UTF-8
        tensors = load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        stored = (header.get("__metadata__") or {}).get("tensors_sha256")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: corrupt safetensors file ({str(error).splitlines()[0]})") from None
    _check_pair(path, json_path, tensors, stored, config.get("tensors_sha256"))
    try:
        arch = LegacyArchitecture.from_dict(config["architecture"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{json_path}: malformed architecture ({type(error).__name__}: {error})") from None
    model = build_model(arch, tensors, str(path))
    load_weights(model, tensors, str(path))
    model.yaml["backbone"][0] = config["architecture"]["yaml"]["backbone"][0]
    return model.eval()
