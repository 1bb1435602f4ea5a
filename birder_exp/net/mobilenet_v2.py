"""MobileNet v2 ("MobileNetV2: Inverted Residuals and Linear Bottlenecks", https://arxiv.org/abs/1801.04381), as
Birder lays it out: ReLU6 inverted residuals, widths scaled by ``alpha`` and rounded to multiples of 8.

As in Birder, the blocks before the first stride form a ``stage0`` that detection features do not return.
"""

from functools import partial
from typing import Any
from typing import Optional

from torch import nn
from torchvision.ops import Conv2dNormActivation

from birder_exp.layers.inverted_residual import InvertedResidual
from birder_exp.net.base import make_divisible
from birder_exp.net.staged_convnet import StagedConvNet
from birder_exp.net.staged_convnet import init_mobile_weights
from birder_exp.net.staged_convnet import split_at_strides

# Expansion factor t, output channels c, repeats n, first stride s
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNet_v2(StagedConvNet):
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

        stem_width = make_divisible(32 * alpha, 8)
        self.stem = Conv2dNormActivation(
            self.input_channels,
            stem_width,
            kernel_size=(3, 3),
            stride=(2, 2),
            padding=(1, 1),
            bias=False,
            activation_layer=nn.ReLU6,
        )

        blocks: list[tuple[nn.Module, tuple[int, int], int]] = []
        width = stem_width
        for t, c, n, s in _SETTINGS:
            out_width = make_divisible(c * alpha, 8)
            for i in range(n):
                in_width = width if i == 0 else out_width
                stride = (s, s) if i == 0 else (1, 1)
                block = InvertedResidual(
                    in_width,
                    out_width,
                    expanded_channels=round(in_width * t),
                    kernel_size=(3, 3),
                    stride=stride,
                    padding=(1, 1),
                    activation_layer=nn.ReLU6,
                    shortcut=stride == (1, 1) and in_width == out_width,
                )
                blocks.append((block, stride, out_width))
            width = out_width

        self.body, stage_channels = split_at_strides(blocks, stem_width)
        last_channels = make_divisible(1280 * max(1.0, alpha), 8)
        self.features = nn.Sequential(  # type: ignore[assignment]
            Conv2dNormActivation(
                width,
                last_channels,
                kernel_size=(1, 1),
                stride=(1, 1),
                padding=(0, 0),
                bias=False,
                activation_layer=nn.ReLU6,
            ),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
            nn.Dropout(0.2),
        )
        self.return_channels = stage_channels[1:5]
        self.embedding_size = last_channels
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = stem_width
        self.feature_dim = width

        init_mobile_weights(self, partial(nn.init.normal_, mean=0.0, std=0.01))
