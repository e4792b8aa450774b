"""Count what a torch.save pickle would build, before torch's unpickler builds it.

torch's ``weights_only`` unpickler is written in Python: a 5 MB ``data.pkl`` that
rebuilds a million tensors, or lists a million parameter groups, keeps it busy for a
minute or more, and a 1 MiB key costs every later step dearly. ``scan`` walks the
opcodes once (no objects are built), counting

- tensors: calls (REDUCE, NEWOBJ) with arguments, i.e. ``_rebuild_tensor_v2(...)`` and
  kin; the argument-less ``OrderedDict()`` torch.save writes beside every tensor (an
  EMPTY_TUPLE opcode right before the REDUCE, or before a PUT of it) is not counted,
- items: entries added to lists and dicts (APPEND(S), SETITEM(S)), and values left on the
  stack (checked every MiB of input, so a stream of pushes is stopped early too),
- depth: MARK nesting (each open MARK is a new list in torch's unpickler),
- string: the length of each string,

and raises ``LimitError`` as soon as one passes its limit (``limits.py``). Only the opcodes
torch's unpickler accepts are understood; at any other, or at the end of the data, the
scan stops and leaves the verdict (refused opcode, truncated file) to torch, which reads
no further than that. It runs at ~0.1 µs per opcode: ~0.3 s for 100 000 tensors.

A tensor expanded to 10**12 elements is 2 KB of file, and torch's unpickler iterates it,
element by element, when a pickle asks for ``set(t)``, ``Counter(t)``,
``OrderedDict(t)``, ``f(*t)``: a hang. Unless the pickle has only torch.save's own forms
(every call's arguments a tuple made just before it, ``OrderedDict()`` only, no other
container call, no BUILD, no NEWOBJ: an optimizer's state_dict), a second pass
(``_flow``, ~4x the scan's time per opcode) follows where each tensor goes, through the
stack, the memo and containers, and refuses (``UnsafeCheckpointError``) a container call
whose arguments hold a tensor, a call whose argument list is one, a BUILD whose state
would be iterated; a call other than a container's counts as a tensor.

About 530 lines on purpose: the two passes read the same opcodes, the first deciding
whether the second is needed, and read best side by side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from optstate.base.limits import LimitError, Limits

_U32 = struct.Struct("<I").unpack_from

# Opcodes with a fixed-size argument and a fixed stack effect: size of the argument, and
# how many values they add to the stack (negative: remove).
_ARG = [-1] * 256
_DELTA = [0] * 256
for _ops, _arg, _delta in (
    (b"N\x88\x89]}\x8f", 0, 1),  # NONE, NEWTRUE, NEWFALSE, EMPTY_LIST/DICT/SET
    (b"K", 1, 1), (b"M", 2, 1), (b"J", 4, 1), (b"G", 8, 1),  # BININT1/2, BININT, BINFLOAT
    (b"h", 1, 1), (b"j", 4, 1),  # BINGET, LONG_BINGET
    (b"q", 1, 0),  # BINPUT (LONG_BINPUT: its index is kept, below)
    (b"\x80", 1, 0),  # PROTO
    (b"Q\x85", 0, 0),  # BINPERSID (pid -> storage), TUPLE1
    (b"\x86b", 0, -1),  # TUPLE2, BUILD
    (b"\x87", 0, -2),  # TUPLE3
):
    for _op in _ops:
        _ARG[_op], _DELTA[_op] = _arg, _delta

# The scan's own table: these are handled one by one (they tell whether the flow pass,
# ``_flow``, must run: see ``scan``)
_FAST = list(_ARG)
for _op in b"hjq\x85\x86\x87b":
    _FAST[_op] = -1

_MARK, _TUPLE, _APPENDS, _SETITEMS, _REDUCE = 0x28, 0x74, 0x65, 0x75, 0x52
_APPEND, _SETITEM, _BINUNICODE, _STOP, _GLOBAL = 0x61, 0x73, 0x58, 0x2E, 0x63
_SHORT_BINSTRING, _LONG1, _EMPTY_TUPLE, _NEWOBJ = 0x55, 0x8A, 0x29, 0x81
_BINPUT, _LONG_BINPUT_OP = 0x71, 0x72
_CHECK_EVERY = 1 << 20  # bytes of input between checks of the stack's size


@dataclass
class PickleCounts:
    """What the scan saw (added up over the pickles of a legacy file)."""

    tensors: int = 0
    items: int = 0
    complete: bool = True  # False: stopped early, torch judges the rest
    # The highest memo index a LONG_BINPUT names: Python's C unpickler (the native
    # reader's) grows its memo array to twice it, torch's keeps a dict
    memo: int = 0

    def native_refusal(self, size: int) -> str | None:
        """Why Python's C unpickler (the native readers') must not read this pickle of
        ``size`` bytes, or None: it takes opcodes torch's unpickler refuses, and grows its
        memo array to twice the highest index (a pickler numbers slots 0, 1, ...)."""
        if not self.complete:
            return "the pickle ends early or uses an opcode torch's safe unpickler refuses"
        if self.memo > size:
            return f"the pickle names memo slot {self.memo:,}, beyond its own size"
        return None


def scan(data: Any, start: int, limits: Limits, where: str,
         counts: PickleCounts | None = None) -> tuple[int, PickleCounts]:
    """Scan the pickle in ``data`` (bytes, or any buffer: an mmap) from ``start`` to its
    STOP; return where it ends (-1: stopped early) and the counts."""
    counts = counts or PickleCounts()
    arg, delta = _FAST, _DELTA
    n = len(data)
    i = start
    # Whether torch.save's own forms are all there is (then no tensor can reach a
    # container call, and the flow pass is skipped): every call's arguments a tuple made
    # just before (``tuple_end``), OrderedDict only ever called as ``OrderedDict()`` (each
    # push of it, by GLOBAL or from a memo slot it was put in, ``od_slots``, followed by
    # EMPTY_TUPLE REDUCE), no other container call, no BUILD, no NEWOBJ.
    risky = False
    tuple_end = od_at = -9
    od_pending = False
    od_slots: set[int] = set()
    tensors, items = counts.tensors, counts.items
    max_tensors, max_items, max_string = limits.tensors, limits.items, limits.string
    max_marks = limits.depth
    depth = 0  # values on the stack since the last MARK
    marks: list[int] = []  # depth below each open MARK
    empty_end = -9  # where the last EMPTY_TUPLE opcode ended
    memo = counts.memo
    try:
        while True:
            stop = min(n, i + _CHECK_EVERY)
            while i < stop:
                op = data[i]
                i += 1
                a = arg[op]
                if a >= 0:
                    i += a
                    depth += delta[op]
                    continue
                if op == _BINPUT:
                    if od_at == i - 1:  # the OrderedDict class just pushed, memoised
                        od_slots.add(data[i])
                        od_at = i + 1
                    i += 1
                elif op == _BINGET or op == _LONG_BINGET:
                    index = data[i] if op == _BINGET else _U32(data, i)[0]
                    i += 1 if op == _BINGET else 4
                    depth += 1
                    if index in od_slots:
                        risky = risky or od_pending
                        od_pending, od_at = True, i
                elif op == _TUPLE1 or op == _TUPLE2 or op == _TUPLE3:
                    depth += 0x85 - op
                    tuple_end = i
                elif op == _BUILD:
                    depth -= 1
                    risky = True
                elif op == _LONG_BINPUT_OP:
                    index = _U32(data, i)[0]
                    if od_at == i - 1:
                        od_slots.add(index)
                        od_at = i + 4
                    i += 4
                    if index > memo:
                        memo = index
                elif op == _MARK:
                    marks.append(depth)
                    depth = 0
                    if len(marks) > max_marks:
                        raise LimitError(where, f"nests more than {max_marks:,} levels",
                                         "depth", max_marks)
                elif op == _TUPLE:
                    depth = marks.pop() + 1
                    tuple_end = i
                elif op == _EMPTY_TUPLE:
                    depth += 1
                    empty_end = tuple_end = i
                elif op == _REDUCE or op == _NEWOBJ:
                    depth -= 1
                    if op == _NEWOBJ:
                        risky = True
                    elif od_pending and od_at == i - 2 and empty_end == i - 1:
                        od_pending = False  # OrderedDict()
                    elif not (op == _REDUCE and (
                            tuple_end == i - 1
                            or (tuple_end == i - 3 and data[i - 3] == _BINPUT)
                            or (tuple_end == i - 6 and data[i - 6] == _LONG_BINPUT_OP))):
                        risky = True
                    # Not counted: a call whose arguments are the empty tuple pushed just
                    # before (OrderedDict()), maybe memoised on the way. Judged by opcode
                    # positions, never by the byte before: 'h)' (BINGET 41) is not ')'.
                    if not (op == _REDUCE and (
                            empty_end == i - 1
                            or (empty_end == i - 3 and data[i - 3] == _BINPUT)
                            or (empty_end == i - 6 and data[i - 6] == _LONG_BINPUT_OP))):
                        tensors += 1
                        if tensors > max_tensors:
                            raise LimitError(where, f"holds more than {max_tensors:,} tensors",
                                             "tensors", max_tensors)
                elif op == _BINUNICODE:
                    length = _U32(data, i)[0]
                    if length > max_string:
                        raise LimitError(where, f"holds a string of {length:,} bytes",
                                         "string", max_string)
                    i += 4 + length
                    depth += 1
                elif op == _SETITEMS or op == _APPENDS:
                    items += depth >> 1 if op == _SETITEMS else depth
                    depth = marks.pop()
                    if items > max_items:
                        raise _too_many_items(where, max_items)
                elif op == _APPEND or op == _SETITEM:
                    items += 1
                    depth -= 1 if op == _APPEND else 2
                    if items > max_items:
                        raise _too_many_items(where, max_items)
                elif op == _GLOBAL:
                    end = data.find(b"\n", data.find(b"\n", i) + 1)
                    if end < 0:
                        raise IndexError
                    name = bytes(data[i:end])
                    if name in _SIZED:
                        raise _sized(where, name)
                    i = end + 1
                    depth += 1
                    if name == _OD:
                        risky = risky or od_pending
                        od_pending, od_at = True, i
                    elif name in _CTORS:
                        risky = True
                elif op == _SHORT_BINSTRING or op == _LONG1:
                    i += 1 + data[i]
                    depth += 1
                elif op == _STOP:
                    counts.tensors, counts.items, counts.memo = tensors, items, memo
                    if risky or od_pending:
                        _flow(data, start, i, where)
                    return i, counts
                else:  # an opcode torch's unpickler refuses: torch says so
                    raise IndexError
            if sum(marks) + depth > max_items:
                raise _too_many_items(where, max_items)
            if i >= n:
                raise IndexError
    except (IndexError, struct.error):  # truncated or refused: torch's verdict
        counts.tensors, counts.items, counts.complete = tensors, items, False
        counts.memo = memo
        return -1, counts


# Globals torch's safe unpickler allows that fill memory from a size argument:
# ``bytearray(2**30)`` is a GiB of zeros from 20 bytes. torch.save writes no bytearray
# in an optimizer state (tensors are rebuilt from stored records); refused on sight.
_SIZED = frozenset({b"builtins\nbytearray", b"__builtin__\nbytearray"})


def _sized(where: str, name: bytes) -> Exception:
    from optstate.base.errors import UnsafeCheckpointError

    return UnsafeCheckpointError(
        f"{where} calls {name.decode().replace(chr(10), '.')}, which builds data from a "
        "size instead of reading it from the file; refused without running it")


# ------------------------------------------------------------- where tensors flow to

# The calls torch's unpickler allows that build a container or a value from an iterable
# (or convert their argument to a sequence first): given a tensor, or a list holding one,
# they iterate it element by element, and a tensor expanded to 10**12 elements is 2 KB
# of file. torch.save never passes a tensor to one. What each builds, for the message.
_CTORS = {
    b"collections\nOrderedDict": "an OrderedDict", b"collections\nCounter": "a Counter",
    b"torch\nSize": "a torch.Size", b"torch\ndevice": "a torch.device",
    b"_codecs\nencode": "bytes",
    **{module + b"\n" + name: what for module in (b"builtins", b"__builtin__")
       for name, what in ((b"set", "a set"), (b"frozenset", "a frozenset"),
                          (b"complex", "a complex number"), (b"bytearray", "a bytearray"),
                          (b"list", "a list"), (b"dict", "a dict"), (b"tuple", "a tuple"))},
}
_OD = b"collections\nOrderedDict"
_TENSOR = object()  # a call's result other than a container's: a tensor, as far as known
_OTHER = object()  # any other global: a rebuild function, a class, a dtype


class _Box:
    """A container the flow pass follows (a list, dict, tuple, or what a container call
    built): whether it holds a tensor at any depth, and the containers that hold it (to
    be marked when it is)."""

    __slots__ = ("tainted", "parents", "ctor")

    def __init__(self) -> None:
        self.tainted = False
        self.parents: list[_Box] = []
        self.ctor: str | None = None  # a tuple holding a container class (a call's args)


def _put(box: Any, value: Any) -> None:
    """``value`` goes into ``box`` (APPEND, SETITEM, a tuple's item, a BUILD's state)."""
    if type(box) is not _Box or box.tainted:
        return
    if value is _TENSOR or type(value) is _Box and value.tainted:
        todo = [box]
        while todo:
            b = todo.pop()
            if not b.tainted:
                b.tainted = True
                todo.extend(b.parents)
                b.parents = []
    elif type(value) is _Box:
        value.parents.append(box)


def _tuple(items: list[Any]) -> Any:
    box = None
    for v in items:
        if v is _TENSOR or type(v) is _Box or type(v) is str:
            if box is None:
                box = _Box()
            if type(v) is str:
                box.ctor = v
            else:
                _put(box, v)
    return box


def _held(value: Any) -> bool:
    return value is _TENSOR or type(value) is _Box and value.tainted


_PERSID, _BINGET, _LONG_BINGET, _EMPTY_LIST, _EMPTY_DICT, _EMPTY_SET = (
    0x51, 0x68, 0x6A, 0x5D, 0x7D, 0x8F)
_TUPLE1, _TUPLE2, _TUPLE3, _BUILD = 0x85, 0x86, 0x87, 0x62


def _flow(data: Any, start: int, end: int, where: str) -> None:
    """Follow, in a pickle ``scan`` read whole (``data[start:end]``, torch's opcodes
    only), where each tensor goes, as torch's unpickler would put it: on a stack and in
    the memo, into lists, dicts and tuples, as a call's arguments. Refuse, before torch
    builds anything, what would make torch's unpickler iterate a tensor: a container
    call (``set``, ``Counter``, ``OrderedDict``, ``torch.Size``, ...) whose arguments hold
    a tensor at any depth, any call whose argument list is a tensor (``f(*t)``), a BUILD
    whose state is a tensor (``t.set_(*state)``) or, on anything but a tensor, holds one
    (``__dict__.update(state)``). A call other than a container's is taken to return a
    tensor; torch.save writes none of these."""
    arg, delta = _ARG, _DELTA
    stack: list[Any] = []
    marks: list[list[Any]] = []
    memo: dict[int, Any] = {}
    i = start
    end -= 1  # the STOP
    try:
        while i < end:
            op = data[i]
            i += 1
            if op == _BINPUT:
                memo[data[i]] = stack[-1]
                i += 1
            elif op == _BINGET:
                stack.append(memo.get(data[i]))
                i += 1
            elif op == _REDUCE or op == _NEWOBJ:
                args = stack.pop()
                func = stack.pop() if op == _NEWOBJ else stack[-1]
                if args is _TENSOR:
                    raise _iterates(where, "a call whose argument list is a tensor")
                if type(func) is str:
                    if _held(args):
                        raise _iterates(where, f"{func} built from a tensor")
                    result = _Box()
                    if type(args) is _Box:
                        args.parents.append(result)
                else:  # a rebuild call: _rebuild_from_type_v2(func, type, args) calls func
                    if type(args) is _Box and args.ctor is not None and args.tainted:
                        raise _iterates(where, f"{args.ctor} built from a tensor")
                    result = _TENSOR
                if op == _NEWOBJ:
                    stack.append(result)
                else:
                    stack[-1] = result
            elif op == _MARK:
                marks.append(stack)
                stack = []
            elif op == _TUPLE1 or op == _TUPLE2 or op == _TUPLE3:
                n = op - 0x84
                items = stack[-n:]
                del stack[-n:]
                if len(items) != n:
                    return
                stack.append(_tuple(items))
            elif op == _TUPLE:
                items, stack = stack, marks.pop()
                stack.append(_tuple(items))
            elif op == _SETITEMS or op == _APPENDS:
                items, stack = stack, marks.pop()
                box = stack[-1]
                for v in items:
                    _put(box, v)
            elif op == _APPEND:
                v = stack.pop()
                _put(stack[-1], v)
            elif op == _SETITEM:
                v, k = stack.pop(), stack.pop()
                _put(stack[-1], k)
                _put(stack[-1], v)
            elif op == _EMPTY_LIST or op == _EMPTY_DICT or op == _EMPTY_SET:
                stack.append(_Box())
            elif op == _BUILD:  # a tensor's state may hold tensors (a DTensor's local one)
                state = stack.pop()
                if state is _TENSOR or _held(state) and stack[-1] is not _TENSOR:
                    raise _iterates(where, "an object whose state (BUILD) is or holds a "
                                    "tensor")
                _put(stack[-1], state)
            elif op == _GLOBAL:
                nl = data.find(b"\n", data.find(b"\n", i) + 1)
                stack.append(_CTORS.get(bytes(data[i:nl]), _OTHER))
                i = nl + 1
            elif op == _LONG_BINPUT_OP:
                memo[_U32(data, i)[0]] = stack[-1]
                i += 4
            elif op == _LONG_BINGET:
                stack.append(memo.get(_U32(data, i)[0]))
                i += 4
            elif op == _PERSID:
                stack[-1] = None  # a storage: its record's bytes, no more
            elif op == _BINUNICODE:
                i += 4 + _U32(data, i)[0]
                stack.append(None)
            elif op == _SHORT_BINSTRING or op == _LONG1:
                i += 1 + data[i]
                stack.append(None)
            elif op == _EMPTY_TUPLE:
                stack.append(None)
            else:  # the rest push one plain value (or none: PROTO)
                if arg[op] < 0:
                    return
                i += arg[op]
                if delta[op] == 1:
                    stack.append(None)
    except IndexError:  # a stack or mark underflow: torch's unpickler fails there too
        return


def _iterates(where: str, what: str) -> Exception:
    from optstate.base.errors import UnsafeCheckpointError

    return UnsafeCheckpointError(f"{where} holds {what}: iterating it could take forever; "
                                 "refused")


def _too_many_items(where: str, limit: int) -> LimitError:
    return LimitError(where, f"holds more than {limit:,} list and dict entries", "items",
                      limit)


def scan_legacy(data: Any, limits: Limits, where: str) -> PickleCounts:
    """The pickles at the start of a legacy (torch < 1.6) file: magic number, protocol,
    system info, the object, the storage keys; the raw storage data follows them."""
    counts = PickleCounts()
    pos = 0
    for _ in range(5):
        pos, counts = scan(data, pos, limits, where, counts)
        if pos < 0:
            break
    return counts


# ----------------------------------------------------------------- any pickle (DCP metadata)

_U64 = struct.Struct("<Q").unpack_from
_I32 = struct.Struct("<i").unpack_from


def _any_table() -> tuple[list[int], frozenset[int]]:
    """Argument size of every pickle opcode (pickletools' convention: >= 0 fixed, -1 up to
    a newline, -2/-3/-4/-5 a 1/4/4/8-byte length first; -9 unknown), and the opcodes whose
    argument is text (strings, whose length the ``string`` limit bounds)."""
    import pickletools

    sizes = [-9] * 256
    text: set[int] = set()
    for info in pickletools.opcodes:
        code = ord(info.code)
        sizes[code] = info.arg.n if info.arg is not None else 0
        if info.arg is not None and ("unicode" in info.arg.name or "string" in info.arg.name):
            text.add(code)
    return sizes, frozenset(text)


_ANY_SIZES, _ANY_TEXT = _any_table()
_PUT, _LONG_BINPUT, _INST, _LONG4 = 0x70, 0x72, 0x69, 0x8B


def scan_any(data: bytes, limits: Limits, where: str) -> None:
    """Check a pickle of any protocol before the C unpickler reads it (DCP ``.metadata``).
    The C unpickler keeps its memo in an array it grows to twice the largest index a PUT
    names: a 10-byte pickle with ``LONG_BINPUT 2**28`` allocates and clears 4 GiB. Memo
    indices must stay below the pickle's own size (a pickler numbers them 0, 1, ...), and
    strings within the ``string`` limit. Anything malformed is left to the unpickler."""
    sizes, text = _ANY_SIZES, _ANY_TEXT
    n = len(data)
    max_index, max_string = n, limits.string
    i = 0
    try:
        while i < n:
            op = data[i]
            i += 1
            size = sizes[op]
            if size == 0:
                if op == _STOP:
                    return
                continue
            if size > 0:
                if op == _LONG_BINPUT and _U32(data, i)[0] > max_index:
                    raise _bad_memo(where, _U32(data, i)[0])
                i += size
                continue
            if size == -1:
                end = data.index(b"\n", i)
                if op == _PUT and (len(data[i:end]) > 20 or int(data[i:end]) > max_index):
                    raise _bad_memo(where, int(data[i:end]) if end - i <= 20 else n + 1)
                if op == _GLOBAL or op == _INST:
                    end = data.index(b"\n", end + 1)
                if op in text and end - i > max_string:
                    raise LimitError(where, f"holds a string of {end - i:,} bytes", "string",
                                     max_string)
                i = end + 1
            elif size == -9:
                return  # not a pickle opcode: the unpickler reports the damage
            else:
                if size == -2:
                    length, i = data[i], i + 1
                elif size == -5:
                    length, i = _U64(data, i)[0], i + 8
                else:
                    length = _I32(data, i)[0] if op == _LONG4 else _U32(data, i)[0]
                    i += 4
                if op in text and length > max_string:
                    raise LimitError(where, f"holds a string of {length:,} bytes", "string",
                                     max_string)
                if length < 0:
                    return
                i += length
    except (IndexError, ValueError, struct.error):
        return  # truncated or malformed: the unpickler says so


def _bad_memo(where: str, index: int) -> Exception:
    from optstate.base.errors import CheckpointError

    return CheckpointError(f"{where} is damaged: it names memo slot {index:,}, beyond its own "
                           "size (a pickle numbers its memo from 0)")
