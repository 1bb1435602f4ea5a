"""ShuffleNet v2 ("ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
https://arxiv.org/abs/1807.11164), as Birder lays it out.

A config gives the five widths (stem, three stages, head). Birder's ``stage1`` is the stem's max pooling alone, so
detection features return it (stride 4) before the three shuffle stages.
"""

from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from birder_exp.layers.channel_shuffle import channel_shuffle
from birder_exp.net.staged_convnet import StagedConvNet

_STAGE_REPEATS = (3, 7, 3)  # Unstrided units after each stage's strided one


def _depthwise_bn(channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(
            channels,
            channels,
            kernel_size=(3, 3),
            stride=(stride, stride),
            padding=(1, 1),
            groups=channels,
            bias=False,
        ),
        nn.BatchNorm2d(channels),
    ]


def _pointwise(in_channels: int, out_channels: int) -> Conv2dNormActivation:
    return Conv2dNormActivation(
        in_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False
    )


class ShuffleUnit(nn.Module):
    """Unstrided: half the channels pass through, the other half go through ``branch2``. Strided: both branches
    see the whole input and halve the resolution. Either way the two halves are concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int, dw_conv_stride: int) -> None:
        super().__init__()
        self.dw_conv_stride = dw_conv_stride
        branch_channels = out_channels // 2
        if dw_conv_stride == 1:
            branch2_input = branch_channels
            self.branch1 = nn.Sequential()
        else:
            branch2_input = in_channels
            self.branch1 = nn.Sequential(
                *_depthwise_bn(in_channels, dw_conv_stride), _pointwise(in_channels, branch_channels)
            )

        self.branch2 = nn.Sequential(
            _pointwise(branch2_input, branch_channels),
            *_depthwise_bn(branch_channels, dw_conv_stride),
            _pointwise(branch_channels, branch_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dw_conv_stride == 1:
            kept, processed = x.chunk(2, dim=1)
            x = torch.concat((kept, self.branch2(processed)), dim=1)
        else:
            x = torch.concat((self.branch1(x), self.branch2(x)), dim=1)

        return channel_shuffle(x, groups=2)


class ShuffleNet_v2(StagedConvNet):
    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        out_channels: list[int] = list(self.require_config("out_channels")["out_channels"])
        if len(out_channels) != len(_STAGE_REPEATS) + 2 or any(c % 2 != 0 or c < 2 for c in out_channels[1:-1]):
            raise ValueError(
                f"{type(self).__name__}: out_channels must be 5 widths (stem, 3 even stage widths, head), "
                f"got out_channels={out_channels}"
            )

        self.stem = Conv2dNormActivation(
            self.input_channels, out_channels[0], kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False
        )

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        stages["stage1"] = nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        for i, repeats in enumerate(_STAGE_REPEATS):
            width = out_channels[i + 1]
            units = [ShuffleUnit(out_channels[i], width, dw_conv_stride=2)]
            units.extend(ShuffleUnit(width, width, dw_conv_stride=1) for _ in range(repeats))
            stages[f"stage{i + 2}"] = nn.Sequential(*units)

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            _pointwise(out_channels[-2], out_channels[-1]),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = out_channels[:-1]
        self.embedding_size = out_channels[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = out_channels[0]
        self.feature_dim = out_channels[-2]
