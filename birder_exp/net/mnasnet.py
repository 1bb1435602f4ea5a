"""MNASNet ("MnasNet: Platform-Aware Neural Architecture Search for Mobile", https://arxiv.org/abs/1807.11626), the
B1 model as Birder lays it out (after torchvision): ReLU inverted residuals, widths scaled by ``alpha``, and
BatchNorm with TensorFlow's momentum (0.99, i.e. 0.01 in PyTorch terms).
"""

from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from birder_exp.layers.inverted_residual import InvertedResidual
from birder_exp.layers.inverted_residual import same_padding
from birder_exp.net.base import make_divisible
from birder_exp.net.staged_convnet import StagedConvNet
from birder_exp.net.staged_convnet import init_mobile_weights

_WIDTHS = (32, 16, 24, 40, 80, 96, 192, 320)  # Stem, stem output, then each block group's output

# Per stage, its block groups: (output width index, kernel, first stride, expansion, repeats)
_STAGES = (
    ((2, 3, 2, 3, 3),),
    ((3, 5, 2, 3, 3),),
    ((4, 5, 2, 6, 3), (5, 3, 1, 6, 2)),
    ((6, 5, 2, 6, 4), (7, 3, 1, 6, 1)),
)


class InvertedResidualBlock(nn.Module):
    """``repeats`` inverted residuals of one kernel size and expansion; the first changes width and stride."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        expansion_factor: int,
        repeats: int,
        norm_layer: Callable[..., nn.Module],
    ) -> None:
        super().__init__()
        layers = []
        for i in range(repeats):
            block_in = in_channels if i == 0 else out_channels
            block_stride = stride if i == 0 else (1, 1)
            layers.append(
                InvertedResidual(
                    block_in,
                    out_channels,
                    expanded_channels=block_in * expansion_factor,
                    kernel_size=kernel_size,
                    stride=block_stride,
                    padding=same_padding(kernel_size),
                    activation_layer=nn.ReLU,
                    shortcut=block_in == out_channels and block_stride[0] == 1,
                    norm_layer=norm_layer,
                )
            )

        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


class MNASNet(StagedConvNet):
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
        widths = [make_divisible(w * alpha, 8) for w in _WIDTHS]  # Rounds up rather than down, as the paper's code
        norm_layer = partial(nn.BatchNorm2d, momentum=1 - 0.99)

        self.stem = nn.Sequential(
            Conv2dNormActivation(
                self.input_channels,
                widths[0],
                kernel_size=(3, 3),
                stride=(2, 2),
                padding=(1, 1),
                bias=False,
                norm_layer=norm_layer,
            ),
            Conv2dNormActivation(
                widths[0],
                widths[0],
                kernel_size=(3, 3),
                stride=(1, 1),
                padding=(1, 1),
                groups=widths[0],
                bias=False,
                norm_layer=norm_layer,
            ),
            Conv2dNormActivation(
                widths[0],
                widths[1],
                kernel_size=(1, 1),
                stride=(1, 1),
                padding=(0, 0),
                bias=False,
                norm_layer=norm_layer,
                activation_layer=None,
            ),
        )

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        return_channels: list[int] = []
        width = widths[1]
        for idx, groups in enumerate(_STAGES):
            blocks = []
            for out_idx, kernel, stride, expansion, repeats in groups:
                blocks.append(
                    InvertedResidualBlock(
                        width,
                        widths[out_idx],
                        (kernel, kernel),
                        (stride, stride),
                        expansion,
                        repeats,
                        norm_layer,
                    )
                )
                width = widths[out_idx]

            stages[f"stage{idx + 1}"] = nn.Sequential(*blocks)
            return_channels.append(width)

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            Conv2dNormActivation(
                width, 1280, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False, norm_layer=norm_layer
            ),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
            nn.Dropout(p=0.2),
        )
        self.return_channels = return_channels
        self.embedding_size = 1280
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = widths[1]
        self.feature_dim = width

        init_mobile_weights(self, partial(nn.init.kaiming_uniform_, mode="fan_out", nonlinearity="sigmoid"))
