"""ResNeXt ("Aggregated Residual Transformations for Deep Neural Networks", https://arxiv.org/abs/1611.05431), with
Birder's squeeze-and-excitation (https://arxiv.org/abs/1709.01507) and ResNeXt-D (https://arxiv.org/abs/1812.01187)
options.

Birder fixes the four stage widths (64, 128, 256, 512, times an expansion of 4 at the block outputs); a config
chooses the depths (``units``), the cardinality (``groups``, default 32) and the width per group (``base_width``,
default 4). Module names follow Birder's, so its checkpoints load strictly.
"""

from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import SqueezeExcitation

from birder_exp.net.resnet_v1 import shortcut
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_STAGE_WIDTHS = (64, 128, 256, 512)
_EXPANSION = 4


class ResidualBlock(nn.Module):
    """Grouped bottleneck: 1x1 reduce, grouped 3x3 (carries the stride), 1x1 expand; optional SE before the sum."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: tuple[int, int],
        groups: int,
        base_width: int,
        expansion: int,
        squeeze_excitation: bool,
        avg_down: bool,
    ) -> None:
        super().__init__()
        width = int(out_channels * (base_width / 64.0)) * groups
        expanded = out_channels * expansion
        self.block1 = nn.Sequential(
            Conv2dNormActivation(in_channels, width, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
            Conv2dNormActivation(
                width, width, kernel_size=(3, 3), stride=stride, padding=(1, 1), groups=groups, bias=False
            ),
            nn.Conv2d(width, expanded, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
            nn.BatchNorm2d(expanded),
        )
        self.block2 = shortcut(in_channels, expanded, stride, avg_down)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcitation(expanded, expanded // 16) if squeeze_excitation is True else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.block1(x))
        out += self.block2(x)
        return self.relu(out)  # type: ignore[no-any-return]


class ResNeXt(MaskedStagedConvNet):
    block_group_regex = r"body\.stage(\d+)\.(\d+)"

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        cfg = self.require_config("units")
        units: list[int] = list(cfg["units"])
        groups: int = cfg.get("groups", 32)
        base_width: int = cfg.get("base_width", 4)
        squeeze_excitation: bool = cfg.get("squeeze_excitation", False)
        deep_stem: bool = cfg.get("deep_stem", False)
        avg_down: bool = cfg.get("avg_down", False)
        if len(units) != len(_STAGE_WIDTHS) or any(depth < 1 for depth in units):
            raise ValueError(f"{type(self).__name__}: units must be 4 positive stage depths, got units={units}")

        stem_width = _STAGE_WIDTHS[0]
        if deep_stem is True:
            # ResNeXt-D: three 3x3 convolutions instead of one 7x7
            self.stem = nn.Sequential(
                Conv2dNormActivation(
                    self.input_channels, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False
                ),
                Conv2dNormActivation(32, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False),
                Conv2dNormActivation(32, stem_width, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False),
                nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            )
        else:
            self.stem = nn.Sequential(
                Conv2dNormActivation(
                    self.input_channels, stem_width, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False
                ),
                nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            )

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = stem_width
        for i, (width, depth) in enumerate(zip(_STAGE_WIDTHS, units)):
            blocks = []
            for j in range(depth):
                stride = (2, 2) if i > 0 and j == 0 else (1, 1)
                blocks.append(
                    ResidualBlock(
                        in_channels,
                        width,
                        stride=stride,
                        groups=groups,
                        base_width=base_width,
                        expansion=_EXPANSION,
                        squeeze_excitation=squeeze_excitation,
                        avg_down=avg_down,
                    )
                )
                in_channels = width * _EXPANSION
            stages[f"stage{i + 1}"] = nn.Sequential(*blocks)

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = [width * _EXPANSION for width in _STAGE_WIDTHS]
        self.embedding_size = in_channels
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = stem_width
        self.feature_dim = in_channels

        init_resnet_weights(self)


def init_resnet_weights(net: nn.Module) -> None:
    """Birder's ResNet-style init: He-normal (fan-out) convolutions, unit norms; linear layers keep PyTorch's."""

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
