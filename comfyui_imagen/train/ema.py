"""Exponential moving average of a model's weights (the weights that ship)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used after `step` optimiser steps: min(decay, (1 + step) / (10 + step)), so the average forgets
    its random initialisation quickly in short runs (the warm-up of TensorFlow's ExponentialMovingAverage with
    num_updates)."""
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """Keeps `shadow`, a frozen copy of `model` whose floating-point tensors follow
    shadow = d * shadow + (1 - d) * model after each `update(step)`; integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay)
        live = model.state_dict()
        for name, value in self.shadow.state_dict().items():
            if value.is_floating_point():
                value.lerp_(live[name].to(value.dtype), 1.0 - d)
            else:
                value.copy_(live[name])

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state)
