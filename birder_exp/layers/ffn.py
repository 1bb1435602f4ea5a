from collections.abc import Callable
from typing import Optional

import torch
from torch import nn
from torchvision.ops import MLP


class FFN(MLP):
    """Two-layer MLP (torchvision's), keyed ``0`` / ``3`` in the state_dict as in Birder."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            in_features,
            [hidden_features, in_features],
            activation_layer=act_layer,
            inplace=None,
            bias=bias,
            dropout=dropout,
        )


class SwiGLU_FFN(nn.Module):
    """Gated FFN from "GLU Variants Improve Transformer" (https://arxiv.org/abs/2002.05202)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[..., nn.Module] = nn.SiLU,
        bias: bool = True,
        dropout: float = 0.0,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(in_features, hidden_features, bias=bias)
        self.fc1_x = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(dropout)
        self.norm = norm_layer(hidden_features, eps=norm_eps) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)
        self.drop2 = nn.Dropout(dropout)

        if self.fc1_g.bias is not None:
            nn.init.normal_(self.fc1_g.weight, std=1e-6)
            nn.init.ones_(self.fc1_g.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1_g(x)) * self.fc1_x(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        return self.drop2(x)  # type: ignore[no-any-return]
