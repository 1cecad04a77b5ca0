"""An exponential moving average of the weights (``optim.ema``), the model that is validated and
saved when it is on.

Small batches (8 on a CPU) make each step's weights noisy; averaging them over the last
~1 / (1 - decay) steps removes that noise at no cost to the step, which is why diffusion and
detection codebases validate and ship the average. (It does not stop the drift of a continued
shipped model, bench/results/shape-learning.md (s): that drift is a pull, not only noise.)

Built on :class:`torch.optim.swa_utils.AveragedModel`, with a constant decay and no warm-up: a run
that continues a trained model (every CPU recipe in configs/demo) wants its starting weights in the
average, and a run from scratch keeps ``decay ** steps`` of them (0.99 over 500 steps: 0.7 %).
Buffers (batch-norm statistics) are averaged too; integer buffers follow the model.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

__all__ = ["WeightAverage"]


class WeightAverage:
    """The moving average of ``model``'s parameters and buffers with ``decay`` (0 < decay < 1)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.requires_grad_(False)
        # AveragedModel copies the model's weights at its first update; they are equal already, so
        # its count starts at the initial weights (updates = n_averaged - 1)
        self.averaged.n_averaged.fill_(1)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model (the model's class and config, for validation and saving)."""
        return self.averaged.module

    @torch.no_grad()
    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n) -> None:
        # torch's get_ema_multi_avg_fn, except for integer buffers: it would blend batch-norm's
        # num_batches_tracked and truncate the result, so the average's count would lag the model's
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        else:  # counters follow the model
            torch._foreach_copy_(averaged, current)

    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's weights after an optimiser step into the average."""
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict:
        """The averaged weights (``module.*``) and ``n_averaged``, the initial weights and the updates."""
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state, strict=True)
