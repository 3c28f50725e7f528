"""The stem vocabulary: where a stem is (``StemSite``), what computes a space-to-depth (``part_of`` and the registered
recognisers), its exact forms (``build``), the one walk that plans a conversion (``walk``, ``plan``), the one input
rule (``input_multiple``) and the float64 check on one copy (``check``).

Recognition is by what a module computes (``probe``); a framework's own classes are taught by its integration
(``register_recogniser``), so nothing here names a framework.
"""

from .build import (
    CONV_TYPES,
    carry_routing,
    changes,
    conv_problem,
    new_conv2d,
    register_conv_type,
    register_focus_class,
    space_to_depth_form,
    strided_conv_form,
    with_conv,
)
from .check import DEFAULT_TOLERANCE, VerificationReport, apply, check, compare, flatten_outputs
from .inputs import infer_input_shape, input_channels_and_multiple, input_multiple
from .probe import PROBE_SIZE, NotSpaceToDepth, SpaceToDepthInfo, probe, recognize, slicing_of
from .recognize import RECOGNISERS, conv_of, folds_itself, is_conv_block, is_conv_like, part_of, register_recogniser
from .site import (
    Change,
    ConversionError,
    Replacement,
    Skipped,
    SpaceToDepthPart,
    StemSite,
    VerificationError,
)
from .walk import SCOPES, TARGETS, plan, walk

StemCheck = VerificationReport  # the float64 check's result: errors, scale, pass/fail

__all__ = [
    "CONV_TYPES",
    "Change",
    "ConversionError",
    "DEFAULT_TOLERANCE",
    "NotSpaceToDepth",
    "PROBE_SIZE",
    "RECOGNISERS",
    "Replacement",
    "SCOPES",
    "Skipped",
    "SpaceToDepthInfo",
    "SpaceToDepthPart",
    "StemCheck",
    "StemSite",
    "TARGETS",
    "VerificationError",
    "VerificationReport",
    "apply",
    "carry_routing",
    "changes",
    "check",
    "compare",
    "conv_of",
    "conv_problem",
    "flatten_outputs",
    "folds_itself",
    "infer_input_shape",
    "input_channels_and_multiple",
    "input_multiple",
    "is_conv_block",
    "is_conv_like",
    "new_conv2d",
    "part_of",
    "plan",
    "probe",
    "recognize",
    "register_conv_type",
    "register_focus_class",
    "register_recogniser",
    "slicing_of",
    "space_to_depth_form",
    "strided_conv_form",
    "walk",
    "with_conv",
]
