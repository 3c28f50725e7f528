"""Ultralytics YAML rows for our layers, without editing any installed file.

Ultralytics' ``parse_model`` looks each row's module name up in ``ultralytics.nn.tasks``' globals and knows channel
rules only for its own modules (an unknown module gets ``c2 = c1`` and no ``c1`` argument). ``register()`` replaces
``parse_model`` (in ``ultralytics.nn.tasks`` and ``ultralytics.nn``) by a wrapper that leaves YAMLs without our rows
to the original untouched. For a YAML with our rows it swaps each of them for a *placeholder* row whose channel rule
Ultralytics already applies exactly, lets the original parser build the model, then puts the real module in the
placeholder's place:

===================  ====================================  =====================================================
channel rule         placeholder row                       why the channels are exact
===================  ====================================  =====================================================
``"scaled"``         ``Conv [c2, 1]``                      Ultralytics scales ``c2`` by width / ``scales`` and
                                                           caps it by ``max_channels`` as for its own Conv; the
                                                           placeholder's ``in_channels`` is ``c1``
``c2 = rule(c1, a)`` ``Concat ["ch"]`` until ``c2`` is     ``"ch"`` resolves to the parser's channel list (as
                     known, then ``HGStem [2, c2]``        ``"nc"`` does), which gives ``c1``; an ``HGStem`` row
                                                           outputs ``args[1]`` channels, unscaled. Each such row
                                                           whose ``c2 != c1`` costs one more (throw-away) build.
``"inputs"``         ``Concat ["ch"]``                     the input channels of a Detect-style head
===================  ====================================  =====================================================

Built-in rows (the YAML ``args`` column; trailing ones optional):

=================  ========================================  ======================  ============================
row                args                                      output channels         module
=================  ========================================  ======================  ============================
``Focus``          ``[c2, k, s, p, g, act, block_size,       scaled ``c2``           Ultralytics' ``Focus`` for
                   order]``                                                          block 2 / yolov5 order, else
                                                                                     ``focus_surgery.Focus``
``SPDConv``        ``[c2, k, block_size, order]``            scaled ``c2``           ``focus_surgery.SPDConv``
``SpaceToDepth``   ``[block_size, order]``                   ``c1 * block_size**2``  ``focus_surgery.SpaceToDepth``
``DepthToSpace``   ``[block_size, order]``                   ``c1 / block_size**2``  ``focus_surgery.DepthToSpace``
=================  ========================================  ======================  ============================

The conv inside every row is an Ultralytics ``Conv``, so ``model.fuse()`` folds its BatchNorm. Other modules add
rows with ``register_yaml_module`` (e.g. a YOLOv5 anchor head with the ``"inputs"`` rule).

``register()`` also wraps ``check_yaml`` in ``ultralytics.nn.tasks`` (what ``yaml_model_load`` finds config files
with), so the configs shipped in ``focus_surgery/configs`` resolve by name, scale letter included, after a local file
and Ultralytics' own configs (``focus_surgery.model_configs``).
"""

from __future__ import annotations

import ast
import copy
import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import torch
from torch import nn

from ..layers import DepthToSpace, Focus, SPDConv, SpaceToDepth
from ..model_configs import find_config
from ..orders import check_block_size
from ..stems import SpaceToDepthPart, is_conv_block
from .timm_version import version_tuple

SUPPORTED_VERSIONS = ">=8.4.190,<8.5"  # what CI tests (requirements-dev.txt); pyproject.toml declares the same
_SUPPORTED_RANGE = ((8, 4, 190), (8, 5))  # [low, high)
_NEEDED_GLOBALS = ("parse_model", "Conv", "Concat", "HGStem")  # what the wrapper relies on in ultralytics.nn.tasks
_WRAPPED_MARK = "__focus_surgery_original__"

ChannelRule = Union[str, Callable[[int, list], int]]


@dataclass(frozen=True)
class YamlModule:
    """How one YAML row name builds and how it changes the channel count.

    Attributes:
        name (str): The module name used in YAML rows.
        cls (type): The class built (recorded as the row's ``type``).
        channels (str | Callable): ``"scaled"`` (``args[0]`` is ``c2``, scaled like Ultralytics ``Conv``; built as
            ``build(c1, c2, *args[1:])``), ``"inputs"`` (built as ``build(*args, [c1 of each input])``, Detect-style),
            or ``rule(c1, args) -> c2`` (built as ``build(*args)``; one input).
        args (tuple[str, ...]): Names of the YAML arguments, for messages and arity checks.
        build (Callable): Constructor; ``cls`` by default.
    """

    name: str
    cls: type
    channels: ChannelRule
    args: tuple[str, ...]
    build: Callable[..., nn.Module]

    def signature(self) -> str:
        return f"{self.name} args are [{', '.join(self.args)}]"


_ROWS: dict[str, YamlModule] = {}


def register_yaml_module(
    name: str,
    cls: type,
    channels_rule: ChannelRule,
    args: tuple[str, ...] | list[str] = (),
    build: Callable[..., nn.Module] | None = None,
) -> None:
    """Make ``name`` usable as a module in Ultralytics YAML rows (takes effect once ``register()`` has hooked).

    Args:
        name (str): Row name, e.g. ``"LegacyDetect"``. Registering a name again replaces its entry.
        cls (type): The nn.Module class the row builds.
        channels_rule (str | Callable): ``"scaled"``, ``"inputs"`` or ``rule(c1, args) -> c2`` (see ``YamlModule``).
        args (tuple[str, ...]): YAML argument names (without ``c1``), for error messages and arity checks.
        build (Callable | None): Constructor with ``cls``' positional signature; ``cls`` when None.
    """
    if not (channels_rule in ("scaled", "inputs") or callable(channels_rule)):
        raise ValueError(
            f"channels_rule must be 'scaled', 'inputs' or a function (c1, args) -> c2, got {channels_rule!r}"
        )
    _ROWS[name] = YamlModule(name, cls, channels_rule, tuple(args), build or cls)


def registered_yaml_modules() -> dict[str, YamlModule]:
    """A copy of the row table."""
    return dict(_ROWS)


# ------------------------------------------------------------------------------------------------- built-in rows


def _ultralytics_conv() -> type[nn.Module]:
    from ultralytics.nn.modules import Conv

    return Conv


def _build_focus(c1, c2, k=1, s=1, p=None, g=1, act=True, block_size=2, order="yolov5") -> nn.Module:
    """Ultralytics' own Focus when it computes the same thing (block 2, yolov5 order): the model then loads with
    plain Ultralytics; ours (same state-dict names) for any other block size or order."""
    if block_size == 2 and order == "yolov5":
        from ultralytics.nn.modules import Focus as UltralyticsFocus

        return UltralyticsFocus(c1, c2, k, s, p, g, act)
    return Focus(c1, c2, k, s, p, g, act, block_size, order, conv_layer=_ultralytics_conv())


def _build_spdconv(c1, c2, k=3, block_size=2, order="yolov5") -> nn.Module:
    return SPDConv(c1, c2, k, block_size, order, conv_layer=_ultralytics_conv())


def _space_to_depth_channels(c1: int, args: list) -> int:
    block_size = check_block_size(args[0] if args else 2)
    return c1 * block_size * block_size


def _depth_to_space_channels(c1: int, args: list) -> int:
    block_size = check_block_size(args[0] if args else 2)
    if c1 % (block_size * block_size):
        raise ValueError(f"{c1} input channels are not divisible by block_size**2 = {block_size * block_size}")
    return c1 // (block_size * block_size)


register_yaml_module("Focus", Focus, "scaled", ("c2", "k", "s", "p", "g", "act", "block_size", "order"), _build_focus)
register_yaml_module("SPDConv", SPDConv, "scaled", ("c2", "k", "block_size", "order"), _build_spdconv)
register_yaml_module("SpaceToDepth", SpaceToDepth, _space_to_depth_channels, ("block_size", "order"))
register_yaml_module("DepthToSpace", DepthToSpace, _depth_to_space_channels, ("block_size", "order"))


def _build_legacy_detect(nc: int, anchors: list, ch: list[int]) -> nn.Module:
    """YOLOv5's anchor head from a YAML row; strides assumed 8, 16, 32, ... until Ultralytics measures them."""
    from ..yolov5.detect import LegacyDetect

    if not isinstance(anchors, (list, tuple)) or len(anchors) != len(ch):
        raise ValueError(f"anchors must be one list [w0, h0, w1, h1, ...] per input level ({len(ch)} levels)")
    stride = [8.0 * 2**i for i in range(len(ch))]
    head = LegacyDetect(nc, anchors, ch, stride, anchor_grid_buffer=False)
    head.register_buffer("built_stride", torch.tensor(stride), persistent=False)
    return head


# LegacyDetect subclasses Ultralytics' Detect, so its module is imported by the builder only (no import cycle while
# Ultralytics loads its parser); the row table records nn.Module as its class.
register_yaml_module("LegacyDetect", nn.Module, "inputs", ("nc", "anchors"), _build_legacy_detect)


# ------------------------------------------------------------------------------------------------------- parsing


def _row_text(i: int, row: list) -> str:
    return f"YAML row {i} {list(row)!r}"


def _input_index(i: int, f: int) -> int:
    """Index into the parser's channel list of input ``f`` of row ``i`` (``-1`` is the previous row)."""
    return f if f >= 0 else i + f


def _check_block_divides(module: nn.Module, inputs: tuple) -> None:
    """Kept only as a name: checkpoints saved before 0.1 pickled it as a forward pre-hook. The loader empties every
    hook slot of a loaded layer (``loader.layers``), so such files convert; the YAML rows register no hook any more
    and the space-to-depth layer raises the row's error itself."""
    return None


def _resolve_arg(arg: Any, d: dict) -> Any:
    """A string naming a top-level YAML key (``nc``, ``anchors``) takes its value, as Ultralytics resolves ``nc``;
    a string holding a Python literal (``None``) becomes that literal; any other string (``timm``) stays."""
    if not isinstance(arg, str):
        return arg
    if arg in d and arg not in ("backbone", "head"):
        return d[arg]
    try:
        return ast.literal_eval(arg)
    except (ValueError, SyntaxError):
        return arg


@dataclass
class _Row:
    index: int
    row: list
    spec: YamlModule
    args: list  # resolved YAML arguments

    @property
    def text(self) -> str:
        return _row_text(self.index, self.row)


def _our_rows(d: dict) -> list[_Row]:
    """Our rows of model dict ``d``, arguments resolved and checked (each error names the row)."""
    rows = []
    for i, row in enumerate(list(d.get("backbone") or []) + list(d.get("head") or [])):
        name = row[2] if len(row) == 4 else None
        if not isinstance(name, str) or name not in _ROWS:
            continue
        spec = _ROWS[name]
        f, n, args = row[0], row[1], list(row[3] or [])
        args = [_resolve_arg(a, d) for a in args]
        if n != 1:
            raise ValueError(f"{_row_text(i, row)}: repeats n={n!r}; {name} rows take n=1")
        if len(args) > len(spec.args):
            raise ValueError(f"{_row_text(i, row)}: {len(args)} arguments; {spec.signature()}")
        if spec.channels == "scaled" and (not args or isinstance(args[0], bool) or not isinstance(args[0], int)):
            raise ValueError(f"{_row_text(i, row)}: first argument must be the output channels c2; {spec.signature()}")
        if spec.channels != "inputs" and not isinstance(f, int):
            raise ValueError(f"{_row_text(i, row)}: {name} takes one input, got from={f!r}")
        rows.append(_Row(i, row, spec, args))
    return rows


def _placeholder(row: _Row, known_c2: int | None) -> list:
    """A row Ultralytics builds itself, with the output channels ``row`` will have (see the module docstring)."""
    f = row.row[0]
    if row.spec.channels == "scaled":
        return [f, 1, "Conv", [row.args[0], 1]]
    if known_c2 is not None:
        return [f, 1, "HGStem", [2, known_c2]]  # a tiny stem (2 mid channels) with exactly known_c2 outputs
    return [f if isinstance(f, list) else [f], 1, "Concat", ["ch"]]


def _with_placeholders(d: dict, placeholders: dict[int, list]) -> dict:
    new = dict(d)
    n_backbone = len(d.get("backbone") or [])
    for key, offset in (("backbone", 0), ("head", n_backbone)):
        new[key] = [placeholders.get(offset + j, row) for j, row in enumerate(d.get(key) or [])]
    return new


def _input_channels(row: _Row, built: nn.Module) -> int | list[int]:
    """``c1`` (or the input channel list for ``"inputs"``) read off the placeholder ``built``."""
    if row.spec.channels == "scaled":
        return built.conv.in_channels
    channels = built.d  # the parser's channel list, captured by the Concat placeholder's "ch" argument
    f = row.row[0]
    if isinstance(f, list):
        return [channels[_input_index(row.index, x)] for x in f]
    return channels[_input_index(row.index, f)]


def _build(row: _Row, c_in, placeholder: nn.Module) -> nn.Module:
    spec, args = row.spec, row.args
    try:
        if spec.channels == "scaled":
            module = spec.build(c_in, placeholder.conv.out_channels, *args[1:])
        elif spec.channels == "inputs":
            module = spec.build(*args, c_in)
        else:
            module = spec.build(*args)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{row.text}: {str(error).splitlines()[0]}; {spec.signature()}") from None
    if isinstance(module, (Focus, SPDConv, SpaceToDepth)):  # ours only: Ultralytics' Focus stays plain Ultralytics
        module.yaml_row = row.text
        (module if isinstance(module, SpaceToDepth) else module.s2d).yaml_row = row.text  # it raises naming the row
    return module


def _parse_with_rows(original: Callable, d: dict, ch: int, verbose: bool):
    """Build model dict ``d`` with our rows; returns what ``parse_model`` returns: (nn.Sequential, save list)."""
    rows = _our_rows(d)
    if not rows:
        return original(d, ch, verbose=verbose)
    known: dict[int, tuple[int, int]] = {}  # row index -> (c1, c2) for rows with a channel function
    while True:
        placeholders = {r.index: _placeholder(r, known.get(r.index, (0, None))[1]) for r in rows}
        # The parser edits row arguments in place (Detect gets its channels appended): each pass gets its own copy.
        model, save = original(copy.deepcopy(_with_placeholders(d, placeholders)), ch, verbose=False)
        c_in = {r.index: _input_channels(r, model[r.index]) for r in rows if r.index not in known}
        stale = False  # once a row's true c2 differs from its placeholder's, later rows' c1 are wrong: build again
        for r in rows:
            if callable(r.spec.channels) and r.index not in known and not stale:
                try:
                    c2 = int(r.spec.channels(c_in[r.index], r.args))
                except (TypeError, ValueError, IndexError) as error:
                    raise ValueError(f"{r.text}: {error}; {r.spec.signature()}") from None
                known[r.index] = (c_in[r.index], c2)
                stale = c2 != c_in[r.index]  # the Concat placeholder passed c1 through
        if not stale and all(r.index in known for r in rows if callable(r.spec.channels)):
            break
    conv = _ultralytics_conv()
    default_act = conv.default_act
    acts = [model[r.index].act for r in rows if r.spec.channels == "scaled"]
    try:
        conv.default_act = acts[0] if acts else default_act  # the YAML `activation`, as the placeholder Conv got it
        for r in rows:
            placeholder = model[r.index]
            c1 = known[r.index][0] if r.index in known else c_in[r.index]
            module = _build(r, c1, placeholder)
            module.i, module.f = r.index, r.row[0]
            module.type = f"{type(module).__module__}.{type(module).__qualname__}"
            module.np = sum(p.numel() for p in module.parameters())
            model[r.index] = module
    finally:
        conv.default_act = default_act
    if verbose:
        _log_table(model, d)
    return model, save


def _log_table(model: nn.Sequential, d: dict) -> None:
    """The per-row summary Ultralytics prints, with our modules' real types."""
    from ultralytics.utils import LOGGER

    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    LOGGER.info(f"\n{'':>3}{'from':>20}{'n':>3}{'params':>10}  {'module':<45}{'arguments':<30}")
    for m, row in zip(model, rows):
        LOGGER.info(f"{m.i:>3}{m.f!s:>20}{row[1]:>3}{m.np:10.0f}  {m.type:<45}{row[3]!s:<30}")


# ------------------------------------------------------------------------------------------ YAML after surgery


def _conv_row_args(c2: Any, conv: nn.Conv2d, act: nn.Module) -> list | None:
    """``[c2, k, s, p(, g, d, act)]`` of an Ultralytics Conv row for ``conv``, or None if a row cannot say it."""
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    if isinstance(p, str) or len({k[0], k[1]}) + len({s[0], s[1]}) + len({p[0], p[1]}) + len({d[0], d[1]}) != 4:
        return None
    args = [c2, k[0], s[0], p[0]]
    if conv.groups != 1 or d[0] != 1 or isinstance(act, nn.Identity):
        args += [conv.groups, d[0], not isinstance(act, nn.Identity)]
    return args


def _row_after_surgery(row: list, module: nn.Module) -> list | None:
    """The YAML row that builds ``module`` (an Ultralytics ``Conv`` / ``Focus`` or an ``nn.Identity``), or None."""
    cls = type(module)
    if cls is nn.Identity:
        return [row[0], 1, "nn.Identity", []]
    c2 = row[3][0] if row[3] else None
    if isinstance(c2, bool) or not isinstance(c2, int):
        return None
    if not cls.__module__.startswith("ultralytics."):
        # another zoo's `Conv(c1, c2, k, s, p)` row (yolov7 / YOLOR after a ReOrg row was folded into it)
        if cls.__name__ == "Conv" and row[2] == "Conv" and type(getattr(module, "conv", None)) is nn.Conv2d:
            args = _conv_row_args(c2, module.conv, getattr(module, "act", nn.Identity()))
            return [row[0], row[1], "Conv", args] if args and len(args) == 4 else None
        return None
    if cls.__name__ == "Conv" and type(module.conv) is nn.Conv2d:
        args = _conv_row_args(c2, module.conv, module.act)
        return [row[0], 1, "Conv", args] if args else None
    if cls.__name__ == "Focus" and type(module.conv.conv) is nn.Conv2d:  # [c2, k, s, p, g, act]
        args = _conv_row_args(c2, module.conv.conv, module.conv.act)
        if args and len(args) > 4:
            args = args[:4] + [args[4], args[6]] if args[5] == 1 else None
        return [row[0], 1, "Focus", args] if args else None
    return None


def ultralytics_focus(module: nn.Module) -> SpaceToDepthPart | None:
    """Ultralytics' own ``Focus``: space-to-depth(2) in YOLOv5's order, then its ``Conv`` (a stem recogniser)."""
    cls = getattr(sys.modules.get("ultralytics.nn.modules.conv"), "Focus", None)  # loaded if such a module exists
    if cls is None or not isinstance(module, cls) or not is_conv_block(getattr(module, "conv", nn.Module())):
        return None
    if type(module).forward is not cls.forward:  # a subclass slicing its own way: recognised by what it computes
        return None
    return SpaceToDepthPart(2, "yolov5", module.conv)


def ultralytics_focus_class(block: nn.Module) -> type[nn.Module] | None:
    """Ultralytics' own Focus for a conv block from an Ultralytics model, so plain Ultralytics loads the result."""
    if not type(block).__module__.startswith("ultralytics."):
        return None
    try:
        from ultralytics.nn.modules import Focus as UltralyticsFocus
    except ImportError:  # pragma: no cover - ultralytics without Focus
        return None
    return UltralyticsFocus


def sync_yaml(model: nn.Module, paths: list[str]) -> list[int]:
    """Rewrite the rows of ``model.yaml`` whose modules surgery replaced, so a model rebuilt from its YAML (Ultralytics
    does that to train again) has the same modules and takes the state dict strictly.

    Only whole rows (paths ``model.<i>``) that are now an Ultralytics ``Conv`` / ``Focus`` or an ``nn.Identity`` (a
    folded SpaceToDepth row) are rewritten; ``c2`` keeps the row's unscaled value so the scale still applies.

    Returns:
        (list[int]): The row indices rewritten.
    """
    d, layers = getattr(model, "yaml", None), getattr(model, "model", None)
    if not isinstance(d, dict) or not isinstance(layers, nn.Sequential) or not isinstance(d.get("backbone"), list):
        return []
    n_backbone = len(d["backbone"])
    rewritten = []
    for path in paths:
        match = re.fullmatch(r"model\.(\d+)", path)
        if match is None or int(match.group(1)) >= len(layers):
            continue
        i = int(match.group(1))
        section, j = ("backbone", i) if i < n_backbone else ("head", i - n_backbone)
        rows = d.get(section) or []
        if j >= len(rows) or len(rows[j]) != 4:
            continue
        new_row = _row_after_surgery(rows[j], layers[i])
        if new_row is not None:
            rows[j] = new_row
            rewritten.append(i)
    return rewritten


# --------------------------------------------------------------------------------------------------- registration


def check_hookable(tasks: Any, version: str) -> None:
    """Raise RuntimeError, naming the supported versions, if ``tasks`` (``ultralytics.nn.tasks``) cannot be hooked."""
    missing = [name for name in _NEEDED_GLOBALS if not hasattr(tasks, name)]
    parse = getattr(tasks, "parse_model", None)
    original = getattr(parse, _WRAPPED_MARK, parse)
    code = getattr(original, "__code__", None)
    if not missing and (code is None or code.co_varnames[:3] != ("d", "ch", "verbose")):
        missing.append("parse_model(d, ch, verbose)")
    low, high = _SUPPORTED_RANGE
    if missing:
        raise RuntimeError(
            f"focus-surgery cannot hook Ultralytics {version}: ultralytics.nn.tasks lacks {', '.join(missing)}; "
            f"supported versions are ultralytics{SUPPORTED_VERSIONS} (pip install 'ultralytics{SUPPORTED_VERSIONS}')"
        )
    if not low <= version_tuple(version) < high:
        import warnings

        warnings.warn(
            f"focus-surgery: Ultralytics {version} is outside the tested range {SUPPORTED_VERSIONS}; hooking anyway",
            RuntimeWarning,
            stacklevel=3,
        )


def _wrap(original: Callable) -> Callable:
    @functools.wraps(original)
    def parse_model(d, ch, verbose=True):
        return _parse_with_rows(original, d, ch, verbose)

    setattr(parse_model, _WRAPPED_MARK, original)
    return parse_model


def _wrap_check_yaml(original: Callable) -> Callable:
    """Ultralytics' ``check_yaml`` that also finds our shipped configs by name (``focus_surgery.model_configs``), asked
    only after Ultralytics' own search (a local file, then its package) found nothing; other names pass untouched."""

    @functools.wraps(original)
    def check_yaml(file, suffix=(".yaml", ".yml"), hard=True):
        ours = find_config(file) if isinstance(file, (str, Path)) else None
        if ours is None:
            return original(file, suffix, hard=hard)
        return original(file, suffix, hard=False) or ours

    setattr(check_yaml, _WRAPPED_MARK, original)
    return check_yaml


def is_registered() -> bool:
    """True if Ultralytics' parser is currently hooked."""
    tasks = sys.modules.get("ultralytics.nn.tasks")
    return tasks is not None and hasattr(tasks.parse_model, _WRAPPED_MARK)


def register() -> str:
    """Hook Ultralytics' YAML parser so the registered rows build, its config lookup so our shipped configs are
    found by name (``YOLO("yolov8n-spd.yaml")``), and its checkpoint reader so YOLOv5-repository files open
    (``YOLO("yolov5s.pt")``, ``integrations.ultralytics_load``); idempotent. Returns the Ultralytics version.

    Raises:
        ImportError: Ultralytics is not installed.
        RuntimeError: The installed Ultralytics cannot be hooked (the message names the supported versions).
    """
    import ultralytics

    if "ultralytics.nn.tasks" not in sys.modules:
        import ultralytics.nn.tasks  # noqa: F401
    return _hook(sys.modules["ultralytics.nn.tasks"], getattr(ultralytics, "__version__", "unknown"))


def _hook(tasks: Any, version: str) -> str:
    """Replace ``tasks.parse_model`` (and ``ultralytics.nn.parse_model`` if already bound) and ``tasks.check_yaml`` by
    the wrappers."""
    check_hookable(tasks, version)
    check_yaml = getattr(tasks, "check_yaml", None)  # yaml_model_load finds config files through it
    if check_yaml is not None and not hasattr(check_yaml, _WRAPPED_MARK):
        tasks.check_yaml = _wrap_check_yaml(check_yaml)
    from ..yolov5.training import install as install_yolov5_training

    install_yolov5_training(tasks)  # YOLOv5's loss for LegacyDetect heads (idempotent)
    from ..yolov5.validation import install as install_yolov5_validation

    install_yolov5_validation()  # YOLOv5's val.py matching for LegacyDetect heads (idempotent)
    from .ultralytics_load import install as install_yolov5_files

    install_yolov5_files(tasks)  # YOLO("yolov5s.pt"): YOLOv5-repository files rebuilt in memory (idempotent)
    if hasattr(tasks.parse_model, _WRAPPED_MARK):
        return version
    original = tasks.parse_model
    wrapped = _wrap(original)
    tasks.parse_model = wrapped  # DetectionModel & co. call it through tasks' globals
    nn_package = sys.modules.get("ultralytics.nn")  # binds it from tasks after tasks has loaded, if not done yet
    if nn_package is not None and getattr(nn_package, "parse_model", None) is original:
        nn_package.parse_model = wrapped
    return version


def unregister() -> None:
    """Restore Ultralytics' own parser, config lookup and checkpoint reader (for tests and for users who want them
    back)."""
    tasks = sys.modules.get("ultralytics.nn.tasks")
    if tasks is not None:
        from .ultralytics_load import uninstall as uninstall_yolov5_files

        uninstall_yolov5_files(tasks)
    if tasks is not None and hasattr(getattr(tasks, "check_yaml", None), _WRAPPED_MARK):
        tasks.check_yaml = getattr(tasks.check_yaml, _WRAPPED_MARK)
    if tasks is None or not hasattr(tasks.parse_model, _WRAPPED_MARK):
        return
    wrapped = tasks.parse_model
    original = getattr(wrapped, _WRAPPED_MARK)
    tasks.parse_model = original
    nn_package = sys.modules.get("ultralytics.nn")
    if nn_package is not None and getattr(nn_package, "parse_model", None) is wrapped:
        nn_package.parse_model = original
