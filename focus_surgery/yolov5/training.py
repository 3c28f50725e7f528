"""Training ``LegacyDetect`` models with Ultralytics' own trainer, YOLOv5's loss and hyper-parameters.

Nothing installed is edited; ``install()`` (run by ``focus_surgery.register()`` / ``import focus_surgery`` once
Ultralytics is loaded) wraps, in memory:

* ``DetectionModel.init_criterion``: a model whose head is a ``LegacyDetect`` gets ``YOLOv5Loss`` with the model's
  YOLOv5 hyper-parameters (``model.yaml["yolov5_hyp"]``, else YOLOv5's defaults) scaled as YOLOv5's ``train.py``
  scales them; every other model gets Ultralytics' own criterion.
* ``DetectionTrainer.get_model``: Ultralytics rebuilds a model from its YAML before loading the weights, which
  turns YOLOv5 v1.0-v3.1 layers (LeakyReLU / Hardswish activations, YOLOv5's BottleneckCSP) into today's (SiLU).
  When the rebuilt layers differ from the loaded model's, the loaded model itself is trained (with a new head when
  the dataset's class count differs).
* ``DetectionTrainer.set_model_attributes`` (runs after the model is built, before the dataloaders and the
  optimizer): YOLOv5's learning-rate, warm-up and augmentation values replace Ultralytics' defaults.
* ``DetectionTrainer._build_train_pipeline``: once the training labels are loaded (before the EMA copy is made),
  YOLOv5's autoanchor checks the anchors and replaces them if k-means + evolution fit better, unless the
  hyper-parameters say ``autoanchor: 0`` (YOLOv5's ``--noautoanchor``) or training resumes.
* YOLOv5's schedule (``schedule.py``; the default for these models, ``yolov5_hyp: {schedule: 0}`` gives
  Ultralytics' back): warm-up ``max(round(warmup_epochs * nb), 100)`` iterations, accumulation ramped to
  ``nbs / batch`` uncapped, the post-warm-up learning rate one epoch behind as ``train.py``'s (cosine for
  v1.0-v6.0 files, whose ``train.py`` defaults to it), SGD for
  ``optimizer=auto``, a converted ``last.pt`` fine-tuned from its ``model`` rather than its EMA, autoanchor
  drawn from generators seeded as ``train.py`` seeds them, and the model rounded
  through float16 after autoanchor (``train.py``'s ``model.half().float()``); each release's own floor, step rule
  and gradient clipping (``schedule.schedule_rules``: ``optimizer_step`` skips the clipping before v6.2,
  ``preprocess_batch`` turns the loop's step test into ``ni % accumulate == 0`` for v1.0-v5.0) and gradients
  pending at an epoch's end dropped as ``train.py``'s ``optimizer.zero_grad()`` drops them.

Checkpoints that Ultralytics writes hold a plain ``DetectionModel`` with a ``LegacyDetect`` head and the YAML with
its hyper-parameters: they load wherever ``focus_surgery`` is importable, and training resumes with the same loss.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from typing import Any, Callable

import numpy as np
from torch import nn

from .hyp import HYP_KEY, RELEASE_KEY, apply_to_args, base_hyp, scale_gains
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


def legacy_head(model: nn.Module) -> nn.Module | None:
    """The ``LegacyDetect`` head of an Ultralytics model, or None."""
    from .detect import LegacyDetect

    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    return head if isinstance(head, LegacyDetect) else None


def legacy_head_of(obj: Any) -> bool:
    """Whether ``obj`` is a model with a ``LegacyDetect`` head."""
    return isinstance(obj, nn.Module) and legacy_head(obj) is not None


def _arg(args: Any, name: str, default: Any) -> Any:
    if isinstance(args, dict):
        return args.get(name, default)
    return getattr(args, name, default)


def model_hyp(model: nn.Module) -> dict[str, Any]:
    """The model's unscaled YOLOv5 hyper-parameters: its YAML's ``yolov5_hyp`` over YOLOv5's defaults."""
    yaml = getattr(model, "yaml", None)
    return base_hyp(yaml.get(HYP_KEY) if isinstance(yaml, dict) else None)


def model_release(model: nn.Module) -> str | None:
    """The YOLOv5 release recorded in the model's YAML (``yolov5_release``), None for a model built from a YAML."""
    yaml = getattr(model, "yaml", None)
    return yaml.get(RELEASE_KEY) if isinstance(yaml, dict) else None


def yolov5_criterion(model: nn.Module) -> YOLOv5Loss:
    """YOLOv5's loss for ``model`` (a ``DetectionModel`` with a ``LegacyDetect`` head), gains scaled for its
    number of levels and classes and the training image size (``model.args.imgsz``, 640 if unknown)."""
    head = legacy_head(model)
    imgsz = _arg(getattr(model, "args", None), "imgsz", 640)
    imgsz = max(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz)
    release = model_release(model)
    return YOLOv5Loss(head, scale_gains(model_hyp(model), head.nl, head.nc, imgsz, release), release=release)


def _wrap_init_criterion(original):
    @functools.wraps(original)
    def init_criterion(self):
        return yolov5_criterion(self) if legacy_head(self) is not None else original(self)

    setattr(init_criterion, WRAPPED_MARK, original)
    return init_criterion


def _wrap_set_model_attributes(original):
    @functools.wraps(original)
    def set_model_attributes(self):
        original(self)
        if legacy_head(self.model) is not None and not getattr(self, "resume", False):
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

    setattr(set_model_attributes, WRAPPED_MARK, original)
    return set_model_attributes


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
    ``built``'s (a v1.0-v3.1 model); the copy takes ``built``'s head if the class count changed."""
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
    """The ``model`` of a checkpoint holding both a training ``model`` and its ``ema`` with a ``LegacyDetect`` head
    (a YOLOv5 ``last.pt`` converted by ``convert_yolov5``), when YOLOv5's schedule is on: ``train.py`` fine-tunes
    ``ckpt['model']`` where Ultralytics takes the EMA. None otherwise."""
    from pathlib import Path

    if not isinstance(path, (str, Path)) or Path(path).suffix != ".pt" or not Path(path).is_file():
        return None
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(path)
    model, ema = ckpt.get("model"), ckpt.get("ema")
    if not (isinstance(model, nn.Module) and isinstance(ema, nn.Module)) or legacy_head(model) is None:
        return None
    return model.float() if model_hyp(model).get("schedule", 1) else None


def _wrap_get_model(original):
    @functools.wraps(original)
    def get_model(self, cfg=None, weights=None, verbose=True):
        loaded = (weights.get("ema") or weights["model"]) if isinstance(weights, dict) else weights
        training = training_weights(getattr(self.args, "model", None)) if legacy_head_of(loaded) else None
        built = original(self, cfg=cfg, weights=weights if training is None else training, verbose=verbose)
        loaded = loaded if training is None else training
        return keep_loaded_layers(built, loaded) if isinstance(loaded, nn.Module) else built

    setattr(get_model, WRAPPED_MARK, original)
    return get_model


def uses_yolov5_schedule(trainer: Any) -> bool:
    """True when ``trainer`` trains a ``LegacyDetect`` model on YOLOv5's schedule (``yolov5_hyp: {schedule: 0}``
    turns it off)."""
    from ultralytics.utils.torch_utils import unwrap_model

    model = getattr(trainer, "model", None)
    if not isinstance(model, nn.Module):
        return False
    model = unwrap_model(model)
    return legacy_head(model) is not None and bool(model_hyp(model).get("schedule", 1))


def trainer_schedule(trainer: Any) -> ScheduleRules | None:
    """The ``ScheduleRules`` of the release that wrote the trained model, when ``trainer`` uses YOLOv5's schedule;
    None otherwise."""
    from ultralytics.utils.torch_utils import unwrap_model

    if not uses_yolov5_schedule(trainer):
        return None
    return schedule_rules(model_release(unwrap_model(trainer.model)))


def run_autoanchor(trainer: Any) -> dict | None:
    """YOLOv5's ``check_anchors`` on the trainer's model and training labels; the YAML's anchors follow."""
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
    # train.py's init_seeds(opt.seed + 1 + RANK) (RANK is -1 outside DDP, so a plain run seeds with opt.seed); before
    # v6.2 a fixed seed
    rules = trainer_schedule(trainer)
    seed = None if rules is None else int(trainer.args.seed) + 1 + RANK
    if rules is not None and rules.autoanchor_seed is not None:
        seed = rules.autoanchor_seed
    with seeded_generators(seed):
        report = check_anchors(
            head,
            shapes,
            [lb["bboxes"] for lb in labels],
            thr=hyp["anchor_t"],
            imgsz=max(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz),
        )
    message = f"AutoAnchor: {report['anchors_per_target']:.2f} anchors/target, {report['bpr']:.3f} best possible recall"
    if report["replaced"]:
        px = (head.anchors * head.stride.view(-1, 1, 1).to(head.anchors)).view(head.nl, -1)
        model.yaml["anchors"] = [[round(float(v), 2) for v in row] for row in px.tolist()]
        message += f"; new anchors ({report['new_bpr']:.3f}): {model.yaml['anchors']}"
    LOGGER.info(message)
    return report


def _wrap_build_train_pipeline(original):
    @functools.wraps(original)
    def _build_train_pipeline(self):
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

    setattr(_build_train_pipeline, WRAPPED_MARK, original)
    return _build_train_pipeline


def _wrap_get_warmup_iterations(original):
    @functools.wraps(original)
    def _get_warmup_iterations(self, num_batches):
        rules = trainer_schedule(self)
        if rules is not None:
            return yolov5_warmup_iterations(self.args.warmup_epochs, num_batches, rules)
        return original(self, num_batches)

    setattr(_get_warmup_iterations, WRAPPED_MARK, original)
    return _get_warmup_iterations


def _wrap_setup_scheduler(original):
    @functools.wraps(original)
    def _setup_scheduler(self):
        original(self)
        if uses_yolov5_schedule(self):
            self.scheduler = lagging_scheduler(self.optimizer, self.lf)

    setattr(_setup_scheduler, WRAPPED_MARK, original)
    return _setup_scheduler


def _add_callback_once(trainer: Any, event: str, callback: Callable) -> None:
    """``trainer.add_callback`` unless ``callback`` is already registered for ``event`` (a rebuilt pipeline)."""
    if callback not in trainer.callbacks.get(event, []):
        trainer.add_callback(event, callback)


def _drop_pending_gradients(trainer: Any) -> None:
    """``on_train_epoch_start``: ``train.py``'s ``optimizer.zero_grad()`` before each epoch's batches (v2.0+), so
    gradients accumulated after the last step of an epoch are dropped (Ultralytics carries them over)."""
    trainer.optimizer.zero_grad()


_ITERATION = "_focus_surgery_yolov5_iteration"  # (epoch, i) of the batch the training loop is on
_PENDING = "_focus_surgery_yolov5_pending_ni"  # set at a batch's start, taken by preprocess_batch
_ACCUMULATE = "_focus_surgery_yolov5_accumulate"  # the warm-up's accumulate, while ``accumulate`` holds the gate


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


def _wrap_preprocess_batch(original):
    @functools.wraps(original)
    def preprocess_batch(self, batch):
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

    setattr(preprocess_batch, WRAPPED_MARK, original)
    return preprocess_batch


def _wrap_optimizer_step(original):
    @functools.wraps(original)
    def optimizer_step(self):
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

    setattr(optimizer_step, WRAPPED_MARK, original)
    return optimizer_step


def wrap_methods(cls: type, wrappers: dict[str, Callable[[Callable], Callable]]) -> None:
    """Replace each method ``name`` of ``cls`` by ``wrap(original)``, once: a wrapper carries ``WRAPPED_MARK``."""
    for name, wrap in wrappers.items():
        if not hasattr(getattr(cls, name), WRAPPED_MARK):
            setattr(cls, name, wrap(getattr(cls, name)))


def install_loss(tasks: Any) -> None:
    """Wrap ``tasks.DetectionModel.init_criterion`` (``tasks`` is ``ultralytics.nn.tasks``); idempotent."""
    wrap_methods(tasks.DetectionModel, {"init_criterion": _wrap_init_criterion})


def install_trainer(train_module: Any) -> None:
    """Wrap the detection trainer's ``get_model``, ``set_model_attributes``, ``_build_train_pipeline``,
    ``_get_warmup_iterations``, ``_setup_scheduler``, ``optimizer_step`` and ``preprocess_batch``; idempotent."""
    wrap_methods(
        train_module.DetectionTrainer,
        {
            "set_model_attributes": _wrap_set_model_attributes,
            "get_model": _wrap_get_model,
            "_build_train_pipeline": _wrap_build_train_pipeline,
            "_get_warmup_iterations": _wrap_get_warmup_iterations,
            "_setup_scheduler": _wrap_setup_scheduler,
            "optimizer_step": _wrap_optimizer_step,
            "preprocess_batch": _wrap_preprocess_batch,
        },
    )


def install(tasks: Any) -> None:
    """Install the loss hook on ``tasks`` (``ultralytics.nn.tasks``) now, the trainer hook once Ultralytics' trainer
    module is imported."""
    from ..import_hooks import call_when_imported

    if hasattr(tasks, "DetectionModel"):
        install_loss(tasks)
    call_when_imported(_TRAINER_MODULE, lambda: install_trainer(sys.modules[_TRAINER_MODULE]))
