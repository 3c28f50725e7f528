"""Ultralytics YAML rows for our layers, hooked in memory (no installed file is edited).

``parse_model`` knows channel rules only for Ultralytics' own modules, so ``register()`` wraps it: a YAML with our
rows is built with each of them swapped for a *placeholder* row whose channels Ultralytics already gets exactly, then
the real module takes the placeholder's place (YAMLs without our rows go to the original untouched):

* ``"scaled"`` rows (``args[0]`` is ``c2``): ``Conv [c2, 1]``, scaled by width and capped as Ultralytics' own Conv;
* ``c2 = rule(c1, args)`` rows: ``Concat ["ch"]`` (``"ch"`` resolves to the parser's channel list, as ``"nc"`` does,
  which gives ``c1``) until ``c2`` is known, then ``HGStem [2, c2]`` (``c2`` outputs, unscaled); each such row with
  ``c2 != c1`` costs one more throw-away build;
* ``"inputs"`` rows (Detect-style heads): ``Concat ["ch"]``.

Built-in rows (trailing args optional): ``Focus [c2, k, s, p, g, act, block_size, order]`` (Ultralytics' own Focus for
block 2 / yolov5 order), ``SPDConv [c2, k, block_size, order]``, ``SpaceToDepth [block_size, order]`` (``c1 * bs**2``
outputs), ``DepthToSpace [block_size, order]`` (``c1 / bs**2``) and ``LegacyDetect [nc, anchors]`` (YOLOv5's head).
Their convs are Ultralytics ``Conv``s, so ``model.fuse()`` folds the BatchNorm; ``register_yaml_module`` adds rows.
``register()`` also wraps ``check_yaml``, so our shipped configs (``focus_surgery.model_configs``) resolve by name
after a local file and Ultralytics' own, and ``torch_safe_load`` (``ultralytics_load``).
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import re
import sys
import warnings
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
from .ultralytics_load import _WRAPPED_MARK, _wrap as _wrap_torch_safe_load

SUPPORTED_VERSIONS = ">=8.4.190,<8.5"  # what CI tests (requirements-dev.txt); pyproject.toml declares the same
_SUPPORTED_RANGE = ((8, 4, 190), (8, 5))  # [low, high)
_NEEDED_GLOBALS = ("parse_model", "Conv", "Concat", "HGStem")  # what the wrapper relies on in ultralytics.nn.tasks

ChannelRule = Union[str, Callable[[int, list], int]]


@dataclass(frozen=True)
class YamlModule:
    """How one YAML row name builds and how it changes the channel count (fields: see ``register_yaml_module``)."""

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
        cls (type): The nn.Module class the row builds (recorded as the row's ``type``).
        channels_rule (str | Callable): ``"scaled"`` (``args[0]`` is ``c2``, scaled like Ultralytics ``Conv``; built
            as ``build(c1, c2, *args[1:])``), ``"inputs"`` (built as ``build(*args, [c1 of each input])``,
            Detect-style) or ``rule(c1, args) -> c2`` (built as ``build(*args)``; one input).
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
    """Ultralytics' own Focus where it computes the same (the model then loads in plain Ultralytics), else ours."""
    if block_size == 2 and order == "yolov5":
        from ultralytics.nn.modules import Focus as UltralyticsFocus

        return UltralyticsFocus(c1, c2, k, s, p, g, act)
    return Focus(c1, c2, k, s, p, g, act, block_size, order, conv_layer=_ultralytics_conv())


def _build_spdconv(c1, c2, k=3, block_size=2, order="yolov5") -> nn.Module:
    return SPDConv(c1, c2, k, block_size, order, conv_layer=_ultralytics_conv())


def _space_to_depth_channels(c1: int, args: list) -> int:
    return c1 * check_block_size(args[0] if args else 2) ** 2


def _depth_to_space_channels(c1: int, args: list) -> int:
    phases = check_block_size(args[0] if args else 2) ** 2
    if c1 % phases:
        raise ValueError(f"{c1} input channels are not divisible by block_size**2 = {phases}")
    return c1 // phases


def _build_legacy_detect(nc: int, anchors: list, ch: list[int]) -> nn.Module:
    """YOLOv5's anchor head from a YAML row; strides assumed 8, 16, 32, ... until Ultralytics measures them."""
    from ..yolov5.detect import LegacyDetect

    if not isinstance(anchors, (list, tuple)) or len(anchors) != len(ch):
        raise ValueError(f"anchors must be one list [w0, h0, w1, h1, ...] per input level ({len(ch)} levels)")
    stride = [8.0 * 2**i for i in range(len(ch))]
    head = LegacyDetect(nc, anchors, ch, stride, anchor_grid_buffer=False)
    head.register_buffer("built_stride", torch.tensor(stride), persistent=False)
    return head


register_yaml_module("Focus", Focus, "scaled", ("c2", "k", "s", "p", "g", "act", "block_size", "order"), _build_focus)
register_yaml_module("SPDConv", SPDConv, "scaled", ("c2", "k", "block_size", "order"), _build_spdconv)
register_yaml_module("SpaceToDepth", SpaceToDepth, _space_to_depth_channels, ("block_size", "order"))
register_yaml_module("DepthToSpace", DepthToSpace, _depth_to_space_channels, ("block_size", "order"))
# LegacyDetect subclasses Ultralytics' Detect, so only its builder imports it (no cycle while Ultralytics loads).
register_yaml_module("LegacyDetect", nn.Module, "inputs", ("nc", "anchors"), _build_legacy_detect)


# ------------------------------------------------------------------------------------------------------- parsing


def _check_block_divides(module: nn.Module, inputs: tuple) -> None:
    """A name only: files saved before 0.1 pickled it as a forward pre-hook (the loader drops hooks of a layer)."""
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


def _all_rows(d: dict) -> list[list]:
    return list(d.get("backbone") or []) + list(d.get("head") or [])


@dataclass
class _Row:
    index: int
    row: list
    spec: YamlModule
    args: list  # resolved YAML arguments
    text: str  # "YAML row <index> <row>", for messages


def _our_rows(d: dict) -> list[_Row]:
    """Our rows of model dict ``d``, arguments resolved and checked (each error names the row)."""
    rows = []
    for i, row in enumerate(_all_rows(d)):
        name = row[2] if len(row) == 4 else None
        if not isinstance(name, str) or name not in _ROWS:
            continue
        spec, f, n, text = _ROWS[name], row[0], row[1], f"YAML row {i} {list(row)!r}"
        args = [_resolve_arg(a, d) for a in row[3] or []]
        if n != 1:
            raise ValueError(f"{text}: repeats n={n!r}; {name} rows take n=1")
        if len(args) > len(spec.args):
            raise ValueError(f"{text}: {len(args)} arguments; {spec.signature()}")
        if spec.channels == "scaled" and (not args or isinstance(args[0], bool) or not isinstance(args[0], int)):
            raise ValueError(f"{text}: first argument must be the output channels c2; {spec.signature()}")
        if spec.channels != "inputs" and not isinstance(f, int):
            raise ValueError(f"{text}: {name} takes one input, got from={f!r}")
        rows.append(_Row(i, row, spec, args, text))
    return rows


def _placeholder(row: _Row, known_c2: int | None) -> list:
    """A row Ultralytics builds itself, with the output channels ``row`` will have (see the module docstring)."""
    f = row.row[0]
    if row.spec.channels == "scaled":
        return [f, 1, "Conv", [row.args[0], 1]]
    if known_c2 is not None:
        return [f, 1, "HGStem", [2, known_c2]]  # a tiny stem (2 mid channels) with exactly known_c2 outputs
    return [f if isinstance(f, list) else [f], 1, "Concat", ["ch"]]


def _input_channels(row: _Row, built: nn.Module) -> int | list[int]:
    """``c1`` (or the input channel list for ``"inputs"``) read off the placeholder ``built``."""
    if row.spec.channels == "scaled":
        return built.conv.in_channels
    channels, f = built.d, row.row[0]  # the parser's channel list, captured by the Concat placeholder's "ch"
    if isinstance(f, list):
        return [channels[x if x >= 0 else row.index + x] for x in f]
    return channels[f if f >= 0 else row.index + f]


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
    module.i, module.f = row.index, row.row[0]
    module.type = f"{type(module).__module__}.{type(module).__qualname__}"
    module.np = sum(p.numel() for p in module.parameters())
    return module


def _parse_with_rows(original: Callable, d: dict, ch: int, verbose: bool):
    """Build model dict ``d`` with our rows; returns what ``parse_model`` returns: (nn.Sequential, save list)."""
    rows = _our_rows(d)
    if not rows:
        return original(d, ch, verbose=verbose)
    n_backbone = len(d.get("backbone") or [])
    c1_of: dict[int, Any] = {}
    c2_of: dict[int, int] = {}  # rows with a channel function whose c2 is known
    while True:
        flat = _all_rows(d)
        for r in rows:
            flat[r.index] = _placeholder(r, c2_of.get(r.index))
        held = dict(d, backbone=flat[:n_backbone], head=flat[n_backbone:])
        # The parser edits row arguments in place (Detect gets its channels appended): each pass gets its own copy.
        model, save = original(copy.deepcopy(held), ch, verbose=False)
        c1_of.update({r.index: _input_channels(r, model[r.index]) for r in rows if r.index not in c2_of})
        for r in [r for r in rows if callable(r.spec.channels) and r.index not in c2_of]:
            try:
                c2_of[r.index] = int(r.spec.channels(c1_of[r.index], r.args))
            except (TypeError, ValueError, IndexError) as error:
                raise ValueError(f"{r.text}: {error}; {r.spec.signature()}") from None
            if c2_of[r.index] != c1_of[r.index]:  # the Concat placeholder passed c1 through: later c1 are stale
                break
        else:  # every c2 known and every c1 read off a model built with them
            break
    conv = _ultralytics_conv()
    default_act = conv.default_act
    acts = [model[r.index].act for r in rows if r.spec.channels == "scaled"]
    try:
        conv.default_act = acts[0] if acts else default_act  # the YAML `activation`, as the placeholder Conv got it
        for r in rows:
            model[r.index] = _build(r, c1_of[r.index], model[r.index])
    finally:
        conv.default_act = default_act
    if verbose:
        _log_table(model, d)
    return model, save


def _log_table(model: nn.Sequential, d: dict) -> None:
    """The per-row summary Ultralytics prints, with our modules' real types."""
    from ultralytics.utils import LOGGER

    LOGGER.info(f"\n{'':>3}{'from':>20}{'n':>3}{'params':>10}  {'module':<45}{'arguments':<30}")
    for m, row in zip(model, _all_rows(d)):
        LOGGER.info(f"{m.i:>3}{m.f!s:>20}{row[1]:>3}{m.np:10.0f}  {m.type:<45}{row[3]!s:<30}")


# ------------------------------------------------------------------------------------------ YAML after surgery


def _conv_row_args(c2: Any, conv: nn.Conv2d, act: nn.Module) -> list | None:
    """``[c2, k, s, p(, g, d, act)]`` of an Ultralytics Conv row for ``conv``, or None if a row cannot say it."""
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    if isinstance(p, str) or any(pair[0] != pair[1] for pair in (k, s, p, d)):
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
    block = module.conv if cls.__name__ == "Focus" else module  # Ultralytics' Focus holds an Ultralytics Conv
    if cls.__name__ not in ("Conv", "Focus") or type(block.conv) is not nn.Conv2d:
        return None
    args = _conv_row_args(c2, block.conv, block.act)
    if cls.__name__ == "Focus" and args and len(args) > 4:  # a Focus row says [c2, k, s, p, g, act]
        args = args[:4] + [args[4], args[6]] if args[5] == 1 else None
    return [row[0], 1, cls.__name__, args] if args else None


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
    from ultralytics.nn.modules import Focus as UltralyticsFocus

    return UltralyticsFocus


def sync_yaml(model: nn.Module, paths: list[str]) -> list[int]:
    """Rewrite the rows of ``model.yaml`` whose modules surgery replaced (whole rows, paths ``model.<i>``), so a model
    rebuilt from its YAML (to train again) has the same modules; ``c2`` keeps its unscaled value.

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
        rows, j = (d["backbone"], i) if i < n_backbone else (d.get("head") or [], i - n_backbone)
        new_row = _row_after_surgery(rows[j], layers[i]) if j < len(rows) and len(rows[j]) == 4 else None
        if new_row is not None:
            rows[j] = new_row
            rewritten.append(i)
    return rewritten


# --------------------------------------------------------------------------------------------------- registration


def check_hookable(tasks: Any, version: str) -> None:
    """Raise RuntimeError, naming the supported versions, if ``tasks`` (``ultralytics.nn.tasks``) cannot be hooked."""
    missing = [name for name in _NEEDED_GLOBALS if not hasattr(tasks, name)]
    parse = getattr(tasks, "parse_model", None)
    code = getattr(getattr(parse, _WRAPPED_MARK, parse), "__code__", None)
    if not missing and (code is None or code.co_varnames[:3] != ("d", "ch", "verbose")):
        missing.append("parse_model(d, ch, verbose)")
    if missing:
        raise RuntimeError(
            f"focus-surgery cannot hook Ultralytics {version}: ultralytics.nn.tasks lacks {', '.join(missing)}; "
            f"supported versions are ultralytics{SUPPORTED_VERSIONS} (pip install 'ultralytics{SUPPORTED_VERSIONS}')"
        )
    if not _SUPPORTED_RANGE[0] <= version_tuple(version) < _SUPPORTED_RANGE[1]:
        warnings.warn(
            f"focus-surgery: Ultralytics {version} is outside the tested range {SUPPORTED_VERSIONS}; hooking anyway",
            RuntimeWarning,
            stacklevel=3,
        )


def _wrap_parse_model(original: Callable) -> Callable:
    @functools.wraps(original)
    def parse_model(d, ch, verbose=True):
        return _parse_with_rows(original, d, ch, verbose)

    return parse_model


def _wrap_check_yaml(original: Callable) -> Callable:
    """Ultralytics' ``check_yaml`` that also finds our shipped configs by name, asked only after Ultralytics' own
    search (a local file, then its package) found nothing; other names pass untouched."""

    @functools.wraps(original)
    def check_yaml(file, suffix=(".yaml", ".yml"), hard=True):
        ours = find_config(file) if isinstance(file, (str, Path)) else None
        if ours is None:
            return original(file, suffix, hard=hard)
        return original(file, suffix, hard=False) or ours

    return check_yaml


def _rebind(tasks: Any, name: str, old: Callable, new: Callable) -> None:
    setattr(tasks, name, new)  # Ultralytics finds it in tasks' globals at call time
    nn_package = sys.modules.get("ultralytics.nn")  # binds some of tasks' names once tasks has loaded
    if nn_package is not None and getattr(nn_package, name, None) is old:
        setattr(nn_package, name, new)


def _patch(tasks: Any, name: str, wrap: Callable[[Callable], Callable]) -> None:
    """Replace ``tasks.<name>`` (and ``ultralytics.nn``'s binding of it) by ``wrap(original)``; idempotent."""
    original = getattr(tasks, name, None)
    if original is not None and not hasattr(original, _WRAPPED_MARK):
        wrapped = wrap(original)
        setattr(wrapped, _WRAPPED_MARK, original)
        _rebind(tasks, name, original, wrapped)


def _unpatch(tasks: Any, name: str) -> None:
    wrapped = getattr(tasks, name, None)
    if hasattr(wrapped, _WRAPPED_MARK):
        _rebind(tasks, name, wrapped, getattr(wrapped, _WRAPPED_MARK))


def is_registered() -> bool:
    """True if Ultralytics' parser is currently hooked."""
    tasks = sys.modules.get("ultralytics.nn.tasks")
    return tasks is not None and hasattr(tasks.parse_model, _WRAPPED_MARK)


def register() -> str:
    """Hook Ultralytics' YAML parser (our rows), config lookup (``YOLO("yolov8n-spd.yaml")``) and checkpoint reader
    (``YOLO("yolov5s.pt")``, ``ultralytics_load``); idempotent. Returns the Ultralytics version.

    Raises:
        ImportError: Ultralytics is not installed.
        RuntimeError: The installed Ultralytics cannot be hooked (the message names the supported versions).
    """
    import ultralytics

    tasks = sys.modules.get("ultralytics.nn.tasks") or importlib.import_module("ultralytics.nn.tasks")  # may be loading
    return _hook(tasks, getattr(ultralytics, "__version__", "unknown"))


def _hook(tasks: Any, version: str) -> str:
    from ..yolov5.training import install as install_yolov5_training
    from ..yolov5.validation import install as install_yolov5_validation

    check_hookable(tasks, version)
    _patch(tasks, "check_yaml", _wrap_check_yaml)  # yaml_model_load finds config files through it
    install_yolov5_training(tasks)  # YOLOv5's loss for LegacyDetect heads (idempotent)
    install_yolov5_validation()  # YOLOv5's val.py matching for LegacyDetect heads (idempotent)
    _patch(tasks, "torch_safe_load", _wrap_torch_safe_load)  # YOLOv5-repository files rebuilt in memory
    _patch(tasks, "parse_model", _wrap_parse_model)
    return version


def unregister() -> None:
    """Restore Ultralytics' own parser, config lookup and checkpoint reader (for tests, or users who want them)."""
    tasks = sys.modules.get("ultralytics.nn.tasks")
    for name in ("torch_safe_load", "check_yaml", "parse_model") if tasks is not None else ():
        _unpatch(tasks, name)
