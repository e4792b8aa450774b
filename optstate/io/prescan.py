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
    arg, delta = _ARG, _DELTA
    n = len(data)
    i = start
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
                if op == _LONG_BINPUT_OP:
                    index = _U32(data, i)[0]
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
                elif op == _EMPTY_TUPLE:
                    depth += 1
                    empty_end = i
                elif op == _REDUCE or op == _NEWOBJ:
                    depth -= 1
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
                    if bytes(data[i:end]) in _SIZED:
                        raise _sized(where, bytes(data[i:end]))
                    i = end + 1
                    depth += 1
                elif op == _SHORT_BINSTRING or op == _LONG1:
                    i += 1 + data[i]
                    depth += 1
                elif op == _STOP:
                    counts.tensors, counts.items, counts.memo = tensors, items, memo
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
