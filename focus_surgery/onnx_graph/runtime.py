"""Verify a folded graph against its original, at the sizes the model runs, with a tolerance it earns (issue 21).

* **Whole graph** in onnxruntime (float32) at the real input size (dynamic sizes: multiples of the stride, ``sizes``).
* **The original's own float32 error** against a float64 run of it (``reference64``; where that cannot run, between
  onnxruntime's unoptimized and optimized runs). The default tolerance is ``NOISE_FACTOR`` times it (two float32
  runs, each within it of float64, differ by up to twice it), never below the dtype's floor (``TOLERANCE``).
* **Each folded stem against its original**: root -> Conv output, float32 and float64 (a permutation: in float64
  they agree to summation order, ``STEM_FLOAT64_TOLERANCE``).

Every run is bounded first (``sizes.check_bounded``); an original graph that fails at the chosen size is reported as
``OriginalGraphFailed`` (a bad input), not as a failed conversion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .io import OnnxSurgeryError

TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "float16": 1e-2, "bfloat16": 5e-2}  # rounding floors
NOISE_FACTOR = 4.0
STEM_FLOAT64_TOLERANCE = 1e-12


class OriginalGraphFailed(OnnxSurgeryError):
    """The original graph cannot run at the size chosen for verification (nothing was converted or written)."""


@dataclass
class OnnxVerification:
    """Errors of the candidate's outputs against the reference's, over every trial, and how the tolerance was set.

    Attributes:
        max_abs_err, max_rel_err (float): Max abs difference of the whole graphs' outputs, and relative to the
            largest reference magnitude per output, held to ``tolerance`` (set as ``tolerance_source`` says).
        passed (bool): Whole graph and every stem within their tolerances.
        inputs (list[str]): Input shapes per trial, e.g. ``images=1x3x640x640``; ``outputs``: outputs compared.
        reference_error (float | None): The original graph's own float32 error (relative).
        stride (int): The model's largest stride (dynamic sizes are multiples of it).
        stems (list[dict]): Per folded stem: ``conv``, ``float32`` / ``float64`` relative errors, ``tolerance``.
    """

    max_abs_err: float
    max_rel_err: float
    tolerance: float
    passed: bool
    inputs: list[str] = field(default_factory=list)
    outputs: int = 0
    reference_error: float | None = None
    tolerance_source: str = ""
    stride: int = 1
    stems: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        stems = ""
        for s in self.stems:
            f64 = f"float64 {s['float64']:.1e}" if s["float64"] is not None else "float64 not run"
            stems += f"; stem {s['conv']}: " + (
                f"float32 {s['float32']:.1e}, {f64}" if s["float32"] is not None else "not run on its own"
            )
        return (
            f"{'PASS' if self.passed else 'FAIL'}: max_abs_err={self.max_abs_err:.3e} "
            f"max_rel_err={self.max_rel_err:.3e} (tolerance {self.tolerance:.1e}: {self.tolerance_source}; "
            f"{self.outputs} output(s), onnxruntime, inputs {'; '.join(self.inputs)}{stems})"
        )


def session(model, optimize: bool = True):
    """A quiet CPU onnxruntime session of a ModelProto (``optimize=False``: no graph optimization at all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # FATAL only: a failed run is reported in our one line, not on stderr by ORT
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def random_feed(model, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the given shapes (floats uniform in [0, 1), integers in [0, 4))."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    feed = {}
    for value in model.graph.input:
        if value.name in shapes:
            dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            shape = shapes[value.name]
            data = rng.random(shape) if np.issubdtype(dtype, np.floating) else rng.integers(0, 4, shape)
            feed[value.name] = data.astype(dtype)
    return feed


def relative_error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float]:
    """(max abs, max relative) difference over paired outputs; inf on a shape mismatch or a NaN only one has."""
    max_abs, max_rel = 0.0, 0.0
    for a, b in zip(reference, candidate):
        if a.shape != b.shape:
            return float("inf"), float("inf")
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = np.abs(a64 - b64)
        diff[np.isnan(a64) & np.isnan(b64)] = 0.0  # NaN where the original has NaN too is no difference
        err = (float("inf") if np.isnan(diff).any() else float(diff.max())) if a.size else 0.0
        scale = float(np.nanmax(np.abs(a64))) if a.size and not np.isnan(a64).all() else 0.0
        max_abs, max_rel = max(max_abs, err), max(max_rel, err / scale if scale > 0 else err)
    return max_abs, max_rel


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _with_outputs(model, names: list[str]):
    """A copy of ``model`` that also outputs ``names`` (the stems' roots), typed from shape inference."""
    import onnx
    from onnx import helper

    from .patterns import inferred_values

    if not names:
        return model
    types = {v.name: v.type.tensor_type.elem_type for v in inferred_values(model)}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(helper.make_tensor_value_info(n, types.get(n, 1), None) for n in names)
    return out


def _compare_stem(reference, candidate, stem, root_value: np.ndarray, indexes) -> dict[str, Any]:
    """Original stem (chain + Conv) against the folded Conv on the graph's own root tensor, float32 and float64."""
    from onnx import helper

    from .reference64 import run_float64, to_float64

    output = reference.graph.node[stem.conv_index].output[0]
    elem = helper.np_dtype_to_tensor_dtype(root_value.dtype)
    original = indexes[0].extract(reference, stem.root, output, elem)
    folded = indexes[1].extract(candidate, stem.root, output, elem)
    feed = {stem.root: root_value}
    try:
        a32 = session(original).run(None, feed)
    except Exception as error:  # noqa: BLE001 - the stem does not run on its own (it reads other graph inputs)
        return {"conv": stem.conv, "float32": None, "float64": None, "passed": True, "not_run": _first_line(error)}
    try:
        b32 = session(folded).run(None, feed)
    except Exception:  # noqa: BLE001 - the original stem ran, the folded one did not: a failed conversion
        b32 = None
    rel32 = relative_error(a32, b32)[1] if b32 is not None else float("inf")
    result = {"conv": stem.conv, "float32": rel32, "float64": None, "own_float32_error": None}
    original64, folded64 = to_float64(original), to_float64(folded)
    if original64 is not None and folded64 is not None:
        try:
            a64, b64 = run_float64(original64, feed), run_float64(folded64, feed)
        except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: the float32 comparison stands
            a64 = b64 = None
        if a64 is not None:
            result["float64"] = relative_error(a64, b64)[1]
            result["own_float32_error"] = relative_error(a64, a32)[1]
    floor = TOLERANCE.get(str(a32[0].dtype), 1e-5) if a32 else 1e-5
    own = result["own_float32_error"]
    result["tolerance"] = max(floor, NOISE_FACTOR * own) if own is not None else floor
    result["passed"] = bool(
        np.isfinite(rel32)
        and rel32 <= result["tolerance"]
        and (result["float64"] is None or result["float64"] <= STEM_FLOAT64_TOLERANCE)
    )
    return result


def _own_error(reference, feed: dict, outputs: list[np.ndarray]) -> tuple[float | None, str]:
    """The original graph's float32 error at ``feed`` (relative) and how it was measured."""
    from .reference64 import run_float64, to_float64

    model64 = to_float64(reference)
    if model64 is not None:
        try:
            return relative_error(run_float64(model64, feed), outputs)[1], "float64 run"
        except Exception:  # noqa: BLE001 - fall back to the optimization-level spread below
            pass
    try:
        unoptimized = session(reference, optimize=False).run(None, feed)
    except Exception:  # noqa: BLE001
        return None, "none"
    return relative_error(unoptimized, outputs)[1], "onnxruntime unoptimized vs optimized"


def compare(reference, candidate, tolerance: float | None = None, stems=()) -> OnnxVerification:
    """Run the original graph ``reference`` and the folded ``candidate`` on the same random inputs at real sizes,
    and each folded stem of ``stems`` against its original; see the module docstring.

    Raises:
        OriginalGraphFailed: The original graph cannot run at the chosen size.
        OnnxSurgeryError: A run would exceed the element or Loop bounds (``sizes.check_bounded``).
    """
    from .sizes import check_bounded, describe, largest_stride, trial_shapes

    folded = [s for s in stems if s.convertible]
    stride = largest_stride(reference, folded)
    trials = trial_shapes(reference, stride)
    for shapes in trials:
        check_bounded(reference, shapes)
    inputs = {i.name for i in reference.graph.input}
    extra = sorted({s.root for s in folded} - inputs)
    n_out = len(reference.graph.output)
    try:
        ref_session = session(_with_outputs(reference, extra))
    except Exception as error:  # noqa: BLE001
        raise OriginalGraphFailed(f"onnxruntime cannot load the original graph ({_first_line(error)})") from None
    try:
        cand_session = session(candidate)
    except Exception:  # noqa: BLE001 - the rewritten graph does not load: a failed conversion, reported as such
        cand_session = None
    max_abs, max_rel, described, dtype = 0.0, 0.0, [], "float32"
    first = None
    for trial, shapes in enumerate(trials):
        feed = random_feed(reference, shapes, seed=trial)
        text = describe(shapes)
        described.append(text)
        try:
            ref = ref_session.run(None, feed)
        except Exception as error:  # noqa: BLE001
            raise OriginalGraphFailed(
                f"the original graph itself fails at {text} (stride {stride}) in onnxruntime "
                f"({_first_line(error)}); not a conversion failure: check the model's input sizes"
            ) from None
        try:
            cand = cand_session.run(None, feed) if cand_session is not None else None
        except Exception:  # noqa: BLE001 - the original ran, the candidate did not: a failed conversion
            cand = None
        ab, rel = relative_error(ref[:n_out], cand) if cand is not None else (float("inf"), float("inf"))
        max_abs, max_rel = max(max_abs, ab), max(max_rel, rel)
        dtype = next((str(a.dtype) for a in ref[:n_out] if np.issubdtype(a.dtype, np.floating)), dtype)
        if first is None:
            roots = {**feed, **dict(zip(extra, ref[n_out:]))}
            first = (feed, ref[:n_out], roots)
    own, how = _own_error(reference, first[0], first[1])
    floor = TOLERANCE.get(dtype, 1e-5)
    if tolerance is not None:
        tol, source = float(tolerance), "--tolerance"
    elif own is not None and NOISE_FACTOR * own > floor:
        tol, source = NOISE_FACTOR * own, f"{NOISE_FACTOR:g} x the original's own float32 error {own:.1e} ({how})"
    else:
        own_text = f"{own:.1e} ({how})" if own is not None else "not measurable"
        tol, source = floor, f"{dtype} floor; the original's own error {own_text}"
    from .patterns import GraphIndex

    indexes = (GraphIndex(reference.graph), GraphIndex(candidate.graph)) if folded else ()
    stem_results = [_compare_stem(reference, candidate, s, first[2][s.root], indexes) for s in folded]
    passed = bool(np.isfinite(max_rel) and max_rel <= tol and all(s["passed"] for s in stem_results))
    return OnnxVerification(max_abs, max_rel, tol, passed, described, n_out, own, source, stride, stem_results)
