"""The inverted residual block (MobileNet v2, https://arxiv.org/abs/1801.04381) in the form Birder's MobileNet v2 /
v3, MNASNet and EfficientNet (MBConv) families share.

Layers live in ``block`` (state_dict keys ``block.<i>.<0 conv|1 norm>...``): a 1x1 expansion, left out when the
expanded width equals the input width; a depthwise kxk; an optional squeeze-and-excitation; a linear 1x1
projection. The residual (through stochastic depth, a no-op at rate 0) is added only where the caller asks.
"""

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import StochasticDepth


class InvertedResidual(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expanded_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        activation_layer: Callable[..., nn.Module],
        shortcut: bool,
        se: Optional[nn.Module] = None,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
        stochastic_depth_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.shortcut = shortcut

        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(
                Conv2dNormActivation(
                    in_channels,
                    expanded_channels,
                    kernel_size=(1, 1),
                    stride=(1, 1),
                    padding=(0, 0),
                    bias=False,
                    norm_layer=norm_layer,
                    activation_layer=activation_layer,
                )
            )

        layers.append(
            Conv2dNormActivation(
                expanded_channels,
                expanded_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                groups=expanded_channels,
                bias=False,
                norm_layer=norm_layer,
                activation_layer=activation_layer,
            )
        )
        if se is not None:
            layers.append(se)

        layers.append(
            Conv2dNormActivation(
                expanded_channels,
                out_channels,
                kernel_size=(1, 1),
                stride=(1, 1),
                padding=(0, 0),
                bias=False,
                norm_layer=norm_layer,
                activation_layer=None,
            )
        )
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch: torch.Tensor = self.block(x)
        if self.shortcut is True:
            return x + self.stochastic_depth(branch)

        return branch


def same_padding(kernel_size: tuple[int, int]) -> tuple[int, int]:
    """The padding that keeps an odd kernel's output aligned with its input."""

    return ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
