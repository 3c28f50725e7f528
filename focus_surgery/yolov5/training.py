"""Training ``LegacyDetect`` models with Ultralytics' own trainer, YOLOv5's loss, hyper-parameters and schedule.

``install()`` wraps methods in memory (nothing installed is edited): the criterion becomes ``YOLOv5Loss``, the
trainer takes YOLOv5's hyper-parameters, runs its autoanchor, keeps v1.0-v3.1 layers a YAML rebuild would change, and
follows each release's ``train.py`` schedule (``schedule.py``; ``yolov5_hyp: {schedule: 0}`` gives Ultralytics' back).
Every other model trains exactly as Ultralytics trains it.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from .hyp import HYP_KEY, apply_to_args, base_hyp, recorded_release, scale_gains
from .loss import YOLOv5Loss
from .schedule import (
    ScheduleRules,
    lagging_scheduler,
    schedule_rules,
    seeded_generators,
    step_on_multiple_gate,
    yolov5_pipeline,
    yolov5_warmup_iterations,
)

WRAPPED_MARK = "__focus_surgery_original__"
_TRAINER_MODULE = "ultralytics.models.yolo.detect.train"
_ITERATION = "_focus_surgery_yolov5_iteration"  # (epoch, i) of the batch the training loop is on
_PENDING = "_focus_surgery_yolov5_pending_ni"  # set at a batch's start, taken by preprocess_batch
_ACCUMULATE = "_focus_surgery_yolov5_accumulate"  # the warm-up's accumulate, while ``accumulate`` holds the gate


def legacy_head(model: nn.Module) -> nn.Module | None:
    """The ``LegacyDetect`` head of an Ultralytics model, or None."""
    from .detect import LegacyDetect

    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    return head if isinstance(head, LegacyDetect) else None


def model_hyp(model: nn.Module) -> dict[str, Any]:
    """The model's unscaled YOLOv5 hyper-parameters: its YAML's ``yolov5_hyp`` over YOLOv5's defaults."""
    yaml = getattr(model, "yaml", None)
    return base_hyp(yaml.get(HYP_KEY) if isinstance(yaml, dict) else None)


def yolov5_criterion(model: nn.Module) -> YOLOv5Loss:
    """YOLOv5's loss for a model with a ``LegacyDetect`` head, gains scaled for its levels, classes and training
    image size (``model.args.imgsz``, 640 if unknown)."""
    head, args = legacy_head(model), getattr(model, "args", None)
    imgsz = args.get("imgsz", 640) if isinstance(args, dict) else getattr(args, "imgsz", 640)
    imgsz = max(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz)
    release = recorded_release(model)
    return YOLOv5Loss(head, scale_gains(model_hyp(model), head.nl, head.nc, imgsz, release), release=release)


def method_wrapper(hook: Callable) -> Callable[[Callable], Callable]:
    """``hook(original, self, ...)`` as a method wrapper: ``wrap(original)`` is the method, marked with its original
    (``WRAPPED_MARK``) so that it is installed once."""

    def wrap(original: Callable) -> Callable:
        @functools.wraps(original)
        def method(self, *args, **kwargs):
            return hook(original, self, *args, **kwargs)

        setattr(method, WRAPPED_MARK, original)
        return method

    return wrap


@method_wrapper
def _wrap_init_criterion(original, self):
    return yolov5_criterion(self) if legacy_head(self) is not None else original(self)


@method_wrapper
def _wrap_set_model_attributes(original, self):
    """YOLOv5's learning-rate, warm-up and augmentation values replace Ultralytics' defaults (not the user's)."""
    original(self)
    if legacy_head(self.model) is None or getattr(self, "resume", False):
        return
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils import LOGGER

    changed = apply_to_args(self.args, model_hyp(self.model), DEFAULT_CFG_DICT)
    rules = trainer_schedule(self)
    if rules is not None and self.args.optimizer == "auto":
        self.args.optimizer = "SGD"  # train.py's default (Ultralytics' auto picks AdamW / MuSGD)
        changed.append("optimizer")
    if rules is not None and rules.cosine_lr and not self.args.cos_lr:
        self.args.cos_lr = True  # train.py's default before v6.1 (Ultralytics: linear)
        changed.append("cos_lr")
    users_lrf = "lrf" not in changed and self.args.lrf != DEFAULT_CFG_DICT["lrf"]
    if rules is not None and rules.fixed_lrf is not None and not users_lrf:
        self.args.lrf = rules.fixed_lrf  # v1.0-v3.0's cosine ends at a fixed factor (their hyps have no lrf)
        changed = [k for k in changed if k != "lrf"] + ["lrf"]
    if changed:
        LOGGER.info(f"YOLOv5 hyper-parameters: {', '.join(f'{k}={getattr(self.args, k)}' for k in changed)}")


def _layer_signature(model: nn.Module) -> list[tuple[str, str, tuple]]:
    """(path, class name, parameter / buffer shapes) of every leaf layer, head excluded."""
    head = legacy_head(model)
    head_ids = {id(m) for m in head.modules()} if head is not None else set()
    return [
        (path, type(m).__name__, tuple(tuple(t.shape) for t in m.state_dict().values()))
        for path, m in model.named_modules()
        if not list(m.children()) and id(m) not in head_ids
    ]


def keep_loaded_layers(built: nn.Module, loaded: nn.Module) -> nn.Module:
    """``built`` (rebuilt from the YAML, weights loaded), or a copy of ``loaded`` when its layers differ from
    ``built``'s (a v1.0-v3.1 model: LeakyReLU / Hardswish, YOLOv5's BottleneckCSP); the copy takes ``built``'s head
    if the class count changed."""
    if legacy_head(loaded) is None or _layer_signature(built) == _layer_signature(loaded):
        return built
    model = copy.deepcopy(loaded).float()
    if legacy_head(built).nc != legacy_head(loaded).nc:
        model.model[-1] = built.model[-1]
    model.yaml, model.names = built.yaml, built.names
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def training_weights(path: Any) -> nn.Module | None:
    """The ``model`` of a checkpoint holding a training ``model`` and its ``ema`` with a ``LegacyDetect`` head (a
    converted YOLOv5 ``last.pt``) when YOLOv5's schedule is on: ``train.py`` fine-tunes ``ckpt['model']`` where
    Ultralytics takes the EMA. None otherwise."""
    if not isinstance(path, (str, Path)) or Path(path).suffix != ".pt" or not Path(path).is_file():
        return None
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(path)
    model, ema = ckpt.get("model"), ckpt.get("ema")
    if not (isinstance(model, nn.Module) and isinstance(ema, nn.Module)) or legacy_head(model) is None:
        return None
    return model.float() if model_hyp(model).get("schedule", 1) else None


@method_wrapper
def _wrap_get_model(original, self, cfg=None, weights=None, verbose=True):
    loaded = (weights.get("ema") or weights["model"]) if isinstance(weights, dict) else weights
    legacy = isinstance(loaded, nn.Module) and legacy_head(loaded) is not None
    training = training_weights(getattr(self.args, "model", None)) if legacy else None
    built = original(self, cfg=cfg, weights=weights if training is None else training, verbose=verbose)
    loaded = loaded if training is None else training
    return keep_loaded_layers(built, loaded) if isinstance(loaded, nn.Module) else built


def trainer_schedule(trainer: Any) -> ScheduleRules | None:
    """The ``ScheduleRules`` of the trained model's release when ``trainer`` trains a ``LegacyDetect`` model on
    YOLOv5's schedule; None otherwise."""
    from ultralytics.utils.torch_utils import unwrap_model

    model = getattr(trainer, "model", None)
    model = unwrap_model(model) if isinstance(model, nn.Module) else None
    if model is None or legacy_head(model) is None or not model_hyp(model).get("schedule", 1):
        return None
    return schedule_rules(recorded_release(model))


def run_autoanchor(trainer: Any) -> dict | None:
    """YOLOv5's ``check_anchors`` on the trainer's model and training labels (unless ``autoanchor: 0`` or resuming);
    the YAML's anchors follow."""
    from ultralytics.utils import LOGGER, RANK
    from ultralytics.utils.torch_utils import unwrap_model

    from .autoanchor import check_anchors

    model = unwrap_model(trainer.model)
    head, hyp = legacy_head(model), model_hyp(model)
    if head is None or getattr(trainer, "resume", False) or not hyp.get("autoanchor", 1):
        return None
    labels = trainer.train_loader.dataset.labels
    shapes = np.array([lb["shape"][::-1] for lb in labels], dtype=np.float64)  # (width, height)
    imgsz = trainer.args.imgsz
    # train.py's init_seeds(opt.seed + 1 + RANK) (RANK is -1 outside DDP); before v6.2 a fixed seed
    rules = trainer_schedule(trainer)
    seed = None if rules is None else int(trainer.args.seed) + 1 + RANK
    if rules is not None and rules.autoanchor_seed is not None:
        seed = rules.autoanchor_seed
    imgsz = max(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz)
    with seeded_generators(seed):
        report = check_anchors(head, shapes, [lb["bboxes"] for lb in labels], thr=hyp["anchor_t"], imgsz=imgsz)
    message = f"AutoAnchor: {report['anchors_per_target']:.2f} anchors/target, {report['bpr']:.3f} best possible recall"
    if report["replaced"]:
        px = (head.anchors * head.stride.view(-1, 1, 1).to(head.anchors)).view(head.nl, -1)
        model.yaml["anchors"] = [[round(float(v), 2) for v in row] for row in px.tolist()]
        message += f"; new anchors ({report['new_bpr']:.3f}): {model.yaml['anchors']}"
    LOGGER.info(message)
    return report


@method_wrapper
def _wrap_build_train_pipeline(original, self):
    """Once the labels are loaded (before the EMA copy): autoanchor, then the release's schedule callbacks."""
    original(self)
    run_autoanchor(self)
    rules = trainer_schedule(self)
    if rules is not None:
        yolov5_pipeline(self, rules)
        if rules.step_on_multiple:
            _add_callback_once(self, "on_train_epoch_start", _restart_iteration_count)
            _add_callback_once(self, "on_train_batch_start", _count_iteration)
        if rules.zero_grad_each_epoch:
            _add_callback_once(self, "on_train_epoch_start", _drop_pending_gradients)


@method_wrapper
def _wrap_get_warmup_iterations(original, self, num_batches):
    rules = trainer_schedule(self)
    if rules is None:
        return original(self, num_batches)
    return yolov5_warmup_iterations(self.args.warmup_epochs, num_batches, rules)


@method_wrapper
def _wrap_setup_scheduler(original, self):
    original(self)
    if trainer_schedule(self) is not None:
        self.scheduler = lagging_scheduler(self.optimizer, self.lf)


def _add_callback_once(trainer: Any, event: str, callback: Callable) -> None:
    """``trainer.add_callback`` unless ``callback`` is already registered for ``event`` (a rebuilt pipeline)."""
    if callback not in trainer.callbacks.get(event, []):
        trainer.add_callback(event, callback)


def _drop_pending_gradients(trainer: Any) -> None:
    """``on_train_epoch_start``: ``train.py``'s ``optimizer.zero_grad()`` before each epoch's batches (v2.0+), so
    gradients accumulated after an epoch's last step are dropped (Ultralytics carries them over)."""
    trainer.optimizer.zero_grad()


def _restart_iteration_count(trainer: Any) -> None:
    """``on_train_epoch_start``: the loop's ``i`` restarts at 0, also when Ultralytics redoes an epoch (NaN recovery,
    an out-of-memory retry) under the same ``epoch``."""
    trainer.__dict__.pop(_ITERATION, None)


def _count_iteration(trainer: Any) -> None:
    """``on_train_batch_start``: the loop's ``ni = i + nb * epoch``, for the step gate of v1.0-v5.0."""
    epoch, i = getattr(trainer, _ITERATION, (None, -1))
    i = i + 1 if epoch == trainer.epoch else 0
    setattr(trainer, _ITERATION, (trainer.epoch, i))
    setattr(trainer, _PENDING, i + len(trainer.train_loader) * trainer.epoch)


@method_wrapper
def _wrap_preprocess_batch(original, self, batch):
    # runs after the loop's warm-up set ``accumulate`` for this batch and before the loop tests
    # ``ni - last_opt_step >= accumulate``: that test becomes v1.0-v5.0's ``ni % accumulate == 0``
    ni = self.__dict__.pop(_PENDING, None)
    if ni is not None:
        if self.accumulate not in (0, math.inf):  # set by the warm-up for this batch (after it: the last value)
            setattr(self, _ACCUMULATE, self.accumulate)
        # train.py's accumulate: the warm-up's (an int), else ``max(round(nbs / batch), 1)`` (a resumed run past
        # the warm-up finds yolov5_pipeline's unrounded ``nbs / batch`` here)
        self.accumulate = step_on_multiple_gate(ni, max(round(getattr(self, _ACCUMULATE)), 1))
    return original(self, batch)


@method_wrapper
def _wrap_optimizer_step(original, self):
    rules = trainer_schedule(self)
    if rules is None or rules.clip_gradients:
        return original(self)
    # train.py before v6.2: no gradient clipping (Ultralytics clips to norm 10)
    self.scaler.unscale_(self.optimizer)
    self.scaler.step(self.optimizer)
    self.scaler.update()
    self.optimizer.zero_grad()
    if self.ema:
        self.ema.update(self.model)


def wrap_methods(cls: type, wrappers: dict[str, Callable[[Callable], Callable]]) -> None:
    """Replace each method ``name`` of ``cls`` by ``wrap(original)``, once: a wrapper carries ``WRAPPED_MARK``."""
    for name, wrap in wrappers.items():
        if not hasattr(getattr(cls, name), WRAPPED_MARK):
            setattr(cls, name, wrap(getattr(cls, name)))


def install(tasks: Any) -> None:
    """Wrap ``tasks.DetectionModel.init_criterion`` now (``tasks`` is ``ultralytics.nn.tasks``) and the detection
    trainer's methods once its module is imported; idempotent."""
    from ..import_hooks import call_when_imported

    if hasattr(tasks, "DetectionModel"):
        wrap_methods(tasks.DetectionModel, {"init_criterion": _wrap_init_criterion})
    trainer_wrappers = {
        "set_model_attributes": _wrap_set_model_attributes,
        "get_model": _wrap_get_model,
        "_build_train_pipeline": _wrap_build_train_pipeline,
        "_get_warmup_iterations": _wrap_get_warmup_iterations,
        "_setup_scheduler": _wrap_setup_scheduler,
        "optimizer_step": _wrap_optimizer_step,
        "preprocess_batch": _wrap_preprocess_batch,
    }
    call_when_imported(
        _TRAINER_MODULE, lambda: wrap_methods(sys.modules[_TRAINER_MODULE].DetectionTrainer, trainer_wrappers)
    )
