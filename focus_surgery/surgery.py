"""Module surgery: find Focus / space-to-depth stems and strided convs in any model, and replace them exactly.

``convert(model, to=...)`` plans every replacement on the untouched model, verifies the planned model in float64
on a copy, and only then swaps the modules in place. Replacements stay in the family of what they replace: the
conv block inside a Focus (Ultralytics ``Conv``, timm ``ConvNormAct``, YOLOv5's ``Conv``, ours) is kept, only its
``nn.Conv2d`` changes, so ``fuse()``, export and state-dict names keep working.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import stems
from .layers import Focus, FoldedSpaceToDepth, SPDConv, SpaceToDepth
from .orders import check_order
from .remap import conv_to_focus_weight, focus_to_conv_weight, s2d_to_strided_conv, strided_conv_to_s2d
from .errors import ConversionError, VerificationFailed
from .verify import DEFAULT_TOLERANCE, VerificationReport, VerifiedReport, verify as verify_models

TARGETS = ("conv", "focus", "s2d")
SCOPES = ("stem", "all")
_BLOCK_EXTRAS = {"bn", "act", "aa", "drop", "norm"}  # children a conv block may have besides `conv`
ROUTING_ATTRIBUTES = ("i", "f", "type", "np")  # Ultralytics' per-row routing attributes
MAX_KERNEL_GROWTH, MAX_GROWN_WEIGHT = 16, 1 << 22  # a space-to-depth kernel only zero-pads: refuse what is mostly zeros


VerificationError = VerificationFailed  # the old name: the converted model's outputs differ beyond the tolerance


# Conv2d subclasses with their own forward (timm's StdConv2d, Conv2dSame, ...) are never treated as plain convs.
# An integration teaches one with ``register_conv_type(cls, builder)``; ``builder(conv, to, order)`` returns the
# exact space-to-depth form and its description. Modules with a ``to_strided_conv()`` method (returning the same
# pair) fold themselves back for ``to="conv"``.
CONV_TYPES: dict[type, Callable[[nn.Conv2d, str, str], tuple[nn.Module, str]]] = {}


# Called with (model, replaced paths) after every applied conversion. Integrations register here (the core never
# imports a framework): the Ultralytics integration rewrites ``model.yaml`` so a model rebuilt from it matches.
POST_APPLY: list[Callable[[nn.Module, list[str]], Any]] = []


def register_post_apply(hook: Callable[[nn.Module, list[str]], Any]) -> None:
    """Run ``hook(model, paths)`` after each applied conversion (idempotent)."""
    if hook not in POST_APPLY:
        POST_APPLY.append(hook)


def register_conv_type(cls: type, builder: Callable[[nn.Conv2d, str, str], tuple[nn.Module, str]]) -> None:
    """Teach the surgery the exact space-to-depth form of a ``nn.Conv2d`` subclass (idempotent)."""
    CONV_TYPES[cls] = builder


def _refuse(problem: str) -> tuple[nn.Module, str]:
    raise ConversionError(problem)


def _folds_itself(module: nn.Module) -> bool:
    return callable(getattr(module, "to_strided_conv", None))


@dataclass
class Replacement:
    """One module replaced (or, for a dry run, that would be replaced)."""

    path: str
    old_form: str
    new_form: str
    old_type: str
    new_type: str
    old_weight_shape: list[int]
    new_weight_shape: list[int]
    block_size: int
    order: str


@dataclass
class Skipped:
    """A candidate module left unchanged, and why."""

    path: str
    reason: str


@dataclass
class ConversionReport(VerifiedReport):
    """What ``convert`` did: each replacement, each module left alone, and the measured error."""

    to: str
    scope: str
    replaced: list[Replacement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    verification: VerificationReport | None = None
    narrowed_inputs: list[str] = field(default_factory=list)  # input sizes the converted model no longer accepts

    def __str__(self) -> str:
        lines = [
            f"convert to={self.to!r} scope={self.scope!r}: {len(self.replaced)} replaced, {len(self.skipped)} left"
        ]
        for r in self.replaced:
            lines.append(
                f"  {r.path or '<root>'}: {r.old_form} -> {r.new_form}  "
                f"weight {tuple(r.old_weight_shape)} -> {tuple(r.new_weight_shape)}"
            )
        for s in self.skipped:
            lines.append(f"  {s.path or '<root>'}: left unchanged - {s.reason}")
        lines += [f"  note: {note}" for note in self.narrowed_inputs]
        if self.verification is not None:
            lines.append(f"  verify: {self.verification}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- recognition


def _type_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def is_conv_block(module: nn.Module) -> bool:
    """A conv + norm + activation block (Ultralytics ``Conv``, timm ``ConvNormAct``, YOLOv5 ``Conv``, ours)."""
    if type(module) is nn.Conv2d or isinstance(module, (Focus, SPDConv)):
        return False
    names = [name for name, _ in module.named_children()]
    return bool(names) and names[0] == "conv" and type(module.conv) is nn.Conv2d and set(names[1:]) <= _BLOCK_EXTRAS


def _conv_of(module: nn.Module) -> nn.Conv2d:
    return module if type(module) is nn.Conv2d else module.conv


def space_to_depth_params(module: nn.Module) -> tuple[int, str] | None:
    """(block size, order) if ``module`` is a parameter-free space-to-depth layer we know, else None."""
    if isinstance(module, SpaceToDepth):
        return module.block_size, module.order
    if isinstance(module, nn.PixelUnshuffle):
        return module.downscale_factor, "pixel_unshuffle"
    name = type(module).__name__
    if name in ("SpaceToDepth", "SpaceToDepthJit") and isinstance(getattr(module, "bs", None), int):
        return module.bs, "timm"  # timm.layers.space_to_depth
    if name == "SpaceToDepthModule" and hasattr(module, "op"):
        return space_to_depth_params(module.op) or (4, "timm")
    return None


def _focus_parts(module: nn.Module) -> tuple[int, str, nn.Module, tuple[int, int, int, int] | None] | None:
    """(block size, order, conv block, explicit pad) of a Focus-like module, else None."""
    if isinstance(module, (Focus, SPDConv)):
        pad = tuple(module.pad) if isinstance(module, SPDConv) and module.pad is not None else None
        return module.s2d.block_size, module.s2d.order, module.conv, pad
    names = [name for name, _ in module.named_children()]
    if type(module).__name__ == "Focus" and names == ["conv"] and is_conv_block(module.conv):
        # Ultralytics', YOLOv5's or YOLOX's Focus, found by name: the slicing is probed, never assumed
        return 2, "yolov5", module.conv, None
    return None


def focus_slicing_problem(module: nn.Module) -> tuple[int, str, str | None]:
    """(block size, order, problem) of a ``Focus`` found by name, read by running its slicing (``stems.probe``).

    ``problem`` is None when the slicing is a space-to-depth in a named order, else why it cannot be converted.
    """
    if isinstance(module, (Focus, SPDConv)):
        return module.s2d.block_size, module.s2d.order, None
    conv = _conv_of(module.conv)
    if conv.in_channels % 4:
        return 2, "yolov5", f"its conv reads {conv.in_channels} channels, not C*4"
    try:
        info = stems.slicing_of(module, conv.in_channels // 4)
    except stems.NotSpaceToDepth as error:
        return 2, "yolov5", f"its slicing is not a space-to-depth ({error})"
    if info.order is None:
        return info.block_size, "yolov5", f"its slicing is {info.describe()}: refused, not converted"
    return info.block_size, info.order, None


def probed_space_to_depth(module: nn.Module, block: nn.Module | None) -> tuple[int, str] | str | None:
    """(block size, order) of a weightless module of unknown type that feeds the conv ``block`` and computes a
    space-to-depth (``ReOrg``, ``Reorg``, ...), a refusal message for one in an unnamed order, else None."""
    if block is None or not (type(block) is nn.Conv2d or is_conv_block(block)):
        return None
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()) or list(module.children()):
        return None
    for bs in (2, 3, 4):
        channels, rest = divmod(_conv_of(block).in_channels, bs * bs)
        info = stems.recognize(module, channels) if channels and not rest else None
        if info is not None and info.block_size == bs:
            if info.order is None:
                return f"{type(module).__name__} computes {info.describe()}: refused, not converted"
            return info.block_size, info.order
    return None


def _check_conv(conv: nn.Conv2d, order: str | None) -> str | None:
    """Why ``conv`` has no exact space-to-depth counterpart in ``order``, or None if it has one."""
    if conv.dilation != (1, 1):
        return f"dilation {conv.dilation} != 1 has no exact space-to-depth form"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} is not zero padding"
    if isinstance(conv.padding, str):
        return f"string padding {conv.padding!r} is not supported"
    if conv.groups != 1 and order != "pixel_unshuffle":
        return f"groups={conv.groups} has an exact form only with order='pixel_unshuffle' (channels stay grouped)"
    s, kernel, padding = conv.stride[0], conv.kernel_size, conv.padding
    if s >= 2 and not isinstance(padding, str):
        taps = [math.ceil((k + (-p) % s) / s) * s for k, p in zip(kernel, padding)]
        growth = taps[0] * taps[1] / (kernel[0] * kernel[1])
        if growth > MAX_KERNEL_GROWTH and conv.weight.numel() * growth > MAX_GROWN_WEIGHT:
            return (
                f"stride {s} on a {kernel[0]}x{kernel[1]} kernel: the space-to-depth weight would be {growth:.0f}x "
                "larger, mostly zeros; left as a strided conv"
            )
    return None


# -------------------------------------------------------------------------------------------------- construction


def _new_conv2d(template: nn.Conv2d, weight: torch.Tensor, stride, padding) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with ``weight``, the template's bias, groups, dtype, device, mode and requires_grad."""
    groups = template.groups
    conv = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride,
        padding,
        groups=groups,
        bias=template.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    conv.weight = nn.Parameter(weight.detach().clone(), requires_grad=template.weight.requires_grad)
    if template.bias is not None:
        conv.bias = nn.Parameter(template.bias.detach().clone(), requires_grad=template.bias.requires_grad)
    return conv.train(template.training)


def _with_conv(block: nn.Module, conv: nn.Conv2d) -> nn.Module:
    """``conv`` itself for a bare conv, else a copy of the conv block whose ``conv`` is replaced."""
    if type(block) is nn.Conv2d:
        return conv
    memo = {id(block.conv): conv}  # do not copy the old conv only to throw it away
    new_block = copy.deepcopy(block, memo)
    new_block.conv = conv
    return new_block


def _carry_routing(old: nn.Module, new: nn.Module) -> nn.Module:
    """Keep Ultralytics' routing attributes (i, f, type, np) so the parsed model still runs and prints."""
    if all(hasattr(old, a) for a in ("i", "f")):
        new.i, new.f = old.i, old.f
        new.type = _type_name(new)
        new.np = sum(p.numel() for p in new.parameters())
    return new


def _ultralytics_focus_class(old: nn.Module) -> type[nn.Module] | None:
    """Ultralytics' own Focus, for a block from an Ultralytics model, so plain Ultralytics can load the result."""
    if not type(old).__module__.startswith("ultralytics."):
        return None
    try:
        from ultralytics.nn.modules import Focus as UltralyticsFocus
    except ImportError:  # pragma: no cover - ultralytics without Focus
        return None
    return UltralyticsFocus


def _to_space_to_depth(block: nn.Module, to: str, order: str) -> tuple[nn.Module, str]:
    """Exact space-to-depth form of a strided conv or conv block: a Focus where possible, else an SPDConv."""
    conv = _conv_of(block)
    stride = conv.stride[0]
    form = strided_conv_to_s2d(conv.weight.detach(), conv.stride, conv.padding, order)
    padding = form.symmetric_padding
    inner = _with_conv(block, _new_conv2d(conv, form.weight, 1, padding if padding is not None else 0))
    if to == "focus" and padding is not None and stride == 2 and order == "yolov5" and _ultralytics_focus_class(block):
        module = _ultralytics_focus_class(block).__new__(_ultralytics_focus_class(block))
        nn.Module.__init__(module)
        module.conv = inner
        new_form = "Focus (Ultralytics)"
    elif to == "focus" and padding is not None:
        module = Focus.__new__(Focus)
        nn.Module.__init__(module)
        module.s2d, module.conv = SpaceToDepth(stride, order), inner
        new_form = "Focus"
    else:
        module = SPDConv.from_conv(inner, stride, order, None if padding is not None else form.pad)
        new_form = "SPDConv"
    k = "x".join(map(str, form.weight.shape[2:]))
    return module.train(block.training), f"{new_form}(block_size={stride}, order={order}, k={k}, pad={form.pad})"


def space_to_depth_form(block: nn.Module, to: str, order: str) -> tuple[nn.Module, str]:
    """Exact space-to-depth form (module, description) of a plain strided ``nn.Conv2d`` or conv block.

    For ``register_conv_type`` builders whose conv has an exactly equivalent plain conv.
    """
    reason = _check_conv(_conv_of(block), order)
    if reason:
        raise ConversionError(reason)
    return _to_space_to_depth(block, to, order)


def _to_strided_conv(block_size: int, order: str, block: nn.Module, pad) -> tuple[nn.Module, str]:
    """Exact single strided conv (in the same conv block) for space-to-depth + ``block``."""
    conv = _conv_of(block)
    reason = _check_conv(conv, order)
    if reason:
        raise ConversionError(reason)
    if conv.stride[0] != conv.stride[1]:
        raise ConversionError(f"conv stride {conv.stride} differs per axis: one strided conv cannot express it")
    inner_stride = conv.stride[0]
    if pad is None:
        ph, pw = conv.padding
        pad = (pw, pw, ph, ph)
    elif conv.padding != (0, 0) or conv.stride != (1, 1):
        raise ConversionError("explicit pad together with conv padding or stride has no single-conv form")
    if inner_stride == 1:
        weight, padding = s2d_to_strided_conv(conv.weight.detach(), block_size, pad, order)
    elif pad[0] == pad[1] and pad[2] == pad[3] and conv.stride[0] == conv.stride[1]:
        weight = focus_to_conv_weight(conv.weight.detach(), block_size, order)
        padding = (block_size * pad[2], block_size * pad[0])
    else:
        raise ConversionError(f"conv stride {conv.stride} with asymmetric pad {pad} has no single-conv form")
    stride = block_size * inner_stride
    new_conv = _new_conv2d(conv, weight, stride, padding)
    k = "x".join(map(str, weight.shape[2:]))
    return _with_conv(block, new_conv), f"Conv({k}, stride={stride}, padding={padding})"


# --------------------------------------------------------------------------------------------------------- planning


@dataclass
class _Step:
    path: str
    new: nn.Module
    record: Replacement | None = None  # None: a helper step (e.g. the Identity left where a SpaceToDepth was)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def _record(path, old, new, old_form, new_form, bs, order) -> Replacement:
    old_shape, new_shape = list(_first_conv(old).weight.shape), list(_first_conv(new).weight.shape)
    return Replacement(path, old_form, new_form, _type_name(old), _type_name(new), old_shape, new_shape, bs, order)


def _feeds_only_next(sequence: nn.Sequential, index: int) -> bool:
    """True if child ``index``'s output goes only to child ``index + 1`` (always, unless Ultralytics routing)."""
    children = list(sequence.children())
    if not all(hasattr(m, "f") for m in children):
        return True
    if children[index + 1].f != -1:
        return False
    row = getattr(children[index], "i", index)
    for other in children[index + 2 :]:
        sources = other.f if isinstance(other.f, list) else [other.f]
        if row in sources:
            return False
    return True


def _folded_placeholder(s2d: nn.Module, block_size: int, order: str) -> nn.Module:
    """What stays where a space-to-depth layer is folded: an identity that can restore it (plain Identity in an
    Ultralytics model, whose YAML rows know only ``nn.Identity``)."""
    if hasattr(s2d, "f"):
        return nn.Identity()
    return FoldedSpaceToDepth(copy.deepcopy(s2d), block_size, order)


def _unfold_pair(placeholder: FoldedSpaceToDepth, block: nn.Module, order: str | None):
    """(space-to-depth layer, conv block, description) restoring a pair folded by ``to="conv"``, or None.

    Exact by the Focus identity (GUIDE section 1): a conv of kernel, stride and padding divisible by the block size
    is space-to-depth + a conv of kernel / bs, stride / bs, padding / bs.
    """
    conv, bs = _conv_of(block), placeholder.block_size
    sizes = (*conv.kernel_size, *conv.stride, *conv.padding)
    if (
        order not in (None, placeholder.order)
        or _check_conv(conv, placeholder.order)
        or any(v % bs for v in sizes)
        or conv.stride[0] != conv.stride[1]
    ):
        return None
    weight = conv_to_focus_weight(conv.weight.detach(), bs, placeholder.order)
    stride, padding = conv.stride[0] // bs, (conv.padding[0] // bs, conv.padding[1] // bs)
    inner = _with_conv(block, _new_conv2d(conv, weight, stride, padding))
    k = "x".join(map(str, weight.shape[2:]))
    s2d = placeholder.original().train(block.training)
    form = f"{type(s2d).__name__}(block_size={bs}, order={placeholder.order}) + Conv({k}, stride={stride}, "
    return s2d, inner.train(block.training), form + f"padding={padding})"


def _plan_unfold(before: tuple[str, nn.Module] | None, path: str, block: nn.Module, order, steps) -> bool:
    """Plan putting back a pair that ``to="conv"`` folded (placeholder ``before``, conv ``block``); True if planned."""
    if before is None or not isinstance(before[1], FoldedSpaceToDepth):
        return False
    unfolded = _unfold_pair(before[1], block, order) if type(block) is nn.Conv2d or is_conv_block(block) else None
    if unfolded is None:
        return False
    s2d, inner, new_form = unfolded
    conv, placeholder = _conv_of(block), before[1]
    k = "x".join(map(str, conv.kernel_size))
    old_form = f"{type(block).__name__}({k}, stride={conv.stride[0]}, padding={conv.padding})"
    record = _record(path, block, inner, old_form, new_form, placeholder.block_size, placeholder.order)
    steps += [_Step(before[0], s2d), _Step(path, inner, record)]
    return True


def _plan_to_conv(model: nn.Module, scope: str) -> tuple[list[_Step], list[Skipped]]:
    steps: list[_Step] = []
    skipped: list[Skipped] = []

    def visit(module: nn.Module, prefix: str) -> bool:
        """Plan inside ``module``; return True once the stem has been handled (scope='stem')."""
        children = list(module.named_children())
        index = 0
        while index < len(children):
            name, child = children[index]
            path = _join(prefix, name)
            parts = _focus_parts(child)
            s2d = space_to_depth_params(child)
            fold: Callable[[], tuple[nn.Module, str]] | None = None
            if parts is not None:
                bs, order, block, pad = parts
                bs, order, problem = focus_slicing_problem(child)
                fold = (
                    functools.partial(_to_strided_conv, bs, order, block, pad)
                    if problem is None
                    else functools.partial(_refuse, problem)
                )
            elif _folds_itself(child):  # an integration's space-to-depth layer (e.g. timm StdConv2d in s2d form)
                bs, order = getattr(child, "block_size", 0), getattr(child, "order", "")
                fold = child.to_strided_conv
            if fold is not None:
                try:
                    new, new_form = fold()
                    new = _carry_routing(child, new)
                    old_form = f"{type(child).__name__}(block_size={bs}, order={order})"
                    steps.append(_Step(path, new, _record(path, child, new, old_form, new_form, bs, order)))
                except (ValueError, ConversionError) as error:
                    skipped.append(Skipped(path, str(error)))
                if scope == "stem":
                    return True
            elif s2d is not None or isinstance(
                probed := probed_space_to_depth(child, children[index + 1][1] if index + 1 < len(children) else None),
                (tuple, str),
            ):
                nxt = children[index + 1] if index + 1 < len(children) else None
                block = nxt[1] if nxt is not None else None
                if s2d is None and isinstance(probed, str):
                    skipped.append(Skipped(path, probed))
                    if scope == "stem":
                        return True
                    index += 1
                    continue
                bs, order = s2d if s2d is not None else probed
                if block is None or not (type(block) is nn.Conv2d or is_conv_block(block)):
                    skipped.append(Skipped(path, "space-to-depth is not followed by a conv in the same container"))
                elif not isinstance(module, nn.Sequential) or not _feeds_only_next(module, index):
                    skipped.append(Skipped(path, "space-to-depth output is used by more than the next conv"))
                else:
                    next_path = _join(prefix, nxt[0])
                    try:
                        new, new_form = _to_strided_conv(bs, order, block, None)
                        new = _carry_routing(block, new)
                        old_form = f"{type(child).__name__}(block_size={bs}, order={order}) + {type(block).__name__}"
                        steps.append(_Step(path, _carry_routing(child, _folded_placeholder(child, bs, order))))
                        steps.append(
                            _Step(next_path, new, _record(next_path, block, new, old_form, new_form, bs, order))
                        )
                        index += 1
                    except (ValueError, ConversionError) as error:
                        skipped.append(Skipped(path, str(error)))
                if scope == "stem":
                    return True
            elif isinstance(child, nn.Conv2d) or is_conv_block(child):
                if scope == "stem":
                    return True  # the stem is a plain conv: nothing to fold
            elif visit(child, path):
                return True
            index += 1
        return False

    visit(model, "")
    return steps, skipped


def _plan_conv_subclass(conv, path, to, order, steps, skipped) -> None:
    """Plan a strided ``nn.Conv2d`` subclass through its registered builder, or say why it stays."""
    use_order = order or ("pixel_unshuffle" if conv.groups != 1 else "yolov5")
    builder = CONV_TYPES.get(type(conv))
    k = "x".join(map(str, conv.kernel_size))
    form = f"{type(conv).__name__}({k}, stride={conv.stride[0]}, padding={conv.padding})"
    try:
        if builder is None:
            raise ConversionError(
                f"{_type_name(conv)} is a Conv2d subclass with its own forward and no registered space-to-depth "
                "form (see focus_surgery.surgery.register_conv_type)"
            )
        if conv.stride[0] != conv.stride[1]:
            raise ConversionError(f"stride {conv.stride} differs per axis: space-to-depth needs one block size")
        new, new_form = builder(conv, to, use_order)
        steps.append(_Step(path, new, _record(path, conv, new, form, new_form, conv.stride[0], use_order)))
    except (ValueError, ConversionError) as error:
        skipped.append(Skipped(path, str(error)))


def _plan_to_s2d(model: nn.Module, to: str, scope: str, order: str | None) -> tuple[list[_Step], list[Skipped]]:
    steps: list[_Step] = []
    skipped: list[Skipped] = []

    def visit(module: nn.Module, prefix: str) -> bool:
        previous: tuple[str, nn.Module] | None = None
        for name, child in module.named_children():
            path = _join(prefix, name)
            before, previous = previous, (path, child)
            if isinstance(module, nn.Sequential) and _plan_unfold(before, path, child, order, steps):
                if scope == "stem":
                    return True
                continue
            if _focus_parts(child) is not None or space_to_depth_params(child) is not None or _folds_itself(child):
                if scope == "stem":
                    return True  # already in space-to-depth form
                continue
            if isinstance(child, nn.Conv2d) and type(child) is not nn.Conv2d:
                if child.stride[0] < 2 and child.stride[1] < 2:
                    if scope == "stem":
                        skipped.append(Skipped(path, f"stem conv has stride {child.stride}: nothing to rewrite"))
                        return True
                    continue
                _plan_conv_subclass(child, path, to, order, steps, skipped)
                if scope == "stem":
                    return True
                continue
            if type(child) is nn.Conv2d or is_conv_block(child):
                conv = _conv_of(child)
                stride = conv.stride
                if stride[0] < 2 and stride[1] < 2:
                    if scope == "stem":
                        skipped.append(Skipped(path, f"stem conv has stride {stride}: nothing to rewrite"))
                        return True
                    continue
                use_order = order or ("pixel_unshuffle" if conv.groups != 1 else "yolov5")
                reason = _check_conv(conv, use_order)
                if reason is None and stride[0] != stride[1]:
                    reason = f"stride {stride} differs per axis: space-to-depth needs one block size"
                if reason:
                    skipped.append(Skipped(path, reason))
                else:
                    new, new_form = _to_space_to_depth(child, to, use_order)
                    new = _carry_routing(child, new)
                    kernel = "x".join(map(str, conv.kernel_size))
                    old_form = f"{type(child).__name__}({kernel}, stride={stride[0]}, padding={conv.padding})"
                    steps.append(_Step(path, new, _record(path, child, new, old_form, new_form, stride[0], use_order)))
                if scope == "stem":
                    return True
                continue
            if visit(child, path):
                return True
        return False

    visit(model, "")
    return steps, skipped


def plan(model: nn.Module, to: str = "conv", scope: str = "stem", order: str | None = None):
    """Plan a conversion without changing ``model``: (steps, skipped). Used by ``convert`` and ``inspect``."""
    if to not in TARGETS:
        raise ValueError(f"unknown target to={to!r}: use one of {', '.join(TARGETS)}")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope={scope!r}: use one of {', '.join(SCOPES)}")
    if order is not None:
        check_order(order)
    root_is_stem = _focus_parts(model) is not None or type(model) is nn.Conv2d or is_conv_block(model)
    if root_is_stem:  # a module cannot replace itself in place
        return [], [Skipped("", f"the model itself is a {type(model).__name__}: wrap it, e.g. nn.Sequential(model)")]
    with torch.no_grad():
        if to == "conv":
            return _plan_to_conv(model, scope)
        return _plan_to_s2d(model, to, scope, order)


def input_multiple(module: nn.Module) -> int:
    """What ``module``'s input height and width must be multiples of (1: any size), from its space-to-depth layers.

    A module whose ``accepts_any_input_size`` is true pads its input to whole blocks itself (timm's SAME convs).
    """
    if getattr(module, "accepts_any_input_size", False):
        return 1
    multiple = 1
    for sub in module.modules():
        params = space_to_depth_params(sub)
        if params is None and not isinstance(sub, (Focus, SPDConv)):  # ours hold a SpaceToDepth, seen on its own
            params = _focus_parts(sub)  # Ultralytics' / YOLOv5's Focus slices by 2
        if params is not None:
            multiple = math.lcm(multiple, params[0])
    return multiple


def _narrowed_inputs(model: nn.Module, steps: list[_Step], scope: str) -> list[str]:
    """A note per replacement that accepts fewer input sizes than the module it replaces, naming the sizes."""
    notes = []
    for step in steps:  # helper steps too: a restored space-to-depth layer narrows on its own
        old, new = input_multiple(model.get_submodule(step.path)), input_multiple(step.new)
        if new % old or new == old:
            continue
        was = "any height and width" if old == 1 else f"multiples of {old}"
        what = "the converted model accepts only images" if scope == "stem" else "accepts only inputs"
        notes.append(f"{step.path}: {what} with height and width divisible by {new} (the original accepted {was})")
    return notes


def _apply(model: nn.Module, steps: list[_Step]) -> None:
    for step in steps:
        parent_path, _, name = step.path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, step.new)


def convert(
    model: nn.Module,
    to: str = "conv",
    scope: str = "stem",
    verify: bool = True,
    order: str | None = None,
    inputs: torch.Tensor | tuple | None = None,
    input_shape: tuple[int, ...] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    strict: bool = False,
) -> ConversionReport:
    """Replace Focus / space-to-depth stems or strided convs in ``model``, in place, exactly.

    Args:
        model (nn.Module): Any model; changed in place only if the whole conversion succeeds.
        to (str): ``"conv"`` (space-to-depth forms -> one strided conv), ``"focus"`` (strided conv -> Focus, or an
            SPDConv where the padding needs it) or ``"s2d"`` (strided conv -> SPDConv).
        scope (str): ``"stem"`` (the first conv the input meets) or ``"all"``.
        verify (bool): Compare the model before and after on float64 copies; raise and change nothing if the
            error is above ``tolerance``.
        order (str | None): Channel order of new space-to-depth layers (``yolov5`` when None, ``pixel_unshuffle``
            for grouped convs).
        inputs, input_shape: Inputs for the verification (random of an inferred valid shape by default).
        tolerance (float): Verification tolerance relative to the output scale.
        strict (bool): Raise ``ConversionError`` instead of reporting modules that cannot be converted.

    Returns:
        (ConversionReport): Each replacement (path, old and new form, weight shapes), what was left and why, and
        the measured error.
    """
    steps, skipped = plan(model, to, scope, order)
    report = ConversionReport(to, scope, [s.record for s in steps if s.record is not None], skipped)
    report.narrowed_inputs = _narrowed_inputs(model, steps, scope)
    if strict and skipped:
        raise ConversionError(f"{skipped[0].path}: {skipped[0].reason}")
    if not steps:
        return report
    if verify:
        candidate = copy.deepcopy(model)
        _apply(candidate, [_Step(s.path, copy.deepcopy(s.new)) for s in steps])
        try:
            report.verification = verify_models(model, candidate, inputs, input_shape, tolerance=tolerance)
        except ValueError as error:  # e.g. an input size the new space-to-depth block does not divide
            paths = ", ".join(r.path or "<root>" for r in report.replaced)
            raise ConversionError(f"{paths}: {error}; model left unchanged") from error
        if not report.verification.passed:
            raise VerificationError(f"verification failed, model left unchanged: {report.verification}", report)
    _apply(model, steps)
    for hook in POST_APPLY:  # e.g. the Ultralytics integration's sync_yaml: model.yaml follows the surgery
        hook(model, [s.path for s in steps])
    return report


def iter_stems(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Describe each convertible stem of ``model`` (both directions), for ``inspect``."""
    for to in ("conv", "focus"):
        steps, skipped = plan(model, to, "stem")
        for step in steps:
            if step.record is not None:
                yield {"direction": to, **asdict(step.record)}
        for skip in skipped:
            yield {"direction": to, "path": skip.path, "skipped": skip.reason}
