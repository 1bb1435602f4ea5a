"""Patch-token helpers shared by the ViT-like families (ViT, RoPE ViT, Hiera)."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from birder_exp.layers.layer_norm import LayerNorm2d


def adjust_position_embedding(
    pos_embedding: torch.Tensor,
    old_base_size: tuple[int, int],
    new_base_size: tuple[int, int],
    num_prefix_tokens: int,
    interpolation_mode: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resize a (1, prefix + H*W, D) position embedding to a new patch grid, prefix tokens untouched."""

    prefix = pos_embedding[:, :num_prefix_tokens]
    grid = pos_embedding[:, num_prefix_tokens:]
    embed_dim = grid.shape[-1]
    orig_dtype = grid.dtype
    grid = grid.float().reshape(1, old_base_size[0], old_base_size[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_base_size, mode=interpolation_mode, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, embed_dim).to(orig_dtype)

    return torch.concat([prefix, grid], dim=1)


class PatchEmbed(nn.Module):
    """(N, D, H, W) -> (N, H*W, D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, hidden_dim, h, w = x.size()
        return x.reshape(n, hidden_dim, h * w).permute(0, 2, 1)


class hMLPStem(nn.Sequential):
    """Hierarchical MLP image-to-patch stem for 16x16 patches."""

    def __init__(
        self, input_channels: int, hidden_dim: int, norm_layer: Callable[..., nn.Module] = LayerNorm2d
    ) -> None:
        stem_dim = hidden_dim // 4
        super().__init__(
            nn.Conv2d(input_channels, stem_dim, kernel_size=(4, 4), stride=(4, 4), padding=(0, 0)),
            norm_layer(stem_dim),
            nn.GELU(),
            nn.Conv2d(stem_dim, stem_dim, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)),
            norm_layer(stem_dim),
            nn.GELU(),
            nn.Conv2d(stem_dim, hidden_dim, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)),
            norm_layer(hidden_dim),
        )
