"""Review of the per-release YOLOv5 schedule (v1.0-v5.0's ``ni % accumulate == 0`` step rule inside Ultralytics'
loop): the iteration count behind the gate and the accumulate it compares with."""

from __future__ import annotations

import math
from types import SimpleNamespace

import focus_surgery  # noqa: F401  (registers the training hooks)
from focus_surgery.yolov5 import training
from focus_surgery.yolov5.schedule import schedule_rules, step_on_multiple_gate


def _trainer(nb: int, epoch: int) -> SimpleNamespace:
    callbacks: dict[str, list] = {}
    trainer = SimpleNamespace(epoch=epoch, train_loader=[None] * nb, callbacks=callbacks, accumulate=1)
    trainer.add_callback = lambda event, f: callbacks.setdefault(event, []).append(f)
    return trainer


def _build_pipeline(trainer: SimpleNamespace, release: str, monkeypatch) -> None:
    """The wrapped ``_build_train_pipeline`` for a model of ``release`` (Ultralytics' own pipeline, autoanchor and the
    accumulation set-up left out): the callbacks it registers."""
    monkeypatch.setattr(training, "run_autoanchor", lambda t: None)
    monkeypatch.setattr(training, "yolov5_pipeline", lambda t, rules: None)
    monkeypatch.setattr(training, "trainer_schedule", lambda t: schedule_rules(release))
    training._wrap_build_train_pipeline(lambda self: None)(trainer)


def _run(trainer: SimpleNamespace, event: str) -> None:
    for f in trainer.callbacks.get(event, []):
        f(trainer)


def test_callbacks_registered_per_release(monkeypatch):
    """v2.0+ drop the gradients pending at an epoch's start (v1.0 does not); v1.0-v5.0 count iterations for the gate
    (v6.0+ do not); registered once however often the pipeline is rebuilt."""
    registered = {}
    for release in ("v1.0", "v5.0", "v6.0"):
        trainer = _trainer(7, 0)
        for _ in range(2):
            _build_pipeline(trainer, release, monkeypatch)
        registered[release] = {event: [f.__name__ for f in fs] for event, fs in trainer.callbacks.items()}
    assert "_drop_pending_gradients" not in registered["v1.0"].get("on_train_epoch_start", [])
    assert registered["v5.0"]["on_train_epoch_start"].count("_drop_pending_gradients") == 1
    assert registered["v6.0"]["on_train_epoch_start"].count("_drop_pending_gradients") == 1
    for release in ("v1.0", "v5.0"):
        assert registered[release]["on_train_batch_start"].count("_count_iteration") == 1
    assert "on_train_batch_start" not in registered["v6.0"]


def test_redone_epoch_counts_its_batches_from_zero(monkeypatch):
    """Ultralytics redoes an epoch (NaN recovery, an out-of-memory retry of the first epoch) by starting it again:
    ``on_train_epoch_start`` runs again with the same ``epoch`` and ``i`` restarts at 0, so ``ni = i + nb * epoch``
    restarts too. The gate must see that ``ni``, not one carried on from the abandoned pass."""
    nb, epoch = 7, 1
    trainer = _trainer(nb, epoch)
    trainer.optimizer = SimpleNamespace(zero_grad=lambda: None)
    _build_pipeline(trainer, "v5.0", monkeypatch)
    _run(trainer, "on_train_epoch_start")
    for _ in range(3):  # the abandoned pass: i = 0, 1, 2
        _run(trainer, "on_train_batch_start")
        trainer.__dict__.pop(training._PENDING)
    _run(trainer, "on_train_epoch_start")  # the same epoch again
    _run(trainer, "on_train_batch_start")
    assert getattr(trainer, training._PENDING) == nb * epoch  # i = 0
    _run(trainer, "on_train_batch_start")
    assert getattr(trainer, training._PENDING) == nb * epoch + 1
    trainer.epoch = epoch + 1  # the loop sets ``epoch`` before ``on_train_epoch_start``
    _run(trainer, "on_train_epoch_start")
    _run(trainer, "on_train_batch_start")
    assert getattr(trainer, training._PENDING) == nb * (epoch + 1)


def _gate(accumulate: float, ni: int) -> float:
    """The gate the wrapped ``preprocess_batch`` leaves in ``trainer.accumulate`` for a batch past the warm-up whose
    ``accumulate`` is still the one ``yolov5_pipeline`` set (``nbs / batch``, as after resuming past the warm-up)."""
    trainer = SimpleNamespace(accumulate=accumulate)
    setattr(trainer, training._PENDING, ni)
    training._wrap_preprocess_batch(lambda self, batch: batch)(trainer, {})
    return trainer.accumulate


def test_gate_past_warmup_uses_train_py_rounded_accumulate():
    """Without a warm-up batch (a run resumed past v5.0's warm-up), train.py's accumulate is
    ``max(round(nbs / total_batch_size), 1)``: batch 24 steps every 3rd iteration, batch 128 every iteration."""
    assert _gate(64 / 24, 2001) == step_on_multiple_gate(2001, 3) == 0  # 2001 % 3 == 0 (int(2.67) = 2 would not)
    assert _gate(64 / 24, 2002) == math.inf
    assert _gate(64 / 128, 2001) == 0  # accumulate 1 (int(0.5) = 0 divides by zero)


def _set_model_attributes(release: str, monkeypatch, **user) -> SimpleNamespace:
    """The training arguments after the wrapped ``set_model_attributes`` for a model of ``release`` whose checkpoint
    stored no hyp (YOLOv5's defaults), ``user`` as passed to ``train()``."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from focus_surgery.yolov5.hyp import base_hyp

    monkeypatch.setattr(training, "legacy_head", lambda model: object())
    monkeypatch.setattr(training, "model_hyp", lambda model: base_hyp(None))
    monkeypatch.setattr(training, "trainer_schedule", lambda t: schedule_rules(release))
    trainer = SimpleNamespace(model=None, args=SimpleNamespace(**{**DEFAULT_CFG_DICT, **user}))
    training._wrap_set_model_attributes(lambda self: None)(trainer)
    return trainer.args


def test_v1_to_v3_cosine_ends_at_their_fixed_lrf(monkeypatch):
    """v1.0's train.py: ``lf = ((1 + cos(x * pi / epochs)) / 2) * 0.9 + 0.1`` (``one_cycle(1, 0.1, epochs)``),
    v2.0-v3.0's ``* 0.8 + 0.2``; their hyps have no ``lrf`` (v3.1 added it), so the v7.0 default 0.01 is none of
    theirs. A value the user passes is kept."""
    for release, lrf in {"v1.0": 0.1, "v2.0": 0.2, "v3.0": 0.2}.items():
        args = _set_model_attributes(release, monkeypatch)
        assert (args.cos_lr, args.lrf) == (True, lrf), release
    assert _set_model_attributes("v3.0", monkeypatch, lrf=0.05).lrf == 0.05
