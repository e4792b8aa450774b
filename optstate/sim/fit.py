"""Does a saved optimizer state fit the optimizer a config builds: its param groups and
the parameters in each, compared the way ``load_state_dict`` compares them (groups in
order, by parameter count only). ``check`` words the answer as findings, ``simulate
--resume`` as errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optstate.state.view import OptimizerStateView


@dataclass
class GroupFit:
    """Parameters per param group: in the saved state and in the built optimizer."""

    checkpoint: list[int]
    config: list[int]

    @property
    def count_differs(self) -> bool:
        """The number of groups differs: load_state_dict refuses the state."""
        return len(self.checkpoint) != len(self.config)

    @property
    def sizes_differ(self) -> list[int]:
        """The groups whose parameter counts differ (none when the group counts do)."""
        if self.count_differs:
            return []
        return [gi for gi, (a, b) in enumerate(zip(self.checkpoint, self.config, strict=True))
                if a != b]


def group_fit(view: OptimizerStateView, optimizer: torch.optim.Optimizer) -> GroupFit:
    """How the state's groups line up with ``optimizer``'s."""
    return GroupFit([len(g.param_keys) for g in view.groups],
                    [len(g["params"]) for g in optimizer.param_groups])
