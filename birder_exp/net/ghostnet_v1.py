"""GhostNet ("GhostNet: More Features from Cheap Operations", https://arxiv.org/abs/1911.11907), as Birder lays it
out.

A ghost module makes half its output channels with an ordinary convolution and the other half from those with a
cheap depthwise 3x3. ``GhostNetBase`` holds the layout v1 and v2 share (Birder's stage split at every stride, with a
``stage0`` that detection features skip, and the 1x1 conv closing the last stage); v2 swaps in its attention ghost
module for the expansion of most blocks.
"""

import math
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import SqueezeExcitation

from birder_exp.net.base import make_divisible
from birder_exp.net.staged_convnet import StagedConvNet
from birder_exp.net.staged_convnet import split_at_strides

# Kernel, expansion width, output width, SE ratio, stride (widths before the width multiplier)
BLOCK_SETTINGS: tuple[tuple[int, int, int, float, int], ...] = (
    (3, 16, 16, 0, 1),
    (3, 48, 24, 0, 2),
    (3, 72, 24, 0, 1),
    (5, 72, 40, 0.25, 2),
    (5, 120, 40, 0.25, 1),
    (3, 240, 80, 0, 2),
    (3, 200, 80, 0, 1),
    (3, 184, 80, 0, 1),
    (3, 184, 80, 0, 1),
    (3, 480, 112, 0.25, 1),
    (3, 672, 112, 0.25, 1),
    (5, 672, 160, 0.25, 2),
    (5, 960, 160, 0, 1),
    (5, 960, 160, 0.25, 1),
    (5, 960, 160, 0, 1),
    (5, 960, 160, 0.25, 1),
)


def same_padding(kernel_size: tuple[int, int]) -> tuple[int, int]:
    return ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)


def ghost_convs(
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    ratio: int,
    dw_size: tuple[int, int],
    use_act: bool,
) -> tuple[Conv2dNormActivation, Conv2dNormActivation]:
    """The primary convolution and the cheap depthwise one that together make a ghost module's channels."""

    init_channels = math.ceil(out_channels / ratio)
    activation_layer = nn.ReLU if use_act is True else None
    primary = Conv2dNormActivation(
        in_channels,
        init_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=same_padding(kernel_size),
        bias=False,
        activation_layer=activation_layer,
    )
    cheap = Conv2dNormActivation(
        init_channels,
        init_channels * (ratio - 1),
        kernel_size=dw_size,
        stride=(1, 1),
        padding=same_padding(dw_size),
        groups=init_channels,
        bias=False,
        activation_layer=activation_layer,
    )
    return (primary, cheap)


class GhostModule(nn.Module):
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
        super().__init__()
        self.out_channels = out_channels
        self.primary_conv, self.cheap_operation = ghost_convs(
            in_channels, out_channels, kernel_size, stride, ratio, dw_size, use_act
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        out = torch.concat([x1, self.cheap_operation(x1)], dim=1)
        return out[:, : self.out_channels, :, :]


class GhostBottleneck(nn.Module):
    """Ghost expansion, depthwise conv when strided, optional hard-sigmoid SE, linear ghost projection, plus a
    shortcut (identity, or depthwise + pointwise when the shape changes). ``ghost1`` replaces the expansion."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        dw_kernel_size: tuple[int, int],
        stride: tuple[int, int],
        se_ratio: float,
        ghost1: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        if ghost1 is None:
            ghost1 = GhostModule(
                in_channels, mid_channels, kernel_size=(1, 1), stride=(1, 1), ratio=2, dw_size=(3, 3), use_act=True
            )
        self.ghost1 = ghost1

        padding = same_padding(dw_kernel_size)
        if stride != (1, 1):
            self.conv_dw: nn.Module = nn.Conv2d(
                mid_channels,
                mid_channels,
                kernel_size=dw_kernel_size,
                stride=stride,
                padding=padding,
                groups=mid_channels,
                bias=False,
            )
            self.bn_dw: nn.Module = nn.BatchNorm2d(mid_channels)
        else:
            self.conv_dw = nn.Identity()
            self.bn_dw = nn.Identity()

        if se_ratio > 0:
            squeeze = make_divisible(se_ratio * mid_channels, 4)
            self.se: nn.Module = SqueezeExcitation(mid_channels, squeeze, scale_activation=nn.Hardsigmoid)
        else:
            self.se = nn.Identity()

        self.ghost2 = GhostModule(
            mid_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), ratio=2, dw_size=(3, 3), use_act=False
        )
        if in_channels == out_channels and stride == (1, 1):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_channels,
                    in_channels,
                    kernel_size=dw_kernel_size,
                    stride=stride,
                    padding=padding,
                    groups=in_channels,
                    bias=False,
                ),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost2(self.se(self.bn_dw(self.conv_dw(self.ghost1(x)))))
        out += self.shortcut(x)
        return out  # type: ignore[no-any-return]


def finish_ghost_layout(
    net: Any,
    blocks: list[tuple[nn.Module, tuple[int, int], int]],
    prev_channels: int,
    last_channels: int,
    stem_channels: int,
) -> None:
    """The part GhostNet and RepGhost share after their bottlenecks: the final 1x1 conv, the stride-split stages and
    the 1280-wide pooled head (module order as Birder registers it)."""

    final_conv = Conv2dNormActivation(prev_channels, last_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
    blocks.append((final_conv, (1, 1), last_channels))
    net.body, stage_channels = split_at_strides(blocks, stem_channels)

    embedding_size = 1280
    net.features = nn.Sequential(
        nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        nn.Conv2d(last_channels, embedding_size, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0)),
        nn.ReLU(inplace=True),
        nn.Flatten(1),
        nn.Dropout(p=0.2),
    )
    net.return_channels = stage_channels[1:5]
    net.embedding_size = embedding_size
    net.classifier = net.create_classifier()

    net.max_stride = 32
    net.stem_stride = 2
    net.stem_width = stem_channels
    net.feature_dim = last_channels


class GhostNetBase(StagedConvNet):
    """Stem, the sixteen ghost bottlenecks split into stages at each stride, 1x1 conv, and Birder's head (pool,
    1x1 conv to 1280, ReLU, dropout). Subclasses pick each block's expansion module (``make_ghost1``)."""

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        width: float = self.require_config("width")["width"]
        if not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"{type(self).__name__}: width must be a positive multiplier, got width={width!r}")

        stem_channels = make_divisible(16 * width, 4)
        self.stem = Conv2dNormActivation(
            self.input_channels, stem_channels, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False
        )

        blocks: list[tuple[nn.Module, tuple[int, int], int]] = []
        prev_channels = stem_channels
        for idx, (k, expansion, c, se_ratio, s) in enumerate(BLOCK_SETTINGS):
            out_channels = make_divisible(c * width, 4)
            mid_channels = make_divisible(expansion * width, 4)
            block = GhostBottleneck(
                prev_channels,
                mid_channels,
                out_channels,
                (k, k),
                (s, s),
                se_ratio=se_ratio,
                ghost1=self.make_ghost1(idx, prev_channels, mid_channels),
            )
            blocks.append((block, (s, s), out_channels))
            prev_channels = out_channels

        finish_ghost_layout(
            self, blocks, prev_channels, make_divisible(BLOCK_SETTINGS[-1][1] * width, 4), stem_channels
        )

    def make_ghost1(self, index: int, in_channels: int, mid_channels: int) -> Optional[nn.Module]:
        """The expansion module of block ``index``; None keeps the plain ghost module."""

        return None


class GhostNet_v1(GhostNetBase):
    """Every block expands with the plain ghost module."""
