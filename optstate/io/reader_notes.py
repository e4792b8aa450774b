"""Why the native reader leaves a file to torch, in a user's words (``reader_note``).

A note is the reason only: the human view prints it after "read with torch: ", so it
never says "is read with torch" itself, and it names what the file holds (a quantized
tensor, a tensor subclass), not torch's internal rebuild functions.
"""

from __future__ import annotations

# torch's pickle globals a checkpoint can need that the native reader does not decode,
# by what they rebuild
_WHAT = {
    ("torch._tensor", "_rebuild_from_type_v2"):
        "a tensor subclass (torchao's low-bit state, DTensor...)",
    ("torch._utils", "_rebuild_wrapper_subclass"): "a tensor subclass",
    ("torch._utils", "_rebuild_qtensor"): "a quantized tensor",
    ("torch._utils", "_rebuild_sparse_tensor"): "a sparse tensor",
    ("torch._utils", "_rebuild_nested_tensor"): "a nested tensor",
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): "a tensor on the meta device",
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): "a tensor saved from numpy",
    ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"): "a tensor of another device",
    ("torch._utils", "_rebuild_tensor"): "a tensor in an old layout",
    ("torch.nn.parameter", "Parameter"): "a Parameter in an old layout",
    ("numpy.core.multiarray", "_reconstruct"): "a numpy array",
    ("numpy._core.multiarray", "_reconstruct"): "a numpy array",
    ("numpy.core.multiarray", "scalar"): "a numpy scalar",
    ("numpy._core.multiarray", "scalar"): "a numpy scalar",
    ("numpy", "dtype"): "a numpy value",
}


def needs_global(module: str, name: str) -> str:
    """The note for a pickle that needs ``module.name``, which the native reader does
    not decode."""
    what = _WHAT.get((module, name))
    if what is not None:
        return f"{what}, which the native reader does not decode"
    shown = f"{module}.{name}".replace("__builtin__.", "builtins.")
    if module.startswith("torch.distributed"):
        return f"a distributed object ({shown}), which the native reader does not decode"
    if module.startswith("torch") and name.endswith("Storage"):
        return f"a {name} (an old storage type), which the native reader does not decode"
    if module == "torch":  # a dtype or a type the table does not list
        return f"torch.{name}, which the native reader does not know"
    return f"the file needs {shown}, which the native reader does not decode"
