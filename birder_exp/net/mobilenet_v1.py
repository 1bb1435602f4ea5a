"""MobileNet v1 ("MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
https://arxiv.org/abs/1704.04861), as Birder lays it out: depthwise-separable conv pairs scaled by ``alpha``.
"""

from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from birder_exp.net.staged_convnet import StagedConvNet

# Per stage: (width as a multiple of the base width, number of blocks); the first block of each stage strides 2
_STAGES = ((4, 2), (8, 2), (16, 6), (32, 2))


class DepthwiseSeparableNormConv2d(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, each with BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.dpw_bn_conv = nn.Sequential(
            Conv2dNormActivation(
                in_channels,
                in_channels,
                kernel_size=(3, 3),
                stride=stride,
                padding=(1, 1),
                groups=in_channels,
                bias=False,
            ),
            Conv2dNormActivation(
                in_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dpw_bn_conv(x)
        return out


class MobileNet_v1(StagedConvNet):
    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        alpha: float = self.require_config("alpha")["alpha"]
        base = int(32 * alpha)

        self.stem = nn.Sequential(
            Conv2dNormActivation(
                self.input_channels, base, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False
            ),
            Conv2dNormActivation(
                base, base, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=base, bias=False
            ),
            Conv2dNormActivation(base, base * 2, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
        )

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        return_channels: list[int] = []
        width = base * 2
        for idx, (multiple, depth) in enumerate(_STAGES):
            out_width = base * multiple
            stages[f"stage{idx + 1}"] = nn.Sequential(
                *[
                    DepthwiseSeparableNormConv2d(
                        width if i == 0 else out_width, out_width, (2, 2) if i == 0 else (1, 1)
                    )
                    for i in range(depth)
                ]
            )
            return_channels.append(out_width)
            width = out_width

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = return_channels
        self.embedding_size = width
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = base * 2
        self.feature_dim = width
