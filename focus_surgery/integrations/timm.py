"""timm integration: space-to-depth stem variants of ResNet and ConvNeXt, registered in timm's own model registry.

After ``import focus_surgery`` (or ``focus_surgery.integrations.timm.register()``), ``timm.create_model`` knows:

* ``resnet{18,50}_s2d``: SpaceToDepth(4, timm order) + 3x3 conv + BN + ReLU, no max-pool (TResNet's stem).
* ``resnet{18,50}_s2d_focus``: SpaceToDepth(2, yolov5 order) + 3x3 conv + BN + ReLU + max-pool (YOLOv5's Focus).
* ``convnext_{atto,tiny}_s2d``: SpaceToDepth(4, timm) + 3x3 conv + LayerNorm2d (stem reduction 4, as ConvNeXt).
* ``convnext_{atto,tiny}_s2d_focus``: SpaceToDepth(2, yolov5) + 3x3 stride-2 conv + LayerNorm2d.

Everything else (``num_classes``, ``in_chans``, ``drop_path_rate``, ``features_only``, ``pretrained_cfg_overlay``)
is the base model's. Pretrained weights from a file adapt to any ``in_chans`` per pixel phase
(``adapt_state_dict_in_chans``, also usable for TResNet, whose stem timm can only adapt to 1 channel).
This module imports timm; ``focus_surgery`` itself imports it only when timm is imported (see ``import_hooks``).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, model_entrypoint, register_model
from timm.models.convnext import ConvNeXt
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ..in_chans import adapt_s2d_input_channels
from ..layers import SpaceToDepth
from ..surgery import is_conv_block, space_to_depth_params

STEMS = {"s2d": (4, "timm", 1), "focus": (2, "yolov5", 1)}  # stem -> (block size, order, conv stride) for ResNet
CONVNEXT_STEMS = {"s2d": (4, "timm", 1), "focus": (2, "yolov5", 2)}  # ConvNeXt's stem must reduce by 4


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


class SpaceToDepthResNet(ResNet):
    """timm ``ResNet`` whose 7x7/2 stem conv is space-to-depth + 3x3 conv.

    Args:
        stem (str): ``"s2d"``: SpaceToDepth(4) + 3x3 conv and no max-pool (TResNet); ``"focus"``: SpaceToDepth(2) +
            3x3 conv, max-pool kept (YOLOv5's Focus). Feature reductions are those of the stem.
        **kwargs: ``timm.models.resnet.ResNet`` arguments (``block``, ``layers``, ``in_chans``, ...).
    """

    def __init__(self, stem: str = "s2d", **kwargs: Any):
        super().__init__(**kwargs)
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}: use one of {', '.join(STEMS)}")
        block_size, order, stride = STEMS[stem]
        old = self.conv1
        if not isinstance(old, nn.Conv2d):
            raise ValueError("SpaceToDepthResNet replaces the single-conv stem: leave stem_type at its default")
        self.conv1 = space_to_depth_stem(self.in_chans, old.out_channels, block_size, order, stride, like=old.weight)
        nn.init.kaiming_normal_(self.conv1[1].weight, mode="fan_out", nonlinearity="relu")
        if stem == "s2d":
            self.maxpool = nn.Identity()
        self.feature_info[0] = dict(self.feature_info[0], reduction=block_size * stride)
        self._traits = {"first_conv": None}  # timm's adapt_input_conv cannot do s2d stems: our filter does


class SpaceToDepthConvNeXt(ConvNeXt):
    """timm ``ConvNeXt`` whose 4x4/4 patchify stem conv is space-to-depth + 3x3 conv (stem reduction stays 4).

    Args:
        stem (str): ``"s2d"``: SpaceToDepth(4) + 3x3 conv; ``"focus"``: SpaceToDepth(2) + 3x3 stride-2 conv.
        **kwargs: ``timm.models.convnext.ConvNeXt`` arguments (``depths``, ``dims``, ``in_chans``, ...).
    """

    def __init__(self, stem: str = "s2d", **kwargs: Any):
        super().__init__(**kwargs)
        if stem not in CONVNEXT_STEMS:
            raise ValueError(f"unknown stem {stem!r}: use one of {', '.join(CONVNEXT_STEMS)}")
        block_size, order, stride = CONVNEXT_STEMS[stem]
        if len(self.stem) != 2:
            raise ValueError("SpaceToDepthConvNeXt replaces the patchify stem: leave stem_type at 'patch'")
        old, norm = self.stem[0], self.stem[1]
        new = space_to_depth_stem(
            self.in_chans, old.out_channels, block_size, order, stride, old.bias is not None, like=old.weight
        )
        trunc_normal_(new[1].weight, std=0.02)
        if new[1].bias is not None:
            nn.init.zeros_(new[1].bias)
        self.stem = nn.Sequential(new[0], new[1], norm)
        self._traits = {"first_conv": None}


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


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "license": "apache-2.0", **kwargs,
    }


_RESNET_ARGS = {
    "resnet18": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
}
_CONVNEXT_ARGS = {
    "convnext_atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True),
    "convnext_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
}


def _model_name(base: str, stem: str) -> str:
    return f"{base}_s2d" if stem == "s2d" else f"{base}_s2d_focus"


# timm's register_model reads the default cfgs from the entrypoint's module under this name.
default_cfgs = generate_default_cfgs(
    {
        **{_model_name(b, s): _cfg(first_conv="conv1.1", classifier="fc") for b in _RESNET_ARGS for s in STEMS},
        **{
            _model_name(b, s): _cfg(first_conv="stem.1", classifier="head.fc")
            for b in _CONVNEXT_ARGS for s in CONVNEXT_STEMS
        },
    }
)


def _entrypoint(name: str, model_cls: type[nn.Module], base_args: dict[str, Any], stem: str, feature_cfg=None):
    def create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return build_model_with_cfg(
            model_cls, name, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg,
            **dict(base_args, stem=stem), **kwargs,
        )

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"{name}: {model_cls.__name__} with a {stem!r} space-to-depth stem (focus_surgery)."
    return create


def model_names() -> list[str]:
    """Names of every model this module registers."""
    return [_model_name(b, s) for b in _RESNET_ARGS for s in STEMS] + [
        _model_name(b, s) for b in _CONVNEXT_ARGS for s in CONVNEXT_STEMS
    ]


def register() -> list[str]:
    """Register our models in timm's registry and timm's conv types with the surgery (idempotent); return the names."""
    from .timm_convs import register_conv_types

    register_conv_types()
    convnext_features = dict(out_indices=(0, 1, 2, 3), flatten_sequential=True)
    entries = [(b, SpaceToDepthResNet, args, s, None) for b, args in _RESNET_ARGS.items() for s in STEMS]
    entries += [
        (b, SpaceToDepthConvNeXt, args, s, convnext_features)
        for b, args in _CONVNEXT_ARGS.items()
        for s in CONVNEXT_STEMS
    ]
    for base, model_cls, args, stem, feature_cfg in entries:
        name = _model_name(base, stem)
        if is_model(name) and getattr(model_entrypoint(name), "__module__", None) == __name__:
            continue  # already ours
        fn = _entrypoint(name, model_cls, args, stem, feature_cfg)
        globals()[name] = fn  # register_model looks the entrypoint's module up; keep the fn importable there too
        register_model(fn)
    return model_names()
