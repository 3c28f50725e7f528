"""focus-surgery: exact conversion between Focus / space-to-depth stems and strided convs."""

from ._version import __version__
from .integrations import auto_register as _auto_register, register
from .layers import ConvBnAct, DepthToSpace, Focus, SPDConv, SpaceToDepth
from .model_configs import list_configs
from .speed.optimize import OptimizeReport, optimize
from .orders import ORDERS
from .remap import SpaceToDepthForm, conv_to_focus_weight, focus_to_conv_weight
from .remap import s2d_to_strided_conv, strided_conv_to_s2d
from .onnx_graph import convert_onnx, inspect_onnx  # imports onnx only when called
from .surgery import ConversionError, ConversionReport, convert
from .verify import VerificationReport, verify

__all__ = [
    "ORDERS",
    "__version__",
    "OptimizeReport",
    "ConversionError",
    "ConversionReport",
    "ConvBnAct",
    "DepthToSpace",
    "Focus",
    "SPDConv",
    "SpaceToDepth",
    "SpaceToDepthForm",
    "VerificationReport",
    "conv_to_focus_weight",
    "convert",
    "convert_onnx",
    "focus_to_conv_weight",
    "inspect_onnx",
    "list_configs",
    "optimize",
    "register",
    "s2d_to_strided_conv",
    "strided_conv_to_s2d",
    "verify",
]

_auto_register()  # Ultralytics YAML rows and timm models: immediate if loaded, else when loaded (never imports them)
