"""Index tables for LeViT-style attention biases (one learned bias per head and absolute grid offset)."""

from typing import Optional

import torch


def relative_position_index(
    resolution: tuple[int, int], device: Optional[torch.device] = None, query_step: int = 1
) -> torch.Tensor:
    """(queries, keys) table of |dy| * width + |dx| over a flattened (H, W) grid.

    With ``query_step`` 2 the queries sit on every other row and column (a stride-2 attention downsampling), the
    keys on the full grid.
    """

    def grid(step: int) -> torch.Tensor:
        rows = torch.arange(0, resolution[0], step=step, device=device)
        cols = torch.arange(0, resolution[1], step=step, device=device)
        return torch.stack(torch.meshgrid(rows, cols, indexing="ij")).flatten(1)

    k_pos = grid(1)
    q_pos = k_pos if query_step == 1 else grid(query_step)
    rel_pos = (q_pos[..., :, None] - k_pos[..., None, :]).abs()
    return (rel_pos[0] * resolution[1]) + rel_pos[1]
