"""ConvNeXt v2 ("ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
https://arxiv.org/abs/2301.00808): the v1 skeleton with Global Response Normalization in place of layer scale.
"""

from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.net.convnext_v1 import ConvNeXtNet
from birder_exp.net.convnext_v1 import inverted_bottleneck


class GRN(nn.Module):
    """Global Response Normalization over a channels-last (B, H, W, C) tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        # gamma * (x * nx) + beta + x, as one pass over x: x * (1 + gamma * nx) + beta
        return torch.addcmul(self.beta, x, self.gamma * nx + 1.0)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LayerNorm -> Linear -> GELU -> GRN -> Linear, plain residual."""

    def __init__(self, channels: int, stochastic_depth_prob: float) -> None:
        super().__init__()
        self.block = inverted_bottleneck(channels, hidden_norm=GRN)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stochastic_depth(self.block(x)) + x


class ConvNeXt_v2(ConvNeXtNet):
    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        # The paper's head init: a near-zero classifier at the start of fine-tuning
        if isinstance(self.classifier, nn.Linear):
            self.classifier.weight.data.mul_(0.001)
            if self.classifier.bias is not None:
                self.classifier.bias.data.mul_(0.001)

    @classmethod
    def make_block(cls, channels: int, stochastic_depth_prob: float) -> nn.Module:
        return ConvNeXtBlock(channels, stochastic_depth_prob)
