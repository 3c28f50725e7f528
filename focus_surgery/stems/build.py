"""Exact forms of a stem site, built from the weight maps of ``remap.py`` and the layers of ``layers.py``.

``changes(site, to, order)`` is the one place a site becomes modules. A replacement stays in the family of what it
replaces: a conv block (Ultralytics ``Conv``, timm ``ConvNormAct``, ours) is kept and only its ``nn.Conv2d``
changes, so ``fuse()``, export and state-dict names keep working.
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

# Conv2d subclasses with their own forward (timm's StdConv2d, ...) are never treated as plain convs: an integration
# registers ``builder(conv, to, order) -> (module, description)``, their exact space-to-depth form.
CONV_TYPES: dict[type, Callable[[nn.Conv2d, str, str], tuple[nn.Module, str]]] = {}
# ``fn(block) -> Focus class | None``: the class a framework's conv block becomes for ``to="focus"``; ours if none.
FOCUS_CLASSES: list[Callable[[nn.Module], "type[nn.Module] | None"]] = []


def register_conv_type(cls: type, builder: Callable[[nn.Conv2d, str, str], tuple[nn.Module, str]]) -> None:
    """Teach the surgery the exact space-to-depth form of a ``nn.Conv2d`` subclass (idempotent)."""
    CONV_TYPES[cls] = builder


def register_focus_class(fn: Callable[[nn.Module], "type[nn.Module] | None"]) -> None:
    """Let ``fn(block)`` choose the Focus class (``forward = conv(space_to_depth(x))``) for ``to="focus"``."""
    if fn not in FOCUS_CLASSES:
        FOCUS_CLASSES.append(fn)


def type_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


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
    taps = [math.ceil((k + (-p) % s) / s) * s for k, p in zip(kernel, padding)]
    growth = taps[0] * taps[1] / (kernel[0] * kernel[1])
    if s >= 2 and growth > MAX_KERNEL_GROWTH and conv.weight.numel() * growth > MAX_GROWN_WEIGHT:
        return (
            f"stride {s} on a {kernel[0]}x{kernel[1]} kernel: the space-to-depth weight would be {growth:.0f}x "
            "larger, mostly zeros; left as a strided conv"
        )
    return None


def _exact_conv(block: nn.Module, order: str) -> nn.Conv2d:
    """The ``nn.Conv2d`` of ``block``; raises ``ConversionError`` when it has no exact form in ``order``."""
    conv = conv_of(block)
    reason = conv_problem(conv, order)
    if reason:
        raise ConversionError(reason)
    return conv


def new_conv2d(template: nn.Conv2d, weight: torch.Tensor, stride, padding) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with ``weight``, the template's bias, groups, mode and requires_grad."""
    groups, bias = template.groups, template.bias
    size = (weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]))
    conv = nn.Conv2d(*size, stride, padding, groups=groups, bias=bias is not None, device="meta")  # params replaced
    conv.weight = nn.Parameter(weight.detach().clone(), requires_grad=template.weight.requires_grad)
    if bias is not None:
        conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
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
    if hasattr(old, "i") and hasattr(old, "f"):
        new.i, new.f, new.type = old.i, old.f, type_name(new)
        new.np = sum(p.numel() for p in new.parameters())
    return new


def stride_one_block(block: nn.Module, order: str) -> tuple[nn.Module, tuple[int, int, int, int] | None, str]:
    """The strided conv block as the stride-1 block that reads space-to-depth(stride, ``order``) channels, the explicit
    pad it needs first (None: symmetric, kept in the conv) and its kernel text (GUIDE section 1)."""
    conv = conv_of(block)
    form = strided_conv_to_s2d(conv.weight.detach(), conv.stride, conv.padding, order)
    padding = form.symmetric_padding
    inner = with_conv(block, new_conv2d(conv, form.weight, 1, padding if padding is not None else 0))
    pad = None if padding is not None else form.pad
    return inner, pad, f"k={'x'.join(map(str, form.weight.shape[2:]))}, pad={form.pad}"


def space_to_depth_form(block: nn.Module, to: str, order: str) -> tuple[nn.Module, str]:
    """Exact space-to-depth form (module, description) of a strided conv or conv block: a Focus where the padding
    allows and ``to="focus"``, else an SPDConv. Raises ``ConversionError`` when there is none (dilation, ...)."""
    stride = _exact_conv(block, order).stride[0]
    inner, pad, text = stride_one_block(block, order)
    theirs = next((cls for fn in FOCUS_CLASSES if (cls := fn(block)) is not None), None)
    if to == "focus" and pad is None and stride == 2 and order == "yolov5" and theirs is not None:
        module = theirs.__new__(theirs)
        nn.Module.__init__(module)
        module.conv = inner
    elif to == "focus" and pad is None:
        module = Focus.__new__(Focus)
        nn.Module.__init__(module)
        module.s2d, module.conv = SpaceToDepth(stride, order), inner
    else:
        module = SPDConv.from_conv(inner, stride, order, pad)
    new_form = type(module).__name__
    if type(module) is theirs:  # e.g. "Focus (Ultralytics)"
        new_form += f" ({type(module).__module__.split('.')[0].title()})"
    return module.train(block.training), f"{new_form}(block_size={stride}, order={order}, {text})"


def strided_conv_form(block_size: int, order: str, block: nn.Module, pad) -> tuple[nn.Module, str]:
    """Exact single strided conv (in the same conv block) for space-to-depth (+ explicit ``pad``) + ``block``."""
    conv = _exact_conv(block, order)
    if conv.stride[0] != conv.stride[1]:
        raise ConversionError(f"conv stride {conv.stride} differs per axis: one strided conv cannot express it")
    if pad is None:
        ph, pw = conv.padding
        pad = (pw, pw, ph, ph)
    elif conv.padding != (0, 0) or conv.stride != (1, 1):
        raise ConversionError("explicit pad together with conv padding or stride has no single-conv form")
    if conv.stride[0] == 1:
        weight, padding = s2d_to_strided_conv(conv.weight.detach(), block_size, pad, order)
    elif pad[0] == pad[1] and pad[2] == pad[3]:
        weight = focus_to_conv_weight(conv.weight.detach(), block_size, order)
        padding = (block_size * pad[2], block_size * pad[0])
    else:
        raise ConversionError(f"conv stride {conv.stride} with asymmetric pad {pad} has no single-conv form")
    stride = block_size * conv.stride[0]
    text = f"Conv({_conv_args(weight.shape[2:], stride, padding)})"
    return with_conv(block, new_conv2d(conv, weight, stride, padding)), text


def _conv_args(kernel, stride: int, padding) -> str:
    return f"{'x'.join(map(str, kernel))}, stride={stride}, padding={padding}"


def _weight_shape(module: nn.Module) -> list[int]:
    return list(next(m for m in module.modules() if isinstance(m, nn.Conv2d)).weight.shape)


def _change(path, old, new, old_form, new_form, bs, order) -> Change:
    old_shape, new_shape = _weight_shape(old), _weight_shape(new)
    record = Replacement(path, old_form, new_form, type_name(old), type_name(new), old_shape, new_shape, bs, order)
    return Change(path, new, record)


def _unfold(site: StemSite, order: str | None) -> list[Change]:
    """Put back a pair that ``to="conv"`` folded (exact by the Focus identity of GUIDE section 1: a conv of kernel,
    stride and padding divisible by ``bs`` is space-to-depth + a conv of those / bs); [] when the conv does not divide.
    """
    (placeholder_path, placeholder), block = site.folded, site.block
    bs, fold_order = placeholder.block_size, placeholder.order
    conv = conv_of(block)
    sizes = (*conv.kernel_size, *conv.stride, *conv.padding)
    exact = is_conv_like(block) and order in (None, fold_order) and not conv_problem(conv, fold_order)
    if not exact or any(v % bs for v in sizes) or conv.stride[0] != conv.stride[1]:
        return []
    weight = conv_to_focus_weight(conv.weight.detach(), bs, fold_order)
    stride, padding = conv.stride[0] // bs, (conv.padding[0] // bs, conv.padding[1] // bs)
    inner = with_conv(block, new_conv2d(conv, weight, stride, padding)).train(block.training)
    s2d = placeholder.original().train(block.training)
    old_form = f"{type(block).__name__}({_conv_args(conv.kernel_size, conv.stride[0], conv.padding)})"
    new_form = f"{type(s2d).__name__}(block_size={bs}, order={fold_order}) + "
    new_form += f"Conv({_conv_args(weight.shape[2:], stride, padding)})"
    return [Change(placeholder_path, s2d), _change(site.path, block, inner, old_form, new_form, bs, fold_order)]


def _to_conv(site: StemSite) -> list[Change]:
    if site.problem:
        raise ConversionError(site.problem)
    if site.form == "conv":
        return []
    bs, order, module = site.block_size, site.order, site.module
    if site.form == "folds":
        new, new_form = module.to_strided_conv()
    else:
        new, new_form = strided_conv_form(bs, order, site.block, site.pad)
    old_form = f"{type(module).__name__}(block_size={bs}, order={order})"
    if site.form != "s2d":
        return [_change(site.path, module, carry_routing(module, new), old_form, new_form, bs, order)]
    # what stays where the layer was folded: an identity that can restore it (a plain Identity in an Ultralytics
    # model, whose YAML rows know only ``nn.Identity``)
    if hasattr(module, "f"):
        placeholder = carry_routing(module, nn.Identity())
    else:
        placeholder = FoldedSpaceToDepth(copy.deepcopy(module), bs, order)
    new, old_form = carry_routing(site.block, new), f"{old_form} + {type(site.block).__name__}"
    return [Change(site.path, placeholder), _change(site.block_path, site.block, new, old_form, new_form, bs, order)]


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
    old_form = f"{type(module).__name__}({_conv_args(site.conv.kernel_size, stride[0], site.conv.padding)})"
    return [_change(site.path, module, new, old_form, new_form, stride[0], use_order)]


def changes(site: StemSite, to: str, order: str | None = None) -> list[Change]:
    """The changes that put ``site`` in form ``to`` (``conv``, ``focus`` or ``s2d``); [] when it is already there.

    Raises:
        ConversionError: The site has no exact form in ``to`` (the message says why).
    """
    return _to_conv(site) if to == "conv" else _to_space_to_depth(site, to, order)
