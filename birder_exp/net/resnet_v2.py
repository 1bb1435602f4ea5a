"""ResNet v2 ("Identity Mappings in Deep Residual Networks", https://arxiv.org/abs/1603.05027), pre-activation
residual units as Birder lays them out, with its squeeze-and-excitation option (https://arxiv.org/abs/1709.01507).

The stem is a bare 7x7 convolution: normalisation and ReLU come first in every unit, and once more in the head
(``features``) after the last unit. Module names follow Birder's, so its checkpoints load strictly.
"""

from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import SqueezeExcitation

from birder_exp.net.staged_convnet import MaskedStagedConvNet


class ResidualBlock(nn.Module):
    """BN-ReLU first; when the unit projects, its shortcut branches off after that pre-activation."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: tuple[int, int], bottle_neck: bool, squeeze_excitation: bool
    ) -> None:
        super().__init__()
        pre_activation = [nn.BatchNorm2d(in_channels), nn.ReLU()]
        if bottle_neck is True:
            mid = out_channels // 4
            body: list[nn.Module] = [
                Conv2dNormActivation(in_channels, mid, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
                Conv2dNormActivation(mid, mid, kernel_size=(3, 3), stride=stride, padding=(1, 1), bias=False),
                nn.Conv2d(mid, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
            ]
        else:
            body = [
                Conv2dNormActivation(
                    in_channels, out_channels, kernel_size=(3, 3), stride=stride, padding=(1, 1), bias=False
                ),
                nn.Conv2d(out_channels, out_channels, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False),
            ]

        self.block1 = nn.Sequential(*pre_activation, *body)
        self.use_projection = in_channels != out_channels or stride != (1, 1)
        if self.use_projection is True:
            self.block2: nn.Module = nn.Conv2d(
                in_channels, out_channels, kernel_size=(1, 1), stride=stride, padding=(0, 0), bias=False
            )
        else:
            self.block2 = nn.Identity()

        self.se = SqueezeExcitation(out_channels, out_channels // 16) if squeeze_excitation is True else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        for idx, module in enumerate(self.block1):
            x = module(x)
            if idx == 1 and self.use_projection is True:
                shortcut = x  # The projection sees the pre-activated input

        return self.se(x) + self.block2(shortcut)  # type: ignore[no-any-return]


class ResNet_v2(MaskedStagedConvNet):
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
        cfg = self.require_config("bottle_neck", "filter_list", "units")
        bottle_neck: bool = cfg["bottle_neck"]
        filter_list: list[int] = list(cfg["filter_list"])
        units: list[int] = list(cfg["units"])
        squeeze_excitation: bool = cfg.get("squeeze_excitation", False)
        if len(units) + 1 != len(filter_list) or any(depth < 1 for depth in units):
            raise ValueError(
                f"{type(self).__name__}: filter_list needs one entry more than units (stem width first) and every "
                f"stage at least one unit, got filter_list={filter_list}, units={units}"
            )

        self.stem = nn.Sequential(
            nn.Conv2d(
                self.input_channels, filter_list[0], kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False
            ),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
        )

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, depth in enumerate(units):
            blocks = [
                ResidualBlock(
                    filter_list[i] if j == 0 else filter_list[i + 1],
                    filter_list[i + 1],
                    stride=(2, 2) if i > 0 and j == 0 else (1, 1),
                    bottle_neck=bottle_neck,
                    squeeze_excitation=squeeze_excitation,
                )
                for j in range(depth)
            ]
            stages[f"stage{i + 1}"] = nn.Sequential(*blocks)

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.BatchNorm2d(filter_list[-1]),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = filter_list[1:]
        self.embedding_size = filter_list[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = filter_list[0]
        self.feature_dim = filter_list[-1]
