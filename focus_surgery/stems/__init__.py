"""The stem vocabulary: where a stem is (``StemSite``), what computes a space-to-depth (``part_of`` and the registered
recognisers), its exact forms (``build``), the one walk that plans a conversion (``walk``, ``plan``), the one input
rule (``input_multiple``) and the float64 check on one copy (``check``).

Recognition is by what a module computes (``probe``); a framework's own classes are taught by its integration
(``register_recogniser``), so nothing here names a framework.
"""

from .build import register_conv_type, register_focus_class, space_to_depth_form, strided_conv_form
from .check import check
from .inputs import infer_input_shape, input_channels_and_multiple, input_multiple
from .probe import NotSpaceToDepth, SpaceToDepthInfo, probe, recognize, slicing_of
from .recognisers import RECOGNISERS, is_conv_block, part_of, register_recogniser
from .site import Change, ConversionError, Replacement, Skipped, SpaceToDepthPart, StemSite, VerificationError
from .walk import plan, walk

__all__ = [
    "RECOGNISERS",
    "Change",
    "ConversionError",
    "NotSpaceToDepth",
    "Replacement",
    "Skipped",
    "SpaceToDepthInfo",
    "SpaceToDepthPart",
    "StemSite",
    "VerificationError",
    "check",
    "infer_input_shape",
    "input_channels_and_multiple",
    "input_multiple",
    "is_conv_block",
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
]
