"""Checks on tensors alone: the stem of a state dict run before and after in float64, and tensor-by-tensor equality."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import ConversionError
from ..orders import check_order
from ..state_dict import StemKeys, convert_state_dict, find_stem
from ..verify import DEFAULT_TOLERANCE, VerificationReport, verify

STEM_ASSUMES = (
    "a state dict has no geometry: both stems are run with same padding (k // 2) and the given order ({}); "
    "a wrong --order cannot be seen from the weights"
)


# GUIDE section 1's channel table written out: the stem check runs the space-to-depth by this definition, not by
# ``orders`` (which the conversion uses), so a wrong table or remap cannot agree with itself.
_CHANNEL_BY_DEFINITION: dict[str, Callable[[int, int, int, int, int], int]] = {
    "yolov5": lambda c, dy, dx, channels, bs: (dx * bs + dy) * channels + c,
    "timm": lambda c, dy, dx, channels, bs: (dy * bs + dx) * channels + c,
    "pixel_unshuffle": lambda c, dy, dx, channels, bs: c * bs * bs + dy * bs + dx,
}


class StateDictStem(nn.Module):
    """A state dict's stem run as it computes, (N, C, H, W) -> (N, O, H / bs, W / bs): Focus / ReOrg form =
    space-to-depth (by definition) + stride-1 conv, padding k // 2; conv form = one conv of stride ``bs``, padding
    ``bs * (k // bs // 2)``; then its bias and BatchNorm."""

    def __init__(self, state_dict: dict[str, torch.Tensor], stem: StemKeys, block_size: int, order: str):
        super().__init__()
        # where the stem's conv.* and bn.* entries live; a conv not named `.conv` (timm's `conv1.1`) has no bn here
        inner = stem.weight_key[: -len(".conv.weight")] if stem.weight_key.endswith(".conv.weight") else None
        self.s2d, self.bs, self.order = stem.form in ("focus", "reorg"), block_size, order
        weight = state_dict[stem.weight_key]
        self.weight = nn.Parameter(weight.detach().clone())
        bias = state_dict.get(stem.weight_key[: -len("weight")] + "bias")
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.bn_keys = sorted(k[len(inner) + 4 :] for k in state_dict if inner and k.startswith(f"{inner}.bn."))
        for k in self.bn_keys:  # a corrupt or mixed file: say which entries disagree, not torch's cut-off dump
            entry = state_dict[f"{inner}.bn.{k}"]
            if entry.ndim == 1 and entry.shape[0] != weight.shape[0]:
                raise ConversionError(
                    f"the stem's BatchNorm {inner}.bn.{k} has {entry.shape[0]} channels but its conv "
                    f"{stem.weight_key} {weight.shape[0]} output channels: not one model's state dict"
                )
        self.bn = nn.BatchNorm2d(weight.shape[0]) if self.bn_keys else None
        if self.bn is not None:
            self.bn.load_state_dict({k: state_dict[f"{inner}.bn.{k}"] for k in self.bn_keys}, strict=False)
        kh, kw = weight.shape[-2:] if self.s2d else (weight.shape[-2] // block_size, weight.shape[-1] // block_size)
        self.stride = 1 if self.s2d else block_size
        self.padding = (kh // 2, kw // 2) if self.s2d else (block_size * (kh // 2), block_size * (kw // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.s2d:
            n, c, h, w = x.shape
            bs, channel = self.bs, _CHANNEL_BY_DEFINITION[self.order]
            y = x.new_empty(n, c * bs * bs, h // bs, w // bs)
            for ci in range(c):
                for dy in range(bs):
                    for dx in range(bs):
                        y[:, channel(ci, dy, dx, c, bs)] = x[:, ci, dy::bs, dx::bs]
            x = y
        x = nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return self.bn(x) if self.bn is not None else x


def verify_stems(
    before: dict, after: dict, block_size: int, order: str, stems: tuple[StemKeys, StemKeys] | None = None
) -> VerificationReport:
    """Run the original stem and the converted one (conv, bias, BatchNorm) on the same random input in float64;
    ``stems``: where each stem is, when the file said so (else found by key layout)."""
    check_order(order)
    stems = list(stems) if stems else [find_stem(sd, block_size=block_size) for sd in (before, after)]
    if None in stems:
        inf, problem = float("inf"), "a state dict has no recognisable stem"
        return VerificationReport(inf, inf, float("nan"), DEFAULT_TOLERANCE, False, 0, [], "float64", problem)
    reference, candidate = (StateDictStem(sd, s, block_size, order) for sd, s in zip((before, after), stems))
    in_channels = stems[0].shape[1] // (block_size**2 if reference.s2d else 1)
    report = verify(reference, candidate, input_shape=(2, in_channels, 8 * block_size, 12 * block_size))
    if reference.bn_keys != candidate.bn_keys:
        report.passed, report.problem = False, f"BatchNorm entries differ: {reference.bn_keys} -> {candidate.bn_keys}"
    return report


_IDENTICAL_BY_COPY: contextvars.ContextVar[Callable[[torch.Tensor, torch.Tensor], bool] | None] = (
    contextvars.ContextVar("focus_surgery_identical_by_copy", default=None)
)


@contextlib.contextmanager
def identical_by_copy(proven: Callable[[torch.Tensor, torch.Tensor], bool] | None) -> Iterator[None]:
    """Within this block ``same_bits(a, b)`` is True, without reading either, where ``proven(a, b)``: ``b`` views a
    record that a write copied byte for byte from the one ``a`` views (``loader.zip_rewrite.copied_views``)."""
    token = _IDENTICAL_BY_COPY.set(proven)
    try:
        yield
    finally:
        _IDENTICAL_BY_COPY.reset(token)


def _as_stored(t: torch.Tensor) -> bool:
    """``t``'s values are its memory's bytes read as its dtype (strided, with data, no conjugate or negative bit):
    two such views of the same bytes hold the same bits."""
    return t.layout == torch.strided and t.device.type != "meta" and not (t.is_conj() or t.is_neg())


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (a NaN equals itself, -0.0 differs from 0.0, int64 past 2**53 is exact). Two views of the same
    memory are equal without reading it, and so are views of records proven copied (``identical_by_copy``)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_quantized or b.is_quantized:  # values (scale, zero point and integers): a byte view crashes torch.equal
        return bool(torch.equal(a, b))
    if _as_stored(a) and _as_stored(b) and (a.stride(), a.storage_offset()) == (b.stride(), b.storage_offset()):
        if a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr():
            return True  # the very same bytes
        proven = _IDENTICAL_BY_COPY.get()
        if proven is not None and proven(a, b):
            return True
    try:
        return torch.equal(*(t.detach().reshape(-1).contiguous().view(torch.uint8) for t in (a, b)))
    except (RuntimeError, TypeError):  # a layout without a byte view (sparse): values compared
        return bool(torch.equal(a, b))


def compare_state_dicts(
    a: dict, b: dict, block_size: int = 2, order: str = "yolov5", tolerance: float = DEFAULT_TOLERANCE, stems=None
) -> dict[str, Any]:
    """Compare two state dicts tensor by tensor (the stem of ``a`` remapped first when the forms differ); ``stems``:
    ``(StemKeys, StemKeys)`` where the file said so (else found by key layout).

    Returns:
        (dict): ``compared`` (what was done), ``tensors``, ``max_abs_err``, ``passed``, ``problem``. Zero tensors
        compared never pass; a tensor whose shape or dtype differs fails.
    """
    stem_a, stem_b = stems or (find_stem(a, block_size=block_size), find_stem(b, block_size=block_size))
    how = "every tensor, as stored"
    if stem_a and stem_b and stem_a.form != stem_b.form:
        to = "focus" if stem_b.form == "reorg" and stem_a.weightless else stem_b.form
        a = convert_state_dict(a, to, block_size, order, stem=stem_a)[0]
        how = f"the stem remapped ({stem_a.form} -> {stem_b.form}, order {order}), then every tensor"
    result: dict[str, Any] = {"compared": f"state dicts: {how}", "tensors": 0, "max_abs_err": None, "passed": False}
    if a.keys() != b.keys():
        diff = sorted(set(a) ^ set(b))
        result["problem"] = f"keys differ ({len(diff)}, e.g. {diff[:3]}): not the same model"
        return result
    errors = []
    for key in a:
        if a[key].shape != b[key].shape:
            result["problem"] = f"{key} has shape {tuple(a[key].shape)} vs {tuple(b[key].shape)}: not the same model"
            return result
        if a[key].dtype != b[key].dtype:  # equal values in another dtype are another file (size, precision)
            result["problem"] = f"{key} is {a[key].dtype} vs {b[key].dtype}: the dtype changed"
            return result
        if a[key].numel():  # the same bits are no error; only a tensor that differs is measured in float64
            same = same_bits(a[key], b[key])
            errors.append(0.0 if same else float((a[key].detach().double() - b[key].detach().double()).abs().max()))
    result["tensors"] = len(errors)
    if not errors:
        result["problem"] = "no tensors to compare: nothing was verified"
        return result
    result["max_abs_err"] = max(errors)
    result["passed"] = result["max_abs_err"] <= tolerance
    result["problem"] = "" if result["passed"] else "tensors differ"
    return result


def check_stem(before: dict, after: dict, block_size: int = 2, order: str = "yolov5", stems=None) -> dict[str, Any]:
    """A state dict's conversion checked: the stem run before and after in float64 (``verify_stems``), every other
    tensor compared bit for bit; ``stem_check``'s dict."""
    checked = verify_stems(before, after, block_size, order, stems)
    rest = compare_state_dicts(before, after, block_size, order, tolerance=0.0, stems=stems)
    return stem_check(checked.to_dict(), [checked], rest, "the stem run before and after in float64")


def stem_check(stem: Any, reports: list[VerificationReport], rest: dict[str, Any], compared: str) -> dict[str, Any]:
    """A conversion's check: the stems run before and after in float64 (``reports``; ``stem``: their JSON form) and
    every other tensor compared bit for bit (``rest``, from ``compare_state_dicts``)."""
    failed = next((r for r in reports if not r.passed), None)
    passed = failed is None and rest["passed"]
    problem = "" if passed else (failed.problem or str(failed)) if failed else rest["problem"]
    compared = f"{compared}; {rest['compared']}"
    return {"stem": stem, "tensors": rest, "passed": passed, "problem": problem, "compared": compared}


def recorded_stem(
    row: Any, block_size: int = 2, order: str | None = None, state: dict[str, torch.Tensor] | None = None
) -> tuple[nn.Module, tuple[int, ...]]:
    """A recorded ``Conv`` row (its ``conv``, ``bn``, ``act`` children, run in that order as yolov7 / YOLOR / YOLOv5
    ``Conv.forward`` does) as a float64 module, after a space-to-depth(``block_size``, ``order``) when ``order`` is
    given; with the input shape a stem check runs it on. ``state``: the row's tensors by its own keys (``conv.weight``,
    ``bn.running_var``...: a tensors-only file's, read back), each child loading all of its own (strict); else the
    record's."""
    from ..layers import SpaceToDepth
    from ..yolov5.rebuild import leaf_spec, make_leaf

    block = nn.Module()
    for name, child in row.children().items():
        leaf = make_leaf(leaf_spec(child))
        if state is None:
            own = child.state_dict()
        else:  # the child's own entries of the row's tensors
            own = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}.")}
        leaf.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in own.items()})
        setattr(block, name, leaf)
    block.forward = lambda x: block.act(block.bn(block.conv(x)))
    block = block.double().eval()
    channels, stride = block.conv.in_channels, block.conv.stride[0]
    if order is None:
        return block, (2, channels, 16 * stride, 24 * stride)
    stem = nn.Sequential(SpaceToDepth(block_size, order), block).double().eval()
    return stem, (2, channels // block_size**2, 16 * block_size, 24 * block_size)
