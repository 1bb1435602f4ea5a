"""Fourier position encoding (XCiT, https://arxiv.org/abs/2106.09681; reused by EdgeNeXt).

Sines and cosines of the normalised row / column index, projected to the model width by a 1x1 convolution; it is
computed for whatever grid it is asked for, so the networks using it take any input size.
"""

import math

import torch
from torch import nn


class PositionalEncodingFourier(nn.Module):
    """(B, H, W) -> (B, dim, H, W) position encoding."""

    def __init__(self, hidden_dim: int, dim: int, temperature: int = 10000) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.scale = 2 * math.pi
        self.temperature = temperature
        self.hidden_dim = hidden_dim

    def forward(self, B: int, H: int, W: int) -> torch.Tensor:
        device = self.token_projection.weight.device
        ones = torch.ones(B, H, W, device=device)
        y_embed = ones.cumsum(dim=1, dtype=torch.float32)
        x_embed = ones.cumsum(dim=2, dtype=torch.float32)
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.hidden_dim, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.hidden_dim)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos = torch.concat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

        return self.token_projection(pos.to(self.token_projection.weight.dtype))  # type: ignore[no-any-return]
