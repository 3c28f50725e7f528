"""``convert --layout yolov5`` of an Ultralytics checkpoint holding a YOLOv5-architecture model (``LegacyDetect``):
the stem set as ``--to`` asks, then written as the model's release's ``train.py`` writes it (``yolov5/layout.py``);
with ``--verify`` the records are pickled, read back as any YOLOv5 file, rebuilt and run against the input's models.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConversionError
from ..report import ConvertReport
from .base import ConvertOptions
from .loading import Loaded
from .records_io import save_records


def convert_to_yolov5_layout(loaded: Loaded, options: ConvertOptions, source: str) -> ConvertReport:
    """The report (with its writer) of an Ultralytics checkpoint written in YOLOv5's layout. Raises ConversionError
    for another architecture, a target other than conv / focus, or a layer the model's release has no class for."""
    from ..surgery import convert
    from ..yolov5.layout import checkpoint_content, recorded_release, target_release
    from ..yolov5.training import legacy_head

    if options.to not in ("conv", "focus") or options.scope != "stem":
        raise ConversionError(f"{loaded.path}: --layout yolov5 writes the stem --to conv or --to focus, --scope stem")
    content = dict(loaded.checkpoint().content)  # the loaded objects are ours alone: changed in place
    models = {k: content[k] for k in ("model", "ema") if isinstance(content.get(k), nn.Module)}
    inference = models.get("ema") or models.get("model")
    if inference is None or any(legacy_head(m) is None for m in models.values()):
        raise ConversionError(
            f"{loaded.path}: holds no YOLOv5-architecture model (no YOLOv5 anchor head, LegacyDetect): --layout "
            f"yolov5 writes models converted from (or trained from) YOLOv5 files; drop --layout yolov5"
        )
    try:
        release, note = target_release(recorded_release(inference))
    except ConversionError as error:
        raise ConversionError(f"{loaded.path}: {error}") from None
    references = {k: copy.deepcopy(m).float().eval() for k, m in models.items()} if options.verify else {}
    # each model's stem set in place (nothing when it already is the form asked for)
    changes = {k: [vars(r) for r in convert(m, options.to, "stem", options.verify).replaced] for k, m in models.items()}
    try:
        out, origin = checkpoint_content(content, release)
    except ConversionError as error:
        raise ConversionError(f"{loaded.path}: {error}") from None
    first = next(iter(changes.values()))
    fields: dict[str, Any] = {"kind": "yolov5", "layout": "yolov5", "release": release, "stem_changes": first}
    fields["written_keys"] = list(out)
    change = f"Ultralytics -> YOLOv5 {release} layout"
    change += f", stem {first[0]['old_form']} -> {first[0]['new_form']}" if first else ""
    report = ConvertReport(str(loaded.path), source, options.to, change=change, fields=fields)
    if note:
        report.details.append(f"  {note}")
        fields["release_note"] = note
    if options.verify:
        _prove(report, out, {key: references[source] for key, source in origin.items()})
    report.write = lambda dst: save_records(out, dst)
    return report


def _prove(report: ConvertReport, out: dict[str, Any], references: dict[str, nn.Module]) -> None:
    """Pickle ``out``, read it back as a YOLOv5 file, rebuild each model and run it against its reference (by key)."""
    from ..loader import read_checkpoint
    from ..verify import verify
    from ..yolov5.rebuild import rebuild, yolov5_checkpoint
    from ..yolov5.release import exact_release

    with tempfile.TemporaryDirectory(prefix="focus-surgery-") as scratch:
        path = Path(scratch) / "yolov5.pt"
        save_records(out, path)
        content = read_checkpoint(path).content
    ckpt = yolov5_checkpoint(content, report.src)
    checks = {key: verify(ref, rebuild(dataclasses.replace(ckpt, model_key=key))[0]) for key, ref in references.items()}
    read_back = exact_release(ckpt)
    report.fields["verification"] = {
        "compared": "the written file read back as a YOLOv5 file, rebuilt, run against the input's models in float64",
        "models": {k: c.to_dict() for k, c in checks.items()},
        "release_read_back": read_back,
    }
    report.max_abs_err = max(c.max_abs_err for c in checks.values())
    problems = [f"{k}: {c}" for k, c in checks.items() if not c.passed]
    if read_back != report.fields["release"]:
        problems.append(f"the written file reads back as release {read_back}, not {report.fields['release']}")
    report.problem = "; ".join(problems) or None
