"""How our timm models are built: the space-to-depth stem, the pretrained cfg, and ``build_model_with_cfg`` with a
checkpoint filter that adapts the stem to ``in_chans`` per pixel phase (used by ``resnet.py`` and ``convnext.py``)."""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, get_pretrained_cfg_value
from torch import nn

from ...in_chans import adapt_s2d_input_channels
from ...layers import SpaceToDepth
from ...stems import walk


def space_to_depth_stem(old: nn.Conv2d, in_chans: int, stem: str, stems: dict[str, tuple]) -> nn.Sequential:
    """SpaceToDepth then a 3x3 conv replacing the stem conv ``old``, as siblings so ``convert`` folds them into one.

    Args:
        stems (dict): Stem name -> (block size ``bs``, order, conv stride ``s``); ``stem`` selects one.

    Shapes:
        Input (N, in_chans, H, W), H and W divisible by ``bs``; output (N, old.out_channels, H/(bs*s), W/(bs*s)).
    """
    if stem not in stems:
        raise ValueError(f"unknown stem {stem!r}: use one of {', '.join(stems)}")
    block_size, order, stride = stems[stem]
    factory = {"device": old.weight.device, "dtype": old.weight.dtype, "bias": old.bias is not None}
    conv = nn.Conv2d(in_chans * block_size * block_size, old.out_channels, 3, stride, 1, **factory)
    return nn.Sequential(SpaceToDepth(block_size, order), conv)


# ----------------------------------------------------------------------------------------- pretrained weights


def adapt_state_dict_in_chans(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt the space-to-depth stem weights of ``state_dict`` to ``model``'s input channels, per pixel phase.

    Works for our registered models and for timm's TResNet (any ``in_chans``, where timm only handles 1). Other
    entries are returned unchanged; ``state_dict`` itself is not modified.

    Example:
        >>> model = timm.create_model("tresnet_m", in_chans=4)
        >>> model.load_state_dict(adapt_state_dict_in_chans(rgb_state_dict, model))
    """
    state_dict = dict(state_dict)
    model_weights = dict(model.state_dict(keep_vars=True))
    for site in (s for s in walk(model) if s.form == "s2d" and s.problem is None):  # a conv after a space-to-depth
        key = f"{site.block_path}{'' if type(site.block) is nn.Conv2d else '.conv'}.weight"
        if key not in state_dict or key not in model_weights:
            continue
        source, target = state_dict[key], model_weights[key]
        if source.shape == target.shape:
            continue
        phases = site.block_size**2
        if source.shape[0] != target.shape[0] or source.shape[2:] != target.shape[2:] or source.shape[1] % phases:
            raise ValueError(
                f"{key}: checkpoint weight {tuple(source.shape)} cannot be adapted to the model's "
                f"{tuple(target.shape)} (only the input channels may differ)"
            )
        state_dict[key] = adapt_s2d_input_channels(source, target.shape[1] // phases, site.block_size, site.order)
    return state_dict


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn`` of our models: unwrap training checkpoints, adapt the stem to ``in_chans``."""
    for wrapper in ("state_dict", "model", "model_ema"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
            break
    return adapt_state_dict_in_chans(state_dict, model)


# ------------------------------------------------------------------------------------------------- registration


def default_cfg(**kwargs: Any) -> dict[str, Any]:
    """A pretrained cfg of our models (ImageNet defaults as timm's ConvNeXt ``_cfg``; our ResNets override the
    interpolation, bilinear in timm's resnet ``_cfg``); ``kwargs`` override."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "license": "apache-2.0",
        **kwargs,
    }


def create_s2d_model(model_cls: type[nn.Module], variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``build_model_with_cfg`` for our models: our checkpoint filter adapts the stem to ``in_chans``, timm's not.

    timm adapts the conv named by ``pretrained_cfg["first_conv"]`` to ``in_chans`` itself, which is wrong for a
    space-to-depth stem (and on timm < 1.0.31 drops the weight silently). The public way to turn that off in every
    timm 1.x is ``first_conv=None`` in the cfg the weights load with; the model's cfg names the conv again after.
    """
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    declared = overlay.get("first_conv", get_pretrained_cfg_value(variant, "first_conv"))
    model = build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        pretrained_cfg_overlay=dict(overlay, first_conv=None),
        **kwargs,
    )
    model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, first_conv=declared)
    return model
