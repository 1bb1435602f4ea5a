"""Applying masks to feature maps and token sequences (the MIM side of the encoders)."""

from typing import Optional

import torch


def mask_tensor(
    x: torch.Tensor,
    mask: torch.Tensor,
    channels_last: bool = False,
    patch_factor: int = 1,
    mask_token: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Zero (or replace with ``mask_token``) the masked cells of a feature map; ``mask`` is (B, H*W / f^2)."""

    if channels_last is False:
        x = x.permute(0, 2, 3, 1)

    B, H, W, _ = x.size()
    shaped_mask = mask.reshape(B, H // patch_factor, W // patch_factor)
    shaped_mask = shaped_mask.repeat_interleave(patch_factor, dim=1).repeat_interleave(patch_factor, dim=2)
    shaped_mask = shaped_mask.unsqueeze(3).type_as(x)
    if mask_token is not None:
        x_masked = x * (1.0 - shaped_mask) + mask_token.expand(B, H, W, -1) * shaped_mask
    else:
        x_masked = x * (1.0 - shaped_mask)

    if channels_last is False:
        x_masked = x_masked.permute(0, 3, 1, 2)

    return x_masked


def mask_tokens(x: torch.Tensor, mask: torch.Tensor, mask_token: Optional[torch.Tensor] = None) -> torch.Tensor:
    shaped_mask = mask.unsqueeze(-1).type_as(x)
    if mask_token is not None:
        return x * (1.0 - shaped_mask) + mask_token.reshape(1, 1, -1).expand_as(x) * shaped_mask

    return x * (1.0 - shaped_mask)


def get_ids_keep(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the kept (0) positions of a (B, L) mask, same count per row."""

    return torch.nonzero(mask == 0, as_tuple=False)[:, 1].reshape(mask.size(0), -1)


def mask_from_indices(indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """A (B, L) mask that is 1 at the given indices and 0 elsewhere."""

    mask = torch.zeros(indices.size(0), seq_len, device=indices.device)
    mask.scatter_(1, indices, 1.0)
    return mask
