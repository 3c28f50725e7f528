"""timm integration: space-to-depth stem variants of ResNet and ConvNeXt in timm's own registry (``model_names()``).

``resnet{18,50}_s2d`` / ``convnext_{atto,tiny}_s2d``: SpaceToDepth(4, timm order) + 3x3 conv, as TResNet;
``..._s2d_focus``: SpaceToDepth(2, yolov5 order) + 3x3 conv, as YOLOv5's Focus. They live in ``timm_models/`` so
timm files them under its ``resnet`` and ``convnext`` modules; every other option is the base model's. Pretrained
weights adapt to any ``in_chans`` per pixel phase (``adapt_state_dict_in_chans``, TResNet's too). This module imports
timm; ``import focus_surgery`` imports it only once timm is imported (``import_hooks``).
"""

from __future__ import annotations

from torch import nn

from ..stems import SpaceToDepthPart, register_recogniser
from .timm_models.build import adapt_state_dict_in_chans  # noqa: F401 - documented under this module's name


def follow_first_conv(model: nn.Module, paths: list[str]) -> None:
    """After ``convert`` replaced the modules at ``paths``: point ``pretrained_cfg["first_conv"]`` at the stem's conv.

    A conversion moves it (``conv1`` becomes ``conv1.conv`` inside an ``SPDConv`` and back); the cfg is replaced by a
    copy, never edited in place.
    """
    cfg = getattr(model, "pretrained_cfg", None)
    names = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if not names:
        return
    moved = [_moved_conv(model, name, paths) for name in ([names] if isinstance(names, str) else names)]
    new = moved[0] if isinstance(names, str) else type(names)(moved)
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
            inner = next((n for n, m in model.get_submodule(path).named_modules() if isinstance(m, nn.Conv2d)), None)
            if inner is not None:
                return f"{path}.{inner}" if inner else path
    return name


def timm_space_to_depth(module: nn.Module) -> SpaceToDepthPart | None:
    """timm's own space-to-depth layers (``SpaceToDepth``; ``SpaceToDepthJit`` / ``SpaceToDepthModule`` of older
    timm): block size ``bs``, timm's channel order."""
    from timm.layers import space_to_depth

    classes = tuple(c for n in ("SpaceToDepth", "SpaceToDepthJit") if (c := getattr(space_to_depth, n, None)))
    if isinstance(module, classes) and isinstance(getattr(module, "bs", None), int):
        return SpaceToDepthPart(module.bs, "timm")
    wrapper = getattr(space_to_depth, "SpaceToDepthModule", None)
    if wrapper is not None and isinstance(module, wrapper):
        return timm_space_to_depth(module.op) or SpaceToDepthPart(4, "timm")
    return None


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
    register_recogniser(timm_space_to_depth)
    from .timm_models import convnext, resnet  # noqa: F401  (importing registers the models)

    return model_names()
