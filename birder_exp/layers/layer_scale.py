from typing import Optional

import torch
from torch import nn


class LayerScale(nn.Module):
    """Per-channel scale for channels-last or token tensors."""

    def __init__(self, dim: int, init_value: float, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.gamma) if self.inplace is True else x * self.gamma


class LayerScale2d(nn.Module):
    """Per-channel scale for NCHW tensors."""

    def __init__(self, dim: int, init_value: float, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_value * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.gamma) if self.inplace is True else x * self.gamma


def layer_scale_or_identity(dim: int, init_value: Optional[float]) -> nn.Module:
    """A ``LayerScale`` when an initial value is given, else the identity (blocks where layer scale is optional)."""

    if init_value is None:
        return nn.Identity()

    return LayerScale(dim, init_value)
