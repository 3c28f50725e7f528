"""Run two ONNX models in onnxruntime on the same random inputs and measure how far their outputs differ.

Inputs follow the model's declared shapes; each dynamic axis is tried at a few sizes (batch 1 and 2, spatial sizes
64 and 96, height and width different). Relative error is the max abs error over the largest reference magnitude;
the default tolerance is float32 rounding level (1e-5, issue 13).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "float16": 1e-2, "bfloat16": 5e-2}
_DYNAMIC_SIZES = ((1, 64, 96), (2, 96, 64))  # (batch, height, width) per trial


@dataclass
class OnnxVerification:
    """Max abs / relative error of the candidate's outputs against the reference's, over every trial."""

    max_abs_err: float
    max_rel_err: float
    tolerance: float
    passed: bool
    inputs: list[str] = field(default_factory=list)  # e.g. "images=2x3x96x64"
    outputs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{'PASS' if self.passed else 'FAIL'}: max_abs_err={self.max_abs_err:.3e} "
            f"max_rel_err={self.max_rel_err:.3e} (tolerance {self.tolerance:.0e}, {self.outputs} output(s), "
            f"onnxruntime, inputs {'; '.join(self.inputs)})"
        )


def session(model):
    """A quiet CPU onnxruntime session of a ModelProto."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def random_feeds(model, trials: tuple[tuple[int, int, int], ...] = _DYNAMIC_SIZES, seed: int = 0) -> list[dict]:
    """Random inputs for every graph input (static dims as declared; dynamic ones from ``trials``)."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    dynamic = any(not d.HasField("dim_value") for i in inputs for d in i.type.tensor_type.shape.dim)
    rng = np.random.default_rng(seed)
    feeds = []
    for batch, height, width in trials if dynamic else trials[:1]:
        feed = {}
        for value in inputs:
            tensor = value.type.tensor_type
            picks = [batch, 3, height, width]
            shape = [
                d.dim_value if d.HasField("dim_value") else picks[min(k, 3)] for k, d in enumerate(tensor.shape.dim)
            ]
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            data = rng.random(shape) if np.issubdtype(dtype, np.floating) else rng.integers(0, 4, shape)
            feed[value.name] = data.astype(dtype)
        feeds.append(feed)
    return feeds


def compare(reference, candidate, tolerance: float | None = None) -> OnnxVerification:
    """Run both models on the same random inputs; max abs / relative error over all outputs and trials."""
    ref_session, cand_session = session(reference), session(candidate)
    max_abs, max_rel, outputs, shapes = 0.0, 0.0, 0, []
    dtype = "float32"
    for feed in random_feeds(reference):
        shapes += [f"{name}={'x'.join(map(str, a.shape))}" for name, a in feed.items()]
        ref, cand = ref_session.run(None, feed), cand_session.run(None, feed)
        outputs = len(ref)
        for a, b in zip(ref, cand):
            dtype = str(a.dtype) if np.issubdtype(a.dtype, np.floating) else dtype
            if a.shape != b.shape:
                return OnnxVerification(float("inf"), float("inf"), 0.0, False, shapes, outputs)
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            diff = np.abs(a64 - b64)
            diff[np.isnan(a64) & np.isnan(b64)] = 0.0  # NaN where the original has NaN too is no difference
            err = (float("inf") if np.isnan(diff).any() else float(diff.max())) if a.size else 0.0
            scale = float(np.nanmax(np.abs(a64))) if a.size and not np.isnan(a64).all() else 0.0
            max_abs, max_rel = max(max_abs, err), max(max_rel, err / scale if scale > 0 else err)
    tolerance = tolerance if tolerance is not None else TOLERANCE.get(dtype, 1e-5)
    passed = bool(np.isfinite(max_rel) and max_rel <= tolerance)
    return OnnxVerification(max_abs, max_rel, tolerance, passed, shapes, outputs)
