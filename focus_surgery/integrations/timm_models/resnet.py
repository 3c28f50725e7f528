"""ResNet with a space-to-depth stem in timm's registry (``resnet{18,50}_s2d{,_focus}``); importing this module
registers the models (``focus_surgery.integrations.timm.register()`` does it for you)."""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from .build import create_s2d_model, default_cfg, space_to_depth_stem

STEMS = {"s2d": (4, "timm", 1), "focus": (2, "yolov5", 1)}  # stem -> (block size, order, conv stride)


class SpaceToDepthResNet(ResNet):
    """timm ``ResNet`` whose 7x7/2 stem conv is space-to-depth + 3x3 conv.

    Args:
        stem (str): ``"s2d"``: SpaceToDepth(4) + 3x3 conv and no max-pool (TResNet); ``"focus"``: SpaceToDepth(2) +
            3x3 conv, max-pool kept (YOLOv5's Focus). Feature reductions are those of the stem.
        **kwargs: ``timm.models.resnet.ResNet`` arguments (``block``, ``layers``, ``in_chans``, ...).

    Shapes:
        Input (N, in_chans, H, W) with H and W divisible by 4 (``s2d``) or 2 (``focus``); output as ``ResNet``'s.
    """

    def __init__(self, stem: str = "s2d", **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(self.conv1, nn.Conv2d):
            raise ValueError("SpaceToDepthResNet replaces the single-conv stem: leave stem_type at its default")
        self.conv1 = space_to_depth_stem(self.conv1, self.in_chans, stem, STEMS)
        nn.init.kaiming_normal_(self.conv1[1].weight, mode="fan_out", nonlinearity="relu")
        if stem == "s2d":
            self.maxpool = nn.Identity()
        block_size, _, stride = STEMS[stem]
        self.feature_info[0] = dict(self.feature_info[0], reduction=block_size * stride)


def _create(variant: str, pretrained: bool, stem: str, **kwargs: Any) -> SpaceToDepthResNet:
    # As timm's _create_resnet: a caller's feature_cfg= goes through to build_model_with_cfg.
    return create_s2d_model(SpaceToDepthResNet, variant, pretrained, stem=stem, **kwargs)


_R18 = dict(block=BasicBlock, layers=(2, 2, 2, 2))
_R50 = dict(block=Bottleneck, layers=(3, 4, 6, 3))

default_cfgs = generate_default_cfgs(
    {
        name: default_cfg(first_conv="conv1.1", classifier="fc", interpolation="bilinear")  # timm resnet _cfg
        for name in ("resnet18_s2d", "resnet18_s2d_focus", "resnet50_s2d", "resnet50_s2d_focus")
    }
)


@register_model
def resnet18_s2d(pretrained: bool = False, **kwargs: Any) -> SpaceToDepthResNet:
    """ResNet-18, SpaceToDepth(4) + 3x3 conv stem, no max-pool (as TResNet)."""
    return _create("resnet18_s2d", pretrained, "s2d", **dict(_R18, **kwargs))


@register_model
def resnet18_s2d_focus(pretrained: bool = False, **kwargs: Any) -> SpaceToDepthResNet:
    """ResNet-18, SpaceToDepth(2) + 3x3 conv stem and max-pool (YOLOv5's Focus)."""
    return _create("resnet18_s2d_focus", pretrained, "focus", **dict(_R18, **kwargs))


@register_model
def resnet50_s2d(pretrained: bool = False, **kwargs: Any) -> SpaceToDepthResNet:
    """ResNet-50, SpaceToDepth(4) + 3x3 conv stem, no max-pool (as TResNet)."""
    return _create("resnet50_s2d", pretrained, "s2d", **dict(_R50, **kwargs))


@register_model
def resnet50_s2d_focus(pretrained: bool = False, **kwargs: Any) -> SpaceToDepthResNet:
    """ResNet-50, SpaceToDepth(2) + 3x3 conv stem and max-pool (YOLOv5's Focus)."""
    return _create("resnet50_s2d_focus", pretrained, "focus", **dict(_R50, **kwargs))
