"""Exact forms of a stem site, built from the weight maps of ``remap.py`` and the layers of ``layers.py``.

``changes(site, to, order)`` is the one place a site becomes modules: a space-to-depth form folded into one strided
conv (``to="conv"``), a strided conv made a Focus / SPDConv (``to="focus"`` / ``"s2d"``), or a folded pair put back.
Replacements stay in the family of what they replace: the conv block inside a Focus (Ultralytics ``Conv``, timm
``ConvNormAct``, YOLOv5's ``Conv``, ours) is kept, only its ``nn.Conv2d`` changes, so ``fuse()``, export and
state-dict names keep working.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from ..layers import Focus, FoldedSpaceToDepth, SPDConv, SpaceToDepth
from ..remap import conv_to_focus_weight, focus_to_conv_weight, s2d_to_strided_conv, strided_conv_to_s2d
from .recognisers import conv_of, is_conv_like
from .site import Change, ConversionError, Replacement, StemSite

MAX_KERNEL_GROWTH, MAX_GROWN_WEIGHT = 16, 1 << 22  # a space-to-depth kernel only zero-pads: refuse what is mostly zeros

# Conv2d subclasses with their own forward (timm's StdConv2d, Conv2dSame, ...) are never treated as plain convs.
# An integration teaches one with ``register_conv_type(cls, builder)``; ``builder(conv, to, order)`` returns the
# exact space-to-depth form and its description. Modules with a ``to_strided_conv()`` method (returning the same
# pair) fold themselves back for ``to="conv"``.
CONV_TYPES: dict[type, Callable[[nn.Conv2d, str, str], tuple[nn.Module, str]]] = {}

# ``fn(block) -> Focus class | None``: the class a framework's conv block becomes for ``to="focus"`` (Ultralytics'
# own Focus for an Ultralytics ``Conv``, so plain Ultralytics loads the result); ours when none answers.
FOCUS_CLASSES: list[Callable[[nn.Module], "type[nn.Module] | None"]] = []


def register_conv_type(cls: type, builder: Callable[[nn.Conv2d, str, str], tuple[nn.Module, str]]) -> None:
    """Teach the surgery the exact space-to-depth form of a ``nn.Conv2d`` subclass (idempotent)."""
    CONV_TYPES[cls] = builder


def register_focus_class(fn: Callable[[nn.Module], "type[nn.Module] | None"]) -> None:
    """Let ``fn(block)`` choose the Focus class (``forward = conv(space_to_depth(x))``) for ``to="focus"``."""
    if fn not in FOCUS_CLASSES:
        FOCUS_CLASSES.append(fn)


def type_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def conv_problem(conv: nn.Conv2d, order: str | None) -> str | None:
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
    if s >= 2:
        taps = [math.ceil((k + (-p) % s) / s) * s for k, p in zip(kernel, padding)]
        growth = taps[0] * taps[1] / (kernel[0] * kernel[1])
        if growth > MAX_KERNEL_GROWTH and conv.weight.numel() * growth > MAX_GROWN_WEIGHT:
            return (
                f"stride {s} on a {kernel[0]}x{kernel[1]} kernel: the space-to-depth weight would be {growth:.0f}x "
                "larger, mostly zeros; left as a strided conv"
            )
    return None


def new_conv2d(template: nn.Conv2d, weight: torch.Tensor, stride, padding) -> nn.Conv2d:
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


def with_conv(block: nn.Module, conv: nn.Conv2d) -> nn.Module:
    """``conv`` itself for a bare conv, else a copy of the conv block whose ``conv`` is replaced."""
    if type(block) is nn.Conv2d:
        return conv
    new_block = copy.deepcopy(block, {id(block.conv): conv})  # do not copy the old conv only to throw it away
    new_block.conv = conv
    return new_block


def carry_routing(old: nn.Module, new: nn.Module) -> nn.Module:
    """Keep Ultralytics' routing attributes (i, f, type, np) so the parsed model still runs and prints."""
    if all(hasattr(old, a) for a in ("i", "f")):
        new.i, new.f = old.i, old.f
        new.type = type_name(new)
        new.np = sum(p.numel() for p in new.parameters())
    return new


def _shell(cls: type[nn.Module], **children: nn.Module) -> nn.Module:
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for name, child in children.items():
        setattr(module, name, child)
    return module


def stride_one_block(block: nn.Module, order: str) -> tuple[nn.Module, tuple[int, int, int, int] | None, str]:
    """The strided conv block as the stride-1 block that reads space-to-depth(stride, ``order``) channels, the explicit
    pad it needs first (None: symmetric, kept in the conv) and its kernel text (GUIDE section 1)."""
    conv = conv_of(block)
    form = strided_conv_to_s2d(conv.weight.detach(), conv.stride, conv.padding, order)
    padding = form.symmetric_padding
    inner = with_conv(block, new_conv2d(conv, form.weight, 1, padding if padding is not None else 0))
    return (
        inner,
        None if padding is not None else form.pad,
        f"k={'x'.join(map(str, form.weight.shape[2:]))}, pad={form.pad}",
    )


def space_to_depth_form(block: nn.Module, to: str, order: str) -> tuple[nn.Module, str]:
    """Exact space-to-depth form (module, description) of a strided ``nn.Conv2d`` or conv block: a Focus where the
    padding allows and ``to="focus"``, else an SPDConv. Also for ``register_conv_type`` builders whose conv has an
    exactly equivalent plain conv.

    Raises:
        ConversionError: No exact form (dilation, grouped conv in a grouping order, ...).
    """
    conv = conv_of(block)
    reason = conv_problem(conv, order)
    if reason:
        raise ConversionError(reason)
    stride = conv.stride[0]
    inner, pad, text = stride_one_block(block, order)
    theirs = next((cls for fn in FOCUS_CLASSES if (cls := fn(block)) is not None), None)
    if to == "focus" and pad is None and stride == 2 and order == "yolov5" and theirs is not None:
        module = _shell(theirs, conv=inner)
    elif to == "focus" and pad is None:
        module = _shell(Focus, s2d=SpaceToDepth(stride, order), conv=inner)
    else:
        module = SPDConv.from_conv(inner, stride, order, pad)
    new_form = type(module).__name__
    if type(module) is theirs:  # e.g. "Focus (Ultralytics)"
        new_form += f" ({type(module).__module__.split('.')[0].title()})"
    return module.train(block.training), f"{new_form}(block_size={stride}, order={order}, {text})"


def strided_conv_form(block_size: int, order: str, block: nn.Module, pad) -> tuple[nn.Module, str]:
    """Exact single strided conv (in the same conv block) for space-to-depth (+ explicit ``pad``) + ``block``."""
    conv = conv_of(block)
    reason = conv_problem(conv, order)
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
    elif pad[0] == pad[1] and pad[2] == pad[3]:
        weight = focus_to_conv_weight(conv.weight.detach(), block_size, order)
        padding = (block_size * pad[2], block_size * pad[0])
    else:
        raise ConversionError(f"conv stride {conv.stride} with asymmetric pad {pad} has no single-conv form")
    stride = block_size * inner_stride
    k = "x".join(map(str, weight.shape[2:]))
    return with_conv(block, new_conv2d(conv, weight, stride, padding)), f"Conv({k}, stride={stride}, padding={padding})"


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def _conv_text(conv: nn.Conv2d, name: str) -> str:
    return f"{name}({'x'.join(map(str, conv.kernel_size))}, stride={conv.stride[0]}, padding={conv.padding})"


def _change(path, old, new, old_form, new_form, bs, order) -> Change:
    old_shape, new_shape = list(_first_conv(old).weight.shape), list(_first_conv(new).weight.shape)
    record = Replacement(path, old_form, new_form, type_name(old), type_name(new), old_shape, new_shape, bs, order)
    return Change(path, new, record)


def _placeholder(s2d: nn.Module, block_size: int, order: str) -> nn.Module:
    """What stays where a space-to-depth layer is folded: an identity that can restore it (plain Identity in an
    Ultralytics model, whose YAML rows know only ``nn.Identity``)."""
    if hasattr(s2d, "f"):
        return carry_routing(s2d, nn.Identity())
    return FoldedSpaceToDepth(copy.deepcopy(s2d), block_size, order)


def _unfold(site: StemSite, order: str | None) -> list[Change]:
    """Put back a pair that ``to="conv"`` folded (exact by the Focus identity of GUIDE section 1: a conv of kernel,
    stride and padding divisible by ``bs`` is space-to-depth + a conv of kernel, stride and padding / bs); [] when
    the conv does not divide."""
    placeholder_path, placeholder = site.folded
    block, bs = site.block, placeholder.block_size
    conv = conv_of(block)
    sizes = (*conv.kernel_size, *conv.stride, *conv.padding)
    if (
        not is_conv_like(block)
        or order not in (None, placeholder.order)
        or conv_problem(conv, placeholder.order)
        or any(v % bs for v in sizes)
        or conv.stride[0] != conv.stride[1]
    ):
        return []
    weight = conv_to_focus_weight(conv.weight.detach(), bs, placeholder.order)
    stride, padding = conv.stride[0] // bs, (conv.padding[0] // bs, conv.padding[1] // bs)
    inner = with_conv(block, new_conv2d(conv, weight, stride, padding)).train(block.training)
    s2d = placeholder.original().train(block.training)
    k = "x".join(map(str, weight.shape[2:]))
    old_form, new_form = _conv_text(conv, type(block).__name__), f"{type(s2d).__name__}(block_size={bs}, order="
    new_form += f"{placeholder.order}) + Conv({k}, stride={stride}, padding={padding})"
    return [Change(placeholder_path, s2d), _change(site.path, block, inner, old_form, new_form, bs, placeholder.order)]


def _to_conv(site: StemSite) -> list[Change]:
    if site.problem:
        raise ConversionError(site.problem)
    bs, order, module = site.block_size, site.order, site.module
    if site.form == "conv":
        return []
    if site.form == "folds":
        new, new_form = module.to_strided_conv()
    else:
        new, new_form = strided_conv_form(bs, order, site.block, site.pad)
    old_form = f"{type(module).__name__}(block_size={bs}, order={order})"
    if site.form != "s2d":
        return [_change(site.path, module, carry_routing(module, new), old_form, new_form, bs, order)]
    new = carry_routing(site.block, new)
    old_form += f" + {type(site.block).__name__}"
    folded = Change(site.path, _placeholder(module, bs, order))
    return [folded, _change(site.block_path, site.block, new, old_form, new_form, bs, order)]


def _to_space_to_depth(site: StemSite, to: str, order: str | None) -> list[Change]:
    if site.form != "conv":
        return []  # already in space-to-depth form
    if site.folded is not None and (unfolded := _unfold(site, order)):
        return unfolded
    module, stride = site.module, site.conv.stride
    if stride[0] < 2 and stride[1] < 2:
        return []
    use_order = order or ("pixel_unshuffle" if site.conv.groups != 1 else "yolov5")
    plain = type(module) is nn.Conv2d or not isinstance(module, nn.Conv2d)
    if not plain and type(module) not in CONV_TYPES:
        raise ConversionError(
            f"{type_name(module)} is a Conv2d subclass with its own forward and no registered space-to-depth "
            "form (see focus_surgery.surgery.register_conv_type)"
        )
    reason = conv_problem(site.conv, use_order) if plain else None
    if reason or stride[0] != stride[1]:
        raise ConversionError(reason or f"stride {stride} differs per axis: space-to-depth needs one block size")
    if plain:
        new, new_form = space_to_depth_form(module, to, use_order)
        new = carry_routing(module, new)
    else:
        new, new_form = CONV_TYPES[type(module)](module, to, use_order)
    return [
        _change(site.path, module, new, _conv_text(site.conv, type(module).__name__), new_form, stride[0], use_order)
    ]


def changes(site: StemSite, to: str, order: str | None = None) -> list[Change]:
    """The changes that put ``site`` in form ``to`` (``conv``, ``focus`` or ``s2d``); [] when it is already there.

    Raises:
        ConversionError: The site has no exact form in ``to`` (the message says why).
    """
    return _to_conv(site) if to == "conv" else _to_space_to_depth(site, to, order)
