"""The stem vocabulary: where a stem is and what it is (``StemSite``), what is done to it (``Change``), and the
records a conversion reports (``Replacement``, ``Skipped``). Plain data: recognition, building and checking live in
``recognize``, ``build`` and ``check``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


class ConversionError(ValueError):
    """A conversion that would not be exact, or a verification that failed; the model is left unchanged."""


class VerificationError(ConversionError):
    """The converted model's outputs differ from the original's by more than the tolerance."""


@dataclass(frozen=True)
class SpaceToDepthPart:
    """A module recognised as computing a space-to-depth: a bare layer, or one followed by its own conv block
    (a Focus-like module: ``forward = block(pad(space_to_depth(x)))``).

    Attributes:
        block_size (int): ``bs``.
        order (str): ``yolov5`` / ``timm`` / ``pixel_unshuffle`` (anything else is refused with ``problem``).
        block (nn.Module | None): The conv block (or bare ``nn.Conv2d``) inside a Focus-like module; None for a layer.
        pad (tuple | None): Explicit ``F.pad`` (left, right, top, bottom) between rearrangement and conv (SPDConv).
        problem (str | None): Why it cannot be converted (an unnamed channel order), else None.
    """

    block_size: int
    order: str
    block: nn.Module | None = None
    pad: tuple[int, int, int, int] | None = None
    problem: str | None = None


@dataclass
class StemSite:
    """One place of a model a conversion can act on, in the order the input meets it.

    Attributes:
        path (str): Module path of ``module``.
        module (nn.Module): The module there.
        form (str): ``focus`` (space-to-depth + conv in one module), ``folds`` (an integration's module with a
            ``to_strided_conv()``), ``s2d`` (a space-to-depth layer; its conv is the next sibling) or ``conv``.
        block_size (int): Block size of the space-to-depth (for ``conv``: its stride).
        order (str | None): Channel order of the space-to-depth, None for a conv.
        block (nn.Module | None): The conv block the rearrangement feeds (``focus``, ``s2d``), or the conv itself.
        block_path (str | None): Path of ``block`` when it is a sibling (``s2d``).
        pad (tuple | None): Explicit pad of an SPDConv.
        problem (str | None): Why the site cannot convert, else None.
        folded (tuple | None): ``(path, FoldedSpaceToDepth)`` left before a ``conv`` by an earlier ``to="conv"``.
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

    @property
    def kernel(self) -> tuple[int, int] | None:
        return tuple(self.conv.kernel_size) if self.conv is not None else None

    @property
    def padding(self) -> tuple[int, int] | str | None:
        return self.conv.padding if self.conv is not None else None


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
