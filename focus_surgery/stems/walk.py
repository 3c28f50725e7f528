"""One walk over a module tree: the stem sites in the order the input meets them, and the plan built from them."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..layers import FoldedSpaceToDepth
from ..orders import check_order
from .build import changes as build_changes
from .recognisers import conv_of, folds_itself, is_conv_block, is_conv_like, part_of
from .site import Change, ConversionError, Skipped, StemSite

TARGETS = ("conv", "focus", "s2d")
SCOPES = ("stem", "all")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _feeds_only_next(sequence: nn.Sequential, index: int) -> bool:
    """True if child ``index``'s output goes only to child ``index + 1`` (always, unless Ultralytics routing)."""
    children = list(sequence.children())
    if not all(hasattr(m, "f") for m in children):
        return True
    if children[index + 1].f != -1:
        return False
    row = getattr(children[index], "i", index)
    return not any(row in (m.f if isinstance(m.f, list) else [m.f]) for m in children[index + 2 :])


def _site(parent: nn.Module, children: list, index: int, prefix: str) -> StemSite | None:
    """The stem site at child ``index`` of ``parent`` (``children``: its named children), else None."""
    name, child = children[index]
    path = _join(prefix, name)
    after_name, after = children[index + 1] if index + 1 < len(children) else (None, None)
    part = part_of(child, feeds=after)
    if part is not None and part.block is not None:
        return StemSite(
            path, child, "focus", part.block_size, part.order, part.block, pad=part.pad, problem=part.problem
        )
    if folds_itself(child):
        return StemSite(path, child, "folds", getattr(child, "block_size", 0), getattr(child, "order", ""))
    sequential = isinstance(parent, nn.Sequential)
    if part is not None:
        problem = part.problem
        if problem is None and not is_conv_like(after):
            problem = "space-to-depth is not followed by a conv in the same container"
        elif problem is None and not (sequential and _feeds_only_next(parent, index)):
            problem = "space-to-depth output is used by more than the next conv"
        block_path = _join(prefix, after_name) if after_name is not None else None
        return StemSite(path, child, "s2d", part.block_size, part.order, after, block_path, problem=problem)
    if isinstance(child, nn.Conv2d) or is_conv_block(child):
        before_name, before = children[index - 1] if index else (None, None)
        folded = (_join(prefix, before_name), before) if sequential and isinstance(before, FoldedSpaceToDepth) else None
        return StemSite(path, child, "conv", conv_of(child).stride[0], None, child, folded=folded)
    return None


def walk(model: nn.Module, prefix: str = "") -> Iterator[StemSite]:
    """Every stem site of ``model`` (depth first, in registration order); a site's inside is not walked."""
    children = list(model.named_children())
    for index, (name, child) in enumerate(children):
        site = _site(model, children, index, prefix)
        if site is not None:
            yield site
        else:
            yield from walk(child, _join(prefix, name))


def _checked(model: nn.Module, to: str, scope: str, order: str | None) -> str | None:
    """Why ``plan`` cannot act on ``model`` itself (a bare Focus or conv), else None; bad arguments raise."""
    if to not in TARGETS:
        raise ValueError(f"unknown target to={to!r}: use one of {', '.join(TARGETS)}")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope={scope!r}: use one of {', '.join(SCOPES)}")
    if order is not None:
        check_order(order)
    root = part_of(model, feeds=None)
    if (root is not None and root.block is not None) or type(model) is nn.Conv2d or is_conv_block(model):
        return f"the model itself is a {type(model).__name__}: wrap it, e.g. nn.Sequential(model)"
    return None


def _planned(
    model: nn.Module, to: str, scope: str, order: str | None
) -> Iterator[tuple[StemSite, list[Change] | None, str | None]]:
    """Each site a conversion acts on (the first only for ``scope="stem"``), its changes ([] already in form ``to``)
    or None and why it has no exact form in ``to``."""
    with torch.no_grad():
        for site in walk(model):
            try:
                yield site, build_changes(site, to, order), None
            except (ValueError, ConversionError) as error:
                yield site, None, str(error)
            if scope == "stem":
                break


def plan(
    model: nn.Module, to: str = "conv", scope: str = "stem", order: str | None = None
) -> tuple[list[Change], list[Skipped]]:
    """Plan a conversion without changing ``model``: the changes and the sites left (and why).

    ``scope="stem"`` acts on the first site the input meets only; ``"all"`` on every site.
    """
    whole = _checked(model, to, scope, order)
    if whole is not None:
        return [], [Skipped("", whole)]
    planned: list[Change] = []
    skipped: list[Skipped] = []
    for site, found, why in _planned(model, to, scope, order):
        if why is not None:
            skipped.append(Skipped(site.path, why))
        planned += found or []
        if scope == "stem" and found == [] and to != "conv" and site.form == "conv":
            skipped.append(Skipped(site.path, f"stem conv has stride {site.conv.stride}: nothing to rewrite"))
    return planned, skipped


def unconverted(model: nn.Module, to: str = "conv", scope: str = "stem", order: str | None = None) -> list[StemSite]:
    """The sites of ``model`` not in form ``to`` that a conversion ``to`` with ``scope`` converts: those ``plan``
    would still change. In form ``to``: a conv (``conv``); a space-to-depth form, ``focus`` / ``s2d`` / ``folds``
    (``focus``, ``s2d``). A site with no exact form in ``to`` is left by the conversion too, so is not counted.
    A conversion's result has none; the model it converted, written unchanged, has the sites it converted.
    ``model`` may itself be one stem (a Focus, a conv block): it is then its only site."""
    if _checked(model, to, scope, order) is not None:  # a bare stem: walked as the one child of a container
        model = nn.Sequential(model)
    return [site for site, found, _ in _planned(model, to, scope, order) if found]
