"""Review of the shrunk safe unpickler (branch shrink-loader): behaviour that the table-driven rewrite must keep.

Each test names what the per-opcode unpickler before the rewrite did; counts, never clocks.
"""

from __future__ import annotations

import io

import pytest

from focus_surgery.loader import unpickler
from focus_surgery.loader.errors import Refused
from focus_surgery.loader.rebuilders import Budgets

ITEMS = b"(" + b"".join(b"K" + bytes([i]) for i in range(50)) + b"l"  # MARK 0..49 LIST


def _reader(pkl: bytes) -> unpickler.RestrictedUnpickler:
    return unpickler.RestrictedUnpickler(io.BytesIO(pkl), None, Budgets(1 << 30, 1 << 30))


@pytest.mark.parametrize("container", [b"builtins\nfrozenset", b"builtins\nset", b"collections\nOrderedDict"])
def test_newobj_ex_checks_each_key_once(container):
    """cls.__new__(cls, items) by NEWOBJ_EX (protocol 4): each item checked once before it is hashed, as NEWOBJ and
    REDUCE do (the rewrite checked the argument list twice: twice the work, twice the count)."""
    items = ITEMS
    if container.endswith(b"OrderedDict"):  # pairs (i, None)
        items = b"(" + b"".join(b"K" + bytes([i]) + b"N\x86" for i in range(50)) + b"l"
    for opcode, tail in ((b"\x92", b"\x85}\x92."), (b"\x81", b"\x85\x81.")):  # NEWOBJ_EX, NEWOBJ
        reader = _reader(b"\x80\x04c" + container + b"\n" + items + tail)
        reader.load()
        assert reader.keys_checked == 50, (container, opcode)


def test_newobj_ex_keyword_arguments_refused_before_items_are_checked():
    """Keyword arguments are refused whatever the items: no item is hashed or checked first."""
    reader = _reader(b"\x80\x04cbuiltins\nset\n" + ITEMS + b"\x85}X\x01\x00\x00\x00aK\x01s\x92.")
    with pytest.raises(Refused, match="keyword arguments"):
        reader.load()
    assert reader.keys_checked == 1  # the keyword dict's own key, by SETITEM


def test_readme_lists_every_extra():
    """README's install table names every extra of pyproject.toml (``fast``, ISA-L's CRC-32 for the loader, came in
    with the shrunk loader without a row; ``all`` said "all of the above")."""
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    rows = set(re.findall(r"^\| `([a-z]+)` \|", (root / "README.md").read_text(), flags=re.M))
    assert set(extras) <= rows, sorted(set(extras) - rows)
