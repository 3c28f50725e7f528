"""The exact YOLOv5 release that wrote a checkpoint, where the file can tell, for the training loss.

``rebuild.guess_release`` reads a range from the layers; the keys each release's ``train.py`` writes narrow it down.
When the file cannot tell (no hyp), the range is kept and the loss takes its newest release.
"""

from __future__ import annotations

from .rebuild import LegacyCheckpoint, guess_release


def exact_release(ckpt: LegacyCheckpoint) -> str:
    """The release tag that wrote ``ckpt`` (``"v4.0"``, ``"v7.0"``, ...), or ``guess_release``'s range when the
    file cannot tell. v7.0 files and later master files are alike (both write ``git``): read as v7.0."""
    guess, keys, hyp = guess_release(ckpt), set(ckpt.content), ckpt.model.get("hyp")
    hyp = hyp if isinstance(hyp, dict) else None
    if guess.startswith("v6.0-v7.0"):  # v6.2+ pickle DetectionModel & co. (Model before); v7.0 `git`, v6.1 `date`
        if not ckpt.model.qualname.endswith(".Model"):
            return "v7.0" if "git" in keys else "v6.2"
        return "v6.1" if "date" in keys else "v6.0"
    if guess == "v4.0-v5.0":
        return "v5.0" if "ema" in keys else "v4.0"  # v5.0+ write an `ema` key (None once stripped)
    if guess == "v3.0-v3.1" and hyp is not None:
        return "v3.1" if "warmup_epochs" in hyp else "v3.0"
    if guess in ("v1.0-v2.0", "v2.0") and hyp is not None:
        return "v2.0" if "optimizer" in hyp else "v1.0"
    return guess
