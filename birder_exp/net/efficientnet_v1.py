"""EfficientNet v1 ("EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
https://arxiv.org/abs/1905.11946), B0-B7 as Birder lays them out: the B0 table of MBConv blocks (SiLU,
squeeze-and-excitation, linearly increasing drop path) scaled in width and depth.

As in Birder, the blocks before the first stride form a ``stage0`` that detection features do not return.
"""

import math
from collections.abc import Callable
from functools import partial
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import SqueezeExcitation

from birder_exp.layers.inverted_residual import InvertedResidual
from birder_exp.layers.inverted_residual import same_padding
from birder_exp.net.base import make_divisible
from birder_exp.net.base import stochastic_depth_rates
from birder_exp.net.staged_convnet import MaskedStagedConvNet
from birder_exp.net.staged_convnet import init_mobile_weights
from birder_exp.net.staged_convnet import split_at_strides

_REQUIRED_KEYS = ("width_coefficient", "depth_coefficient", "dropout_rate")

# The B0 table, one entry per block group
B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
B0_IN_CHANNELS = (32, 16, 24, 40, 80, 112, 192)
B0_OUT_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
B0_KERNELS = ((3, 3), (3, 3), (5, 5), (3, 3), (5, 5), (5, 5), (3, 3))
B0_EXPAND_RATIOS = (1, 6, 6, 6, 6, 6, 6)
B0_STRIDES = ((1, 1), (2, 2), (2, 2), (2, 2), (1, 1), (2, 2), (1, 1))

# (in channels, out channels, kernel, stride, expand ratio, drop path) -> block
BlockFactory = Callable[[int, int, tuple[int, int], tuple[int, int], float, float], nn.Module]


def adjust_channels(channels: int, width: float, min_value: Optional[int] = None) -> int:
    return make_divisible(channels * width, 8, min_value)


def adjust_depth(num_layers: int, depth: float) -> int:
    return math.ceil(num_layers * depth)


def mbconv(
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    expand_ratio: float,
    stochastic_depth_prob: float,
    activation_layer: Callable[..., nn.Module] = nn.SiLU,
    squeeze_excitation: bool = True,
) -> InvertedResidual:
    """MBConv: an inverted residual with SE squeezing to a quarter of the block input, and drop path."""

    expanded = adjust_channels(in_channels, expand_ratio)
    se = None
    if squeeze_excitation is True:
        se = SqueezeExcitation(expanded, max(1, in_channels // 4), activation=partial(nn.SiLU, inplace=True))

    return InvertedResidual(
        in_channels,
        out_channels,
        expanded_channels=expanded,
        kernel_size=kernel_size,
        stride=stride,
        padding=same_padding(kernel_size),
        activation_layer=activation_layer,
        shortcut=stride == (1, 1) and in_channels == out_channels,
        se=se,
        stochastic_depth_prob=stochastic_depth_prob,
    )


def efficientnet_blocks(
    in_channels: list[int],
    out_channels: list[int],
    kernels: list[tuple[int, int]],
    strides: list[tuple[int, int]],
    expand_ratios: list[float],
    repeats: list[int],
    drop_path_rate: float,
    make_block: Callable[[int], BlockFactory],
) -> list[tuple[nn.Module, tuple[int, int], int]]:
    """Every block of the table in order, as (block, stride, out channels) for ``split_at_strides``.

    Group ``i`` repeats its block ``repeats[i]`` times (only the first changes width and stride);
    ``make_block(i)`` picks the group's block type; drop path rises linearly over all blocks, endpoint excluded.
    """

    rates = iter(stochastic_depth_rates(drop_path_rate, sum(repeats), endpoint=False))
    blocks: list[tuple[nn.Module, tuple[int, int], int]] = []
    for i, repeat in enumerate(repeats):
        factory = make_block(i)
        for r in range(repeat):
            in_ch = in_channels[i] if r == 0 else out_channels[i]
            stride = strides[i] if r == 0 else (1, 1)
            block = factory(in_ch, out_channels[i], kernels[i], stride, expand_ratios[i], next(rates))
            blocks.append((block, stride, out_channels[i]))

    return blocks


def init_efficientnet_weights(net: nn.Module) -> None:
    def uniform_by_fan_out(weight: torch.Tensor) -> None:
        init_range = 1.0 / math.sqrt(weight.shape[0])
        nn.init.uniform_(weight, -init_range, init_range)

    init_mobile_weights(net, uniform_by_fan_out)


def efficientnet_head(
    in_channels: int, out_channels: int, dropout_rate: float, activation: type[nn.Module]
) -> nn.Module:
    """1x1 conv to the embedding width, global average pooling, dropout."""

    return nn.Sequential(
        Conv2dNormActivation(
            in_channels,
            out_channels,
            kernel_size=(1, 1),
            stride=(1, 1),
            padding=(0, 0),
            bias=False,
            activation_layer=activation,
        ),
        nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        nn.Flatten(1),
        nn.Dropout(p=dropout_rate, inplace=True),
    )


class EfficientNet_v1(MaskedStagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.(\d+)"
    grad_checkpointing_supported: ClassVar[bool] = True

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        config = self.require_config(*_REQUIRED_KEYS)
        width: float = config["width_coefficient"]
        depth: float = config["depth_coefficient"]
        dropout_rate: float = config["dropout_rate"]
        drop_path_rate: float = config.get("drop_path_rate", 0.2)

        in_channels = [adjust_channels(ch, width) for ch in B0_IN_CHANNELS]
        out_channels = [adjust_channels(ch, width) for ch in B0_OUT_CHANNELS]
        repeats = [adjust_depth(r, depth) for r in B0_REPEATS]

        self.stem = Conv2dNormActivation(
            self.input_channels,
            in_channels[0],
            kernel_size=(3, 3),
            stride=(2, 2),
            padding=(1, 1),
            bias=False,
            activation_layer=nn.SiLU,
        )
        blocks = efficientnet_blocks(
            in_channels,
            out_channels,
            list(B0_KERNELS),
            list(B0_STRIDES),
            list(B0_EXPAND_RATIOS),
            repeats,
            drop_path_rate,
            lambda _: mbconv,
        )
        self.body, stage_channels = split_at_strides(blocks, in_channels[0])
        self.features = efficientnet_head(  # type: ignore[assignment]
            out_channels[-1], out_channels[-1] * 4, dropout_rate, nn.SiLU
        )
        self.return_channels = stage_channels[1:5]
        self.embedding_size = out_channels[-1] * 4
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = in_channels[0]
        self.feature_dim = out_channels[-1]

        init_efficientnet_weights(self)
