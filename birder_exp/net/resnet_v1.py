"""ResNet v1 ("Deep Residual Learning for Image Recognition", https://arxiv.org/abs/1512.03385), with Birder's
squeeze-and-excitation (https://arxiv.org/abs/1709.01507) and ResNet-D (https://arxiv.org/abs/1812.01187) options.

Modules are named as in Birder (torchvision's Conv2dNormActivation for conv-BN-ReLU), so Birder checkpoints load
strictly. At inference each BatchNorm that uses running statistics is folded into the convolution before it, and
CPU inference runs channels-last: same maths, fewer passes over the activations.
"""

from collections import OrderedDict
from typing import Any
from typing import Literal
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import SqueezeExcitation

from birder_exp.layers import FixedGeMPool2d
from birder_exp.layers.masking import mask_tensor
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import StagedBackbone
from birder_exp.net.base import TokenRetentionResultType


def conv_bn(x: torch.Tensor, conv: nn.Module, bn: nn.Module) -> torch.Tensor:
    """``bn(conv(x))``; with running statistics the BatchNorm is folded into the convolution's weight and bias."""

    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    running_mean = bn.running_mean
    running_var = bn.running_var
    if bn.training is True or running_mean is None or running_var is None:
        return bn(conv(x))  # type: ignore[no-any-return]

    scale = torch.rsqrt(running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight

    shift = -running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias

    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    return conv._conv_forward(x, weight, shift)  # type: ignore[no-any-return]


class ConvBNReLU(Conv2dNormActivation):
    """torchvision's Conv2dNormActivation (conv, BatchNorm, ReLU) whose BatchNorm folds away at inference."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            for layer in self:
                x = layer(x)
            return x

        return self._forward_folded(x)

    @torch.jit.unused
    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(conv_bn(x, self[0], self[1]))


def shortcut(in_channels: int, out_channels: int, stride: tuple[int, int], avg_down: bool) -> nn.Module:
    """The residual branch of a block (ResNet v1 and ResNeXt): identity, or a 1x1 projection where the shape
    changes (ResNet-D: average-pooled first)."""

    if in_channels == out_channels and stride == (1, 1):
        return nn.Identity()

    if avg_down is True and stride != (1, 1):
        # ResNet-D shortcut: average-pool, then an unstrided 1x1 projection
        return nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=stride, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
            nn.BatchNorm2d(out_channels),
        )

    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1), stride=stride, padding=(0, 0), bias=False),
        nn.BatchNorm2d(out_channels),
    )


_shortcut = shortcut  # The name resnext imported before it was public


class ResidualBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: tuple[int, int],
        bottle_neck: bool,
        squeeze_excitation: bool,
        avg_down: bool,
    ) -> None:
        super().__init__()
        if bottle_neck is True:
            mid_channels = out_channels // 4
            self.block1 = nn.Sequential(
                ConvBNReLU(in_channels, mid_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0)),
                ConvBNReLU(mid_channels, mid_channels, kernel_size=(3, 3), stride=stride, padding=(1, 1)),
                nn.Conv2d(mid_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.block1 = nn.Sequential(
                ConvBNReLU(in_channels, out_channels, kernel_size=(3, 3), stride=stride, padding=(1, 1)),
                nn.Conv2d(out_channels, out_channels, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False),
                nn.BatchNorm2d(out_channels),
            )

        self.block2 = shortcut(in_channels, out_channels, stride, avg_down)
        self.relu = nn.ReLU(inplace=True)
        se = SqueezeExcitation(out_channels, out_channels // 16) if squeeze_excitation is True else nn.Identity()
        self.se = se

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            out = self.block1(x)
            out = self.se(out)
            out += self.block2(x)
            return self.relu(out)

        return self._forward_folded(x)

    @torch.jit.unused
    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.block1[:-2]:
            out = layer(out)

        out = conv_bn(out, self.block1[-2], self.block1[-1])
        out = self.se(out)
        if isinstance(self.block2, nn.Sequential):
            shortcut = self.block2[0](x) if len(self.block2) == 3 else x
            out += conv_bn(shortcut, self.block2[-2], self.block2[-1])
        else:
            out += x

        return self.relu(out)


class ResNet_v1(StagedBackbone, DetectorBackbone, PreTrainEncoder, MaskedTokenRetentionMixin):
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
        pooling_param: Optional[float] = cfg.get("pooling_param")
        squeeze_excitation: bool = cfg.get("squeeze_excitation", False)
        deep_stem: bool = cfg.get("deep_stem", False)
        avg_down: bool = cfg.get("avg_down", False)
        if len(units) + 1 != len(filter_list):
            raise ValueError(
                f"{type(self).__name__}: filter_list needs one entry more than units (stem width first), "
                f"got filter_list={filter_list}, units={units}"
            )

        if deep_stem is True:
            # ResNet-D: three 3x3 convolutions instead of one 7x7
            self.stem = nn.Sequential(
                ConvBNReLU(self.input_channels, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
                ConvBNReLU(32, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
                ConvBNReLU(32, filter_list[0], kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
                nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            )
        else:
            self.stem = nn.Sequential(
                ConvBNReLU(self.input_channels, filter_list[0], kernel_size=(7, 7), stride=(2, 2), padding=(3, 3)),
                nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            )

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, depth in enumerate(units):
            stride = (1, 1) if i == 0 else (2, 2)
            blocks = [
                ResidualBlock(
                    filter_list[i] if j == 0 else filter_list[i + 1],
                    filter_list[i + 1],
                    stride=stride if j == 0 else (1, 1),
                    bottle_neck=bottle_neck,
                    squeeze_excitation=squeeze_excitation,
                    avg_down=avg_down,
                )
                for j in range(depth)
            ]
            stages[f"stage{i + 1}"] = nn.Sequential(*blocks)

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)) if pooling_param is None else FixedGeMPool2d(pooling_param),
            nn.Flatten(1),
        )
        self.return_channels = filter_list[1:]
        self.embedding_size = filter_list[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = filter_list[0]
        self.feature_dim = filter_list[-1]

    def _get_input_conv(self) -> nn.Conv2d:
        conv = self.stem[0][0]  # type: ignore[index]
        assert isinstance(conv, nn.Conv2d)
        return conv

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN convolutions are faster channels-last on the CPU; values are unchanged
        if self.training is False and x.device.type == "cpu" and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)

        return x

    def _detection_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(self._prepare_input(x))  # type: ignore[no-any-return]

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        """Mask the stem output in place (``mask`` is per max-stride cell), then run all stages."""

        x = self.stem(self._prepare_input(x))
        x = mask_tensor(x, mask, patch_factor=self.max_stride // self.stem_stride, mask_token=mask_token)
        return self._retention_result(self.body(x), return_keys)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self._prepare_input(x))
        out: torch.Tensor = self.body(x)
        return out

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(features)
        return out
