"""A state dict's stem geometry from the file's own evidence, in order of precedence: the architecture it names (timm
``arch`` / ``args.model``, or an mmengine config's backbone; a contradicting option is refused), its key layout
(``state_dict.find_stem``), else a conv's channel count (which says the block size, not the order: ``--order``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConversionError
from ..state_dict import StemKeys, find_stem, stem_at
from .base import ConvertOptions

WRAPPER_KEYS = ("state_dict", "model", "ema", "model_ema", "module", "state_dict_ema", "ema_state_dict")
CHANNEL_BLOCK_SIZES = (3, 4, 8)  # block sizes a conv's channel count is read as (2 is the key layout's default)
ORDERS_HINT = "timm (TResNet, TensorFlow space_to_depth), yolov5 (Focus, ReOrg) or pixel_unshuffle"
SHOWN_ARCH_CHARS = 80  # of an architecture name a message shows: a hostile file's name must not crowd out the fix
# mmengine config backbones (mmdet / mmyolo registry names, scope prefix dropped) whose stem is mmdet's
# ``csp_darknet.Focus``: cat(top-left, bottom-left, top-right, bottom-right) of 2x2 phases, i.e. YOLOv5's order
FOCUS_BACKBONES = {"CSPDarknet": (2, "yolov5"), "YOLOXCSPDarknet": (2, "yolov5")}
WRAPPED = ("", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.")  # DDP / torch.compile prefixes
_BACKBONE = re.compile(r"\bbackbone\s*=\s*dict\(")
# inside it: its own ``type=`` (at depth 1, in any key order), brackets, and strings (whose brackets do not count)
_TOKENS = re.compile(r"\btype\s*=\s*['\"]([\w.]{1,200})['\"]|[()\[\]{}]|'[^'\n]*'|\"[^\"\n]*\"")
MAX_CONFIG_CHARS = 1 << 20  # of a config text searched: a config is a few KB; a hostile one is not scanned whole


def shown_arch(arch: str) -> str:
    """``arch`` for a message: quoted with control characters escaped (``repr``), at most ``SHOWN_ARCH_CHARS`` long."""
    return repr(arch if len(arch) <= SHOWN_ARCH_CHARS else arch[:SHOWN_ARCH_CHARS] + "...")


def tensors(mapping: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in mapping.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def file_arch(content: Any) -> str | None:
    """The architecture a checkpoint names: timm ``train.py``'s ``arch`` (or ``args.model``), else None."""
    arch = content.get("arch") if isinstance(content, dict) else None
    args = content.get("args") if isinstance(content, dict) else None
    if not isinstance(arch, str) and isinstance(args, dict):  # the loader reads argparse.Namespace as a dict
        arch = args.get("model")
    return arch if isinstance(arch, str) and arch else None


@dataclass
class Evidence:
    """Where a state dict's stem is and how it computes."""

    places: list[str | None]  # the state dicts holding the stem: None for the top level, else wrapper keys
    stems: dict  # place -> StemKeys of the stem there
    block_size: int
    order: str
    said_by: str  # where the geometry comes from, for the report ("arch 'tresnet_m' (timm: ...)")
    from_file: bool = False  # the file fixed the geometry (its architecture), not assumed


class StemTensors(dict):
    """A state dict's tensors, and where its stem is when the file said so (for ``verify``); ``copies``: place ->
    ``StemTensors`` of every other state dict of the file holding the stem (timm's ``state_dict_ema``)."""

    stem: StemKeys | None = None
    block_size: int = 2
    order: str = "yolov5"
    copies: dict = {}  # replaced per instance, never mutated


def config_backbone(content: Any) -> str | None:
    """The backbone type an mmengine checkpoint's config names (``meta["cfg"]``, as ``Runner`` saves its
    ``pretty_text``: ``backbone=dict(type='...', ...)``), without its registry scope (``mmdet.``); else None."""
    meta = content.get("meta") if isinstance(content, dict) else None
    cfg = meta.get("cfg") if isinstance(meta, dict) else None
    start = _BACKBONE.search(cfg, 0, MAX_CONFIG_CHARS) if isinstance(cfg, str) else None
    if start is None:
        return None
    depth = 1
    for token in _TOKENS.finditer(cfg, start.end(), MAX_CONFIG_CHARS):
        text = token.group(0)
        if token.group(1) is not None and depth == 1:
            return token.group(1).rpartition(".")[2]
        depth += (text in "([{") - (text in ")]}") if len(text) == 1 else 0
        if depth == 0:
            return None
    return None


def said_stems(a: dict, b: dict) -> tuple[StemKeys, StemKeys] | None:
    """The stems of two ``StemTensors`` whose files named the same weightless stem geometry, else None."""
    stems = [getattr(x, "stem", None) for x in (a, b)]
    if None in stems or not all(s.weightless for s in stems) or stems[0].weight_key != stems[1].weight_key:
        return None
    return stems[0], stems[1]


def _in_places(content: dict, find) -> tuple[list[str | None], dict]:
    """The places whose tensors ``find`` answers a stem for: the top level first, then the wrappers."""
    if find(tensors(content)) is not None:
        return [None], {None: find(tensors(content))}
    places = [k for k in WRAPPER_KEYS if isinstance(content.get(k), dict) and find(tensors(content[k])) is not None]
    return places, {p: find(tensors(content[p])) for p in places}


def _refuse_contradiction(path: Any, options: ConvertOptions, block_size: int, order: str, said_by: str) -> None:
    for flag, value, fixed in (("block-size", options.block_size, block_size), ("order", options.order, order)):
        if flag.replace("-", "_") in options.stated and value != fixed:
            raise ConversionError(
                f"{path}: --{flag} {value} contradicts the file, which names its {said_by}: drop --{flag}"
            )


def resolve(path: Any, content: Any, options: ConvertOptions) -> Evidence | None:
    """The stem of a state-dict checkpoint and its geometry, from the file's evidence first (see the module); None
    when no stem is found at all.

    Raises:
        ConversionError: A stated option contradicts the architecture the file names; the file names a timm
            architecture whose stem conv it does not hold; or the order cannot be known and ``--order`` was not given.
    """
    if not isinstance(content, dict):
        return None
    arch = file_arch(content)
    found = None
    if arch is not None:
        from ..integrations.timm_arch import arch_stem

        found = arch_stem(arch)
    if found is not None:
        said_by = found.describe()
        _refuse_contradiction(path, options, found.block_size, found.order, said_by)
        places, stems = _in_places(content, lambda sd: _prefixed_stem(sd, found))
        if not places:
            raise ConversionError(
                f"{path}: the file names {said_by}, but holds no stem conv {found.weight_key!r} of that model "
                f"(looked at the top level and under {', '.join(WRAPPER_KEYS)}): not a checkpoint of that architecture"
            )
        return Evidence(places, stems, found.block_size, found.order, said_by, from_file=True)
    backbone = config_backbone(content)
    if backbone in FOCUS_BACKBONES:
        block_size, order = FOCUS_BACKBONES[backbone]
        said_by = f"mmengine config's backbone {backbone!r} (mmdet's Focus: space-to-depth({block_size}, {order}))"
        _refuse_contradiction(path, options, block_size, order, said_by)
        places, stems = _in_places(content, lambda sd: find_stem(sd, block_size=block_size))
        if places:
            return Evidence(places, stems, block_size, order, said_by, from_file=True)
    block_size = options.block_size
    places, stems = _in_places(content, lambda sd: find_stem(sd, block_size=block_size))
    if places:
        stated = [f"--{k.replace('_', '-')}" for k in options.stated]
        said_by = f"{' and '.join(stated)} as given" if stated else "the defaults (block size 2, order yolov5)"
        return Evidence(places, stems, block_size, options.order, said_by)
    if "block_size" in options.stated:
        return None
    for bs in CHANNEL_BLOCK_SIZES:  # a weightless space-to-depth of another block size, told by the channel count
        places, stems = _in_places(content, lambda sd: _weightless_stem(sd, bs))
        if not places:
            continue
        stem = stems[places[0]]
        if "order" not in options.stated:
            named = "it names no timm arch"
            if arch is not None:
                named = f"it names arch {shown_arch(arch)}, which the installed timm does not know as a space-to-depth "
                named += "model"
            raise ConversionError(
                f"{path}: the stem conv {stem.weight_key!r} reads {stem.shape[1]} = 3 x {bs} x {bs} channels, a "
                f"space-to-depth of block size {bs} whose channel order the file does not say ({named}): "
                f"give --order: {ORDERS_HINT}"
            )
        return Evidence(places, stems, bs, options.order, f"the channel count (block size {bs}) and --order as given")
    return None


def _prefixed_stem(state_dict: dict, found: Any) -> StemKeys | None:
    """The architecture's stem conv, under timm's key or a DDP / ``torch.compile`` wrapper's (``module.``), which
    timm's ``clean_state_dict`` strips when it loads."""
    stems = (stem_at(state_dict, prefix + found.weight_key, found.kernel, found.block_size) for prefix in WRAPPED)
    return next((stem for stem in stems if stem is not None), None)


def _weightless_stem(state_dict: dict, block_size: int) -> StemKeys | None:
    """A Focus or ReOrg layout at ``block_size`` (a conv stem is not told apart by its channel count)."""
    stem = find_stem(state_dict, block_size=block_size)
    return stem if stem is not None and stem.form in ("focus", "reorg") else None
