"""YOLOv5's training schedule (``train.py`` of v6.2-v7.0) for Ultralytics' trainer: the pieces that differ.

=========================  ===========================================  ==========================================
                           YOLOv5 ``train.py``                          Ultralytics' trainer
=========================  ===========================================  ==========================================
warm-up iterations         ``max(round(warmup_epochs * nb), 100)``      ``round(min(warmup_epochs, epochs - 1)
                                                                        * nb)``, none for one epoch
accumulation               ramps to ``nbs / batch`` (rounded), no cap   ramps to ``round(nbs / batch)`` capped at
                                                                        ``nb * epochs``
learning rate after        ``lf(epoch - 1)``: the scheduler steps at    ``lf(epoch)``: it steps at the start
warm-up                    the end of each epoch
optimizer                  SGD (``--optimizer`` default)                ``auto``: AdamW or MuSGD
weights before training    rounded through float16 after autoanchor     as loaded
                           (``model.half().float()``); BatchNorm
                           ``eps = 1e-3``, ``momentum = 0.03`` (a new
                           ``Model`` takes the checkpoint's weights)
autoanchor's random draws  from generators seeded ``seed + 1 + RANK``   (Ultralytics runs no autoanchor)
=========================  ===========================================  ==========================================

Everything else (SGD parameter groups, weight decay scaling, warm-up of learning rates and momentum, gradient
clipping at 10, EMA) is already the same in both.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

WARMUP_FLOOR = 100  # train.py v6.2+ (v3.1-v6.1: 1000)
BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # YOLOv5's initialize_weights, run on the model train.py builds


def yolov5_warmup_iterations(warmup_epochs: float, num_batches: int) -> int:
    """``train.py``'s ``nw = max(round(hyp['warmup_epochs'] * nb), 100)``."""
    return max(round(warmup_epochs * num_batches), WARMUP_FLOOR)


def lagging_scheduler(optimizer: torch.optim.Optimizer, lf: Callable[[float], float]) -> Any:
    """A ``LambdaLR`` giving epoch ``e`` the factor ``lf(max(e - 1, 0))``.

    ``train.py`` sets ``scheduler.last_epoch = -1`` and steps at the end of each epoch, so epoch ``e`` trains (after
    warm-up) at ``lf(e - 1)``; Ultralytics steps at the start, so its epoch ``e`` would train at ``lf(e)``.
    """
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


def yolov5_pipeline(trainer: Any) -> None:
    """After Ultralytics built the dataloaders and the optimizer: ``train.py``'s accumulation target and, for a new
    run, its float16 round trip of the weights (which also rounds new anchors)."""
    from ultralytics.utils.torch_utils import unwrap_model

    trainer.accumulate = trainer.args.nbs / trainer.batch_size  # the ramp's end, as train.py interpolates it
    if not getattr(trainer, "resume", False):
        model = unwrap_model(trainer.model)
        for m in model.modules():  # train.py builds a new Model (initialize_weights) and loads the weights into it
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = BN_EPS, BN_MOMENTUM
        model.half().float()  # train.py: "pre-reduce anchor precision"
