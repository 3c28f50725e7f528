"""YOLOR main-branch (darknet ``.cfg``) checkpoints: ``{"epoch", "model": state dict, "optimizer", ...}`` whose stem
is ``[reorg]`` (no tensors) + the first conv ``module_list.<j>``, reading ``C*4`` channels. Darknet pads ``size // 2``,
so the converted 6x6 weight gets one zero row and column in front (7x7, padding 3, stride 2): exactly the same conv."""

from __future__ import annotations

import copy
import re
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConversionError
from ..layers import SpaceToDepth
from ..remap import focus_to_conv_weight
from ..report import ConvertReport, bounded
from ..verify import DEFAULT_TOLERANCE
from .base import ConvertOptions, Source, tensors_only
from .compare import compare_state_dicts
from .copies import refuse_unconverted
from .loading import Loaded
from .plain import PlainStateDictSource, remap_optimizer_state, tensors

CFG_CHANGE = "in the .cfg: [reorg] -> [silence]; its [convolutional] size=3 stride=1 pad=1 -> size=7 stride=2 pad=1"


def _first_conv(sd: dict[str, torch.Tensor], fits: Callable[[torch.Size], bool]) -> str | None:
    """Key of the first conv weight when ``fits(its shape)`` and rows without tensors come before it, else None."""
    key = next((k for k, v in sd.items() if k.endswith(".Conv2d.weight") and v.ndim == 4), None)
    if key is None or not fits(sd[key].shape):
        return None
    match = re.fullmatch(r"module_list\.(\d+)\.Conv2d\.weight", key)
    return key if match and int(match.group(1)) > 0 else None


def darknet_stem(sd: dict[str, torch.Tensor], channels: int = 3, block_size: int = 2) -> str | None:
    """Key of the stem conv weight (an odd kernel reading C*bs*bs channels after rows without tensors), else None."""
    return _first_conv(sd, lambda shape: shape[1] == channels * block_size**2 and shape[2] % 2 == 1)


def converted_stem(sd: dict[str, torch.Tensor], channels: int = 3, block_size: int = 2) -> str | None:
    """Key of a stem ``convert`` wrote: the first conv, after rows without tensors, reads ``channels`` and has the
    odd kernel ``bs * k + 1`` of ``stem_weight`` (7x7 for YOLOR's 3x3); else None."""
    return _first_conv(sd, lambda shape: shape[1] == channels and shape[2] % 2 == 1 and shape[2] >= 2 * block_size)


def stem_weight(weight: torch.Tensor, block_size: int = 2, order: str = "yolov5") -> torch.Tensor:
    """(O, C*4, k, k) -> (O, C, 2k+1, 2k+1): the 2k x 2k strided kernel with one zero row and column in front."""
    return F.pad(focus_to_conv_weight(weight, block_size, order), (1, 0, 1, 0))


def cfg_after_conversion(text: str) -> str:
    """The ``.cfg`` text with its first ``[reorg]`` -> ``[silence]`` and the next conv -> ``size=7 stride=2 pad=1``.

    Raises:
        ValueError: No ``[reorg]`` followed by a ``[convolutional]`` with size=3, stride=1, pad=1.
    """
    sections = re.split(r"(?m)^(?=\[)", text)
    index = next((i for i, s in enumerate(sections) if s.strip().startswith("[reorg]")), None)
    conv = sections[index + 1] if index is not None and index + 1 < len(sections) else ""
    fields = dict(re.findall(r"(?m)^\s*(\w+)\s*=\s*(\S+)", conv))
    if not conv.startswith("[convolutional]") or [fields.get(k) for k in ("size", "stride", "pad")] != ["3", "1", "1"]:
        raise ValueError("no [reorg] followed by a [convolutional] with size=3, stride=1, pad=1")
    sections[index] = sections[index].replace("[reorg]", "[silence]", 1)
    conv = re.sub(r"(?m)^(\s*size\s*=\s*)3\b", r"\g<1>7", conv, count=1)
    sections[index + 1] = re.sub(r"(?m)^(\s*stride\s*=\s*)1\b", r"\g<1>2", conv, count=1)
    return "".join(sections)


class DarknetSource(Source):
    name = "darknet"
    description = "YOLOR main-branch darknet checkpoint (module_list.N.Conv2d.weight, [reorg] stem)"
    specificity = 10  # a plain state dict under 'model' with darknet's key layout
    outputs = PlainStateDictSource.outputs
    uses = ("block_size", "order")

    def claims(self, loaded: Loaded) -> bool:
        content = loaded.content
        if not (isinstance(content, dict) and not loaded.names and isinstance(content.get("model"), dict)):
            return False
        return any(isinstance(k, str) and k.startswith("module_list.") for k in content["model"])

    def state_dict(self, loaded: Loaded, block_size: int = 2, order: str = "yolov5") -> dict:
        return tensors(loaded.content["model"])

    def geometry_from_file(self, loaded: Loaded, options: ConvertOptions) -> bool:
        return (options.block_size, options.order) == (2, "yolov5")  # YOLOR's [reorg]; another one is assumed

    def compare_tensors(
        self, a: dict, b: dict, block_size: int = 2, order: str = "yolov5", tolerance: float = DEFAULT_TOLERANCE
    ) -> dict[str, Any]:
        key = darknet_stem(a, block_size=block_size)
        if key is not None and key in b and b[key].shape != a[key].shape:
            a = {**a, key: stem_weight(a[key], block_size, order)}
            result = compare_state_dicts(a, b, tolerance=tolerance)
            result["compared"] = f"state dicts: the stem remapped ({key}, [reorg] + conv -> 7x7/2), then every tensor"
            return result
        return compare_state_dicts(a, b, block_size, order, tolerance)

    def inspect(self, loaded: Loaded, block_size: int = 2, order: str = "yolov5") -> dict[str, Any]:
        sd = self.state_dict(loaded)
        key = darknet_stem(sd, block_size=block_size)
        done = converted_stem(sd, block_size=block_size) if not key else None
        shape = list(sd[key].shape) if key else None
        stems = [{"weight_key": key, "shape": shape, "form": "reorg", "converts_to": "conv"}] if key else []
        info = {"path": str(loaded.path), "kind": "darknet", "source": self.name, "tensors": len(sd)}
        info.update(stems=stems, epoch=bounded(loaded.content.get("epoch")))
        line = "  no [reorg] + conv stem found"
        if key:
            line = f"  stem {key}: [reorg] + conv {shape} (convert --to conv; then {CFG_CHANGE})"
        elif done:
            info["converted_stem"] = done
            line = (
                f"  already converted: {done} is the {list(sd[done].shape)} stride-2 conv that convert writes in "
                "place of [reorg] + conv (nothing to do)"
            )
        info["lines"] = [f"{loaded.path}: {self.description}, {len(sd)} tensors, epoch {info['epoch']}", line]
        return info

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        before = self.state_dict(loaded)
        key = darknet_stem(before, block_size=options.block_size)
        done = converted_stem(before, block_size=options.block_size) if key is None else None
        if done:
            raise ConversionError(
                f"{loaded.path}: already converted ({done} is the strided conv convert writes); nothing to do"
            )
        if key is None:
            raise ConversionError(f"{loaded.path}: no [reorg] + conv stem (first Conv2d does not read 12 channels)")
        old = before[key]
        remap = lambda w: stem_weight(w, options.block_size, options.order)  # noqa: E731 - the weight's own map
        model = {**loaded.content["model"], key: remap(old)}
        content = {**loaded.content, "model": type(loaded.content["model"])(model)}
        fields: dict[str, Any] = {"kind": "darknet", "stem": key, "weight": [list(old.shape), list(model[key].shape)]}
        fields["cfg"] = CFG_CHANGE
        fields["assumes"] = (
            "the tensor-less rows before the stem conv are YOLOR's [reorg] "
            "(space-to-depth(2, yolov5 order)); the conv pads size // 2 (pad=1)"
        )
        if isinstance(content.get("optimizer"), dict):
            content["optimizer"] = copy.deepcopy(content["optimizer"])
            fields["optimizer"] = remap_optimizer_state(content["optimizer"], old.shape, remap)
        refuse_unconverted(content, old.shape, [content["model"]])
        report = ConvertReport(str(loaded.path), self.name, "conv", fields=fields)
        report.write = lambda dst: PlainStateDictSource.write(content, "model", dst, "conv", loaded)
        return report

    def stems(self, loaded: Loaded, options: ConvertOptions) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """The stem conv as it computes: space-to-depth + k x k conv (padding k // 2) before the conversion, the
        (bs*k+1)-square conv of stride bs (padding (bs*k+1) // 2, darknet's size // 2) after it; its BatchNorm and
        every other tensor are compared as stored."""
        return _stems(self.state_dict(loaded), options)

    def written_stems(
        self, loaded: Loaded, written: Loaded, reader: Source, options: ConvertOptions
    ) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """A tensors-only output (``.safetensors``: the state dict under ``model``, which a plain state dict's reader
        finds no darknet stem in): its stem found and run as ``stems`` does, from the tensors read back."""
        if not tensors_only(written):
            return super().written_stems(loaded, written, reader, options)
        return _stems(tensors(written.content), options)


def _stems(sd: dict[str, torch.Tensor], options: ConvertOptions) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """``DarknetSource.stems`` of the darknet state dict ``sd``."""
    bs = options.block_size
    key = darknet_stem(sd, block_size=bs)
    converted = converted_stem(sd, block_size=bs) if key is None else None
    if key is None and converted is None:
        return []
    w = sd[key or converted].double()
    conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], 1 if key else bs, w.shape[2] // 2, bias=False).double()
    conv.weight.data = w
    if key is None:
        return [(converted, conv.eval(), (2, w.shape[1], 16 * bs, 24 * bs))]
    stem = nn.Sequential(SpaceToDepth(bs, options.order), conv).eval()
    return [(key, stem, (2, w.shape[1] // bs**2, 16 * bs, 24 * bs))]
