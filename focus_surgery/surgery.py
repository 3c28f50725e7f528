"""Module surgery: ``convert(model, to=...)`` replaces Focus / space-to-depth stems and strided convs exactly.

Walk -> build -> check -> apply -> hooks: every change is planned on the untouched model (``stems.plan``) and checked
in float64 on one copy (``stems.check``) before the modules are swapped in place and the registered hooks run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .stems import ConversionError, Replacement, Skipped, VerificationError, check, input_multiple, plan
from .stems.build import register_conv_type  # noqa: F401  (integrations teach conv types through the surgery)
from .stems.check import apply
from .stems.site import Change
from .verify import DEFAULT_TOLERANCE, VerificationReport, VerifiedReport

# Called with (model, replaced paths) after every applied conversion: integrations register here (the Ultralytics
# one rewrites ``model.yaml`` so a model rebuilt from it matches); the core never imports a framework.
POST_APPLY: list[Callable[[nn.Module, list[str]], Any]] = []


def register_post_apply(hook: Callable[[nn.Module, list[str]], Any]) -> None:
    """Run ``hook(model, paths)`` after each applied conversion (idempotent)."""
    if hook not in POST_APPLY:
        POST_APPLY.append(hook)


@dataclass
class ConversionReport(VerifiedReport):
    """What ``convert`` did: each replacement, each module left alone, and the measured error."""

    to: str
    scope: str
    replaced: list[Replacement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    verification: VerificationReport | None = None
    narrowed_inputs: list[str] = field(default_factory=list)  # input sizes the converted model no longer accepts

    def __str__(self) -> str:
        lines = [
            f"convert to={self.to!r} scope={self.scope!r}: {len(self.replaced)} replaced, {len(self.skipped)} left"
        ]
        lines += [
            f"  {r.path or '<root>'}: {r.old_form} -> {r.new_form}  "
            f"weight {tuple(r.old_weight_shape)} -> {tuple(r.new_weight_shape)}"
            for r in self.replaced
        ]
        lines += [f"  {s.path or '<root>'}: left unchanged - {s.reason}" for s in self.skipped]
        lines += [f"  note: {note}" for note in self.narrowed_inputs]
        lines += [f"  verify: {self.verification}"] if self.verification is not None else []
        return "\n".join(lines)


def narrowed_inputs(model: nn.Module, changes: list[Change], scope: str) -> tuple[list[str], int]:
    """A note per change that accepts fewer input sizes than the module it replaces, and the lcm of the changed
    modules' input multiples (what the changed model's input must also divide by)."""
    notes, multiple = [], 1
    for change in changes:  # helper changes too: a restored space-to-depth layer narrows on its own
        old, new = input_multiple(model.get_submodule(change.path)), input_multiple(change.new)
        multiple = math.lcm(multiple, new)
        if new % old or new == old:
            continue
        was = "any height and width" if old == 1 else f"multiples of {old}"
        what = "the converted model accepts only images" if scope == "stem" else "accepts only inputs"
        notes.append(f"{change.path}: {what} with height and width divisible by {new} (the original accepted {was})")
    return notes, multiple


def apply_changes(model: nn.Module, changes: list[Change]) -> None:
    """Put ``changes`` in place in ``model`` and run the registered hooks (e.g. Ultralytics' ``sync_yaml``)."""
    apply(model, changes)
    for hook in POST_APPLY:  # e.g. the Ultralytics integration's sync_yaml: model.yaml follows the surgery
        hook(model, [c.path for c in changes])


def convert(
    model: nn.Module,
    to: str = "conv",
    scope: str = "stem",
    verify: bool = True,
    order: str | None = None,
    inputs: torch.Tensor | tuple | None = None,
    input_shape: tuple[int, ...] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    strict: bool = False,
) -> ConversionReport:
    """Replace Focus / space-to-depth stems or strided convs in ``model``, in place (only if all succeeds), exactly.

    Args:
        to (str): ``"conv"`` (space-to-depth forms -> one strided conv), ``"focus"`` (strided conv -> Focus, or an
            SPDConv where the padding needs it) or ``"s2d"`` (strided conv -> SPDConv).
        scope (str): ``"stem"`` (the first conv the input meets) or ``"all"``.
        verify (bool): Compare before and after in float64; raise and change nothing above ``tolerance``.
        order (str | None): Order of new space-to-depth layers (None: ``yolov5``, ``pixel_unshuffle`` if grouped).
        inputs, input_shape: Inputs for the verification (random of an inferred valid shape by default).
        strict (bool): Raise ``ConversionError`` instead of reporting modules that cannot be converted.

    Returns:
        (ConversionReport): Each replacement (path, forms, weight shapes), what was left and why, the measured error.
    """
    changes, skipped = plan(model, to, scope, order)
    report = ConversionReport(to, scope, [c.record for c in changes if c.record is not None], skipped)
    report.narrowed_inputs, multiple = narrowed_inputs(model, changes, scope)
    if strict and skipped:
        raise ConversionError(f"{skipped[0].path}: {skipped[0].reason}")
    if not changes:
        return report
    if verify:
        report.verification = check(model, changes, inputs, input_shape, tolerance, multiple)
        if not report.verification.passed:
            raise VerificationError(f"verification failed, model left unchanged: {report.verification}", report)
    apply_changes(model, changes)
    return report


def iter_stems(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Each convertible stem of ``model`` in both directions, for ``inspect``."""
    for to in ("conv", "focus"):
        changes, skipped = plan(model, to, "stem")
        for change in changes:
            if change.record is not None:
                yield {"direction": to, **asdict(change.record)}
        for skip in skipped:
            yield {"direction": to, "path": skip.path, "skipped": skip.reason}
