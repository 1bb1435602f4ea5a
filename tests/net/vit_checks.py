"""Shared by the ViT-like families' tests (vit, rope_vit): the tiny config they build and its inputs."""

from typing import Any

import torch

TINY: dict[str, Any] = {
    "patch_size": 8,
    "num_layers": 3,
    "num_heads": 2,
    "hidden_dim": 32,
    "mlp_dim": 64,
    "drop_path_rate": 0.0,
}
SIZE = (32, 48)  # 4 x 6 patches
GRID = (4, 6)


def image(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
