"""A corpus of broken and hostile checkpoint files, generated on demand in a temp dir.

Every builder takes a folder and returns the path it wrote (or, for ``missing``, a path
it did not). Nothing here is checked in: the bytes are made by real ``torch.save``,
``torch.jit.save``, ``pickle`` and ``zipfile`` calls, then damaged on purpose.

``BROKEN`` cases must fail with a clean error; ``MALICIOUS`` cases carry a payload that,
if it ever ran, would create the file ``marker`` next to them (a test in
``tests/test_hostile.py`` proves each payload really does that under plain pickle);
``EXOTIC`` cases are valid checkpoints that must load and be summarised; ``ODD`` cases
are loadable states a hand edit or foreign code may produce.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

MARKER = "marker"


# --------------------------------------------------------------------------- valid files


def adamw_state(steps: int = 2, shapes: tuple[tuple[int, ...], ...] = ((3, 4), (5,))) -> dict:
    """A real AdamW ``state_dict()`` after ``steps`` steps with constant gradients."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        opt.step()
    return opt.state_dict()


def save_adamw(path: Path) -> Path:
    torch.save(adamw_state(), path)
    return path


def _zip_members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _write_zip(path: Path, members: list[tuple[str, bytes]],
               compression: int = zipfile.ZIP_STORED) -> Path:
    # zipfile.writestr of a duplicate name warns and writes it anyway: that is the point.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for name, data in members:
                zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def _rezip(src: Path, out: Path, *, replace: dict[str, bytes] | None = None,
           drop: Callable[[str], bool] = lambda n: False,
           extra: list[tuple[str, bytes]] | None = None, prepend_extra: bool = False) -> Path:
    """Copy a torch zip checkpoint, replacing/dropping/adding members (by base name)."""
    members = []
    prefix = ""
    for name, data in _zip_members(src):
        prefix, base = name.split("/", 1)
        if drop(base):
            continue
        members.append((name, (replace or {}).get(base, data)))
    added = [(f"{prefix}/{b}", d) for b, d in (extra or [])]
    return _write_zip(out, added + members if prepend_extra else members + added)


def _legacy_bytes(body: bytes, storage_keys: bytes | None = None) -> bytes:
    """The legacy (non-zip) torch.save layout around a hand-written pickle ``body``."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(MAGIC_NUMBER, protocol=2) + pickle.dumps(PROTOCOL_VERSION, protocol=2)
            + pickle.dumps(sys_info, protocol=2) + body
            + (storage_keys if storage_keys is not None else pickle.dumps([], protocol=2)))


# --------------------------------------------------------------------------- payloads


class _Reduce:
    """Pickles as ``func(*args)``: the classic pickle code-execution gadget."""

    def __init__(self, func: Callable, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch_cmd(folder: Path) -> str:
    return f"touch {folder / MARKER}"


def _touch_code(folder: Path) -> str:
    return f"open({str(folder / MARKER)!r}, 'w').close()"


def payload_os_system(folder: Path) -> bytes:
    return pickle.dumps(_Reduce(os.system, _touch_cmd(folder)), protocol=2)


def payload_posix_system(folder: Path) -> bytes:
    # Protocol 0 text, as found in the wild: cposix\nsystem\n...
    cmd = _touch_cmd(folder)
    return b"cposix\nsystem\n(V" + cmd.encode() + b"\ntR."


def payload_exec(folder: Path) -> bytes:
    import builtins

    return pickle.dumps(_Reduce(builtins.exec, _touch_code(folder)), protocol=2)


def payload_eval(folder: Path) -> bytes:
    import builtins

    return pickle.dumps(_Reduce(builtins.eval, f"exec({_touch_code(folder)!r})"), protocol=2)


def payload_runpy(folder: Path) -> bytes:
    import runpy

    return pickle.dumps(_Reduce(runpy._run_code, _touch_code(folder), {}), protocol=2)


def payload_subprocess(folder: Path) -> bytes:
    import subprocess

    return pickle.dumps(_Reduce(subprocess.call, ["touch", str(folder / MARKER)]), protocol=2)


def payload_getattr_chain(folder: Path) -> bytes:
    """``getattr(__import__('os'), 'system')('touch marker')`` built from three REDUCEs."""
    cmd = _touch_cmd(folder).encode()
    return (b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\n__import__\n(X\x02\x00\x00\x00os"
            b"tRX\x06\x00\x00\x00systemtR(X" + struct.pack("<I", len(cmd)) + cmd + b"tR.")


def payload_stack_global(folder: Path) -> bytes:
    """Protocol 4 (STACK_GLOBAL, FRAME opcodes) calling os.system."""
    return pickle.dumps(_Reduce(os.system, _touch_cmd(folder)), protocol=4)


PAYLOADS: dict[str, Callable[[Path], bytes]] = {
    "os_system": payload_os_system,
    "posix_system": payload_posix_system,
    "builtins_exec": payload_exec,
    "builtins_eval": payload_eval,
    "runpy": payload_runpy,
    "subprocess": payload_subprocess,
    "getattr_chain": payload_getattr_chain,
    "stack_global": payload_stack_global,
}


# --------------------------------------------------------------------------- malicious files


def _payload_file(name: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        p = d / f"{name}.pt"
        p.write_bytes(PAYLOADS[name](d))
        return p

    build.__name__ = f"bare_pickle_{name}"
    return build


def nested_in_adamw(d: Path) -> Path:
    """A real AdamW state with a malicious object tucked into one param's state."""
    sd = adamw_state()
    sd["state"][0]["hook"] = _Reduce(os.system, _touch_cmd(d))
    p = d / "nested.pt"
    torch.save(sd, p)
    return p


def zip_data_pkl_replaced(d: Path) -> Path:
    src = save_adamw(d / "src.pt")
    out = _rezip(src, d / "replaced.pt", replace={"data.pkl": payload_os_system(d)})
    src.unlink()
    return out


def zip_payload_prepended(d: Path) -> Path:
    """A payload pickle followed by the real data.pkl: pickle stops at the first STOP."""
    src = save_adamw(d / "src.pt")
    real = dict(_zip_members(src))
    real_pkl = next(v for k, v in real.items() if k.endswith("/data.pkl"))
    out = _rezip(src, d / "prepended.pt", replace={"data.pkl": payload_os_system(d) + real_pkl})
    src.unlink()
    return out


def legacy_with_payload(d: Path) -> Path:
    p = d / "legacy_payload.pt"
    p.write_bytes(_legacy_bytes(payload_os_system(d)))
    return p


def pickle_with_zip_appended(d: Path) -> Path:
    """A payload pickle with a valid torch zip after it: zip readers find the zip at the
    end, pickle readers run the payload at the start."""
    src = save_adamw(d / "src.pt")
    p = d / "polyglot.pt"
    p.write_bytes(payload_os_system(d) + src.read_bytes())
    src.unlink()
    return p


def duplicate_data_pkl_payload_first(d: Path) -> Path:
    src = save_adamw(d / "src.pt")
    out = _rezip(src, d / "dup_first.pt", extra=[("data.pkl", payload_os_system(d))],
                 prepend_extra=True)
    src.unlink()
    return out


def duplicate_data_pkl_payload_last(d: Path) -> Path:
    src = save_adamw(d / "src.pt")
    out = _rezip(src, d / "dup_last.pt", extra=[("data.pkl", payload_os_system(d))])
    src.unlink()
    return out


class _Scripted(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


_SCRIPTED: list[bytes] = []  # torch.jit.script refuses to compile a class twice


def torchscript_pt(d: Path) -> Path:
    if not _SCRIPTED:
        import warnings

        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(_Scripted()), buf)
        _SCRIPTED.append(buf.getvalue())
    p = d / "scripted.pt"
    p.write_bytes(_SCRIPTED[0])
    return p


MALICIOUS: dict[str, Callable[[Path], Path]] = {
    **{f"pickle_{n}": _payload_file(n) for n in PAYLOADS},
    "nested_in_adamw": nested_in_adamw,
    "zip_data_pkl_replaced": zip_data_pkl_replaced,
    "zip_payload_prepended": zip_payload_prepended,
    "legacy_with_payload": legacy_with_payload,
    "pickle_with_zip_appended": pickle_with_zip_appended,
    "duplicate_data_pkl_payload_first": duplicate_data_pkl_payload_first,
    "duplicate_data_pkl_payload_last": duplicate_data_pkl_payload_last,
    "torchscript_pt": torchscript_pt,
}


# --------------------------------------------------------------------------- broken files


def missing(d: Path) -> Path:
    return d / "missing.pt"


def directory(d: Path) -> Path:
    p = d / "folder.pt"
    p.mkdir()
    return p


def fifo(d: Path) -> Path:
    """A named pipe: a plain open() for reading would wait for a writer forever."""
    p = d / "pipe.pt"
    os.mkfifo(p)
    return p


def permission_denied(d: Path) -> Path:
    p = save_adamw(d / "noperm.pt")
    p.chmod(0)
    return p


def empty(d: Path) -> Path:
    p = d / "empty.pt"
    p.write_bytes(b"")
    return p


def truncated(d: Path) -> Path:
    p = save_adamw(d / "truncated.pt")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def truncated_legacy(d: Path) -> Path:
    p = d / "truncated_legacy.pt"
    torch.save(adamw_state(), p, _use_new_zipfile_serialization=False)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    return p


def random_bytes(d: Path) -> Path:
    p = d / "random.pt"
    p.write_bytes(random.Random(5).randbytes(4096))
    return p


def zeros(d: Path) -> Path:
    p = d / "zeros.pt"
    p.write_bytes(bytes(4096))
    return p


def text(d: Path) -> Path:
    p = d / "notes.pt"
    p.write_text("these are my training notes\nlr=1e-3\n")
    return p


def json_file(d: Path) -> Path:
    p = d / "state.pt"
    p.write_text('{"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}\n')
    return p


def wrong_magic(d: Path) -> Path:
    """The legacy layout with a wrong magic number."""
    p = d / "wrong_magic.pt"
    good = _legacy_bytes(pickle.dumps({"state": {}, "param_groups": []}, protocol=2))
    from torch.serialization import MAGIC_NUMBER

    bad = good.replace(pickle.dumps(MAGIC_NUMBER, protocol=2), pickle.dumps(12345, protocol=2), 1)
    p.write_bytes(bad)
    return p


def corrupt_zip(d: Path) -> Path:
    """A torch zip whose central directory is overwritten with garbage."""
    p = save_adamw(d / "corrupt_zip.pt")
    data = bytearray(p.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    data[cd: cd + 64] = random.Random(1).randbytes(64)
    p.write_bytes(bytes(data))
    return p


def zip_version(d: Path) -> Path:
    """A central directory entry claiming it needs zip version 16.2 to extract (Python's
    zipfile raises NotImplementedError on it)."""
    p = save_adamw(d / "zip_version.pt")
    data = bytearray(p.read_bytes())
    cd = data.find(b"PK\x01\x02")
    data[cd + 6: cd + 8] = struct.pack("<H", 162)
    p.write_bytes(bytes(data))
    return p


def malformed_pickle(d: Path) -> Path:
    """data.pkl whose APPEND finds an empty stack: torch raises a bare IndexError."""
    src = save_adamw(d / "src.pt")
    out = _rezip(src, d / "malformed_pickle.pt", replace={"data.pkl": b"\x80\x02a."})
    src.unlink()
    return out


def missing_storage(d: Path) -> Path:
    src = save_adamw(d / "src.pt")
    out = _rezip(src, d / "missing_storage.pt", drop=lambda b: b == "data/1")
    src.unlink()
    return out


def short_last_record(d: Path) -> Path:
    """A 4 MB tensor whose record holds 4 bytes: memory-mapped, its slice would run past
    the end of the file."""
    src = d / "src.pt"
    torch.save({"state": {}, "param_groups": [], "big": torch.ones(2**20)}, src)
    out = _rezip(src, d / "short_last.pt", replace={"data/0": b"\0" * 4})
    src.unlink()
    return out


def size_mismatch(d: Path) -> Path:
    """A storage record shorter than the tensor the pickle describes."""
    src = save_adamw(d / "src.pt")
    members = dict((k.split("/", 1)[1], v) for k, v in _zip_members(src))
    out = _rezip(src, d / "size_mismatch.pt", replace={"data/1": members["data/1"][:8]})
    src.unlink()
    return out


def legacy_size_mismatch(d: Path) -> Path:
    """The legacy format with a storage declared 2**31 - 1 elements long (4 stored)."""
    buf = io.BytesIO()
    torch.save({"a": torch.ones(4)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    at = data.index(b"X\x03\x00\x00\x00cpuq\x06K\x04") + 10  # BININT1 4: the numel
    p = d / "legacy_size.pt"
    p.write_bytes(data[:at] + b"J" + struct.pack("<i", 2**31 - 1) + data[at + 2:])
    return p


def unsupported_protocol(d: Path) -> Path:
    """data.pkl written with pickle protocol 5 (FRAME, SHORT_BINUNICODE opcodes)."""
    src = save_adamw(d / "src.pt")
    body = pickle.dumps({"state": {}, "param_groups": [{"lr": 0.1, "params": []}]},
                        protocol=5)
    out = _rezip(src, d / "protocol5.pt", replace={"data.pkl": body})
    src.unlink()
    return out


def refused_global(d: Path) -> Path:
    """A harmless but non-allowlisted global (collections.Counter is allowed, so use
    a datetime)."""
    import datetime

    p = d / "datetime.pt"
    torch.save({"state": {}, "param_groups": [], "saved": datetime.date(2024, 1, 1)}, p)
    return p


def old_tar_format(d: Path) -> Path:
    """The torch < 0.4 tar layout (members sys_info, pickle, storages, tensors)."""
    p = d / "old.tar.pt"
    with tarfile.open(p, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("sys_info", pickle.dumps({}, protocol=2)),
                           ("pickle", pickle.dumps({"state": {}}, protocol=2)),
                           ("storages", pickle.dumps(0, protocol=2)),
                           ("tensors", pickle.dumps(0, protocol=2))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return p


def duplicate_members(d: Path) -> Path:
    """Two different data/0 records (no payload: the refusal is about the ambiguity)."""
    src = save_adamw(d / "src.pt")
    out = _rezip(src, d / "dup_storage.pt", extra=[("data/0", b"\0" * 4)])
    src.unlink()
    return out


def zip_bomb(d: Path) -> Path:
    """A deflated member that expands to 200 MB from a file of a few hundred KB."""
    src = save_adamw(d / "src.pt")
    members = _zip_members(src)
    prefix = members[0][0].split("/", 1)[0]
    out = d / "bomb.pt"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in members:
            zf.writestr(name, data)
        chunk = bytes(2**20)
        with zf.open(f"{prefix}/data/9", "w") as member:
            for _ in range(200):
                member.write(chunk)
    src.unlink()
    return out


def _zip_with_pickle(d: Path, name: str, body: bytes) -> Path:
    """A torch zip checkpoint (no tensors) whose data.pkl is ``body``."""
    return _write_zip(d / name, [("archive/data.pkl", body), ("archive/byteorder", b"little"),
                                 ("archive/version", b"3\n")])


def billion_laughs(d: Path) -> Path:
    """Nine levels of lists each holding the previous one ten times: 1.5 KB on disk,
    10**9 leaves when walked as a tree."""
    body = bytearray(b"\x80\x02X\x03\x00\x00\x00lolq\x00")
    for level in range(1, 10):
        body += b"](" + (b"h" + bytes([level - 1])) * 10 + b"eq" + bytes([level])
    body += b"."
    return _zip_with_pickle(d, "laughs.pt", bytes(body))


def deep_nesting(d: Path, depth: int = 200_000) -> Path:
    """A list nested 200 000 deep (pickle.dumps itself cannot write this: RecursionError)."""
    body = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    return _zip_with_pickle(d, "deep.pt", body)


def self_containing_list(d: Path) -> Path:
    x: list = []
    x.append(x)
    p = d / "cycle.pt"
    torch.save({"state": {}, "param_groups": [], "loop": x}, p)
    return p


def cyclic_state(d: Path) -> Path:
    """An optimizer state whose param group contains itself."""
    sd = adamw_state()
    sd["param_groups"][0]["self"] = sd["param_groups"][0]
    p = d / "cyclic_state.pt"
    torch.save(sd, p)
    return p


def not_optimizer_state(d: Path) -> Path:
    p = d / "model.pt"
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(3, 2).state_dict(), p)
    return p


def no_param_groups(d: Path) -> Path:
    sd = adamw_state()
    del sd["param_groups"]
    p = d / "no_groups.pt"
    torch.save({"optimizer": sd, "epoch": 3}, p)
    return p


def orphan_state_ids(d: Path) -> Path:
    """state keyed by ids that no param group lists."""
    sd = adamw_state()
    sd["state"][7] = sd["state"][0]
    p = d / "orphans.pt"
    torch.save(sd, p)
    return p


def bad_sparse(d: Path) -> Path:
    """A sparse COO tensor whose indices point outside its shape."""
    t = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.tensor([1.0, 2.0]), (2,),
                                check_invariants=True)
    sd = adamw_state()
    sd["state"][0]["sparse"] = t
    p = d / "bad_sparse.pt"
    torch.save(sd, p)
    members = dict((k.split("/", 1)[1], v) for k, v in _zip_members(p))
    # the indices storage is the one holding int64 [0, 1]: make it [0, 1000000]
    key = next(k for k, v in members.items() if k.startswith("data/")
               and v == struct.pack("<2q", 0, 1))
    out = _rezip(p, d / "bad_sparse2.pt", replace={key: struct.pack("<2q", 0, 1_000_000)})
    p.unlink()
    return out


def huge_sparse(d: Path) -> Path:
    """A valid sparse tensor with one value and a shape of 2**40 elements: anything that
    densifies it asks for 4 TB."""
    t = torch.sparse_coo_tensor(torch.tensor([[5]]), torch.tensor([1.0]), (2**40,),
                                check_invariants=True)
    sd = adamw_state()
    sd["state"][0]["sparse"] = t
    p = d / "huge_sparse.pt"
    torch.save(sd, p)
    return p


BROKEN: dict[str, Callable[[Path], Path]] = {
    "missing": missing,
    "directory": directory,
    "fifo": fifo,
    "permission_denied": permission_denied,
    "empty": empty,
    "truncated": truncated,
    "truncated_legacy": truncated_legacy,
    "random_bytes": random_bytes,
    "zeros": zeros,
    "text": text,
    "json": json_file,
    "wrong_magic": wrong_magic,
    "corrupt_zip": corrupt_zip,
    "zip_version": zip_version,
    "malformed_pickle": malformed_pickle,
    "missing_storage": missing_storage,
    "size_mismatch": size_mismatch,
    "short_last_record": short_last_record,
    "legacy_size_mismatch": legacy_size_mismatch,
    "unsupported_protocol": unsupported_protocol,
    "refused_global": refused_global,
    "old_tar_format": old_tar_format,
    "duplicate_members": duplicate_members,
    "zip_bomb": zip_bomb,
    "billion_laughs": billion_laughs,
    "deep_nesting": deep_nesting,
    "self_containing_list": self_containing_list,
    "cyclic_state": cyclic_state,
    "not_optimizer_state": not_optimizer_state,
    "no_param_groups": no_param_groups,
    "orphan_state_ids": orphan_state_ids,
    "bad_sparse": bad_sparse,
    "huge_sparse": huge_sparse,
}


# --------------------------------------------------------------------------- exotic, valid


def exotic_state() -> dict:
    """An AdamW state whose buffers are swapped for every dtype torch.save can write."""
    sd = adamw_state(shapes=((2, 3),) * 9)
    tensors = {
        0: torch.arange(6, dtype=torch.float32).reshape(2, 3).to(torch.bfloat16),
        1: torch.tensor([[0.5, -1.0, 2.0], [0.0, 448.0, -0.25]]).to(torch.float8_e4m3fn),
        2: torch.tensor([[0.5, -1.0, 2.0], [0.0, 57344.0, -0.25]]).to(torch.float8_e5m2),
        3: torch.complex(torch.ones(2, 3), torch.full((2, 3), 2.0)),
        4: torch.arange(6, dtype=torch.int64).reshape(2, 3) - 2,
        5: torch.tensor([[True, False, True], [False, False, True]]),
        6: torch.empty(0, 3),
        7: torch.empty(2, 3, device="meta"),
        8: torch.arange(6, dtype=torch.float16).reshape(2, 3),
    }
    for i, t in tensors.items():
        sd["state"][i]["exp_avg"] = t
    return sd


def exotic_dtypes(d: Path) -> Path:
    p = d / "exotic.pt"
    torch.save(exotic_state(), p)
    return p


def big_endian(d: Path) -> Path:
    """A checkpoint written on a big-endian machine: byteorder record 'big', data swapped."""
    sd = adamw_state()
    src = d / "src.pt"
    torch.save(sd, src)
    members = _zip_members(src)
    swapped = []
    for name, data in members:
        base = name.split("/", 1)[1]
        if base == "byteorder":
            data = b"big"
        elif base.startswith("data/") and base != "data/serialization_id":
            data = _byteswap4(data)
        swapped.append((name, data))
    src.unlink()
    return _write_zip(d / "big_endian.pt", swapped)


def _byteswap4(data: bytes) -> bytes:
    # every storage of an AdamW state is float32
    n = len(data) // 4
    return struct.pack(f">{n}f", *struct.unpack(f"<{n}f", data))


def safetensors_named(d: Path) -> Path:
    """A torch.save file named .safetensors: torch.load(path) would hand it elsewhere."""
    return save_adamw(d / "optimizer.safetensors")


EXOTIC: dict[str, Callable[[Path], Path]] = {
    "exotic_dtypes": exotic_dtypes,
    "big_endian": big_endian,
    "safetensors_named": safetensors_named,
}


# --------------------------------------------------------------------------- odd but loadable


def _odd(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        sd = adamw_state()
        edit(sd)
        p = d / "odd.pt"
        torch.save(sd, p)
        return p

    return build


def _set(path: tuple, value: Callable[[], object]) -> Callable[[dict], None]:
    """Set ``value()`` at ``path`` (values are made when the file is built, not on import)."""
    def edit(sd: dict) -> None:
        node = sd
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value()

    return edit


# States a hand-edited or foreign checkpoint may hold. Each must give a result or one
# clean error, never an internal error.
ODD: dict[str, Callable[[Path], Path]] = {
    "unhashable_param": _odd(_set(("param_groups", 0, "params"), lambda: [[0], 1])),
    "params_not_list": _odd(_set(("param_groups", 0, "params"), lambda: "01")),
    "state_not_dict": _odd(_set(("state", 0), lambda: [1, 2])),
    "group_not_dict": _odd(_set(("param_groups",), lambda: [5])),
    "tensor_lr": _odd(_set(("param_groups", 0, "lr"), lambda: torch.tensor([1.0, 2.0]))),
    "nan_lr": _odd(_set(("param_groups", 0, "lr"), lambda: float("nan"))),
    "bytes_hyper": _odd(_set(("param_groups", 0, "x"), lambda: b"\xff\x00")),
    "huge_int_hyper": _odd(_set(("param_groups", 0, "big"), lambda: 10**40)),
    "complex_hyper": _odd(_set(("param_groups", 0, "c"), lambda: complex(1, 2))),
    "set_hyper": _odd(_set(("param_groups", 0, "s"), lambda: {1, 2})),
    "string_step": _odd(_set(("state", 0, "step"), lambda: "hello")),
    "none_buffer": _odd(_set(("state", 0, "exp_avg"), lambda: None)),
    "duplicate_param": _odd(_set(("param_groups", 0, "params"), lambda: [0, 0])),
    "string_state_key": _odd(_set(("state", "weird key"), lambda: {"m": torch.ones(1)})),
    "bad_param_names": _odd(_set(("param_groups", 0, "param_names"), lambda: [1, 2])),
    "quantized": _odd(_set(("state", 0, "exp_avg"), lambda: torch.quantize_per_tensor(
        torch.ones(3, 4), 0.1, 0, torch.quint8))),
    "sparse_coo": _odd(_set(("state", 0, "exp_avg"), lambda: torch.ones(3, 4).to_sparse())),
    "sparse_csr": _odd(_set(("state", 0, "exp_avg"), lambda: torch.ones(3, 4).to_sparse_csr())),
    "meta": _odd(_set(("state", 0, "exp_avg"), lambda: torch.empty(3, 4, device="meta"))),
    "zero_size": _odd(_set(("state", 0, "exp_avg"), lambda: torch.ones(3, 0))),
    "all_nan": _odd(_set(("state", 0, "exp_avg"), lambda: torch.full((3, 4), float("nan")))),
    "uint16": _odd(_set(("state", 0, "exp_avg"), lambda: torch.ones(3, 4, dtype=torch.uint16))),
    "nested_buffers": _odd(_set(("state", 0, "exp_avg"), lambda: [torch.ones(2), [torch.ones(1)]])),
    "non_contiguous": _odd(_set(("state", 0, "exp_avg"), lambda: torch.ones(4, 3).t())),
}


def escape_sequences(d: Path) -> Path:
    """Keys, names and values carrying terminal escapes (clear screen, colour, an OSC 8
    hyperlink) and rich markup."""
    sd = adamw_state()
    sd["param_groups"][0]["\x1b[31mEVIL\x1b[0m"] = (
        "[bold red]markup[/bold red] \x1b]8;;http://x\x1b\\link")
    sd["param_groups"][0]["param_names"] = ["[link=http://evil]w[/link]", "a\x07b"]
    sd["state"][0]["\x1b[2Jclear"] = torch.ones(1)
    p = d / "escapes.pt"
    torch.save(sd, p)
    return p
