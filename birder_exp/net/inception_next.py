"""InceptionNeXt ("When Inception Meets ConvNeXt", https://arxiv.org/abs/2303.16900), laid out as Birder lays it out.

The ConvNeXt depthwise 7x7 is split Inception-style along channels: a 3x3 square kernel, a 1xk and a kx1 band
kernel on three branches of ``branch_ratio`` of the channels each, the rest passed through. Blocks are
token mixer -> BN -> conv MLP with layer scale; stages after the first open with BN -> 2x2 stride-2 conv. Names
follow Birder's (class name included), so its checkpoints load strictly; FCMAE / SimMIM can pre-train it. The
classifier is the base's MLP head (Linear -> GELU -> LayerNorm -> Linear) by default, as in Birder.
"""

from collections import OrderedDict
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import StochasticDepth

from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_REQUIRED_KEYS = ("channels", "num_layers", "band_kernel_size", "branch_ratio", "drop_path_rate")
_MLP_RATIOS = (4, 4, 4, 3)  # Per stage, fixed by the architecture
_LAYER_SCALE = 1e-6


class InceptionDWConv2d(nn.Module):
    """Channels split into (identity, 3x3, 1xk, kx1) groups, each group's depthwise conv applied, concatenated back."""

    def __init__(self, in_channels: int, square_kernel_size: int, band_kernel_size: int, branch_ratio: float) -> None:
        super().__init__()
        branch = int(in_channels * branch_ratio)
        self.dwconv_hw = nn.Conv2d(
            branch,
            branch,
            kernel_size=(square_kernel_size, square_kernel_size),
            stride=(1, 1),
            padding=square_kernel_size // 2,
            groups=branch,
        )
        self.dwconv_w = nn.Conv2d(
            branch,
            branch,
            kernel_size=(1, band_kernel_size),
            stride=(1, 1),
            padding=(0, band_kernel_size // 2),
            groups=branch,
        )
        self.dwconv_h = nn.Conv2d(
            branch,
            branch,
            kernel_size=(band_kernel_size, 1),
            stride=(1, 1),
            padding=(band_kernel_size // 2, 0),
            groups=branch,
        )
        self.split_indexes = (in_channels - 3 * branch, branch, branch, branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, list(self.split_indexes), dim=1)
        return torch.concat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)


class ConvMLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_features, out_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # type: ignore[no-any-return]


class InceptionNeXtBlock(nn.Module):
    def __init__(
        self,
        channels: int,
        mlp_ratio: float,
        layer_scale: float,
        band_kernel_size: int,
        branch_ratio: float,
        stochastic_depth_prob: float,
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            InceptionDWConv2d(
                channels, square_kernel_size=3, band_kernel_size=band_kernel_size, branch_ratio=branch_ratio
            ),
            nn.BatchNorm2d(channels),
            ConvMLP(channels, hidden_features=int(mlp_ratio * channels), out_features=channels),
        )
        self.layer_scale = nn.Parameter(torch.ones(channels, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stochastic_depth(self.layer_scale * self.block(x)) + x  # type: ignore[no-any-return]


class InceptionNeXtStage(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        depth: int,
        drop_path_rates: list[float],
        mlp_ratio: float,
        layer_scale: float,
        band_kernel_size: int,
        branch_ratio: float,
    ) -> None:
        super().__init__()
        self.downsample: nn.Module
        if stride > 1:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(
                    in_channels, out_channels, kernel_size=(stride, stride), stride=(stride, stride), padding=(0, 0)
                ),
            )
        else:
            self.downsample = nn.Identity()

        self.blocks = nn.Sequential(
            *[
                InceptionNeXtBlock(
                    channels=out_channels,
                    mlp_ratio=mlp_ratio,
                    layer_scale=layer_scale,
                    band_kernel_size=band_kernel_size,
                    branch_ratio=branch_ratio,
                    stochastic_depth_prob=drop_path_rates[i],
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))  # type: ignore[no-any-return]


class Inception_NeXt(MaskedStagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.blocks\.(\d+)"

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
        channels: list[int] = list(config["channels"])
        num_layers: list[int] = list(config["num_layers"])
        band_kernel_size: int = config["band_kernel_size"]
        branch_ratio: float = config["branch_ratio"]
        drop_path_rate: float = config["drop_path_rate"]
        self.mlp_head = config.get("mlp_head", True)  # Unlike the other families: an MLP head unless told otherwise
        if len(channels) != len(num_layers) or not 1 <= len(channels) <= len(_MLP_RATIOS):
            raise ValueError(
                f"{type(self).__name__}: channels and num_layers need one entry per stage, 1 to {len(_MLP_RATIOS)} "
                f"stages, got {len(channels)} and {len(num_layers)}"
            )
        if not 0.0 < branch_ratio <= 1.0 / 3.0:
            raise ValueError(
                f"{type(self).__name__}: branch_ratio must be in (0, 1/3] (three branches share the channels), "
                f"got {branch_ratio}"
            )

        self.stem = Conv2dNormActivation(
            self.input_channels,
            channels[0],
            kernel_size=(4, 4),
            stride=(4, 4),
            padding=(0, 0),
            bias=True,
            activation_layer=None,
        )

        dpr = staged_stochastic_depth_rates(drop_path_rate, num_layers)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, depth in enumerate(num_layers):
            stages[f"stage{i + 1}"] = InceptionNeXtStage(
                channels[i - 1] if i > 0 else channels[0],
                channels[i],
                stride=2 if i > 0 else 1,
                depth=depth,
                drop_path_rates=dpr[i],
                mlp_ratio=_MLP_RATIOS[i],
                layer_scale=_LAYER_SCALE,
                band_kernel_size=band_kernel_size,
                branch_ratio=branch_ratio,
            )

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = channels
        self.embedding_size = channels[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 4 * 2 ** (len(num_layers) - 1)
        self.stem_stride = 4
        self.stem_width = channels[0]
        self.feature_dim = channels[-1]

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
