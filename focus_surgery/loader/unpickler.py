"""A restricted unpickler: only the names of ``allowlist`` resolve, only our rebuilders and inert types are called.

The pure-Python unpickler is used so that every opcode can be checked: anything that calls or builds (REDUCE,
NEWOBJ[_EX], OBJ, INST, BUILD) may only reach our rebuilders, record classes and inert containers; dictionary keys
and set members must be small plain values (hashing a shared or deeply nested tuple walks every path of it, in C);
and every opcode is charged to the load's object budget, so that a pickle of one-byte opcodes cannot build objects
hundreds of times its size.
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
_HASHED_BY_SIPHASH = (str, bytes)  # randomised hashes: no crafted collisions
_MAX_KEY_TUPLE = 16


class RefusedGlobal(Refused):
    """The pickle names a global outside the allow-list."""

    def __init__(self, qualname: str):
        super().__init__(f"the pickle imports {qualname!r}, which no checkpoint needs")
        self.qualname = qualname


def _plain_key(key: Any) -> bool:
    """A value whose hash costs O(1) after its first use and cannot be made to collide by the file."""
    if isinstance(key, _HASHED_BY_SIPHASH) or key is None or type(key) is bool or isinstance(key, torch.dtype):
        return True
    return type(key) is int and -MAX_KEY_INT < key < MAX_KEY_INT


def _check_key(key: Any) -> None:
    """Keys and set members are hashed: only plain values (small integers), records, or short flat tuples of plain
    values. Floats alone are allowed (their hashes collide in sets of at most a few dozen); not inside tuples,
    whose hash mixes items in ways a file could solve for."""
    if _plain_key(key) or type(key) is float or isinstance(key, (Record, NamedReference)):
        return
    if type(key) is tuple and len(key) <= _MAX_KEY_TUPLE and all(map(_plain_key, key)):
        return
    if type(key) is int:
        raise Refused(f"an integer dictionary key or set member of {key.bit_length()} bits (at most 32)")
    raise Refused(f"a dictionary key or set member of type {type(key).__name__} (only plain values are hashed)")


# The only objects whose state a pickle may set: fresh instances made by this load.
_BUILDABLE = (Record, DtypeSpec, ArraySpec, OrderedDict, Namespace)  # a plain dict's state is never set
_CONTAINERS = (OrderedDict, Counter, dict, set, frozenset, Namespace)  # called with an iterable; keys checked
_CONSTRUCTIBLE = (*_CONTAINERS, slice, DtypeSpec)


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves only allow-listed globals; storages come from ``load_storage(dtype, key, numel, view)``.

    Attributes:
        globals_seen (set[str]): Every global the pickle named (resolved or recorded) - what the file is made of.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, load_storage: Callable[..., Any], budgets: Budgets):
        super().__init__(file, encoding="latin1")
        self._load_storage = load_storage
        self.budgets = budgets
        self._handed_out: dict[int, tuple[Any, str]] = {}  # id: (object kept alive, its name in the file)
        self.globals_seen: set[str] = set()
        self.keys_checked = 0  # keys and set members checked before hashing: linear in the pickle (tests count it)

    def load(self) -> Any:
        """One pickle, with a memo of its own (a legacy file is five pickles read in turn, each numbering its memo
        from 0 as torch reads them; protocol 4's MEMOIZE numbers by the memo's size)."""
        self.memo = {}
        return super().load()

    def _keys(self, keys: Any) -> None:
        for key in keys:
            self.keys_checked += 1
            _check_key(key)

    # ------------------------------------------------------------------ names

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        self.globals_seen.add(qualname)
        allowed = stand_in(qualname)
        if allowed is not None:
            value = allowed.value
            if allowed.needs_budget:
                value = BoundRebuilder(value, self.budgets, qualname)
            if not isinstance(value, (type, torch.dtype)):
                self._handed_out.setdefault(id(value), (value, qualname))
            return value
        if name.isidentifier() and is_record_module(module):
            return record_class(qualname)
        raise RefusedGlobal(qualname)

    def names_of_handed_out(self) -> dict[int, str]:
        """``id(object): name`` of every function and marker this load gave the pickle (to be replaced by names)."""
        return {key: name for key, (_, name) in self._handed_out.items()}

    def _check_callable(self, func: Any, opcode: str) -> None:
        if id(func) in self._handed_out and callable(func) and not isinstance(func, (TypeMarker, StorageType)):
            return
        if isinstance(func, type) and (issubclass(func, (Record, Namespace)) or func in _CONSTRUCTIBLE):
            return
        name = getattr(func, "qualname", None) or type(func).__name__
        raise Refused(f"{opcode} of {name}, which is not callable")

    def _check_container_args(self, func: Any, args: Any) -> None:
        if (func in _CONTAINERS or (isinstance(func, type) and issubclass(func, Namespace))) and args:
            items = args[0]
            if isinstance(items, dict) and func is Counter:  # Counter(mapping) (its pickled form): keys hashed again
                self._keys(items)
                return
            if isinstance(items, dict):
                items = list(items)
            if not isinstance(items, (list, tuple)):
                raise Refused(f"{func.__name__} built from a {type(items).__name__}")
            for item in items:
                if func in (set, frozenset, Counter):  # a Counter of a sequence hashes each whole item
                    self._keys((item,))
                elif isinstance(item, (list, tuple)) and len(item) == 2:
                    self._keys((item[0],))
                elif not isinstance(item, str):
                    raise Refused(f"{func.__name__} built from items that are not pairs")

    # ------------------------------------------------------------------ opcodes that call, build or hash

    def load_reduce(self) -> None:
        func, args = self.stack[-2], self.stack[-1]
        self._check_callable(func, "REDUCE")
        self._check_container_args(func, args)
        pickle._Unpickler.load_reduce(self)
        built = self.stack[-1]
        if isinstance(built, (Record, Namespace)) and type(built) is func:  # written back the same way
            built.pickled_by = "reduce"

    def load_newobj(self) -> None:
        self._check_callable(self.stack[-2], "NEWOBJ")
        self._check_container_args(self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_newobj(self)

    def load_newobj_ex(self) -> None:
        self._check_callable(self.stack[-3], "NEWOBJ_EX")
        if self.stack[-1]:  # keyword arguments to a constructor: the way into torch.Tensor(cdata=...)
            raise Refused("NEWOBJ_EX with keyword arguments to a constructor")
        self._check_container_args(self.stack[-3], self.stack[-2])
        pickle._Unpickler.load_newobj_ex(self)

    def load_obj(self) -> None:
        raise Refused("OBJ opcode (protocol 0/1 class call) is not used by torch checkpoints")

    def load_inst(self) -> None:
        raise Refused("INST opcode (protocol 0 class call) is not used by torch checkpoints")

    def load_build(self) -> None:
        target, state = self.stack[-2], self.stack[-1]
        if not isinstance(target, _BUILDABLE):
            raise Refused(f"setting the state of a {type(target).__name__}")
        if isinstance(target, OrderedDict) and not isinstance(target, Namespace):
            # a state dict's only attribute is _metadata; nothing else may be set on a container
            if not (isinstance(state, dict) and set(state) <= {"_metadata"}):
                raise Refused("setting attributes other than _metadata on an OrderedDict")
        pickle._Unpickler.load_build(self)

    def load_ext(self, *args) -> None:
        raise Refused("pickle extension registry codes are not used by torch checkpoints")

    def load_setitem(self) -> None:
        self._keys(self.stack[-2:-1])
        pickle._Unpickler.load_setitem(self)

    def load_setitems(self) -> None:
        self._keys(self.stack[::2])  # after a MARK the base class keeps just the marked items on self.stack
        pickle._Unpickler.load_setitems(self)

    def load_dict(self) -> None:
        self._keys(self.stack[::2])
        pickle._Unpickler.load_dict(self)

    def load_additems(self) -> None:
        self._keys(self.stack)
        pickle._Unpickler.load_additems(self)

    def load_frozenset(self) -> None:
        self._keys(self.stack)
        pickle._Unpickler.load_frozenset(self)

    def load_put(self) -> None:  # a text PUT carries any integer: memo indices beyond 32 bits would collide
        line = self.readline()
        if not line[:-1].isdigit() or len(line) > 11:
            raise Refused("a memo index that is not a small number")
        self.memo[int(line[:-1])] = self.stack[-1]

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.OBJ[0]] = load_obj
    dispatch[pickle.INST[0]] = load_inst
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.FROZENSET[0]] = load_frozenset
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.PUT[0]] = load_put
    for _code in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_code[0]] = load_ext

    # ------------------------------------------------------------------ storages

    def persistent_load(self, pid) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {type(pid).__name__}")
        # described by its first item's type and a short quote of text only: str() of a shared tuple expands it
        kind = repr(pid[0][:40]) if isinstance(pid[0], str) else type(pid[0]).__name__
        if pid[0] == "module" and len(pid) >= 2 and isinstance(pid[1], type) and issubclass(pid[1], Record):
            return pid[1]  # old torch.save stored each module class with its source text; the class is enough
        if pid[0] != "storage" or len(pid) < 5 or not isinstance(pid[1], StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id of kind {kind}")
        key, numel = pid[2], pid[4]
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError("storage with an invalid key or size")
        view = pid[5] if len(pid) > 5 else None
        return self._load_storage(pid[1].dtype, key, numel, view)


def _charged(handler: Callable, cost: int) -> Callable:
    def run(self: RestrictedUnpickler) -> None:
        self.budgets.objects.take(cost, "the pickle's objects")
        handler(self)

    return run


def _checked(handler: Callable) -> Callable:
    """Integers and memo values as they are pushed: a number beyond ``MAX_INT_BITS`` is refused before any arithmetic
    uses it; a memoised tensor used again is charged again (each name it is written under is a view the outputs may
    write or make dense)."""

    def run(self: RestrictedUnpickler) -> None:
        handler(self)
        value = self.stack[-1]
        if type(value) is int and value.bit_length() > MAX_INT_BITS:
            raise Refused(f"an integer of {value.bit_length():,} bits (at most {MAX_INT_BITS})")
        if isinstance(value, torch.Tensor):
            self.budgets.tensors.take(value.numel() * value.element_size(), "a tensor used again")

    return run


_NUMBERS_AND_MEMO = (pickle.INT, pickle.LONG, pickle.LONG1, pickle.LONG4, pickle.GET, pickle.BINGET, pickle.LONG_BINGET)
_NUMBERS_AND_MEMO += (pickle.DUP,)  # DUP pushes the top of the stack again: a second use, as GET is
for _code in _NUMBERS_AND_MEMO:
    RestrictedUnpickler.dispatch[_code[0]] = _checked(RestrictedUnpickler.dispatch[_code[0]])


# What one opcode may build, in bytes (CPython 3.11, 64-bit): containers and objects are charged the most, a memo
# entry or an added item a dict slot; strings and numbers carry their bytes in the pickle itself.
_BUILDERS = (
    pickle.EMPTY_SET,
    pickle.EMPTY_DICT,
    pickle.EMPTY_LIST,
    pickle.LIST,
    pickle.DICT,
    pickle.TUPLE,
    pickle.TUPLE1,
    pickle.TUPLE2,
    pickle.TUPLE3,
    pickle.FROZENSET,
    pickle.NEWOBJ,
    pickle.NEWOBJ_EX,
    pickle.REDUCE,
    pickle.BUILD,
    pickle.GLOBAL,
    pickle.STACK_GLOBAL,
    pickle.BINPERSID,
    pickle.PERSID,
)
_SLOTS = (
    pickle.BINPUT,
    pickle.LONG_BINPUT,
    pickle.MEMOIZE,
    pickle.PUT,
    pickle.APPEND,
    pickle.APPENDS,
    pickle.SETITEM,
    pickle.SETITEMS,
    pickle.ADDITEMS,
    pickle.MARK,
)
_COSTS = {**{code[0]: OPCODE_COST for code in _BUILDERS}, **{code[0]: 96 for code in _SLOTS}}


def _binary(handler: Callable) -> Callable:
    """A protocol-1 opcode: a pickle without a PROTO opcode that uses one is protocol 1, not 0 (written back so: a
    protocol-0 pickle cannot hold torch's storage ids)."""

    def run(self: RestrictedUnpickler) -> None:
        self.proto = max(self.proto, 1)
        handler(self)

    return run


for _op in pickletools.opcodes:
    if _op.proto == 1 and _op.code.encode("latin-1")[0] in RestrictedUnpickler.dispatch:
        _key = _op.code.encode("latin-1")[0]
        RestrictedUnpickler.dispatch[_key] = _binary(RestrictedUnpickler.dispatch[_key])
RestrictedUnpickler.dispatch = {
    code: _charged(handler, _COSTS.get(code, 32)) for code, handler in RestrictedUnpickler.dispatch.items()
}
