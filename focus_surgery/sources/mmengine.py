"""mmengine training checkpoints (``Runner.save_checkpoint``: ``meta``, ``state_dict``, ``message_hub``, ``optimizer``,
``ema_state_dict``): the bookkeeping read as inert records and written back unchanged, both state dicts converted."""

from __future__ import annotations

from typing import Any

from ..report import bounded
from .loading import Loaded
from .plain import PlainStateDictSource

RUNNER_KEYS = {"meta", "state_dict"}
BOOKKEEPING = ("mmengine.",)  # the only classes an mmengine checkpoint names (HistoryBuffer)


class MmengineSource(PlainStateDictSource):
    name = "mmengine"
    description = "mmengine training checkpoint (state_dict, ema_state_dict, message_hub, optimizer)"
    specificity = 10  # a nested state dict with the runner's keys; names mmengine's bookkeeping classes only

    def claims(self, loaded: Loaded) -> bool:
        content = loaded.content
        if not (isinstance(content, dict) and RUNNER_KEYS <= set(content) and isinstance(content["state_dict"], dict)):
            return False
        if not isinstance(content["meta"], dict) or not all(isinstance(k, str) for k in content):
            return False
        return all(name.startswith(BOOKKEEPING) for name in loaded.names)

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        result = super().inspect(loaded)
        meta = loaded.content["meta"]
        epoch, it, version = (bounded(meta.get(k)) for k in ("epoch", "iter", "mmengine_version"))
        result["lines"][0] = f"{loaded.path}: mmengine training checkpoint (mmengine {version}), epoch {epoch}"
        result["lines"][0] += f", iteration {it}"
        result["epoch"], result["iter"] = epoch, it
        return result


__all__ = ["MmengineSource"]
