"""What a conversion leaves that needs focus-surgery to load (its own layer classes), said in the report."""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

OURS = "focus_surgery."


def leftover(model: nn.Module, to: str, scope: str, instead: str = "") -> tuple[dict[str, Any], list[str]]:
    """The report's fields and lines for the outermost layers of our classes ``model`` (converted) still holds;
    ``instead``: how the source writes a file without them, when ``--scope all`` is not the way.

    Returns:
        (dict, list[str]): ``{"needs_focus_surgery": {class: count}, "scope_all_converts": n}`` (empty when the file
        loads without focus-surgery) and the lines to print.
    """
    layers: Counter = Counter()
    inside: list[str] = []  # paths of our layers already counted: the SpaceToDepth inside an SPDConv is not
    for path, module in model.named_modules():
        if type(module).__module__.startswith(OURS) and not any(path.startswith(p + ".") for p in inside):
            layers[type(module).__name__] += 1
            inside.append(path)
    if not layers:
        return {}, []
    fields: dict[str, Any] = {"needs_focus_surgery": dict(layers)}
    held = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in layers.items())
    line = f"  the result still holds focus-surgery layers ({held}): it loads only where focus_surgery is imported"
    if to == "conv" and scope == "stem":  # only conv is plain: --scope all --to s2d / focus adds more of our layers
        from ..stems import plan

        changes, _ = plan(model, to, "all")
        fields["scope_all_converts"] = len(changes)
        if changes:
            line += f"; --scope all converts every site ({len(changes)} more here) for a plain file"
    return fields, [line + (f"; {instead}" if instead else "")]
