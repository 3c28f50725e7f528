"""What a timm architecture name (``arch: tresnet_m`` of a timm ``train.py`` checkpoint) says about its stem.

A state dict cannot tell a weightless space-to-depth's block size and order; the architecture can, looked up in timm's
own registry (never guessed from the name): the model is built on the ``meta`` device (no memory, weights or
download), and the stem walk with timm's ``SpaceToDepth`` recogniser reads its first stem site.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from ..stems import walk


@dataclass(frozen=True)
class ArchStem:
    """A timm architecture's weightless space-to-depth stem.

    Attributes:
        arch (str): The architecture name as the file gave it (``tresnet_m``, ``tresnet_m.miil_in21k``).
        s2d_path (str): The space-to-depth module (``body.s2d``); it has no entries in a state dict.
        weight_key (str): The stem conv's weight (``body.conv1.conv.weight``): (O, C*bs*bs, k, k) as timm builds it.
        block_size (int), order (str): What the space-to-depth computes (TResNet: 4, ``timm``).
        kernel (tuple[int, int]), padding (tuple[int, int]): The conv after it.
    """

    arch: str
    s2d_path: str
    weight_key: str
    block_size: int
    order: str
    kernel: tuple[int, int]
    padding: tuple[int, int]

    def describe(self) -> str:
        return f"arch {self.arch!r} (timm: {self.s2d_path} = space-to-depth({self.block_size}, {self.order}))"


@functools.lru_cache(maxsize=64)
def arch_stem(arch: str) -> ArchStem | None:
    """The weightless space-to-depth stem of timm architecture ``arch``; None when timm is not installed, does not
    know the name, or the model's first stem is not a weightless space-to-depth before a plain conv."""
    if not isinstance(arch, str) or not arch or importlib.util.find_spec("timm") is None:
        return None
    import timm

    from .timm import register

    register()  # timm's SpaceToDepth recogniser, and our *_s2d models in timm's registry
    if not timm.is_model(arch):
        return None
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False)
    except Exception:  # an entry point that cannot be built without arguments says nothing about its stem
        return None
    site = next(walk(model), None)
    conv = site.conv if site is not None and site.form == "s2d" and not site.problem else None
    # any stride: space-to-depth(bs) + a conv of stride s is one conv of stride bs * s with the same weight map
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.dilation != (1, 1) or isinstance(conv.padding, str):
        return None
    name = next(n for n, m in model.named_modules() if m is conv)
    return ArchStem(
        arch, site.path, f"{name}.weight", site.block_size, site.order, tuple(conv.kernel_size), tuple(conv.padding)
    )
