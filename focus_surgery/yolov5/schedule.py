"""YOLOv5's training schedule (``train.py``, release by release) where it differs from Ultralytics' trainer.

``schedule_rules(release)`` gives a release's differences (``ScheduleRules``); the rest (SGD parameter groups, weight
decay scaling, warm-up of learning rates and momentum, EMA) is already the same in both. Not changed: the data order
(up to v6.0 ``train.py`` does not shuffle) and v1.0-v5.0's HSV round trip of every image at zero colour gains.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # YOLOv5's initialize_weights (v2.0+), run on the model train.py builds


@dataclass(frozen=True)
class ScheduleRules:
    """One release's ``train.py`` schedule where releases differ (defaults: v6.2+).

    Attributes:
        warmup_floor (int): The least warm-up iterations, ``max(round(warmup_epochs * nb), floor)`` (1000 before
            v6.2, then 100; Ultralytics: ``round(min(warmup_epochs, epochs - 1) * nb)``).
        fixed_warmup_epochs (float | None): Warm-up epochs regardless of the hyp (v1.0-v3.0: 3), else None.
        step_on_multiple (bool): The optimizer steps when ``ni % accumulate == 0`` (v1.0-v5.0) rather than when
            ``ni - last_opt_step >= accumulate`` (v6.0+, Ultralytics).
        clip_gradients (bool): Gradients clipped to norm 10 before each step (v6.2+; Ultralytics always).
        half_round_trip (bool): The model rounded through float16 after autoanchor (v5.0+).
        autoanchor_seed (int | None): The seed of ``init_seeds`` before autoanchor when the release fixes it
            (v1.0: 1; v2.0-v5.0: ``2 + rank`` = 1; v6.0-v6.1: ``1 + RANK`` = 0, outside DDP); None: ``seed + 1 +
            RANK`` (v6.2+, with ``--seed``).
        zero_grad_each_epoch (bool): Gradients accumulated but not yet stepped are dropped as an epoch starts
            (v2.0+; v1.0 carries them over as Ultralytics does).
        cosine_lr (bool): The learning rate follows ``one_cycle(1, lrf, epochs)`` by default (v1.0-v6.0; v6.1+
            default to linear ``(1 - e / epochs) * (1 - lrf) + lrf``).
        fixed_lrf (float | None): The final learning-rate factor written into ``train.py``'s cosine (v1.0: 0.1,
            v2.0-v3.0: 0.2; their hyps have no ``lrf``), else None (the hyp's ``lrf``, v3.1+).
    """

    warmup_floor: int = 100
    fixed_warmup_epochs: float | None = None
    step_on_multiple: bool = False
    clip_gradients: bool = True
    half_round_trip: bool = True
    autoanchor_seed: int | None = None
    zero_grad_each_epoch: bool = True
    cosine_lr: bool = False
    fixed_lrf: float | None = None


_V2 = ScheduleRules(1000, 3.0, True, False, False, 1, True, True, 0.2)
_SCHEDULES = {
    "v1.0": ScheduleRules(1000, 3.0, True, False, False, 1, False, True, 0.1),
    "v2.0": _V2,
    "v3.0": _V2,
    "v3.1": ScheduleRules(1000, None, True, False, False, 1, True, True),
    "v4.0": ScheduleRules(1000, None, True, False, False, 1, True, True),
    "v5.0": ScheduleRules(1000, None, True, False, True, 1, True, True),
    "v6.0": ScheduleRules(1000, None, False, False, True, 0, True, True),
    "v6.1": ScheduleRules(1000, None, False, False, True, 0),
    "v6.2": ScheduleRules(),
    "v7.0": ScheduleRules(),
    "master": ScheduleRules(),
}


def schedule_rules(release: str | None) -> ScheduleRules:
    """The ``ScheduleRules`` of a recorded ``yolov5_release`` (a range takes its newest release, None v7.0's, as the
    loss does: ``loss_rules.rules_release``)."""
    from .loss_rules import rules_release

    return _SCHEDULES[rules_release(release)]


def yolov5_warmup_iterations(warmup_epochs: float, num_batches: int, rules: ScheduleRules | None = None) -> int:
    """``train.py``'s ``nw = max(round(hyp['warmup_epochs'] * nb), 100)`` (a release's floor and fixed warm-up
    epochs from ``rules``; v7.0's by default)."""
    rules = rules or ScheduleRules()
    epochs = warmup_epochs if rules.fixed_warmup_epochs is None else rules.fixed_warmup_epochs
    return max(round(epochs * num_batches), rules.warmup_floor)


def step_on_multiple_gate(ni: int, accumulate: int) -> float:
    """What Ultralytics' ``ni - last_opt_step >= trainer.accumulate`` must compare with so that the optimizer steps
    exactly when v1.0-v5.0's ``ni % accumulate == 0``: 0 (always true, ``ni > last_opt_step``) or infinity (never)."""
    return 0 if ni % accumulate == 0 else math.inf


def lagging_scheduler(optimizer: torch.optim.Optimizer, lf: Callable[[float], float]) -> Any:
    """A ``LambdaLR`` giving epoch ``e`` the factor ``lf(max(e - 1, 0))``: ``train.py``'s scheduler steps at the end
    of each epoch, so epoch ``e`` trains (after warm-up) at ``lf(e - 1)``; Ultralytics' steps at the start."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda e: lf(max(e - 1, 0)))


@contextlib.contextmanager
def seeded_generators(seed: int | None) -> Iterator[None]:
    """Python's, NumPy's and torch's global generators seeded with ``seed`` inside, restored on exit (so the
    trainer's own random draws are unchanged); nothing happens for ``seed=None``."""
    if seed is None:
        yield
        return
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def yolov5_pipeline(trainer: Any, rules: ScheduleRules | None = None) -> None:
    """After Ultralytics built the dataloaders and the optimizer: ``train.py``'s accumulation target (``nbs /
    batch``, unrounded and uncapped) and, for a new run, its BatchNorm settings and float16 round trip of the weights
    (v5.0+; it also rounds new anchors)."""
    from ultralytics.utils.torch_utils import unwrap_model

    rules = rules or ScheduleRules()
    trainer.accumulate = trainer.args.nbs / trainer.batch_size  # the ramp's end, as train.py interpolates it
    if not getattr(trainer, "resume", False):
        model = unwrap_model(trainer.model)
        for m in model.modules():  # train.py builds a new Model (initialize_weights) and loads the weights into it
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = BN_EPS, BN_MOMENTUM
        if rules.half_round_trip:
            model.half().float()  # train.py: "pre-reduce anchor precision"
