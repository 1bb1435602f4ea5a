"""MogaNet ("MogaNet: Multi-order Gated Aggregation Network", https://arxiv.org/abs/2211.03295), laid out as Birder
lays it out (no biases before norms).

Each block mixes space with a gated aggregation of three depthwise convolutions of growing dilation (the
"multi-order" context) and channels with an FFN that re-weights each channel against a learned single-channel
summary. Stages are plain ``nn.Sequential`` (downsampling conv, blocks, BatchNorm), so the shared staged-convnet base
supplies detection features, freezing, masked encoding and gradient checkpointing.
"""

from collections import OrderedDict
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import StochasticDepth

from birder_exp.net.base import stochastic_depth_rates
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_REQUIRED_KEYS = ("embed_dims", "depths", "drop_path_rate")
_INIT_VALUE = 1e-5
_ATTN_DW_DILATION = (1, 2, 3)
_ATTN_CHANNEL_SPLIT = (1, 3, 4)
_FFN_RATIOS = (8, 8, 4, 4)


def _pointwise(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))


def _depthwise(channels: int, kernel_size: int, dilation: int = 1) -> nn.Conv2d:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Conv2d(
        channels,
        channels,
        kernel_size=(kernel_size, kernel_size),
        stride=(1, 1),
        padding=(padding, padding),
        dilation=dilation,
        groups=channels,
    )


class ElementScale(nn.Module):
    """A learned per-channel scale (NCHW), stored as ``scale`` of shape (1, C, 1, 1)."""

    def __init__(self, embed_dims: int, init_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(init_value * torch.ones((1, embed_dims, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ChannelAggregationFFN(nn.Module):
    """1x1 expand, depthwise 3x3, GELU, then each channel pushed away from a GELU'd one-channel projection of all."""

    def __init__(self, embed_dims: int, feedforward_channels: int, kernel_size: int, ffn_drop: float) -> None:
        super().__init__()
        self.fc1 = _pointwise(embed_dims, feedforward_channels)
        self.dwconv = _depthwise(feedforward_channels, kernel_size)
        self.act = nn.GELU()
        self.drop = nn.Dropout(ffn_drop)

        self.decompose = _pointwise(feedforward_channels, 1)
        self.sigma = ElementScale(feedforward_channels, init_value=_INIT_VALUE)
        self.decompose_act = nn.GELU()
        self.fc2 = _pointwise(feedforward_channels, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        x = x + self.sigma(x - self.decompose_act(self.decompose(x)))
        return self.drop(self.fc2(x))  # type: ignore[no-any-return]


class MultiOrderDWConv(nn.Module):
    """A dilated 5x5 depthwise conv on all channels, then two more (5x5, 7x7, larger dilations) on the channel slices
    given by ``channel_split``; the three orders are concatenated and mixed by a 1x1 conv."""

    def __init__(self, embed_dims: int, dw_dilation: list[int], channel_split: list[int]) -> None:
        super().__init__()
        if len(dw_dilation) != 3 or len(channel_split) != 3:
            raise ValueError(
                f"MultiOrderDWConv: dw_dilation and channel_split need 3 entries each, got {dw_dilation} and "
                f"{channel_split}"
            )
        if min(dw_dilation) < 1 or max(dw_dilation) > 3:
            raise ValueError(f"MultiOrderDWConv: dilations must lie in [1, 3], got {dw_dilation}")
        if embed_dims % sum(channel_split) != 0:
            raise ValueError(
                f"MogaNet: every embed_dims entry must be a multiple of {sum(channel_split)} "
                f"(the channel split {channel_split}), got {embed_dims}"
            )

        total = sum(channel_split)
        self.embed_dims_1 = int(channel_split[1] / total * embed_dims)
        self.embed_dims_2 = int(channel_split[2] / total * embed_dims)
        self.embed_dims_0 = embed_dims - self.embed_dims_1 - self.embed_dims_2
        self.embed_dims = embed_dims

        self.dw_conv0 = _depthwise(embed_dims, 5, dw_dilation[0])
        self.dw_conv1 = _depthwise(self.embed_dims_1, 5, dw_dilation[1])
        self.dw_conv2 = _depthwise(self.embed_dims_2, 7, dw_dilation[2])
        self.pw_conv = _pointwise(embed_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_0 = self.dw_conv0(x)
        x_1 = self.dw_conv1(x_0[:, self.embed_dims_0 : self.embed_dims_0 + self.embed_dims_1])
        x_2 = self.dw_conv2(x_0[:, self.embed_dims - self.embed_dims_2 :])
        x = torch.concat([x_0[:, : self.embed_dims_0], x_1, x_2], dim=1)
        return self.pw_conv(x)  # type: ignore[no-any-return]


class MultiOrderGatedAggregation(nn.Module):
    """Feature decomposition (each position against the global mean), then SiLU(gate) * SiLU(multi-order value),
    projected, plus the input."""

    def __init__(self, embed_dims: int, attn_dw_dilation: list[int], attn_channel_split: list[int]) -> None:
        super().__init__()
        self.proj_1 = _pointwise(embed_dims, embed_dims)
        self.gate = _pointwise(embed_dims, embed_dims)
        self.value = MultiOrderDWConv(embed_dims, dw_dilation=attn_dw_dilation, channel_split=attn_channel_split)
        self.proj_2 = _pointwise(embed_dims, embed_dims)
        self.act_value = nn.SiLU()
        self.act_gate = nn.SiLU()
        self.sigma = ElementScale(embed_dims, init_value=_INIT_VALUE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.proj_1(x)
        x = x + self.sigma(x - F.adaptive_avg_pool2d(x, output_size=(1, 1)))
        x = self.act_value(x)
        out = self.proj_2(self.act_gate(self.gate(x)) * self.act_gate(self.value(x)))
        return out + shortcut  # type: ignore[no-any-return]


class MogaBlock(nn.Module):
    """Pre-BN residual block: gated aggregation, then the channel-aggregation FFN, each layer-scaled."""

    def __init__(
        self,
        embed_dims: int,
        ffn_ratio: float,
        drop_rate: float,
        drop_path_rate: float,
        init_value: float,
        attn_dw_dilation: list[int],
        attn_channel_split: list[int],
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(embed_dims)
        self.attn = MultiOrderGatedAggregation(
            embed_dims, attn_dw_dilation=attn_dw_dilation, attn_channel_split=attn_channel_split
        )
        self.layer_scale_1 = nn.Parameter(init_value * torch.ones((1, embed_dims, 1, 1)))

        self.norm2 = nn.BatchNorm2d(embed_dims)
        self.mlp = ChannelAggregationFFN(
            embed_dims, feedforward_channels=int(embed_dims * ffn_ratio), kernel_size=3, ffn_drop=drop_rate
        )
        self.layer_scale_2 = nn.Parameter(init_value * torch.ones((1, embed_dims, 1, 1)))
        self.drop_path = StochasticDepth(drop_path_rate, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))
        return x


def _conv_bn(in_channels: int, out_channels: int, activation_layer: Optional[type[nn.Module]]) -> nn.Module:
    """A stride-2 3x3 conv + BN (no bias), optionally activated."""

    return Conv2dNormActivation(
        in_channels,
        out_channels,
        kernel_size=(3, 3),
        stride=(2, 2),
        padding=(1, 1),
        activation_layer=activation_layer,
        inplace=None,
    )


class MogaNet(MaskedStagedConvNet):
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
        embed_dims: list[int] = list(config["embed_dims"])
        depths: list[int] = list(config["depths"])
        drop_path_rate: float = config["drop_path_rate"]
        if not len(embed_dims) == len(depths) == len(_FFN_RATIOS):
            raise ValueError(
                f"{type(self).__name__}: embed_dims and depths need 4 entries each (one per stage), "
                f"got {len(embed_dims)} and {len(depths)}"
            )

        self.stem = nn.Sequential(
            _conv_bn(self.input_channels, embed_dims[0] // 2, nn.GELU),
            _conv_bn(embed_dims[0] // 2, embed_dims[0], None),
        )

        dpr = stochastic_depth_rates(drop_path_rate, sum(depths))
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        block_idx = 0
        for i, depth in enumerate(depths):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(_conv_bn(embed_dims[i - 1], embed_dims[i], None))
            for _ in range(depth):
                layers.append(
                    MogaBlock(
                        embed_dims[i],
                        ffn_ratio=_FFN_RATIOS[i],
                        drop_rate=0.0,
                        drop_path_rate=dpr[block_idx],
                        init_value=_INIT_VALUE,
                        attn_dw_dilation=list(_ATTN_DW_DILATION),
                        attn_channel_split=list(_ATTN_CHANNEL_SPLIT),
                    )
                )
                block_idx += 1
            layers.append(nn.BatchNorm2d(embed_dims[i]))
            stages[f"stage{i + 1}"] = nn.Sequential(*layers)

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = list(embed_dims)
        self.embedding_size = embed_dims[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = embed_dims[0]
        self.feature_dim = embed_dims[-1]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
