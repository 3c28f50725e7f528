"""NEWOBJ_EX with keyword arguments (protocol 4): refused for every class a pickle may construct, in both formats.

``cls.__new__(cls, **kwargs)`` is how ``torch.Tensor(cdata=<address>)`` reaches a C++ pointer. ``torch.Tensor`` is
not allowed at all, so the keyword check is only reachable through the classes the loader does let a pickle build
(containers, namespaces, numpy dtypes, records). Several of those accept and silently drop keywords
(``dict.__new__(dict, cdata=1)`` is ``{}``): without the check such a file would load as if the keywords were not
there. Each file must be refused with one line naming the file, and the same pickle without keywords must load.
"""

from __future__ import annotations

import pickle

import pytest

from focus_surgery.loader import CheckpointError, read_checkpoint
from hostile_files import PickleWriter, legacy_file, torch_zip

pytestmark = pytest.mark.usefixtures("loader_mode")  # every test once per loader mode (conftest)

FORMATS = ("zip", "legacy")
ADDRESS = 0x41414141

# every global that resolves to a class the unpickler lets NEWOBJ_EX construct (allowlist + a record class)
CONSTRUCTIBLE = {
    "dict": ("builtins", "dict"),
    "OrderedDict": ("collections", "OrderedDict"),
    "set": ("builtins", "set"),
    "frozenset": ("builtins", "frozenset"),
    "slice": ("builtins", "slice"),
    "argparse.Namespace": ("argparse", "Namespace"),
    "types.SimpleNamespace": ("types", "SimpleNamespace"),
    "numpy.dtype": ("numpy", "dtype"),
    "record": ("models.common", "Focus"),
}
# those whose ``__new__`` accepts keywords and drops them: the file would load whole without the check
DROPS_KEYWORDS = {
    "dict": dict,
    "OrderedDict": dict,
    "set": set,
    "argparse.Namespace": dict,
    "types.SimpleNamespace": dict,
}


def newobj_ex(module: str, name: str, kwargs: dict, args: tuple = ()) -> bytes:
    """``{"value": module.name.__new__(module.name, *args, **kwargs)}`` as a protocol 4 pickle (NEWOBJ_EX)."""
    p = PickleWriter(protocol=4)
    p.raw(pickle.EMPTY_DICT).str("value")
    p.glob(module, name).value(args).dict(kwargs).raw(pickle.NEWOBJ_EX)
    return p.raw(pickle.SETITEM).stop()


def container(fmt: str, path, pkl: bytes):
    return torch_zip(path, pkl, {}) if fmt == "zip" else legacy_file(path, pkl, [], counts={})


def refused_line(path) -> str:
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and path.name in message, message
    return message


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", list(CONSTRUCTIBLE))
def test_newobj_ex_keywords_refused_for_every_constructible_class(kind, fmt, tmp_path):
    module, name = CONSTRUCTIBLE[kind]
    path = container(fmt, tmp_path / f"{kind}-{fmt}.pt", newobj_ex(module, name, {"cdata": ADDRESS}))
    message = refused_line(path)
    assert "keyword arguments" in message, message


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", list(DROPS_KEYWORDS))
def test_newobj_ex_without_keywords_loads(kind, fmt, tmp_path):
    """The edge: the same construction with an empty keyword dict is an ordinary, empty container."""
    module, name = CONSTRUCTIBLE[kind]
    path = container(fmt, tmp_path / f"{kind}-{fmt}.pt", newobj_ex(module, name, {}))
    value = read_checkpoint(path).content["value"]
    assert isinstance(value, DROPS_KEYWORDS[kind]) and len(value) == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_newobj_ex_keywords_with_positional_items_refused(fmt, tmp_path):
    """Keywords next to positional items (whose keys are checked) are refused all the same, whatever the keys."""
    pkl = newobj_ex("builtins", "dict", {"a": 1, "cdata": ADDRESS}, args=([("k", 1)],))
    message = refused_line(container(fmt, tmp_path / f"items-{fmt}.pt", pkl))
    assert "keyword arguments" in message, message
