"""One word for a 0-d shape in every view: "scalar" (``sim.config.format_shape``, the
inverse of ``--shape scalar``), as the README's tables show it (issue #17)."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from optstate.analysis.inspect import inspect_path
from optstate.render.diff_view import _changes_table
from optstate.render.inspect_view import structure_table
from optstate.render.simulate_view import state_per_param


def _text(renderable) -> str:
    console = Console(file=io.StringIO(), width=100, highlight=False)
    console.print(renderable)
    return console.file.getvalue()


def _adam_state(step: torch.Tensor) -> dict:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["step"] = step
    return sd


def test_inspect_writes_a_0d_tensor_as_scalar_with_or_without_its_value(tmp_path):
    # a meta tensor's value cannot be read: its row has a shape, not a value ("0-d" before)
    for step in (torch.tensor(1.0), torch.empty((), device="meta")):
        path = tmp_path / f"{step.device.type}.pt"
        torch.save(_adam_state(step), path)
        rows = [line.split() for line in _text(structure_table(inspect_path(path))).splitlines()]
        step_row = next(r for r in rows if "step" in r)
        assert step_row[step_row.index("step") + 1] == "scalar", rows
        assert not any("0-d" in r for r in rows)


def test_diff_and_simulate_views_write_a_0d_shape_as_scalar():
    change = {"path": "state.0.step", "kind": "dtype", "metrics": None,
              "before": {"shape": [], "dtype": "float32"},
              "after": {"shape": [], "dtype": "int64"}}
    text = _text(_changes_table([change]))
    assert "scalar float32" in text and "scalar int64" in text, text
    params = [{"position": 0, "name": "w", "group": 0, "shape": [], "values": 1.0,
               "state": {"momentum_buffer": {"shape": [], "values": 0.5}}}]
    text = _text(state_per_param(params))
    assert text.count("scalar") == 2, text
