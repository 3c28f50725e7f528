"""The stem vocabulary as plain data: where a stem is and what it is (``StemSite``), what is done to it (``Change``),
and what a conversion reports (``Replacement``, ``Skipped``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConversionError, VerificationFailed  # noqa: F401 - ConversionError: re-exported by stems

VerificationError = VerificationFailed  # the old name: the converted model's outputs differ beyond the tolerance


@dataclass(frozen=True)
class SpaceToDepthPart:
    """What a recogniser answers for a module computing a space-to-depth of ``block_size`` in ``order``: a bare layer
    (``block`` None), or a Focus-like module ``forward = block(F.pad(space_to_depth(x), pad))`` with its conv block.
    ``problem`` says why it cannot convert (a channel order of its own), else None.
    """

    block_size: int
    order: str
    block: nn.Module | None = None
    pad: tuple[int, int, int, int] | None = None
    problem: str | None = None


@dataclass
class StemSite:
    """One place of a model a conversion can act on: the module at ``path`` and its ``form``: ``focus`` (space-to-depth
    + conv block in one module), ``folds`` (an integration's module with ``to_strided_conv()``), ``s2d`` (a layer
    whose conv block is the next sibling, at ``block_path``) or ``conv`` (``block_size`` is then its stride, and
    ``folded`` the ``(path, FoldedSpaceToDepth)`` an earlier ``to="conv"`` left before it). ``block`` is the conv block
    the rearrangement feeds (the conv itself for ``conv``); ``problem`` says why the site cannot convert.
    """

    path: str
    module: nn.Module
    form: str
    block_size: int = 1
    order: str | None = None
    block: nn.Module | None = None
    block_path: str | None = None
    pad: tuple[int, int, int, int] | None = None
    problem: str | None = None
    folded: tuple[str, nn.Module] | None = None

    @property
    def conv(self) -> nn.Conv2d | None:
        """The ``nn.Conv2d`` of ``block`` (None when there is none)."""
        block = self.block
        return block if isinstance(block, nn.Conv2d) else getattr(block, "conv", None)

    kernel = property(lambda self: tuple(self.conv.kernel_size) if self.conv is not None else None)
    padding = property(lambda self: self.conv.padding if self.conv is not None else None)


@dataclass
class Replacement:
    """One module replaced (or, for a dry run, that would be replaced)."""

    path: str
    old_form: str
    new_form: str
    old_type: str
    new_type: str
    old_weight_shape: list[int]
    new_weight_shape: list[int]
    block_size: int
    order: str


@dataclass
class Skipped:
    """A candidate module left unchanged, and why."""

    path: str
    reason: str


@dataclass
class Change:
    """Put ``new`` at ``path``. ``record`` is None for a helper change (the placeholder left where a space-to-depth
    layer was folded, or the layer restored before its conv)."""

    path: str
    new: nn.Module
    record: Replacement | None = None
