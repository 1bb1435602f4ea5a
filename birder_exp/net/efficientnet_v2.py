"""EfficientNet v2 ("EfficientNetV2: Smaller Models and Faster Training", https://arxiv.org/abs/2104.00298), as
Birder lays it out: Fused-MBConv for the first three block groups, MBConv (with SE) after, each model a config
of per-group expansion, kernel, stride, widths and repeats.

As in Birder, the blocks before the first stride form a ``stage0`` that detection features do not return.
"""

from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import StochasticDepth

from birder_exp.layers.inverted_residual import same_padding
from birder_exp.net.efficientnet_v1 import BlockFactory
from birder_exp.net.efficientnet_v1 import adjust_channels
from birder_exp.net.efficientnet_v1 import efficientnet_blocks
from birder_exp.net.efficientnet_v1 import efficientnet_head
from birder_exp.net.efficientnet_v1 import init_efficientnet_weights
from birder_exp.net.efficientnet_v1 import mbconv
from birder_exp.net.staged_convnet import MaskedStagedConvNet
from birder_exp.net.staged_convnet import split_at_strides

_REQUIRED_KEYS = ("expand_ratio", "kernel_size", "strides", "in_channels", "out_channels", "repeats", "dropout_rate")
_NUM_FUSED_GROUPS = 3


class FusedMBConv(nn.Module):
    """The expansion and depthwise convs of MBConv fused into one full kxk conv, then a linear 1x1 projection
    (a single kxk conv when there is no expansion); no SE."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        expand_ratio: float,
        stochastic_depth_prob: float,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == (1, 1) and in_channels == out_channels
        padding = same_padding(kernel_size)
        expanded = adjust_channels(in_channels, expand_ratio)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(
                Conv2dNormActivation(
                    in_channels,
                    expanded,
                    kernel_size=kernel_size,
                    stride=stride,
                    padding=padding,
                    bias=False,
                    activation_layer=nn.SiLU,
                )
            )
            layers.append(
                Conv2dNormActivation(
                    expanded,
                    out_channels,
                    kernel_size=(1, 1),
                    stride=(1, 1),
                    padding=(0, 0),
                    bias=False,
                    activation_layer=None,
                )
            )
        else:
            layers.append(
                Conv2dNormActivation(
                    in_channels,
                    out_channels,
                    kernel_size=kernel_size,
                    stride=stride,
                    padding=padding,
                    bias=False,
                    activation_layer=nn.SiLU,
                )
            )

        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch: torch.Tensor = self.block(x)
        if self.use_res_connect is True:
            return x + self.stochastic_depth(branch)

        return branch


def _pairs(values: list[Any]) -> list[tuple[int, int]]:
    """Kernel sizes / strides as tuples (a JSON config gives lists; Birder's Python configs give tuples)."""

    return [(int(v[0]), int(v[1])) for v in values]


class EfficientNet_v2(MaskedStagedConvNet):
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
        last_channels: int = config.get("last_channels", 1280)
        expand_ratios: list[float] = list(config["expand_ratio"])
        kernels = _pairs(config["kernel_size"])
        strides = _pairs(config["strides"])
        in_channels = [adjust_channels(ch, 1.0) for ch in config["in_channels"]]
        out_channels = [adjust_channels(ch, 1.0) for ch in config["out_channels"]]
        repeats: list[int] = list(config["repeats"])
        dropout_rate: float = config["dropout_rate"]
        drop_path_rate: float = config.get("drop_path_rate", 0.2)
        lengths = {len(v) for v in (expand_ratios, kernels, strides, in_channels, out_channels, repeats)}
        if len(lengths) != 1 or len(repeats) <= _NUM_FUSED_GROUPS:
            raise ValueError(
                f"{type(self).__name__}: expand_ratio, kernel_size, strides, in_channels, out_channels and repeats "
                f"need one entry per block group, the same number each and more than {_NUM_FUSED_GROUPS}, "
                f"got lengths {[len(v) for v in (expand_ratios, kernels, strides, in_channels, out_channels, repeats)]}"
            )

        self.stem = Conv2dNormActivation(
            self.input_channels,
            in_channels[0],
            kernel_size=(3, 3),
            stride=(2, 2),
            padding=(1, 1),
            bias=False,
            activation_layer=nn.SiLU,
        )

        def block_type(group: int) -> BlockFactory:
            return FusedMBConv if group < _NUM_FUSED_GROUPS else mbconv

        blocks = efficientnet_blocks(
            in_channels, out_channels, kernels, strides, expand_ratios, repeats, drop_path_rate, block_type
        )
        self.body, stage_channels = split_at_strides(blocks, in_channels[0])
        self.features = efficientnet_head(  # type: ignore[assignment]
            out_channels[-1], last_channels, dropout_rate, nn.SiLU
        )
        self.return_channels = stage_channels[1:5]
        self.embedding_size = last_channels
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = in_channels[0]
        self.feature_dim = out_channels[-1]

        init_efficientnet_weights(self)
