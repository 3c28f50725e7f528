"""Layers: space-to-depth (block size ``bs``), its inverse and the conv blocks built on it; they know no model.
Pure reshape/permute and standard convs: they script, FX-trace, export to ONNX and compile with ``fullgraph=True``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .orders import CHANNEL_LAYOUT, check_block_size, check_order

_AXIS = {"c": 1, "y": 3, "x": 5}  # axes of x.view(N, C, H/bs, bs, W/bs, bs)


def autopad(k: int | tuple[int, int], p: int | tuple[int, int] | None = None, d: int = 1):
    """'Same' padding for an odd kernel when ``p`` is None, as in Ultralytics."""
    if p is not None:
        return p
    return (d * (k - 1) + 1) // 2 if isinstance(k, int) else tuple((d * (x - 1) + 1) // 2 for x in k)


@torch.fx.wrap  # a leaf in torch.fx graphs: FX cannot branch on a traced shape, the traced graph still checks
def check_divisible(x: torch.Tensor, block_size: int, yaml_row: str = "") -> torch.Tensor:
    """``x`` unchanged if its height and width divide by ``block_size``, else a ValueError naming the fix (and the
    Ultralytics YAML row the layer was built from, if any)."""
    h, w = x.shape[-2], x.shape[-1]
    if h % block_size == 0 and w % block_size == 0:
        return x
    if yaml_row:
        raise ValueError(
            f"{yaml_row}: feature map {h}x{w} is not divisible by block_size {block_size}; "
            "use an input size that is a multiple of the model stride"
        )
    raise ValueError(
        f"SpaceToDepth: input height and width ({h}x{w}) must be divisible by block_size {block_size}; "
        f"resize or pad the image to a multiple of {block_size}"
    )


@torch.fx.wrap
def check_channels_divisible(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``x`` unchanged if its channels divide by ``block_size**2``, else a ValueError."""
    if x.shape[1] % (block_size * block_size) != 0:
        raise ValueError(
            f"DepthToSpace: {x.shape[1]} input channels are not divisible by block_size**2 = {block_size * block_size}"
        )
    return x


class SpaceToDepth(nn.Module):
    """Move each ``bs x bs`` pixel block into channels: ``y[:, ch(c, dy, dx), i, j] = x[:, c, bs*i + dy, bs*j + dx]``
    with ``ch`` given by ``order`` (``yolov5``, ``timm`` or ``pixel_unshuffle``; see ``orders.py``).
    (N, C, H, W), H and W divisible by ``bs`` -> (N, C*bs*bs, H/bs, W/bs)."""

    yaml_row = ""  # "YAML row i [...]" when built from an Ultralytics YAML row (class default: old pickles)

    def __init__(self, block_size: int = 2, order: str = "yolov5"):
        super().__init__()
        self.block_size = check_block_size(block_size)
        self.order = check_order(order)
        self.permutation = [0] + [_AXIS[a] for a in CHANNEL_LAYOUT[order]] + [2, 4]
        self.yaml_row = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = self.block_size
        x = check_divisible(x, bs, self.yaml_row)
        n, c, h, w = x.shape
        if self.order == "pixel_unshuffle":
            return F.pixel_unshuffle(x, bs)
        blocks = x.view(n, c, h // bs, bs, w // bs, bs)
        return blocks.permute(self.permutation).reshape(n, c * bs * bs, h // bs, w // bs)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, order={self.order!r}"


class DepthToSpace(nn.Module):
    """Exact inverse of ``SpaceToDepth`` of the same block size and order: (N, C*bs*bs, H, W) -> (N, C, H*bs, W*bs)."""

    def __init__(self, block_size: int = 2, order: str = "yolov5"):
        super().__init__()
        self.block_size = check_block_size(block_size)
        self.order = check_order(order)
        layout = CHANNEL_LAYOUT[order]
        pos = {a: 1 + layout.index(a) for a in layout}  # axes of x.view(N, *layout, H, W)
        self.permutation = [0, pos["c"], 4, pos["y"], 5, pos["x"]]
        self.channel_axis = layout.index("c")  # where C sits among the three split channel axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = self.block_size
        x = check_channels_divisible(x, bs)
        n, cc, h, w = x.shape
        if self.order == "pixel_unshuffle":
            return F.pixel_shuffle(x, bs)
        sizes = [bs, bs, bs]
        sizes[self.channel_axis] = c = cc // (bs * bs)
        return x.view([n] + sizes + [h, w]).permute(self.permutation).reshape(n, c, h * bs, w * bs)

    extra_repr = SpaceToDepth.extra_repr


class ConvBnAct(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + activation, with the arguments and state-dict names of Ultralytics ``Conv``:
    (N, c1, H, W) -> (N, c2, H', W') as for ``nn.Conv2d``."""

    default_act = nn.SiLU()

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int | tuple[int, int] = 1,
        s: int | tuple[int, int] = 1,
        p: int | tuple[int, int] | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = self.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        """Forward once BatchNorm has been folded into the conv."""
        return self.act(self.conv(x))


class Focus(nn.Module):
    """Space-to-depth then a conv block: a drop-in superset of the YOLOv5 / Ultralytics ``Focus``.

    With the defaults (``block_size=2``, ``order="yolov5"``) it computes what Ultralytics' ``Focus`` does, with the
    same state-dict names (``conv.conv.weight``, ``conv.bn.*``). ``k, s, p, g, act`` are the conv block's, as in
    Ultralytics ``Conv``; ``conv_layer`` is a conv block class with that signature.
    (N, c1, H, W), H and W divisible by ``bs`` -> (N, c2, H/(bs*s), W/(bs*s)) for same padding.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int | tuple[int, int] = 1,
        s: int | tuple[int, int] = 1,
        p: int | tuple[int, int] | None = None,
        g: int = 1,
        act: bool | nn.Module = True,
        block_size: int = 2,
        order: str = "yolov5",
        conv_layer: type[nn.Module] = ConvBnAct,
    ):
        super().__init__()
        self.s2d = SpaceToDepth(block_size, order)
        self.conv = conv_layer(c1 * block_size * block_size, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.s2d(x))


class SPDConv(nn.Module):
    """Space-to-depth, optional explicit ``pad`` (left, right, top, bottom; negative crops), then a stride-1 conv block
    of kernel ``k`` (same padding when ``pad`` is None): the SPD-Conv block, and the exact space-to-depth form of any
    strided conv (``SPDConv.from_conv``). (N, c1, H, W), H and W divisible by ``bs`` -> (N, c2, H/bs, W/bs) for same
    padding.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int | tuple[int, int] = 3,
        block_size: int = 2,
        order: str = "yolov5",
        act: bool | nn.Module = True,
        pad: tuple[int, int, int, int] | None = None,
        conv_layer: type[nn.Module] = ConvBnAct,
    ):
        super().__init__()
        self.s2d = SpaceToDepth(block_size, order)
        self.pad = list(pad) if pad is not None else None
        self.conv = conv_layer(c1 * block_size * block_size, c2, k, 1, 0 if pad is not None else None, act=act)

    @classmethod
    def from_conv(cls, conv: nn.Module, block_size: int, order: str, pad: tuple[int, int, int, int] | None) -> SPDConv:
        """Wrap an existing stride-1 conv (a bare ``nn.Conv2d`` or a conv block) that reads space-to-depth channels."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.s2d, module.pad, module.conv = (
            SpaceToDepth(block_size, order),
            list(pad) if pad is not None else None,
            conv,
        )
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.s2d(x)
        return self.conv(F.pad(y, self.pad) if self.pad is not None else y)

    def extra_repr(self) -> str:
        return f"pad={tuple(self.pad)}" if self.pad is not None else ""


class FoldedSpaceToDepth(nn.Identity):
    """What ``convert(to="conv")`` leaves where a space-to-depth layer was folded into the next conv: an identity (no
    parameters, nothing in the state dict) that remembers the ``original`` layer, so ``to="s2d"`` restores it."""

    def __init__(self, original: nn.Module, block_size: int, order: str):
        super().__init__()
        self.block_size, self.order = block_size, order
        self.__dict__["_original"] = original  # not a submodule: not in the state dict, not traced or scripted

    def original(self) -> nn.Module:
        """A copy of the space-to-depth layer that was folded."""
        return copy.deepcopy(self.__dict__["_original"])

    def extra_repr(self) -> str:
        return f"folded {type(self.__dict__['_original']).__name__}(block_size={self.block_size}, order={self.order!r})"
