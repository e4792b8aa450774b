"""Bounded work on any input (issue #16 items 1 and 4): time and memory follow the bytes a
checkpoint really stores and the structure's real size, never what it claims; a DCP folder
never makes optstate read outside itself.

Every hostile file is generated here (raw pickle opcodes, real ``torch.save``, real
``torch.distributed.checkpoint`` metadata classes, changed by hand) and every command runs
in a child process under a memory cap and a time bound (``tests/bounded.py``): exit 2, one
``Error:`` line that names the limit, and a ``Hint:`` that says how to raise it.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from tests.bounded import run_bounded

ENV = "OPTSTATE_LIMITS"
# A command refused by a limit must say so in about the time torch takes to import (a few
# seconds; this bound leaves room for a loaded CI machine).
FAST = 30.0


def run(*args, **kwargs):
    return run_bounded(*args, timeout=FAST, **kwargs)


# --------------------------------------------------------------------------- raw pickles


def _uni(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    if i < 256:
        return b"K" + bytes([i])
    if i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def _put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def _get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def _batches(items: list[bytes], end: bytes) -> bytes:
    """MARK ... APPENDS/SETITEMS in batches of 1000, as pickle writes them."""
    return b"".join(b"(" + b"".join(items[k:k + 1000]) + end for k in range(0, len(items), 1000))


def sgd_pickle(tensors: int, groups: int = 1, name: str = "momentum_buffer") -> bytes:
    """An SGD-like ``state_dict()`` as torch.save writes it (protocol 2, the opcodes
    torch's safe unpickler accepts): ``state[i][name]`` for ``i < tensors``, each a
    1-element tensor viewing storage ``0``, and ``groups`` param groups. Memo references
    keep it small: ~50 bytes per tensor, ~30 per group."""
    first = (b"ctorch._utils\n_rebuild_tensor_v2\n" + _put(2) + b"((" + _uni("storage")
             + b"ctorch\nFloatStorage\n" + _uni("0") + _uni("cpu") + _int(1) + b"tQ" + _put(3)
             + b"K\x00K\x01\x85" + _put(4) + b"K\x00\x85" + _put(5) + b"\x89"
             + b"ccollections\nOrderedDict\n)R" + _put(6) + b"tR")
    again = _get(2) + b"(" + _get(3) + b"K\x00" + _get(4) + _get(5) + b"\x89" + _get(6) + b"tR"
    entries = [_int(0) + b"}(" + _uni(name) + _put(7) + first + b"u"]
    entries += [_int(i) + b"}(" + _get(7) + again + b"u" for i in range(1, tensors)]
    group_list = []
    for g in range(groups):
        params = [_int(p) for p in range(tensors)] if g == 0 else [_int(g)]
        group_list.append(b"}(" + _uni("params") + b"]" + _batches(params, b"e")
                          + _uni("lr") + b"G" + struct.pack(">d", 0.1) + b"u")
    return (b"\x80\x02}" + _put(0) + b"(" + _uni("state") + b"}" + _put(1)
            + _batches(entries, b"u") + _uni("param_groups") + b"]" + _batches(group_list, b"e")
            + b"u.")


def zip_checkpoint(path: Path, pkl: bytes) -> Path:
    """A torch.save zip archive around ``pkl`` with the one storage it uses."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in (("data.pkl", pkl), ("byteorder", b"little"),
                           ("data/0", struct.pack("<f", 1.0)), ("version", b"3\n")):
            zf.writestr(f"archive/{name}", data)
    return path


def timed(build, *args):
    start = time.monotonic()
    out = build(*args)
    return out, time.monotonic() - start


def assert_refused(r, limit: str, *, what: str = "") -> None:
    """Exit 2, an ``Error:`` line naming the limit, a ``Hint:`` naming how to raise it,
    no traceback, well inside the time bound (the memory cap is the child's rlimit)."""
    assert not r.timed_out, f"timed out after {r.seconds:.1f} s"
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 2 and lines[0].startswith("Error: "), r.stderr
    assert f"(limit {limit}=" in lines[0], lines[0]
    assert what in lines[0], lines[0]
    assert lines[1] == (f'Hint: if you trust this file, raise the limit: {ENV}="{limit}=N" '
                        "(see the README's Security section)"), lines[1]
    assert r.seconds < FAST, f"{r.seconds:.1f} s"


# --------------------------------------------------------------------------- torch.save files


def test_generators_make_what_torch_reads(tmp_path):
    """The raw-opcode files are real checkpoints: torch's safe loader reads them."""
    p = zip_checkpoint(tmp_path / "small.pt", sgd_pickle(5, groups=3))
    sd = torch.load(p, weights_only=True)
    assert len(sd["state"]) == 5 and torch.equal(sd["state"][4]["momentum_buffer"],
                                                  torch.tensor([1.0]))
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1, 2, 3, 4], [1], [2]]


def test_a_million_tensors_are_refused_before_unpickling(tmp_path):
    pkl, seconds = timed(sgd_pickle, 1_000_000)
    assert seconds < 10  # generation (measured: ~1.5 s)
    p = zip_checkpoint(tmp_path / "million.pt", pkl)
    r = run("inspect", p)
    assert_refused(r, "tensors", what=f"{p} holds more than 500,000 tensors")


def test_a_million_param_groups_are_refused_before_unpickling(tmp_path):
    p = zip_checkpoint(tmp_path / "groups.pt", sgd_pickle(2, groups=1_000_000))
    r = run("inspect", p, "--no-stats")
    assert_refused(r, "items", what=f"{p} holds more than 1,000,000 list and dict entries")


def test_a_megabyte_name_is_refused_before_unpickling(tmp_path):
    p = tmp_path / "name.pt"
    torch.save({"state": {0: {"x" * 2**20: torch.zeros(2)}},
                "param_groups": [{"params": [0], "lr": 0.1}]}, p)
    r = run("inspect", p)
    assert_refused(r, "string", what=f"{p} holds a string of 1,048,576 bytes")


def test_a_flood_of_values_on_the_stack_is_refused(tmp_path):
    """Values pushed and never put in a container still cost memory in the unpickler."""
    p = zip_checkpoint(tmp_path / "flood.pt", b"\x80\x02" + b"N" * 3_000_000 + b"}.")
    r = run("inspect", p)
    assert_refused(r, "items")


def test_unclosed_marks_are_refused(tmp_path):
    """Each MARK is a new list in torch's unpickler: 1 byte in, ~60 bytes of memory."""
    p = zip_checkpoint(tmp_path / "marks.pt", b"\x80\x02" + b"(" * 5_000_000 + b"}.")
    r = run("inspect", p)
    assert_refused(r, "depth", what="nests more than 100 levels")


def test_legacy_format_is_scanned_too(tmp_path):
    p = tmp_path / "legacy.pt"
    torch.save({"state": {i: {"momentum_buffer": torch.zeros(2)} for i in range(300)},
                "param_groups": [{"params": list(range(300)), "lr": 0.1}]}, p,
               _use_new_zipfile_serialization=False)
    r = run("inspect", p, "--no-stats", env={ENV: "tensors=200"})
    assert_refused(r, "tensors", what=f"{p} holds more than 200 tensors")


def test_raising_a_limit_lets_a_large_but_fine_file_through(tmp_path):
    """3000 real tensors: refused under tensors=1000, read under tensors=5000."""
    n = 3000
    p = tmp_path / "large.pt"
    torch.save({"state": {i: {"momentum_buffer": torch.full((2,), float(i))} for i in range(n)},
                "param_groups": [{"params": list(range(n)), "lr": 0.1, "momentum": 0.9}]}, p)
    refused = run("inspect", p, "--no-stats", env={ENV: "tensors=1000"})
    assert_refused(refused, "tensors", what=f"{p} holds more than 1,000 tensors")
    read = run("inspect", p, "--json", env={ENV: "tensors=5000"})
    assert read.returncode == 0, read.stderr
    assert read.seconds < FAST


def test_the_default_limits_read_a_real_state_unchanged(tmp_path):
    """A real Adam state of 2000 parameters (6000 tensors) is far inside every limit."""
    from optstate.io.torch_file import load_torch_file

    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(2000)]
    opt = torch.optim.Adam(params)
    for p in params:
        p.grad = torch.ones(3)
    opt.step()
    path = tmp_path / "adam.pt"
    torch.save(opt.state_dict(), path)
    loaded = load_torch_file(path)
    assert loaded.walk is not None and loaded.walk.tensors == 6000


def test_the_prescan_counts_what_torch_builds(tmp_path):
    """On a real torch.save file the counts are exact: one per tensor (sparse and plain),
    one per list and dict entry (tuples are not counted); and the scan of a million
    tensors' pickle, run to its end, is quick."""
    from optstate.base.limits import Limits
    from optstate.io.prescan import scan

    n = 50
    sd = {"state": {i: {"momentum_buffer": torch.full((3,), float(i))} for i in range(n)},
          "param_groups": [{"params": list(range(n)), "lr": 0.1, "betas": (0.9, 0.99)}]}
    p = tmp_path / "real.pt"
    torch.save(sd, p)
    with zipfile.ZipFile(p) as zf:
        pkl = zf.read(next(name for name in zf.namelist() if name.endswith("/data.pkl")))
    end, counts = scan(pkl, 0, Limits(), str(p))
    assert end == len(pkl) and counts.complete
    assert counts.tensors == n
    assert counts.items == 2 + n + n + 1 + 3 + n  # top, state, entries, groups, group, params

    big = sgd_pickle(1_000_000)
    start = time.monotonic()
    _, counts = scan(big, 0, Limits(tensors=2_000_000, items=4_000_000), "big")
    seconds = time.monotonic() - start
    assert counts.tensors == 1_000_000 and counts.items == 3 * 1_000_000 + 5
    assert seconds < 10, f"{seconds:.1f} s"  # measured: ~1.2 s on an idle core


def test_tensors_rebuilt_from_memo_are_counted(tmp_path):
    """The tensor count must not hang on the byte before REDUCE: a rebuild whose argument
    tuple is memo slot 41 (``BINGET 41`` is ``h)``, as the empty tuple ``)`` of an
    argument-less call) was not counted, and 600 000 of them nested by TUPLE2 (no list or
    dict entry) went to torch's unpickler unchecked (200 000: 11 s). NEWOBJ builds
    tensors too (``torch.Tensor.__new__``)."""
    from optstate.base.limits import Limits
    from optstate.io.prescan import scan

    first = (b"ctorch._utils\n_rebuild_tensor_v2\n" + b"q\x02((" + _uni("storage")
             + b"ctorch\nFloatStorage\n" + _uni("0") + _uni("cpu") + _int(1) + b"tQ"
             + b"K\x00K\x01\x85K\x00\x85\x89ccollections\nOrderedDict\n)Rtq)R")
    pkl = b"\x80\x02" + first + b"h\x02h)R\x86" * 600_000 + b"."
    end, counts = scan(pkl, 0, Limits(tensors=10**7), "x")
    assert end == len(pkl) and counts.tensors == 600_001
    newobj = b"\x80\x02ctorch\nTensor\nq\x01)q\x02" + b"h\x01h\x02\x81\x86" * 10 + b"."
    assert scan(newobj, 0, Limits(), "x")[1].tensors == 10
    p = zip_checkpoint(tmp_path / "memo_args.pt", pkl)
    assert_refused(run("inspect", p, "--no-stats"), "tensors",
                   what=f"{p} holds more than 500,000 tensors")


def test_limits_parse_names_suffixes_and_refuse_garbage():
    from optstate.base.limits import Limits, parse

    assert parse("") == Limits()
    assert parse("tensors=2M, string=1MiB,expand=1GiB") == Limits(
        tensors=2_000_000, string=2**20, expand=2**30)
    for bad in ("tensors", "tensor=5", "tensors=-1", "tensors=5X", "tensors=1.5"):
        with pytest.raises(Exception) as e:
            parse(bad)
        assert ENV in str(e.value)


def test_a_bad_limits_variable_is_one_error_line(tmp_path):
    p = zip_checkpoint(tmp_path / "small.pt", sgd_pickle(2))
    r = run("inspect", p, env={ENV: "tensors=lots"})
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (f"Error: {ENV} has 'tensors=lots'; expected name=number "
                                        "with name one of depth, expand, items, nodes, string, "
                                        "tensors")


# ------------------------------------------------ set and convert: views that claim terabytes


@pytest.fixture
def expanded(tmp_path) -> Path:
    """2 KB on disk: an SGD state whose momentum buffer views 1 stored float as 2**40."""
    p = tmp_path / "expanded.pt"
    torch.save({"state": {0: {"momentum_buffer": torch.zeros(1).expand(2**40)}},
                "param_groups": [{"params": [0], "lr": 0.1, "momentum": 0.9,
                                  "dampening": 0, "weight_decay": 0, "nesterov": False,
                                  "maximize": False, "foreach": None,
                                  "differentiable": False, "fused": None}]}, p)
    assert p.stat().st_size < 4096
    return p


WOULD_COPY = ("has views that repeat their stored elements (state[0].momentum_buffer: "
              "1,099,511,627,776 elements over 1 stored); {cmd} copies tensors, which would "
              "add 4.0 TiB")


def test_set_refuses_a_file_that_claims_terabytes(expanded, tmp_path):
    out = tmp_path / "out.pt"
    r = run("set", expanded, "--lr", "0.5", "-o", out)
    assert_refused(r, "expand", what=f"{expanded} " + WOULD_COPY.format(cmd="set"))
    assert not out.exists()


def test_convert_refuses_a_file_that_claims_terabytes(expanded, tmp_path):
    out = tmp_path / "out_dcp"
    r = run("convert", expanded, out)
    assert_refused(r, "expand", what=f"{expanded} " + WOULD_COPY.format(cmd="convert"))
    assert not out.exists() and os.listdir(tmp_path) == ["expanded.pt"]


def test_a_small_expanded_view_is_copied_and_the_limit_is_exact(tmp_path):
    """A 1000-element view of one float adds 3996 bytes when copied: fine by default,
    refused under expand=1KiB."""
    p = tmp_path / "small_view.pt"
    torch.save({"state": {0: {"momentum_buffer": torch.ones(1).expand(1000)}},
                "param_groups": [{"params": [0], "lr": 0.1}]}, p)
    ok = run("convert", p, tmp_path / "ok_dcp")
    assert ok.returncode == 0, ok.stderr
    refused = run("convert", p, tmp_path / "no_dcp", env={ENV: "expand=1KiB"})
    assert_refused(refused, "expand", what="which would add 3,996 bytes")
    assert not (tmp_path / "no_dcp").exists()


# --------------------------------------------------------------------------- DCP folders


def dcp_folder(folder: Path) -> Path:
    """A real DCP save of a small SGD state (positional keys, as torch writes them)."""
    p = torch.nn.Parameter(torch.arange(4.0))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(4)
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(opt.state_dict(), storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
    return folder


def metadata(folder: Path):
    from optstate.io.dcp_metadata import read_metadata

    return read_metadata(folder)


def write_metadata(folder: Path, md) -> None:
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(md, f)


def append_chunk(folder: Path, md, index, data: bytes) -> None:
    """Store ``data`` at the end of the rank file and point ``index`` at it."""
    info = md.storage_data[index]
    path = folder / info.relative_path
    offset = path.stat().st_size
    with open(path, "ab") as f:
        f.write(data)
    info.offset, info.length = offset, len(data)


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def index_of(md, fqn: str):
    return next(i for i in md.storage_data if i.fqn == fqn)


@pytest.fixture
def folder(tmp_path) -> Path:
    return dcp_folder(tmp_path / "ckpt")


def test_the_dcp_fixture_reads(folder):
    r = run("inspect", folder, "--no-stats")
    assert r.returncode == 0, r.stderr


def test_an_expanded_dcp_chunk_is_never_materialised(folder, tmp_path):
    """2 KB stored; the metadata says 2**30 floats: reading it would fill a 4 GiB buffer."""
    md = metadata(folder)
    key = "state.0.momentum_buffer"
    entry = md.state_dict_metadata[key]
    entry.size = torch.Size([2**30])
    entry.chunks[0].sizes = torch.Size([2**30])
    append_chunk(folder, md, index_of(md, key), torch_bytes(torch.zeros(1).expand(2**30)))
    write_metadata(folder, md)
    for args in (("inspect", folder), ("convert", folder, tmp_path / "out.pt")):
        r = run_bounded(*args)
        assert_refused(r, "expand", what="has tensor chunks that claim more data than they "
                       f"store ({key}: 4,294,967,296 bytes from ")
    assert not (tmp_path / "out.pt").exists()


def rename_index(md, fqn: str, *, new_fqn: str | None = None, offset=None) -> None:
    """Move the storage entry of ``fqn`` to another key or chunk offset."""
    from torch.distributed.checkpoint.metadata import MetadataIndex

    old = index_of(md, fqn)
    new = MetadataIndex(fqn=new_fqn or fqn, offset=offset if offset is not None else old.offset,
                        index=old.index)
    md.storage_data[new] = md.storage_data.pop(old)


def test_dcp_sizes_that_overflow_are_one_error(folder):
    key = "state.0.momentum_buffer"
    md = metadata(folder)
    entry = md.state_dict_metadata[key]
    entry.size = torch.Size([2**40, 2**40])
    entry.chunks[0].offsets = torch.Size([0, 0])
    entry.chunks[0].sizes = torch.Size([2**40, 2**40])
    rename_index(md, key, offset=torch.Size([0, 0]))
    write_metadata(folder, md)
    r = run("inspect", folder)
    assert r.returncode == 2 and not r.timed_out
    assert r.stderr.splitlines()[0].startswith(
        f"Error: {folder}/.metadata is damaged: key 'state.0.momentum_buffer' has a shape of "
        "1,208,925,819,614,629,174,706,176 elements, more than torch can count")


def test_a_metadata_memo_index_far_past_its_size_is_refused(folder):
    """Python's C unpickler grows its memo array to twice the largest index a PUT names:
    ``LONG_BINPUT 2**25`` in a 1 KB file makes it allocate and clear 512 MiB."""
    meta = folder / ".metadata"
    data = meta.read_bytes()
    assert data.startswith(b"\x80") and data[2:3] == b"\x95"  # PROTO, FRAME: protocol 4+
    # PROTO n, then a value put in memo slot 2**25 and popped, then the real pickle
    meta.write_bytes(data[:2] + b"N" + b"r" + struct.pack("<I", 2**25) + b"0" + data[2:])
    r = run("inspect", folder, "--no-stats", memory=400 * 2**20)
    assert r.returncode == 2 and not r.timed_out, r.stderr
    assert r.stderr.splitlines()[0] == (f"Error: {meta} is damaged: it names memo slot "
                                        "33,554,432, beyond its own size (a pickle numbers "
                                        "its memo from 0)")


def test_dcp_paths_nested_too_deep_are_refused(folder):
    md = metadata(folder)
    md.planner_data["state.0.momentum_buffer"] = ("state",) + ("x",) * 100_000
    write_metadata(folder, md)
    r = run("inspect", folder)
    assert_refused(r, "depth", what="'state.0.momentum_buffer' is 100,001 levels deep")


def _deep_value_bytes(depth: int) -> bytes:
    """torch.save bytes of a list nested ``depth`` deep (pickle.dumps cannot write it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def test_a_dcp_value_nested_deep_is_refused(folder):
    md = metadata(folder)
    append_chunk(folder, md, index_of(md, "param_groups.0.lr"), _deep_value_bytes(200_000))
    write_metadata(folder, md)
    r = run("inspect", folder)
    assert_refused(r, "depth", what="the value 'param_groups.0.lr' is nested more than 100 "
                   "levels deep")


def test_a_dcp_value_that_unfolds_to_a_billion_is_refused_before_expanding(folder):
    laughs: list = ["lol"]
    for _ in range(9):
        laughs = [laughs] * 10
    md = metadata(folder)
    append_chunk(folder, md, index_of(md, "param_groups.0.lr"), torch_bytes(laughs))
    write_metadata(folder, md)
    r = run("inspect", folder)
    assert_refused(r, "nodes", what="the value 'param_groups.0.lr' unfolds to more than "
                   "10,000,000 objects")


def test_a_dcp_value_with_a_million_tensors_is_refused_before_unpickling(folder, tmp_path):
    """Non-tensor values are torch.save bytes that torch.load reads: the same pre-scan."""
    md = metadata(folder)
    value = zip_checkpoint(tmp_path / "value.pt", sgd_pickle(1_000_000)).read_bytes()
    append_chunk(folder, md, index_of(md, "param_groups.0.lr"), value)
    write_metadata(folder, md)
    r = run("inspect", folder)
    assert_refused(r, "tensors", what=f"{folder}: the value 'param_groups.0.lr' holds more "
                   "than 500,000 tensors")


def test_a_dcp_tensor_chunk_with_a_million_tensors_is_refused_before_unpickling(folder,
                                                                                 tmp_path):
    """Each tensor chunk is torch.save bytes too, read when its numbers are needed."""
    md = metadata(folder)
    key = "state.0.momentum_buffer"
    value = zip_checkpoint(tmp_path / "chunk.pt", sgd_pickle(1_000_000)).read_bytes()
    append_chunk(folder, md, index_of(md, key), value)
    write_metadata(folder, md)
    r = run("inspect", folder)
    shard = md.storage_data[index_of(md, key)].relative_path
    assert_refused(r, "tensors", what=f"{folder / shard}: the chunk of '{key}' holds more "
                   "than 500,000 tensors")


def test_a_megabyte_dcp_key_is_refused(folder):
    md = metadata(folder)
    long_key = "k" * 2**20
    md.state_dict_metadata[long_key] = md.state_dict_metadata.pop("param_groups.0.lr")
    md.planner_data[long_key] = (long_key,)
    del md.planner_data["param_groups.0.lr"]
    rename_index(md, "param_groups.0.lr", new_fqn=long_key)
    write_metadata(folder, md)
    r = run("inspect", folder)
    # refused by the scan of the metadata pickle, before it is unpickled
    assert_refused(r, "string", what=f"{folder}/.metadata holds a string of 1,048,576 bytes")


# ------------------------------------------------------ DCP folders never read outside


@pytest.fixture
def secret(tmp_path) -> Path:
    s = tmp_path / "secret.bin"
    s.write_bytes(b"outside data " * 100)
    return s


def test_a_rank_file_linked_outside_is_refused(folder, secret, tmp_path):
    shard = next(folder.glob("*.distcp"))
    secret.write_bytes(shard.read_bytes())  # even a valid copy outside is not read
    shard.unlink()
    shard.symlink_to(secret)
    for args in (("inspect", folder), ("convert", folder, tmp_path / "out.pt")):
        r = run_bounded(*args)
        assert r.returncode == 2 and not r.timed_out, r.stderr
        assert r.stderr.splitlines()[0] == (f"Error: {shard} is a link to {secret}, outside "
                                             "the checkpoint folder; refused")
    assert not (tmp_path / "out.pt").exists()


def test_metadata_linked_outside_is_refused(folder, secret, tmp_path):
    meta = folder / ".metadata"
    secret.write_bytes(meta.read_bytes())
    meta.unlink()
    meta.symlink_to(secret)
    r = run("inspect", folder)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[0] == (f"Error: {meta} is a link to {secret}, outside the "
                                        "checkpoint folder; refused")


def test_a_link_inside_the_folder_is_followed(folder):
    """Links that stay inside (a deduplicating copy tool) are fine."""
    shard = next(folder.glob("*.distcp"))
    real = folder / "real.data"
    shard.rename(real)
    shard.symlink_to(real.name)
    r = run("inspect", folder, "--json")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", ["../secret.bin", "..", "/etc/passwd"])
def test_metadata_naming_a_file_outside_is_refused(folder, name):
    md = metadata(folder)
    for info in md.storage_data.values():
        info.relative_path = name
    write_metadata(folder, md)
    r = run("inspect", folder)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[0] == (f"Error: {folder}/.metadata names a bad data file: "
                                        f"{name!r}")


def test_a_folder_given_through_a_link_is_read(folder, tmp_path):
    """The user's own path may be a link; what matters is the folder's contents."""
    link = tmp_path / "link"
    link.symlink_to(folder)
    r = run("inspect", link, "--no-stats")
    assert r.returncode == 0, r.stderr


def _one_entry(value: bytes) -> bytes:
    """{'state': {0: {'exp_avg': VALUE}}, 'param_groups': [{'params': [0], 'lr': 0.1}]}"""
    return (b"\x80\x02}(" + _uni("state") + b"}(K\x00}(" + _uni("exp_avg") + value + b"uu"
            + _uni("param_groups") + b"](}(" + _uni("params") + b"](K\x00e" + _uni("lr")
            + b"G" + struct.pack(">d", 0.1) + b"ueu.")


@pytest.mark.parametrize("ctor", [b"torch\nFloatTensor\n", b"torch\nTensor\n"])
def test_a_tensor_built_from_a_size_is_refused(tmp_path, ctor):
    """The safe unpickler allows the legacy constructors: ``torch.FloatTensor(2**30)`` in a
    580-byte file was a 4 GiB tensor that inspect read for 7 s (and set would copy). A
    tensor's data must come from the file: storages larger than the file are refused."""
    p = zip_checkpoint(tmp_path / "ctor.pt",
                       _one_entry(b"c" + ctor + b"J" + struct.pack("<i", 2**26) + b"\x85R"))
    r = run("inspect", p)
    assert r.returncode == 2 and not r.timed_out, r.stderr
    assert r.stderr.startswith(f"Error: {p} holds tensors of 256.0 MiB, more than the file's "
                               f"{p.stat().st_size} bytes"), r.stderr
    assert "Traceback" not in r.stderr


def test_a_bytearray_built_from_a_size_is_refused_before_unpickling(tmp_path):
    """``bytearray(2**30)`` (allowed by torch's safe unpickler) fills a GiB from 20 bytes
    of pickle: inspect of such a 580-byte file grew to 8.6 GB and ran for minutes."""
    p = zip_checkpoint(tmp_path / "bytearray.pt",
                       _one_entry(b"cbuiltins\nbytearray\nJ" + struct.pack("<i", 2**30)
                                  + b"\x85R"))
    r = run("inspect", p)
    assert r.returncode == 2 and not r.timed_out, r.stderr
    assert r.stderr.startswith(f"Error: {p} calls builtins.bytearray, which builds data from "
                               "a size"), r.stderr


def test_an_allocation_torch_cannot_make_is_one_clear_line(tmp_path):
    """``torch.FloatTensor(2**30)`` under the 1 GiB cap fails inside torch's allocator
    (before the storage check can see it): the line said 'cannot read ... [enforce fail at
    alloc_cpu.cpp:127] err == 0'."""
    p = zip_checkpoint(tmp_path / "ctor4g.pt", _one_entry(
        b"ctorch\nFloatTensor\nJ" + struct.pack("<i", 2**30) + b"\x85R"))
    r = run("inspect", p)
    assert r.returncode == 2 and not r.timed_out, r.stderr
    assert r.stderr.splitlines()[0] == (f"Error: {p} needs more memory than this machine has "
                                        "to load"), r.stderr
