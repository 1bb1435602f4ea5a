"""VoVNet v1 ("An Energy and GPU-Computation Efficient Backbone Network for Real-Time Object Detection",
https://arxiv.org/abs/1904.09730), as Birder lays it out.

One-shot aggregation (OSA): a chain of 3x3 convolutions whose outputs, and the block input, are concatenated once
and fused by a 1x1 convolution. ``VoVNetBase`` holds what v1 and v2 share (three-conv stem, four OSA stages, each
after the first opened by a ceil-mode max pooling); each version supplies its OSA block.
"""

from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("stem_channels", "stage_conv_channels", "stage_out_channels", "blocks_per_stage", "layers_per_block")


def osa_convs(in_channels: int, mid_channels: int, layers_per_block: int) -> nn.ModuleList:
    """The chained 3x3 conv-BN-ReLUs of one OSA block."""

    return nn.ModuleList(
        Conv2dNormActivation(
            in_channels if i == 0 else mid_channels,
            mid_channels,
            kernel_size=(3, 3),
            stride=(1, 1),
            padding=(1, 1),
            bias=False,
        )
        for i in range(layers_per_block)
    )


def osa_concat_conv(in_channels: int, mid_channels: int, out_channels: int, layers_per_block: int) -> nn.Module:
    return Conv2dNormActivation(
        in_channels + layers_per_block * mid_channels,
        out_channels,
        kernel_size=(1, 1),
        stride=(1, 1),
        padding=(0, 0),
        bias=False,
    )


class OSABlock(nn.Module):
    """One-shot aggregation block (v1: no residual, no attention)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, layers_per_block: int) -> None:
        super().__init__()
        self.layers = osa_convs(in_channels, mid_channels, layers_per_block)
        self.concat_conv = osa_concat_conv(in_channels, mid_channels, out_channels, layers_per_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            x = layer(x)
            features.append(x)

        return self.concat_conv(torch.concat(features, dim=1))  # type: ignore[no-any-return]


class OSAStage(nn.Module):
    """Optional 3x3/2 ceil-mode max pooling, then the stage's OSA blocks, all in ``blocks``."""

    def __init__(self, blocks: list[nn.Module], downsample: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if downsample is True:
            layers.append(nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(0, 0), ceil_mode=True))

        self.blocks = nn.Sequential(*layers, *blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)  # type: ignore[no-any-return]


class VoVNetBase(StagedConvNet):
    """Stem, four OSA stages and an average-pooling head; subclasses build the blocks (``make_block``)."""

    block_group_regex = r"body\.stage(\d+)\.blocks\.(\d+)"

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        cfg = self.require_config(*_REQUIRED_KEYS)
        stem_channels: list[int] = list(cfg["stem_channels"])
        stage_conv_channels: list[int] = list(cfg["stage_conv_channels"])
        stage_out_channels: list[int] = list(cfg["stage_out_channels"])
        blocks_per_stage: list[int] = list(cfg["blocks_per_stage"])
        layers_per_block: int = cfg["layers_per_block"]
        if (
            len(stem_channels) != 3
            or not len(stage_conv_channels) == len(stage_out_channels) == len(blocks_per_stage) == 4
            or any(n < 1 for n in blocks_per_stage)
            or layers_per_block < 1
        ):
            raise ValueError(
                f"{type(self).__name__}: needs 3 stem_channels, 4 stage_conv_channels, 4 stage_out_channels and "
                f"4 positive blocks_per_stage, layers_per_block >= 1, got {cfg!r}"
            )

        self.stem = nn.Sequential(
            *(
                Conv2dNormActivation(
                    self.input_channels if i == 0 else stem_channels[i - 1],
                    stem_channels[i],
                    kernel_size=(3, 3),
                    stride=stride,
                    padding=(1, 1),
                    bias=False,
                )
                for i, stride in enumerate(((2, 2), (1, 1), (2, 2)))
            )
        )

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = stem_channels[-1]
        for i, (mid, out, depth) in enumerate(zip(stage_conv_channels, stage_out_channels, blocks_per_stage)):
            blocks = [
                self.make_block(in_channels if j == 0 else out, mid, out, layers_per_block, j, depth)
                for j in range(depth)
            ]
            stages[f"stage{i + 1}"] = OSAStage(blocks, downsample=i > 0)
            in_channels = out

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = stage_out_channels
        self.embedding_size = stage_out_channels[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = stem_channels[-1]
        self.feature_dim = stage_out_channels[-1]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def make_block(
        self, in_channels: int, mid_channels: int, out_channels: int, layers_per_block: int, index: int, depth: int
    ) -> nn.Module:
        """Block ``index`` of a stage of ``depth`` blocks."""

        raise NotImplementedError


class VoVNet_v1(VoVNetBase):
    def make_block(
        self, in_channels: int, mid_channels: int, out_channels: int, layers_per_block: int, index: int, depth: int
    ) -> nn.Module:
        return OSABlock(in_channels, mid_channels, out_channels, layers_per_block)
