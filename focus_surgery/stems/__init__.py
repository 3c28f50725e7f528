"""The stem vocabulary: sites (``StemSite``), recognition (``part_of``, ``register_recogniser``: nothing here names a
framework), exact forms (``build``), the one walk (``walk``, ``plan``), the one input rule and the float64 ``check``.
"""

from .build import register_conv_type, register_focus_class, space_to_depth_form, strided_conv_form
from .check import check
from .inputs import infer_input_shape, input_channels_and_multiple, input_multiple
from .recognisers import RECOGNISERS, NotSpaceToDepth, SpaceToDepthInfo, is_conv_block, part_of, probe, recognize
from .recognisers import register_recogniser, slicing_of
from .site import Change, ConversionError, Replacement, Skipped, SpaceToDepthPart, StemSite, VerificationError
from .walk import plan, unconverted, walk

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
    "unconverted",
    "walk",
]
