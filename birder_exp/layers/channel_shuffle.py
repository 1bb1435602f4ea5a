"""Channel shuffle (ShuffleNet, https://arxiv.org/abs/1707.01083): interleave the channels of ``groups`` groups so
the next grouped (or split) operation mixes information across them."""

import torch


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, g * c, H, W) viewed as (B, g, c, H, W), transposed to (B, c, g, H, W), flattened back."""

    batch_size, num_channels, height, width = x.size()
    x = x.view(batch_size, groups, num_channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch_size, -1, height, width)
