"""YOLOR main-branch (darknet ``.cfg``) checkpoints: ``{"epoch", "model": Darknet state dict, "optimizer", ...}``.

Darknet state dicts name layers ``module_list.<i>.Conv2d.weight`` / ``module_list.<i>.BatchNorm2d.*``. A ``[reorg]``
row has no tensors, so the stem is the first conv, ``module_list.<j>``, when it reads ``C*4`` channels and rows
``0..j-1`` hold nothing (the ``[reorg]``). YOLOR's darknet conv pads ``size // 2`` (``pad=1``), which a 6x6 kernel
cannot express with padding 2: the converted weight gets one zero row and column in front (7x7, padding 3, stride 2),
exactly the same conv. In the ``.cfg`` (``cfg_after_conversion``): ``[reorg]`` -> ``[silence]`` (identity; keeps
every layer index that routes refer to) and the conv -> ``size=7 stride=2 pad=1``. Keys, optimizer (stem momentum
remapped the same way), epoch and numpy metadata are kept.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConversionError
from ..remap import focus_to_conv_weight
from ..report import ConvertReport, bounded
from .base import ConvertOptions, Source
from .compare import compare_state_dicts, stem_check
from .copies import refuse_unconverted
from .loading import Loaded
from .plain import PlainStateDictSource, remap_optimizer_state, tensors

CFG_CHANGE = "in the .cfg: [reorg] -> [silence]; its [convolutional] size=3 stride=1 pad=1 -> size=7 stride=2 pad=1"


def darknet_stem(sd: dict[str, torch.Tensor], channels: int = 3, block_size: int = 2) -> str | None:
    """Key of the stem conv weight (a conv reading C*bs*bs channels after rows without tensors), else None."""
    key = next((k for k, v in sd.items() if k.endswith(".Conv2d.weight") and v.ndim == 4), None)
    if key is None or sd[key].shape[1] != channels * block_size**2 or sd[key].shape[2] % 2 == 0:
        return None
    match = re.fullmatch(r"module_list\.(\d+)\.Conv2d\.weight", key)
    return key if match and int(match.group(1)) > 0 else None


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
    if not conv.startswith("[convolutional]") or (fields.get("size"), fields.get("stride"), fields.get("pad")) != (
        "3",
        "1",
        "1",
    ):
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

    def state_dict(self, loaded: Loaded) -> dict:
        return tensors(loaded.content["model"])

    def compare_tensors(self, a: dict, b: dict) -> dict[str, Any]:
        key = darknet_stem(a)
        if key is not None and key in b and b[key].shape != a[key].shape:
            a = {**a, key: stem_weight(a[key])}
            result = compare_state_dicts(a, b)
            result["compared"] = f"state dicts: the stem remapped ({key}, [reorg] + conv -> 7x7/2), then every tensor"
            return result
        return compare_state_dicts(a, b)

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        sd = self.state_dict(loaded)
        key = darknet_stem(sd)
        stems = (
            [{"weight_key": key, "shape": list(sd[key].shape), "form": "reorg", "converts_to": "conv"}] if key else []
        )
        info = {
            "path": str(loaded.path),
            "kind": "darknet",
            "source": self.name,
            "tensors": len(sd),
            "stems": stems,
            "epoch": bounded(loaded.content.get("epoch")),
        }
        info["lines"] = [f"{loaded.path}: {self.description}, {len(sd)} tensors, epoch {info['epoch']}"] + (
            [f"  stem {key}: [reorg] + conv {list(sd[key].shape)} (convert --to conv; then {CFG_CHANGE})"]
            if key
            else ["  no [reorg] + conv stem found"]
        )
        return info

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        before = self.state_dict(loaded)
        key = darknet_stem(before, block_size=options.block_size)
        if key is None:
            raise ConversionError(f"{loaded.path}: no [reorg] + conv stem (first Conv2d does not read 12 channels)")
        old = before[key]
        model = dict(loaded.content["model"])
        model[key] = stem_weight(old, options.block_size, options.order)
        content = {**loaded.content, "model": type(loaded.content["model"])(model)}
        fields: dict[str, Any] = {
            "kind": "darknet",
            "stem": key,
            "weight": [list(old.shape), list(model[key].shape)],
            "cfg": CFG_CHANGE,
            "assumes": "the tensor-less rows before the stem conv are YOLOR's [reorg] "
            "(space-to-depth(2, yolov5 order)); the conv pads size // 2 (pad=1)",
        }
        if isinstance(content.get("optimizer"), dict):
            content["optimizer"] = copy.deepcopy(content["optimizer"])
            remap = lambda w: stem_weight(w, options.block_size, options.order)  # noqa: E731 - the weight's own map
            fields["optimizer"] = remap_optimizer_state(content["optimizer"], old.shape, remap)
        refuse_unconverted(content, old.shape, [content["model"]])
        report = ConvertReport(str(loaded.path), self.name, "conv", fields=fields)
        report.write = lambda dst: PlainStateDictSource.write(content, "model", dst, "conv", loaded)
        if options.verify:
            check = _check(before, model, key, options)
            fields["verification"], report.max_abs_err = check, check["stem"]["max_abs_err"]
            report.problem = None if check["passed"] else check["problem"]
        return report


def _check(before: dict, after: dict, key: str, options: ConvertOptions) -> dict[str, Any]:
    """The stem conv before (space-to-depth + k x k, padding k//2) and after (7x7 / 2, padding 3) in float64, and
    every other tensor bit for bit."""
    from torch import nn

    from ..layers import SpaceToDepth
    from ..verify import verify

    w_old, w_new = before[key].double(), after[key].double()
    old = nn.Sequential(
        SpaceToDepth(options.block_size, options.order),
        nn.Conv2d(w_old.shape[1], w_old.shape[0], w_old.shape[2], 1, w_old.shape[2] // 2, bias=False),
    )
    new = nn.Conv2d(w_new.shape[1], w_new.shape[0], w_new.shape[2], 2, w_new.shape[2] // 2, bias=False)
    old[1].weight.data, new.weight.data = w_old, w_new
    stem = verify(old, new, input_shape=(2, w_new.shape[1], 32, 48))
    rest = compare_state_dicts(
        {k: v for k, v in before.items() if k != key},
        {k: v for k, v in tensors(after).items() if k != key},
        tolerance=0.0,
    )
    if before[key].dtype != after[key].dtype:  # the float64 run above cannot see a dtype change of the stem
        problem = f"{key} is {before[key].dtype} vs {after[key].dtype}: the dtype changed"
        rest = {**rest, "passed": False, "problem": problem}
    compared = "the stem conv before and after in float64 (darknet padding size//2), the model's code not run"
    return stem_check(stem.to_dict(), [stem], rest, compared)
