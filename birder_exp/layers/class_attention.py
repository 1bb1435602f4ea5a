"""Class attention (CaiT, https://arxiv.org/abs/2103.17239): only the class token queries the sequence.

CaiT and XCiT both end with class-attention blocks built on this layer (their blocks differ, the layer does not).
"""

import torch
import torch.nn.functional as F
from torch import nn


class ClassAttention(nn.Module):
    """Attention of the first token over all tokens; returns the updated class token, (B, 1, C)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, proj_drop: float) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"ClassAttention: dim ({dim}) must be divisible by num_heads ({num_heads})")

        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.size()
        head_dim = C // self.num_heads
        q = self.q(x[:, 0]).reshape(B, 1, self.num_heads, head_dim).transpose(1, 2)
        k = self.k(x).reshape(B, N, self.num_heads, head_dim).transpose(1, 2)
        v = self.v(x).reshape(B, N, self.num_heads, head_dim).transpose(1, 2)
        x_cls = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        x_cls = x_cls.transpose(1, 2).reshape(B, 1, C)

        return self.proj_drop(self.proj(x_cls))
