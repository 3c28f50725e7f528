"""Round-trip a timm architecture's stem through ``convert`` in both directions and measure it in float64.

Used by ``tests/test_timm_convert.py`` and by ``scripts/timm_stem_table.py`` (the README table), so the table shows
exactly what the tests assert.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import timm
import torch

from ..surgery import ConversionError, convert

# Architectures of the README table, with the smallest input each accepts (ViTs need their configured size).
ARCHITECTURES: dict[str, tuple[int, int]] = {
    "resnet18": (32, 32),
    "resnet50": (32, 32),
    "resnetv2_50": (32, 32),
    "resnetv2_50x1_bit": (32, 32),  # StdConv2d stem (weight standardisation)
    "regnety_002": (32, 32),
    "efficientnet_b0": (32, 32),
    "tf_efficientnet_b0": (32, 32),  # Conv2dSame stem (TF "SAME" padding)
    "mobilenetv3_small_100": (32, 32),
    "convnext_tiny": (32, 32),
    "vit_tiny_patch16_224": (224, 224),
    "tresnet_m": (32, 32),
    "resnet18_s2d": (32, 32),  # ours
    "convnext_tiny_s2d_focus": (32, 32),  # ours
}


@dataclass
class StemRoundTrip:
    """One architecture's stem converted one way and back, each step verified in float64 against the model before it.

    ``weights_restored``: the round trip gives back the original parameters and buffers bit for bit (their names
    may change, e.g. TResNet's ``SpaceToDepth`` + conv block comes back as one ``SPDConv``).
    """

    architecture: str
    path: str
    stem_before: str
    stem_after: str
    max_rel_err: float  # largest error of both steps, relative to the output scale
    weights_restored: bool
    input_shape: tuple[int, ...]


def stem_round_trip(name: str, size: tuple[int, int] | None = None, seed: int = 0, **kwargs) -> StemRoundTrip:
    """Build ``name`` with random weights, convert its stem to the other form and back, verify each step.

    A strided-conv stem goes to space-to-depth first; a space-to-depth stem (TResNet, ours) to one conv first.

    Raises:
        ConversionError: If a step converts nothing or verification fails (the tolerance is 1e-10 relative).
    """
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    height, width = size or ARCHITECTURES.get(name, (32, 32))
    shape = (1, kwargs.get("in_chans", 3), height, width)
    original = copy.deepcopy(model)
    first = convert(model, to="conv", input_shape=shape)
    if not first.replaced:
        first = convert(model, to="s2d", input_shape=shape)
        second = convert(model, to="conv", input_shape=shape)
    else:  # back to space-to-depth in the stem's own channel order
        second = convert(model, to="s2d", order=first.replaced[0].order, input_shape=shape)
    if not first.replaced or not second.replaced:
        skipped = (first.skipped + second.skipped)[:1]
        why = f" ({skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise ConversionError(f"{name}: stem not converted{why}")
    stem = first.replaced[0]
    before, after = list(original.state_dict().values()), list(model.state_dict().values())
    restored = len(before) == len(after) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(before, after)
    )
    return StemRoundTrip(
        name, stem.path, stem.old_form, stem.new_form,
        max(first.verification.max_rel_err, second.verification.max_rel_err), restored, shape,
    )


def markdown_table(rows: list[StemRoundTrip]) -> str:
    """The README table: architecture, stem before, stem after, error."""
    lines = [
        "| architecture | stem module | stem before | stem after | max rel. error | weights restored |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r.architecture}` | `{r.path}` | `{r.stem_before}` | `{r.stem_after}` | {r.max_rel_err:.1e} "
            f"| {'yes' if r.weights_restored else 'no'} |"
        )
    return "\n".join(lines)
