"""GhostNet v2 ("GhostNetV2: Enhance Cheap Operation with Long-Range Attention", https://arxiv.org/abs/2211.12905),
as Birder lays it out.

The layout is v1's (``GhostNetBase``); from the third block on the expansion is a ghost module gated by DFC
attention: a half-resolution branch of full conv, then 1x5 and 5x1 depthwise convs, whose sigmoid is upsampled
(nearest) and multiplies the ghost output.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from birder_exp.net.ghostnet_v1 import GhostModule
from birder_exp.net.ghostnet_v1 import GhostNetBase
from birder_exp.net.ghostnet_v1 import same_padding


def _depthwise_bn(channels: int, kernel_size: tuple[int, int]) -> tuple[nn.Module, nn.Module]:
    conv = nn.Conv2d(
        channels,
        channels,
        kernel_size=kernel_size,
        stride=(1, 1),
        padding=same_padding(kernel_size),
        groups=channels,
        bias=False,
    )
    return (conv, nn.BatchNorm2d(channels))


class GhostModule_v2(GhostModule):
    """v1's ghost module gated by DFC attention (Birder's parameter names and order)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        ratio: int,
        dw_size: tuple[int, int],
        use_act: bool,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, ratio, dw_size, use_act)
        self.gate_fn = nn.Sigmoid()
        self.avg_pool = nn.AvgPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))
        self.short_conv = nn.Sequential(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=same_padding(kernel_size),
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            *_depthwise_bn(out_channels, (1, 5)),
            *_depthwise_bn(out_channels, (5, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.gate_fn(self.short_conv(self.avg_pool(x)))
        x1 = self.primary_conv(x)
        out = torch.concat([x1, self.cheap_operation(x1)], dim=1)
        gate = F.interpolate(attention, size=(out.shape[-2], out.shape[-1]), mode="nearest")
        return out[:, : self.out_channels, :, :] * gate


class GhostNet_v2(GhostNetBase):
    def make_ghost1(self, index: int, in_channels: int, mid_channels: int) -> Optional[nn.Module]:
        if index < 2:
            return None  # The first two blocks keep v1's ghost module, as in Birder

        return GhostModule_v2(
            in_channels, mid_channels, kernel_size=(1, 1), stride=(1, 1), ratio=2, dw_size=(3, 3), use_act=True
        )
