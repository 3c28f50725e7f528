"""A restricted pure-Python unpickler: only allow-listed names resolve, only our rebuilders and inert types are called.

Every opcode that calls or builds (REDUCE, NEWOBJ[_EX], BUILD) may only reach our rebuilders, record classes and inert
containers; keys and set members must be small plain values (hashing a shared or nested tuple walks every path of it,
in C); every opcode is charged to the load's object budget (one-byte opcodes cannot build objects hundreds of times
the pickle's size).
"""

from __future__ import annotations

import pickle
import pickletools
from collections import Counter, OrderedDict
from typing import Any, Callable

import torch

from .allowlist import StorageType, is_record_module, stand_in
from .errors import Refused
from .rebuilders import ArraySpec, BoundRebuilder, Budgets, DtypeSpec, TypeMarker
from .records import NamedReference, Namespace, Record, record_class

OPCODE_COST = 256  # bytes charged for an opcode that builds an object: more than any builds (an empty set: 216)
MAX_INT_BITS = 128  # no checkpoint needs more (the legacy magic number has 77); big-int arithmetic is not linear
MAX_KEY_INT = 1 << 32  # integer keys: their hash is themselves; below this no two collide (k * (2**61 - 1) would)
_MAX_KEY_TUPLE = 16

# The only objects whose state a pickle may set: fresh instances made by this load (a plain dict's state is never set).
_BUILDABLE = (Record, DtypeSpec, ArraySpec, OrderedDict, Namespace)
_CONTAINERS = (OrderedDict, Counter, dict, set, frozenset, Namespace)  # called with an iterable; keys checked
_CONSTRUCTIBLE = (*_CONTAINERS, slice, DtypeSpec)


class RefusedGlobal(Refused):
    """The pickle names a global outside the allow-list."""

    def __init__(self, qualname: str):
        super().__init__(f"the pickle imports {qualname!r}, which no checkpoint needs")
        self.qualname = qualname


def _plain_key(key: Any) -> bool:
    """A value whose hash costs O(1) after its first use and cannot be made to collide by the file."""
    if isinstance(key, (str, bytes, torch.dtype)) or key is None or type(key) is bool:  # str, bytes: SipHash
        return True
    return type(key) is int and -MAX_KEY_INT < key < MAX_KEY_INT


def _check_key(key: Any) -> None:
    """Keys are plain values, records, or short flat tuples of plain values. Floats alone are allowed (their hashes
    collide in sets of a few dozen at most); not inside tuples, whose hash mixes items in ways a file could solve."""
    if _plain_key(key) or type(key) is float or isinstance(key, (Record, NamedReference)):
        return
    if type(key) is tuple and len(key) <= _MAX_KEY_TUPLE and all(map(_plain_key, key)):
        return
    if type(key) is int:
        raise Refused(f"an integer dictionary key or set member of {key.bit_length()} bits (at most 32)")
    raise Refused(f"a dictionary key or set member of type {type(key).__name__} (only plain values are hashed)")


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves only allow-listed globals; storages come from ``load_storage(dtype, key, numel, view)``.

    Attributes:
        globals_seen (set[str]): Every global the pickle named (resolved or recorded) - what the file is made of.
        keys_checked (int): Keys and set members checked before hashing (linear in the pickle; tests count it).
    """

    def __init__(self, file, load_storage: Callable[..., Any], budgets: Budgets):
        super().__init__(file, encoding="latin1")
        self._load_storage = load_storage
        self.budgets = budgets
        self._handed_out: dict[int, tuple[Any, str]] = {}  # id: (object kept alive, its name in the file)
        self.globals_seen: set[str] = set()
        self.keys_checked = 0

    def load(self) -> Any:
        """One pickle with a memo of its own (a legacy file is five pickles, each numbering its memo from 0)."""
        self.memo = {}
        return super().load()

    def _keys(self, keys: Any) -> None:
        for key in keys:
            self.keys_checked += 1
            _check_key(key)

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        self.globals_seen.add(qualname)
        allowed = stand_in(qualname)
        if allowed is not None:
            value = BoundRebuilder(allowed.value, self.budgets, qualname) if allowed.needs_budget else allowed.value
            if not isinstance(value, (type, torch.dtype)):
                self._handed_out.setdefault(id(value), (value, qualname))
            return value
        if name.isidentifier() and is_record_module(module):
            return record_class(qualname)
        raise RefusedGlobal(qualname)

    def names_of_handed_out(self) -> dict[int, str]:
        """``id(object): name`` of every function and marker this load gave the pickle (to be replaced by names)."""
        return {key: name for key, (_, name) in self._handed_out.items()}

    def _check_call(self, func: Any, args: Any, opcode: str) -> None:
        """``func`` must be a rebuilder this load handed out, a record or namespace class or an inert type; the items
        a container is built from are checked as the keys they become."""
        typed = isinstance(func, type)
        if not (
            (id(func) in self._handed_out and callable(func) and not isinstance(func, (TypeMarker, StorageType)))
            or (typed and (issubclass(func, (Record, Namespace)) or func in _CONSTRUCTIBLE))
        ):
            name = getattr(func, "qualname", None) or type(func).__name__
            raise Refused(f"{opcode} of {name}, which is not callable")
        if not (typed and (func in _CONTAINERS or issubclass(func, Namespace))) or not args:
            return
        items = args[0]
        if isinstance(items, dict) and func is Counter:  # Counter(mapping) (its pickled form): keys hashed again
            return self._keys(items)
        items = list(items) if isinstance(items, dict) else items
        if not isinstance(items, (list, tuple)):
            raise Refused(f"{func.__name__} built from a {type(items).__name__}")
        for item in items:
            if func in (set, frozenset, Counter):  # a Counter of a sequence hashes each whole item
                self._keys((item,))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                self._keys((item[0],))
            elif not isinstance(item, str):
                raise Refused(f"{func.__name__} built from items that are not pairs")

    def load_reduce(self) -> None:
        func = self.stack[-2]
        self._check_call(func, self.stack[-1], "REDUCE")
        pickle._Unpickler.load_reduce(self)
        if isinstance(self.stack[-1], (Record, Namespace)) and type(self.stack[-1]) is func:  # written back so
            self.stack[-1].pickled_by = "reduce"

    def load_newobj(self) -> None:
        self._check_call(self.stack[-2], self.stack[-1], "NEWOBJ")
        pickle._Unpickler.load_newobj(self)

    def load_newobj_ex(self) -> None:
        func, args, kwargs = self.stack[-3:]
        self._check_call(func, () if kwargs else args, "NEWOBJ_EX")  # items checked once, never with kwargs
        if kwargs:  # keyword arguments to a constructor: the way into torch.Tensor(cdata=...)
            raise Refused("NEWOBJ_EX with keyword arguments to a constructor")
        pickle._Unpickler.load_newobj_ex(self)

    def load_build(self) -> None:
        target, state = self.stack[-2], self.stack[-1]
        if not isinstance(target, _BUILDABLE):
            raise Refused(f"setting the state of a {type(target).__name__}")
        # a state dict's only attribute is _metadata; nothing else may be set on a container
        if isinstance(target, OrderedDict) and not (isinstance(state, dict) and set(state) <= {"_metadata"}):
            raise Refused("setting attributes other than _metadata on an OrderedDict")
        pickle._Unpickler.load_build(self)

    def load_put(self) -> None:  # a text PUT carries any integer: memo indices beyond 32 bits would collide
        line = self.readline()
        if not line[:-1].isdigit() or len(line) > 11:
            raise Refused("a memo index that is not a small number")
        self.memo[int(line[:-1])] = self.stack[-1]

    def persistent_load(self, pid) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {type(pid).__name__}")
        if pid[0] == "module" and len(pid) >= 2 and isinstance(pid[1], type) and issubclass(pid[1], Record):
            return pid[1]  # old torch.save stored each module class with its source text; the class is enough
        if pid[0] != "storage" or len(pid) < 5 or not isinstance(pid[1], StorageType):
            # described by its first item's type or a short quote of text: str() of a shared tuple expands it
            kind = repr(pid[0][:40]) if isinstance(pid[0], str) else type(pid[0]).__name__
            raise pickle.UnpicklingError(f"unexpected persistent id of kind {kind}")
        key, numel = pid[2], pid[4]
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError("storage with an invalid key or size")
        return self._load_storage(pid[1].dtype, key, numel, pid[5] if len(pid) > 5 else None)


def _codes(names: str) -> set[int]:
    return {getattr(pickle, name)[0] for name in names.split()}


def _refuse(message: str) -> Callable:
    def refuse(self: RestrictedUnpickler) -> None:
        raise Refused(message)

    return refuse


_OVERRIDES = {
    pickle.REDUCE[0]: RestrictedUnpickler.load_reduce,
    pickle.NEWOBJ[0]: RestrictedUnpickler.load_newobj,
    pickle.NEWOBJ_EX[0]: RestrictedUnpickler.load_newobj_ex,
    pickle.BUILD[0]: RestrictedUnpickler.load_build,
    pickle.PUT[0]: RestrictedUnpickler.load_put,
    pickle.OBJ[0]: _refuse("OBJ opcode (protocol 0/1 class call) is not used by torch checkpoints"),
    pickle.INST[0]: _refuse("INST opcode (protocol 0 class call) is not used by torch checkpoints"),
    **dict.fromkeys(
        _codes("EXT1 EXT2 EXT4"), _refuse("pickle extension registry codes are not used by torch checkpoints")
    ),
}
# Opcodes that hash: the keys, read before the base class runs (after a MARK, self.stack holds the marked items only).
_HASHED = {
    pickle.SETITEM[0]: lambda stack: stack[-2:-1],
    **dict.fromkeys(_codes("SETITEMS DICT"), lambda stack: stack[::2]),
    **dict.fromkeys(_codes("ADDITEMS FROZENSET"), lambda stack: stack),
}
# Pushes of integers and memo values: a number beyond MAX_INT_BITS is refused before any arithmetic uses it; a memoised
# tensor used again is charged again (each name it is written under is a view the outputs may write or make dense).
_PUSHES = _codes("INT LONG LONG1 LONG4 GET BINGET LONG_BINGET DUP")
# What one opcode may build, in bytes (CPython 3.11, 64-bit): containers and objects the most, a memo entry or an added
# item a dict slot, anything else 32; strings and numbers carry their bytes in the pickle itself.
_COSTS = {
    **dict.fromkeys(_codes("BINPUT LONG_BINPUT MEMOIZE PUT APPEND APPENDS SETITEM SETITEMS ADDITEMS MARK"), 96),
    **dict.fromkeys(
        _codes("EMPTY_SET EMPTY_DICT EMPTY_LIST LIST DICT TUPLE TUPLE1 TUPLE2 TUPLE3 FROZENSET"), OPCODE_COST
    ),
    **dict.fromkeys(_codes("NEWOBJ NEWOBJ_EX REDUCE BUILD GLOBAL STACK_GLOBAL BINPERSID PERSID"), OPCODE_COST),
}
# Protocol-1 opcodes: a pickle without PROTO that uses one is protocol 1, not 0 (written back so: a protocol-0 pickle
# cannot hold torch's storage ids).
_BINARY = {op.code.encode("latin-1")[0] for op in pickletools.opcodes if op.proto == 1}


def _guarded(code: int, handler: Callable) -> Callable:
    """``handler`` of opcode ``code``, charged to the object budget and with the checks the tables above name."""
    cost, hashed, pushes, binary = _COSTS.get(code, 32), _HASHED.get(code), code in _PUSHES, code in _BINARY

    def run(self: RestrictedUnpickler) -> None:
        self.budgets.objects.take(cost, "the pickle's objects")
        if binary:
            self.proto = max(self.proto, 1)
        if hashed is not None:
            self._keys(hashed(self.stack))
        handler(self)
        value = self.stack[-1] if pushes else None
        if type(value) is int and value.bit_length() > MAX_INT_BITS:
            raise Refused(f"an integer of {value.bit_length():,} bits (at most {MAX_INT_BITS})")
        if isinstance(value, torch.Tensor):
            self.budgets.tensors.take(value.numel() * value.element_size(), "a tensor used again")

    return run


RestrictedUnpickler.dispatch = {
    code: _guarded(code, handler) for code, handler in {**pickle._Unpickler.dispatch, **_OVERRIDES}.items()
}
