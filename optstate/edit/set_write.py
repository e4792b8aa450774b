"""``set``, writing: save the changed objects atomically, and before anything is replaced
prove from the re-loaded copy that only the planned paths differ from the input
(``numeric.trees.compare_trees``). A folder (Hugging Face Trainer / accelerate) is copied
whole, or its two files rewritten in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.base.paths import follow
from optstate.edit.set_plan import Change, SetResult
from optstate.io.remote import display
from optstate.io.source import Source
from optstate.io.torch_file import atomic_write, load_torch_file
from optstate.numeric.leaves import same_leaf
from optstate.numeric.trees import compare_trees
from optstate.state.locate import Located


def write_file(obj: Any, src: Path, target: Path, changes: list[Change], label: str, *,
               force: bool, legacy: bool, unsafe: bool, result: SetResult,
               version: str | None = None) -> None:
    """Save ``obj`` atomically to ``target`` after proving the temp file differs from
    ``src`` only where ``changes`` say. ``version``: the ETag a URL ``src`` was read at;
    rewriting it in place, a replaced object is neither compared nor overwritten (one
    "changed while being edited" line)."""
    expected = {c.path: c.new for c in changes if c.file == label}

    def verify(tmp: Path) -> None:
        result.verified[str(target)] = _verify_against(src, tmp, expected, unsafe, version)

    from optstate.io.atomic import saved_size, torch_save

    def write(f: Any) -> None:
        torch_save(obj, f, _use_new_zipfile_serialization=not legacy)

    try:
        atomic_write(target, write, force=force, verify=verify, notes=result.notes,
                     needed=lambda: saved_size(obj, _use_new_zipfile_serialization=not legacy),
                     kind="torch", if_match=version)
    except OSError as e:
        raise CheckpointError(f"cannot write {target}: {e.strerror or e}") from None
    result.outputs.append(display(target))


def _verify_against(src: Path, tmp: Path, expected: dict[str, Any], unsafe: bool,
                    version: str | None = None) -> int:
    try:
        written = load_torch_file(tmp, mmap=True, unsafe=unsafe).obj
    except CheckpointError as e:
        raise CheckpointError(f"refusing to write: the new file does not load back ({e})"
                              ) from None
    if isinstance(src, Path):
        original = load_torch_file(src, mmap=True, unsafe=unsafe).obj
    else:  # a URL: read again by range requests (the first read's tree was changed)
        from optstate.io.remote_write import check_version
        from optstate.io.source import open_source

        check_version(src, version)  # the same object as read, or "changed while edited"
        original = open_source(src, unsafe=unsafe).obj
    compared = compare_trees(original, written)
    diffs, count = compared.paths, compared.leaves
    unexpected = sorted(d for d in diffs if not any(_under(d, p) for p in expected))
    missing = sorted(p for p in expected if not any(_under(d, p) for d in diffs))
    if unexpected or missing:
        if not isinstance(src, Path):  # replaced between that check and the re-read?
            from optstate.io.remote_write import check_version

            check_version(src, version)
        raise CheckpointError(
            "refusing to write: the new file would differ from the input at "
            f"{', '.join(unexpected) or '(nothing)'} and not at {', '.join(missing) or '-'}; "
            "this is a bug in optstate",
        )
    for p, value in expected.items():
        got = follow(written, p)
        if not same_leaf(got, value):
            raise CheckpointError(f"refusing to write: {p} reads back as {got!r}, "
                                  f"not {value!r}")
    return count


def _under(path: str, parent: str) -> bool:
    """``betas[1]`` is under ``betas``: tuples are compared item by item."""
    return path == parent or path.startswith((parent + "[", parent + "."))


def write_folder(source: Source, target: Path, changes: list[Change], located: Located, *,
                 in_place: bool, force: bool, unsafe: bool, result: SetResult,
                 versions: dict[str, str] | None = None) -> None:
    """Folders (Hugging Face Trainer / accelerate): rewrite the optimizer file and, if its
    values changed, the scheduler file. ``-o DIR`` first copies the whole folder (model
    weights included, so the copy is a complete checkpoint); ``--in-place`` rewrites the
    two files inside the input folder, each atomically (``versions``: a URL folder's
    objects' ETags as read, by URL: see ``write_file``)."""
    sched_file = source.sibling_files.get("scheduler")
    files: list[tuple[Path, Any]] = [(source.file, source.obj)]
    if sched_file is not None and any(c.file == sched_file.name for c in changes):
        files.append((sched_file, source.siblings["scheduler"]))
    if in_place:
        for f, obj in files:
            write_file(obj, f, f, changes, f.name, force=True, legacy=source.format ==
                       "legacy", unsafe=unsafe, result=result,
                       version=(versions or {}).get(str(f)))
        return
    from optstate.io.atomic import staged

    def needed() -> int:
        return sum(p.stat().st_size for p in source.path.rglob("*") if p.is_file())

    # --force replaces only a folder that is a checkpoint of this kind (holds the file
    # named like the input's optimizer file), never a folder of someone's other files
    with staged(target, force=force, folder=True, kind=source.file.name, notes=result.notes,
                needed=needed) as tmp:
        shutil.copytree(source.path, tmp.path, symlinks=True, dirs_exist_ok=True)
        for f, obj in files:
            write_file(obj, f, tmp.path / f.name, changes, f.name, force=True,
                       legacy=source.format == "legacy", unsafe=unsafe, result=result)
    result.outputs = [str(target / f.name) for f, _ in files]
    result.verified = {str(target / Path(k).name): v for k, v in result.verified.items()}
    result.notes.append(f"copied the folder {source.path} to {target} and rewrote "
                        f"{', '.join(f.name for f, _ in files)}")
