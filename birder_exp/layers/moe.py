"""Mixture-of-experts FFNs shared by the ViT-like families."""

from collections.abc import Callable

import torch
from torch import nn

from birder_exp.layers.ffn import FFN


class SoftMoE_FFN(nn.Module):
    """Soft MoE FFN ("From Sparse to Soft Mixtures of Experts", https://arxiv.org/abs/2308.00951).

    Every slot is a softmax-weighted mix of all tokens, every token a softmax-weighted mix of all slot outputs,
    so routing is dense and differentiable (no token dropping, no auxiliary loss).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        bias: bool = True,
        dropout: float = 0.0,
        num_experts: int = 4,
        num_slots: int = 1,
        normalize: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.slot_embeds = nn.Parameter(torch.empty(num_experts, num_slots, in_features).normal_(std=0.02))
        self.experts = nn.ModuleList(
            [
                FFN(in_features, hidden_features, act_layer=act_layer, bias=bias, dropout=dropout)
                for _ in range(num_experts)
            ]
        )
        self.token_norm: nn.Module
        self.slot_norm: nn.Module
        if normalize is True:
            self.token_norm = nn.RMSNorm(in_features, eps=norm_eps)
            self.slot_norm = nn.RMSNorm(in_features, eps=norm_eps)
        else:
            self.token_norm = nn.Identity()
            self.slot_norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Routing logits: (B, N, E, S)
        logits = torch.einsum("bnd,esd->bnes", self.token_norm(x), self.slot_norm(self.slot_embeds))
        B, N, E, S = logits.size()

        # Dispatch normalises over tokens, combine over all (expert, slot) pairs
        dispatch = logits.softmax(dim=1)
        combine = logits.reshape(B, N, E * S).softmax(dim=-1).reshape(B, N, E, S)

        slots = torch.einsum("bnd,bnes->besd", x, dispatch)
        outputs = torch.stack([expert(slots[:, idx]) for idx, expert in enumerate(self.experts)], dim=1)
        return torch.einsum("besd,bnes->bnd", outputs, combine)
