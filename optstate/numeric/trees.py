"""The one comparison of two loaded checkpoints, leaf by leaf: how ``set`` and
``convert`` prove that what they wrote holds what they meant to write.

Leaves (tensors, numbers, strings, torch's dtypes ...) are compared with
``numeric.leaves.same_leaf``: tensors bit for bit. Containers are walked:

- ``exact=True`` (``set``: the same torch.save writing the same tree back): dicts, lists
  and tuples must match in type, keys and key order, and length; tensors in strides too.
- ``exact=False`` (``convert``: a copy in another format): a dict may come back as any
  dict with its keys in any order, empty containers may be missing (DCP stores none:
  they are listed in ``dropped``), and tensors may come back contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optstate.base.errors import CheckpointError
from optstate.base.paths import join
from optstate.numeric.leaves import is_tensor, same_leaf


@dataclass
class Difference:
    """Where two trees differ (``""``: at the top level) and how, in words."""

    path: str
    what: str


@dataclass
class TreeComparison:
    differences: list[Difference] = field(default_factory=list)  # in walking order
    leaves: int = 0  # leaves compared (tensors included)
    tensors: int = 0  # tensors compared
    dropped: list[str] = field(default_factory=list)  # empty containers absent (exact=False)

    @property
    def paths(self) -> list[str]:
        """The paths that differ, ``(top level)`` for the top."""
        return [d.path or "(top level)" for d in self.differences]


def compare_trees(a: Any, b: Any, path: str = "", *, exact: bool = True) -> TreeComparison:
    """Walk ``a`` (the source) and ``b`` (what was written) side by side; see the module
    docstring for ``exact``. Differences are listed, not raised: a walk does not descend
    below a container that differs in type, keys or length."""
    out = TreeComparison()

    def differ(p: str, what: str) -> None:
        out.differences.append(Difference(p, what))

    def leaf(x: Any, y: Any, p: str) -> None:
        out.leaves += 1
        if is_tensor(x):
            out.tensors += 1
            if not is_tensor(y):
                differ(p, f"a tensor became a {type(y).__name__}")
            elif not same_leaf(x, y, strides=exact):
                differ(p, "tensor values, shape or dtype changed")
        elif not same_leaf(x, y, strides=exact):
            differ(p, f"{x!r} became {y!r}")

    def walk(x: Any, y: Any, p: str) -> None:
        if isinstance(x, dict) and (type(x) is type(y) if exact else isinstance(y, dict)):
            if exact and list(x) != list(y):
                differ(p, "the keys differ")
                return
            for k, v in x.items():
                if k not in y:
                    if _is_empty_container(v):
                        out.dropped.append(join(p, k))
                        continue
                    differ(p, f"key {k!r} is missing")
                    return
                walk(v, y[k], join(p, k))
            extra = [k for k in y if k not in x]
            if extra:
                differ(p, f"unexpected key {extra[0]!r}")
        elif isinstance(x, dict) and not exact:
            differ(p, f"a dict became a {type(y).__name__}")
        elif isinstance(x, (list, tuple)) and (type(x) is type(y) or not exact):
            if type(x) is not type(y) or len(x) != len(y):
                differ(p, f"a {type(x).__name__} of {len(x)} became {type(y).__name__} "
                          f"{y!r}"[:200])
                return
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, join(p, i))
        else:
            leaf(x, y, p)

    walk(a, b, path)
    return out


def _is_empty_container(v: Any) -> bool:
    if isinstance(v, (dict, list, tuple)):
        return all(_is_empty_container(x) for x in (v.values() if isinstance(v, dict) else v))
    return False


def verify_copy(a: Any, b: Any) -> tuple[int, list[str]]:
    """Check that ``b`` (a written copy) holds what ``a`` does (``compare_trees``
    with ``exact=False``). Returns the number of tensors compared and the empty
    containers of ``a`` that ``b`` lacks (DCP does not store those); raises
    CheckpointError naming the first real difference."""
    result = compare_trees(a, b, exact=False)
    if result.differences:
        first = result.differences[0]
        raise CheckpointError(
            f"the converted checkpoint differs from the source at {first.path or '(top level)'}"
            f": {first.what}; nothing was written",
            hint="this is a bug in optstate or torch.distributed.checkpoint; please report it",
        )
    return result.tensors, result.dropped
