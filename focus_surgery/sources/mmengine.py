"""mmengine training checkpoints (mmdetection, mmyolo, mmpose, ...): ``epoch_N.pth`` / ``iter_N.pth`` as
``Runner.save_checkpoint`` writes them: ``meta``, ``state_dict``, ``message_hub``, ``optimizer``, ``param_schedulers``
and, with the EMA hook, ``ema_state_dict`` (the ``ExponentialMovingAverage`` wrapper: ``steps`` and ``module.`` keys).

The bookkeeping (``message_hub``'s ``HistoryBuffer`` objects, numpy arrays and scalars, the schedulers' ``Counter``)
is read as inert records and values (``loader.allowlist``) and written back unchanged under the same globals
(``loader.pickler``). Both state dicts are converted like any nested state dict, the optimizer's momentum for the
stem weight remapped with it, so the file resumes in mmengine and loads with its ``load_checkpoint`` strictly into
the model whose stem is the converted conv.
"""

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
        epoch, it = bounded(meta.get("epoch")), bounded(meta.get("iter"))
        version = bounded(meta.get("mmengine_version"))
        result["lines"][0] = f"{loaded.path}: {self.description.split(' (')[0]} (mmengine {version}), epoch {epoch}"
        result["lines"][0] += f", iteration {it}"
        result["epoch"], result["iter"] = epoch, it
        return result


__all__ = ["MmengineSource"]
