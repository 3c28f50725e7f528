"""What YOLOv5's training loss computes, release by release (v1.0 ... v7.0 and master), as data.

Every release's ``compute_loss`` / ``ComputeLoss`` was read at its tag; ``_RULES`` holds the differences, each
reproduced by ``loss.py`` in the release's own order of floating-point operations (bit-identical in float64).
Releases before v4.0 do not clamp cell indices (the original fails on a centre exactly on the far border; ours
clamps). A range a converted file records when the file cannot tell (``v6.0-v7.0``) takes its newest release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

RELEASES = ("v1.0", "v2.0", "v3.0", "v3.1", "v4.0", "v5.0", "v6.0", "v6.1", "v6.2", "v7.0", "master")
DEFAULT_RELEASE = "v7.0"  # a YAML model, or a file whose release is unknown


@dataclass(frozen=True)
class LossRules:
    """One release's loss.

    Attributes:
        release (str): The tag.
        overlap (str): The box overlap (``loss.box_overlap``): ``"giou"`` (v1.0-v2.0), ``"v3.0"``, ``"v3.1"``
            (v3.1-v4.0), ``"v5.0"`` (v5.0-v6.1), ``"v6.2"``, ``"v7.0"`` or ``"master"`` (Ultralytics 8.4's CIoU).
        eps (float): The overlap's ``eps``.
        balance (tuple | None): Objectness weights per level for 3 levels, then for any other count; None: all 1.
        label_smoothing (bool): Whether ``hyp['label_smoothing']`` is honoured (v5.0+; older releases use 0).
        old_neighbours (bool): v1.0-v2.0's neighbour-cell test (``frac(g) > 0.5 and g < n - 1``; v3.0+:
            ``frac(n - g) < 0.5 and n - g > 1``, which differ on exact cell edges).
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
        weights = list(self.balance[0] if nl == 3 else self.balance[1])
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
    """The release whose rules apply to a recorded ``yolov5_release``: a tag as is; a range (``"v4.0-v5.0"``,
    ``"v6.0-v7.0 (with a Focus stem)"``) its newest release; anything else (None, a yolov3 file) v7.0."""
    text = str(release or DEFAULT_RELEASE).split(" ")[0]
    parts = text.split("-")
    if text in _RULES:
        return text
    return parts[1] if len(parts) == 2 and all(p in _RULES for p in parts) else DEFAULT_RELEASE


def release_rules(release: str | None) -> LossRules:
    """The ``LossRules`` for a recorded release (``rules_release``)."""
    return _RULES[rules_release(release)]


def scale_gains(hyp: Mapping[str, Any], nl: int, nc: int, imgsz: int, release: str | None = None) -> dict[str, Any]:
    """The hyper-parameters as the release's ``train.py`` sets ``model.hyp`` before training (its own expressions,
    in its order, so the floats are the same).

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
