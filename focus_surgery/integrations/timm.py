"""timm integration: space-to-depth stem variants of ResNet and ConvNeXt, registered in timm's own model registry.

After ``import focus_surgery`` (or ``focus_surgery.integrations.timm.register()``), ``timm.create_model`` knows:

* ``resnet{18,50}_s2d``: SpaceToDepth(4, timm order) + 3x3 conv + BN + ReLU, no max-pool (TResNet's stem).
* ``resnet{18,50}_s2d_focus``: SpaceToDepth(2, yolov5 order) + 3x3 conv + BN + ReLU + max-pool (YOLOv5's Focus).
* ``convnext_{atto,tiny}_s2d``: SpaceToDepth(4, timm) + 3x3 conv + LayerNorm2d (stem reduction 4, as ConvNeXt).
* ``convnext_{atto,tiny}_s2d_focus``: SpaceToDepth(2, yolov5) + 3x3 stride-2 conv + LayerNorm2d.

The models live in ``timm_models/resnet.py`` and ``timm_models/convnext.py``, so timm files them under its own
``resnet`` and ``convnext`` modules. Everything else (``num_classes``, ``in_chans``, ``drop_path_rate``,
``features_only`` with every ``feature_cls``, ``feature_cfg``, ``pretrained_cfg_overlay``) is the base model's.
Pretrained weights from a file adapt to any ``in_chans`` per pixel phase (``adapt_state_dict_in_chans``, also
usable for TResNet, whose stem timm can only adapt to 1 channel).
This module imports timm; ``focus_surgery`` itself imports it only when timm is imported (see ``import_hooks``).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, get_pretrained_cfg_value
from torch import nn

from ..in_chans import adapt_s2d_input_channels
from ..layers import SpaceToDepth
from ..surgery import is_conv_block, space_to_depth_params


def space_to_depth_stem(
    in_chans: int, out_chs: int, block_size: int, order: str, stride: int = 1, bias: bool = False, like=None
) -> nn.Sequential:
    """SpaceToDepth(bs) then a 3x3 conv, as siblings so ``focus_surgery.convert`` folds them into one conv.

    Shapes:
        Input (N, in_chans, H, W), H and W divisible by ``bs``; output (N, out_chs, H/(bs*stride), W/(bs*stride)).
    """
    factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
    conv = nn.Conv2d(in_chans * block_size * block_size, out_chs, 3, stride, 1, bias=bias, **factory)
    return nn.Sequential(SpaceToDepth(block_size, order), conv)


# ----------------------------------------------------------------------------------------- pretrained weights


def _space_to_depth_convs(model: nn.Module) -> list[tuple[str, int, str]]:
    """(weight key, block size, order) of each conv that directly follows a space-to-depth layer in a Sequential."""
    found = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, first), (name, second) in zip(children, children[1:]):
            params = space_to_depth_params(first)
            if params is not None and (type(second) is nn.Conv2d or is_conv_block(second)):
                path = f"{prefix}.{name}" if prefix else name
                key = f"{path}.weight" if type(second) is nn.Conv2d else f"{path}.conv.weight"
                found.append((key, *params))
    return found


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
    for key, block_size, order in _space_to_depth_convs(model):
        if key not in state_dict or key not in model_weights:
            continue
        source, target = state_dict[key], model_weights[key]
        if source.shape == target.shape:
            continue
        phases = block_size * block_size
        if source.shape[0] != target.shape[0] or source.shape[2:] != target.shape[2:] or source.shape[1] % phases:
            raise ValueError(
                f"{key}: checkpoint weight {tuple(source.shape)} cannot be adapted to the model's "
                f"{tuple(target.shape)} (only the input channels may differ)"
            )
        state_dict[key] = adapt_s2d_input_channels(source, target.shape[1] // phases, block_size, order)
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


def follow_first_conv(model: nn.Module, paths: list[str]) -> None:
    """After ``convert`` replaced the modules at ``paths``: point ``pretrained_cfg["first_conv"]`` at the stem's conv.

    timm names the stem conv there (its weight is ``first_conv + ".weight"``); a conversion moves it, e.g. ``conv1``
    becomes ``conv1.conv`` inside an ``SPDConv`` and back. The cfg is replaced by a copy, never edited in place.
    """
    cfg = getattr(model, "pretrained_cfg", None)
    names = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if not names:
        return
    single = isinstance(names, str)
    moved = [_moved_conv(model, name, paths) for name in ([names] if single else names)]
    new = moved[0] if single else type(names)(moved)
    if new == names:
        return
    model.pretrained_cfg = dict(cfg, first_conv=new)
    if getattr(model, "default_cfg", None) is cfg:
        model.default_cfg = model.pretrained_cfg
    traits = getattr(model, "_traits", None)  # timm >= 1.0.31 keeps a copy; left alone unless it is this one
    if isinstance(traits, dict) and traits.get("first_conv") == names:
        traits["first_conv"] = new


def _moved_conv(model: nn.Module, name: str, paths: list[str]) -> str:
    """Where the conv named ``name`` is now: the first conv inside the replacement that covers it."""
    for path in paths:
        if path and (name == path or name.startswith(path + ".")):
            found = (n for n, m in model.get_submodule(path).named_modules() if isinstance(m, nn.Conv2d))
            inner = next(found, None)
            if inner is not None:
                return f"{path}.{inner}" if inner else path
    return name


def model_names() -> list[str]:
    """Names of every model this integration registers."""
    return [f"{b}_s2d{s}" for b in ("resnet18", "resnet50", "convnext_atto", "convnext_tiny") for s in ("", "_focus")]


def register() -> list[str]:
    """Register our models in timm's registry and timm's conv types with the surgery (idempotent); return the names.

    Raises:
        RuntimeError: The installed timm lacks an API the integration needs (the message names the version range).
    """
    from ..surgery import register_post_apply
    from .timm_convs import register_conv_types
    from .timm_version import check_timm

    check_timm()
    register_conv_types()
    register_post_apply(follow_first_conv)
    from .timm_models import convnext, resnet  # noqa: F401  (importing registers the models)

    return model_names()
