"""Round-trip a timm architecture's stem through ``convert`` both ways, measured in float64: what
``tests/test_timm_convert.py`` asserts and ``scripts/timm_stem_table.py`` prints as the README table."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import timm
import torch

from ..surgery import ConversionError, convert
from ..verify import input_channels_and_multiple, verify

# The README table's architectures, with the input size each is verified at (ViT-like models: their configured size).
_FIXED = (224, 224)
_AT_64 = """
resnet18 resnet50 resnet50d resnet26t resnext50_32x4d seresnext26d_32x4d ecaresnet26t skresnet18
res2net50_14w_8s resnetv2_50 resnetv2_50x1_bit resnetrs50 regnetx_002 regnety_002 efficientnet_b0
tf_efficientnet_b0 efficientnetv2_rw_t tf_efficientnetv2_b0 mobilenetv2_100 mobilenetv3_small_100
tf_mobilenetv3_small_100 lcnet_050 mnasnet_100 semnasnet_100 fbnetc_100 spnasnet_100 tinynet_a mixnet_s
tf_mixnet_s ghostnet_100 rexnet_100 gernet_s repvgg_a0 mobileone_s0 densenet121 dla34 dpn68 vgg11 cspresnet50
cspdarknet53 darknet53 cs3darknet_s ese_vovnet19b_dw hrnet_w18_small dm_nfnet_f0 nfnet_l0 nf_resnet26
convnext_atto convnext_tiny convnextv2_atto edgenext_xx_small poolformer_s12 pvt_v2_b0 fastvit_t8
efficientvit_b0 tresnet_m
""".split()
ARCHITECTURES: dict[str, tuple[int, int]] = {
    **dict.fromkeys(_AT_64, (64, 64)),
    "inception_v3": (299, 299),  # SAME-less valid 3x3/2 stem: the s2d form needs even sizes (reported)
    "xception41": (299, 299),
    "vit_tiny_patch16_224": _FIXED,
    "deit_tiny_patch16_224": _FIXED,
    "swin_tiny_patch4_window7_224": _FIXED,
    "resnet18_s2d": (64, 64),  # ours
    "convnext_tiny_s2d_focus": (64, 64),  # ours
}


@dataclass
class StemRoundTrip:
    """One architecture's stem converted one way and back, each step verified in float64 against the model before."""

    architecture: str
    path: str
    stem_before: str
    stem_after: str
    max_rel_err: float  # largest error of both steps, relative to the output scale
    restored: bool  # the original module types, parameter names and values come back bit for bit
    narrowed: str  # the input sizes the intermediate form needs, when fewer than the original's ("" if none)
    odd_size_err: float | None  # restored vs original at another (odd where it can) size; None: fixed size only
    first_conv_ok: bool  # pretrained_cfg["first_conv"] names an existing weight after both steps
    input_shape: tuple[int, ...]


def _first_conv_ok(model: torch.nn.Module) -> bool:
    names = model.pretrained_cfg.get("first_conv")
    keys = model.state_dict()
    return all(f"{name}.weight" in keys for name in ([names] if isinstance(names, str) else names or []))


def _same_modules(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    types = [(n, type(m)) for n, m in a.named_modules()] == [(n, type(m)) for n, m in b.named_modules()]
    sa, sb = a.state_dict(), b.state_dict()
    return types and list(sa) == list(sb) and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def stem_round_trip(name: str, size: tuple[int, int] | None = None, seed: int = 0, **kwargs) -> StemRoundTrip:
    """Build ``name`` with random weights, convert its stem to the other form and back, verify each step.

    A strided-conv stem goes to space-to-depth first; a space-to-depth stem (TResNet, ours) to one conv first.

    Raises:
        ConversionError: If a step converts nothing or verification fails (the tolerance is 1e-10 relative).
    """
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    height, width = size or ARCHITECTURES.get(name, (64, 64))
    shape = (1, kwargs.get("in_chans", 3), height, width)
    original = copy.deepcopy(model)
    first = convert(model, to="conv", input_shape=shape)
    if not first.replaced:
        even = tuple(s + s % 2 for s in shape[2:])  # an odd size (inception's 299) -> the next even one
        first = convert(model, to="s2d", input_shape=(*shape[:2], *even))
        second = convert(model, to="conv", input_shape=(*shape[:2], *even))
    else:  # back to space-to-depth in the stem's own channel order
        second = convert(model, to="s2d", order=first.replaced[0].order, input_shape=shape)
    if not first.replaced or not second.replaced:
        skipped = (first.skipped + second.skipped)[:1]
        why = f" ({skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise ConversionError(f"{name}: stem not converted{why}")
    odd_err = None
    if not model.pretrained_cfg.get("fixed_input_size"):
        step = input_channels_and_multiple(original)[1]  # 1 (odd sizes) unless the original has an s2d stem
        other = (*shape[:2], height + step, width + 3 * step)
        try:
            with torch.no_grad():
                original(torch.rand(other))
        except (RuntimeError, ValueError):  # the original itself rejects it (e.g. HRNet's fusions need even sizes)
            pass
        else:
            odd_err = verify(original, model, input_shape=other).max_rel_err
    stem, err = first.replaced[0], max(first.verification.max_rel_err, second.verification.max_rel_err)
    narrowed = "; ".join(n.split(": ", 1)[1] for n in (first.narrowed_inputs if first.to == "s2d" else []))
    restored = _same_modules(original, model)
    return StemRoundTrip(
        name, stem.path, stem.old_form, stem.new_form, err, restored, narrowed, odd_err, _first_conv_ok(model), shape
    )


def markdown_table(rows: list[StemRoundTrip]) -> str:
    """The README table: architecture, stem before, stem after, error, what comes back."""
    lines = [
        "| architecture | stem module | stem before | stem after | max rel. error | restored | other size | "
        "converted form accepts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        odd = "n/a" if r.odd_size_err is None else f"{r.odd_size_err:.1e}"
        sizes = r.narrowed.replace("the converted model accepts only images with ", "").split(" (the original")[0]
        lines.append(
            f"| `{r.architecture}` | `{r.path}` | `{r.stem_before}` | `{r.stem_after}` | {r.max_rel_err:.1e} "
            f"| {'yes' if r.restored and r.first_conv_ok else 'no'} | {odd} | {sizes or 'any'} |"
        )
    return "\n".join(lines)
