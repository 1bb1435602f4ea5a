"""RegNet Z ("Fast and Accurate Model Scaling", https://arxiv.org/abs/2103.06877), as Birder builds it (after
timm): RegNet's width rule with inverted bottlenecks (4x), SiLU, squeeze-and-excitation in every block, residuals
only where shape is kept, and a 1x1 conv to ``num_features`` before pooling.
"""

from functools import partial
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from birder_exp.net.regnet import BottleneckTransform
from birder_exp.net.regnet import decoder_block
from birder_exp.net.regnet import init_regnet_weights
from birder_exp.net.regnet import regnet_stages
from birder_exp.net.regnet import stage_params
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_REQUIRED_KEYS = ("depth", "w_0", "w_a", "w_m", "group_width", "num_features")


class ResBottleneckBlock(nn.Module):
    """The SiLU bottleneck transform, with an identity residual when width and resolution are kept."""

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: tuple[int, int],
        group_width: int,
        bottleneck_multiplier: float,
        se_ratio: float,
    ) -> None:
        super().__init__()
        self.shortcut = width_in == width_out and stride == (1, 1)
        self.f = BottleneckTransform(
            width_in, width_out, stride, group_width, bottleneck_multiplier, se_ratio, activation_layer=nn.SiLU
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is True:
            return x + self.f(x)

        out: torch.Tensor = self.f(x)
        return out


class RegNet_Z(MaskedStagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.block\.(\d+)"

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
        stem_width = 32
        se_ratio = 0.25
        num_features: int = config["num_features"]
        params = stage_params(config["depth"], config["w_0"], config["w_a"], config["w_m"], config["group_width"], 4.0)

        self.stem = Conv2dNormActivation(
            self.input_channels,
            stem_width,
            kernel_size=(3, 3),
            stride=(2, 2),
            padding=(1, 1),
            activation_layer=nn.SiLU,
            bias=False,
        )
        self.body, widths = regnet_stages(stem_width, params, ResBottleneckBlock, se_ratio)
        self.features = nn.Sequential(  # type: ignore[assignment]
            Conv2dNormActivation(
                widths[-1], num_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), activation_layer=nn.SiLU
            ),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = widths
        self.embedding_size = num_features
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = stem_width
        self.feature_dim = widths[-1]
        self.decoder_block = partial(decoder_block, se_ratio=se_ratio, activation_layer=nn.SiLU)

        init_regnet_weights(self, grouped_fan_out=True)
