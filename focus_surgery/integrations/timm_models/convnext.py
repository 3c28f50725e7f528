"""ConvNeXt with a space-to-depth stem in timm's registry (``convnext_{atto,tiny}_s2d{,_focus}``); importing this
module registers the models (``focus_surgery.integrations.timm.register()`` does it for you)."""

from __future__ import annotations

from typing import Any

from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt
from torch import nn

from .build import create_s2d_model, default_cfg, space_to_depth_stem

STEMS = {"s2d": (4, "timm", 1), "focus": (2, "yolov5", 2)}  # ConvNeXt's stem must reduce by 4


class SpaceToDepthConvNeXt(ConvNeXt):
    """timm ``ConvNeXt`` whose 4x4/4 patchify stem conv is space-to-depth + 3x3 conv (stem reduction stays 4).

    Args:
        stem (str): ``"s2d"``: SpaceToDepth(4) + 3x3 conv; ``"focus"``: SpaceToDepth(2) + 3x3 stride-2 conv.
        **kwargs: ``timm.models.convnext.ConvNeXt`` arguments (``depths``, ``dims``, ``in_chans``, ...).

    Shapes:
        Input (N, in_chans, H, W) with H and W divisible by 4 (``s2d``) or 2 (``focus``); output as ``ConvNeXt``'s.
    """

    def __init__(self, stem: str = "s2d", **kwargs: Any):
        super().__init__(**kwargs)
        if len(self.stem) != 2:
            raise ValueError("SpaceToDepthConvNeXt replaces the patchify stem: leave stem_type at 'patch'")
        new = space_to_depth_stem(self.stem[0], self.in_chans, stem, STEMS)
        trunc_normal_(new[1].weight, std=0.02)
        if new[1].bias is not None:
            nn.init.zeros_(new[1].bias)
        self.stem = nn.Sequential(new[0], new[1], self.stem[1])


def _create(variant: str, pretrained: bool, stem: str, **kwargs: Any) -> SpaceToDepthConvNeXt:
    # timm's _create_convnext passes this feature_cfg; a fresh dict per call, since timm's builder edits it in place.
    feature_cfg = {"out_indices": (0, 1, 2, 3), "flatten_sequential": True, **(kwargs.pop("feature_cfg", None) or {})}
    return create_s2d_model(SpaceToDepthConvNeXt, variant, pretrained, stem=stem, feature_cfg=feature_cfg, **kwargs)


_ATTO = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True)
_TINY = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))

default_cfgs = generate_default_cfgs(
    {
        name: default_cfg(first_conv="stem.1", classifier="head.fc")
        for name in ("convnext_atto_s2d", "convnext_atto_s2d_focus", "convnext_tiny_s2d", "convnext_tiny_s2d_focus")
    }
)


@register_model
def convnext_atto_s2d(pretrained: bool = False, **kwargs: Any) -> SpaceToDepthConvNeXt:
    """ConvNeXt-Atto, SpaceToDepth(4) + 3x3 conv stem."""
    return _create("convnext_atto_s2d", pretrained, "s2d", **dict(_ATTO, **kwargs))


@register_model
def convnext_atto_s2d_focus(pretrained: bool = False, **kwargs: Any) -> SpaceToDepthConvNeXt:
    """ConvNeXt-Atto, SpaceToDepth(2) + 3x3 stride-2 conv stem."""
    return _create("convnext_atto_s2d_focus", pretrained, "focus", **dict(_ATTO, **kwargs))


@register_model
def convnext_tiny_s2d(pretrained: bool = False, **kwargs: Any) -> SpaceToDepthConvNeXt:
    """ConvNeXt-Tiny, SpaceToDepth(4) + 3x3 conv stem."""
    return _create("convnext_tiny_s2d", pretrained, "s2d", **dict(_TINY, **kwargs))


@register_model
def convnext_tiny_s2d_focus(pretrained: bool = False, **kwargs: Any) -> SpaceToDepthConvNeXt:
    """ConvNeXt-Tiny, SpaceToDepth(2) + 3x3 stride-2 conv stem."""
    return _create("convnext_tiny_s2d_focus", pretrained, "focus", **dict(_TINY, **kwargs))
