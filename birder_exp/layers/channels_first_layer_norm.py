"""Birder's hand-written channels-first LayerNorm (HorNet, Conv2Former, ...).

Unlike ``LayerNorm2d`` it keeps ``eps`` as a persistent tensor buffer, so Birder's checkpoints carry an ``.eps``
entry per norm; the buffer is kept to load them strictly, and its stored value is what the norm uses.
"""

import torch
from torch import nn


class ChannelsFirstLayerNorm(nn.Module):
    """Normalise an NCHW tensor over its channel axis (biased variance), then scale and shift per channel."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = nn.Buffer(torch.tensor(eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(1, keepdim=True)
        var = centred.pow(2).mean(1, keepdim=True)
        x = centred / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
