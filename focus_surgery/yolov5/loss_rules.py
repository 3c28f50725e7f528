"""What YOLOv5's training loss computes, release by release (v1.0 ... v7.0 and master), as data.

Every release's ``compute_loss`` / ``ComputeLoss`` was read at its tag; the rules below are the differences, each
reproduced with the release's own order of floating-point operations so the loss is bit-identical in float64:

=========  =========================  ===============================  ==========  =========  ===================
release    box overlap                objectness balance (3 / other)   smoothing   neighbour  gains scaled by
                                                                                   cells      (train.py + loss)
=========  =========================  ===============================  ==========  =========  ===================
v1.0       GIoU, eps 1e-16            none                             ignored     rect4 old  cls nc/80
v2.0       GIoU, eps 1e-16            4, 1, 0.4 / 4, 1, 0.4, 0.1       ignored     rect4 old  cls nc/80; all 3/nl,
                                                                                              obj x1.4 if 4 levels
v3.0       CIoU ``v3.0`` (1e-16)      4, 1, 0.4 / 4, 1, 0.4, 0.1       ignored     inverse    as v2.0
v3.1       CIoU ``v3.1`` (1e-9)       4, 1, 0.4 / 4, 1, 0.4, 0.1       ignored     inverse    as v2.0
v4.0       CIoU ``v3.1`` (1e-9)       4, 1, 0.3, 0.1, 0.03 (any)       ignored     inverse    cls nc/80 x 3/nl,
                                                                                              box 3/nl, obj
                                                                                              (s/640)^2 x 3/nl
v5.0-v6.1  CIoU ``v5.0`` (1e-7)       4, 1, 0.4 / 4, 1, 0.25, 0.06,    honoured    inverse    box 3/nl, cls nc/80
                                      0.02                                                    x 3/nl, obj
                                                                                              (s/640)^2 x 3/nl
v6.2       CIoU ``v6.2``              as v5.0                          honoured    inverse    as v5.0
v7.0       CIoU ``v7.0``              as v5.0                          honoured    inverse    as v5.0
master     CIoU ``master``            as v5.0                          honoured    inverse    as v5.0
=========  =========================  ===============================  ==========  =========  ===================

Box overlap variants (``xywh`` boxes, corners ``x +- w / 2``):

* GIoU (v1.0, v2.0): ``w, h`` from the corners, ``union = (w1 h1 + 1e-16) + w2 h2 - inter``, enclosing area
  ``+ 1e-16``.
* ``v3.0``: CIoU with v1.0's union, ``c2 + 1e-16``, ``alpha = v / (1 - iou + v + 1e-16)``.
* ``v3.1`` (v3.1, v4.0): ``h`` from the corners ``+ eps``, ``eps = 1e-9``, ``alpha = v / ((1 + eps) - iou + v)``.
* ``v5.0`` (v5.0-v6.1): as ``v3.1`` with ``eps = 1e-7`` and ``alpha = v / (v - iou + (1 + eps))``.
* ``v6.2``: the given ``w, h`` (no corner round trip, no ``eps`` on ``h``), ``atan(w / (h + eps))``.
* ``v7.0``: the given ``w, h``, ``atan(w / h)``.
* ``master``: as ``v7.0`` with Ultralytics' ``alpha = v / (1 - iou + v + eps)`` (master imports
  ``ultralytics.utils.metrics.bbox_iou``; the formula of Ultralytics 8.4).

Neighbour cells: "rect4 old" (v1.0, v2.0) takes the right / lower neighbour when ``frac(g) > 0.5`` and
``g < n - 1``; "inverse" (v3.0+) when ``frac(n - g) < 0.5`` and ``n - g > 1`` (they differ on exact cell edges).
Releases before v4.0 do not clamp cell indices (the original fails on a centre exactly on the far border; ours
clamps). A release is named by its tag; a range a converted file records when the file cannot tell (``v6.0-v7.0``)
takes the newest release of the range (``release_rules``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

RELEASES = ("v1.0", "v2.0", "v3.0", "v3.1", "v4.0", "v5.0", "v6.0", "v6.1", "v6.2", "v7.0", "master")
DEFAULT_RELEASE = "v7.0"  # a YAML model, or a file whose release is unknown


@dataclass(frozen=True)
class LossRules:
    """One release's loss (see the module table).

    Attributes:
        release (str): The tag.
        overlap (str): ``"giou"``, ``"v3.0"``, ``"v3.1"``, ``"v5.0"``, ``"v6.2"``, ``"v7.0"`` or ``"master"``.
        eps (float): The overlap's ``eps``.
        balance (tuple | None): Objectness weights per level for 3 levels, then for any other count; None: all 1.
        label_smoothing (bool): Whether ``hyp['label_smoothing']`` is honoured (v5.0+; older releases use 0).
        old_neighbours (bool): v1.0-v2.0's neighbour-cell test.
        train_scaling (str): How ``train.py`` scales the gains: ``"cls"`` (v1.0-v3.1), ``"v4.0"``, ``"v5.0"``.
        loss_scaling (str): How the loss scales them itself: ``"none"``, ``"levels"`` (v2.0-v3.1: all by 3 / nl,
            objectness x1.4 for 4 levels), ``"v4.0"`` (box and cls by 3 / nl).
    """

    release: str
    overlap: str
    eps: float
    balance: tuple[tuple[float, ...], tuple[float, ...]] | None
    label_smoothing: bool
    old_neighbours: bool
    train_scaling: str
    loss_scaling: str

    def level_balance(self, nl: int) -> list[float]:
        """Objectness weight of each of ``nl`` levels."""
        if self.balance is None:
            return [1.0] * nl
        three, other = self.balance
        weights = list(three if nl == 3 else other)
        if nl > len(weights):
            raise ValueError(f"YOLOv5 {self.release}'s loss has objectness weights for at most {len(weights)} levels")
        return weights[:nl]


_OLD_BALANCE = ((4.0, 1.0, 0.4), (4.0, 1.0, 0.4, 0.1))
_V4_BALANCE = ((4.0, 1.0, 0.3, 0.1, 0.03), (4.0, 1.0, 0.3, 0.1, 0.03))
_V5_BALANCE = ((4.0, 1.0, 0.4), (4.0, 1.0, 0.25, 0.06, 0.02))

_RULES = {
    "v1.0": LossRules("v1.0", "giou", 1e-16, None, False, True, "cls", "none"),
    "v2.0": LossRules("v2.0", "giou", 1e-16, _OLD_BALANCE, False, True, "cls", "levels"),
    "v3.0": LossRules("v3.0", "v3.0", 1e-16, _OLD_BALANCE, False, False, "cls", "levels"),
    "v3.1": LossRules("v3.1", "v3.1", 1e-9, _OLD_BALANCE, False, False, "cls", "levels"),
    "v4.0": LossRules("v4.0", "v3.1", 1e-9, _V4_BALANCE, False, False, "v4.0", "v4.0"),
    "v5.0": LossRules("v5.0", "v5.0", 1e-7, _V5_BALANCE, True, False, "v5.0", "none"),
    "v6.0": LossRules("v6.0", "v5.0", 1e-7, _V5_BALANCE, True, False, "v5.0", "none"),
    "v6.1": LossRules("v6.1", "v5.0", 1e-7, _V5_BALANCE, True, False, "v5.0", "none"),
    "v6.2": LossRules("v6.2", "v6.2", 1e-7, _V5_BALANCE, True, False, "v5.0", "none"),
    "v7.0": LossRules("v7.0", "v7.0", 1e-7, _V5_BALANCE, True, False, "v5.0", "none"),
    "master": LossRules("master", "master", 1e-7, _V5_BALANCE, True, False, "v5.0", "none"),
}


def rules_release(release: str | None) -> str:
    """The release whose rules apply to a recorded ``yolov5_release``: a tag as is; a range (what a file that cannot
    tell records, e.g. ``"v4.0-v5.0"``, ``"v6.0-v7.0 (with a Focus stem)"``) its newest release; anything else
    (None, a YAML model, a yolov3 file) v7.0."""
    if not release:
        return DEFAULT_RELEASE
    text = str(release).split(" ")[0]
    if text in _RULES:
        return text
    parts = text.split("-")
    if len(parts) == 2 and all(p in _RULES for p in parts):
        return parts[1]
    return DEFAULT_RELEASE


def release_rules(release: str | None) -> LossRules:
    """The ``LossRules`` for a recorded release (``rules_release``)."""
    return _RULES[rules_release(release)]


def scale_gains(hyp: Mapping[str, Any], nl: int, nc: int, imgsz: int, release: str | None = None) -> dict[str, Any]:
    """The hyper-parameters as the release's ``train.py`` sets ``model.hyp`` before training (its own expressions,
    evaluated in its order, so the floats are the same).

    v1.0-v3.1: ``cls *= nc / 80.``; v4.0: also ``obj *= imgsz ** 2 / 640. ** 2 * 3. / nl``; v5.0+:
    ``box *= 3 / nl``, ``cls *= nc / 80 * 3 / nl``, ``obj *= (imgsz / 640) ** 2 * 3 / nl``; ``label_smoothing``
    becomes 0 for releases that ignore it.
    """
    rules = release_rules(release)
    out = dict(hyp)
    out["cls"] = hyp["cls"] * (nc / 80.0 if rules.train_scaling != "v5.0" else nc / 80 * 3 / nl)
    if rules.train_scaling == "v4.0":
        out["obj"] = hyp["obj"] * (imgsz**2 / 640.0**2 * 3.0 / nl)
    elif rules.train_scaling == "v5.0":
        out["box"] = hyp["box"] * (3 / nl)
        out["obj"] = hyp["obj"] * ((imgsz / 640) ** 2 * 3 / nl)
    if not rules.label_smoothing:
        out["label_smoothing"] = 0.0
    return out


def loss_gains(hyp: Mapping[str, Any], nl: int, rules: LossRules) -> tuple[float, float, float]:
    """The (box, obj, cls) multipliers the loss applies to its sums: ``model.hyp``'s, times the loss's own scaling."""
    box, obj, cls = float(hyp["box"]), float(hyp["obj"]), float(hyp["cls"])
    s = 3 / nl
    if rules.loss_scaling == "levels":
        return box * s, obj * s * (1.4 if nl == 4 else 1.0), cls * s
    if rules.loss_scaling == "v4.0":
        return box * s, obj, cls * s
    return box, obj, cls
