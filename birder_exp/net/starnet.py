"""StarNet ("Rewrite the Stars", https://arxiv.org/abs/2403.19967), laid out as Birder lays it out.

The "star" operation multiplies two 1x1 projections element-wise (one through ReLU6), which spans an implicit
high-dimensional feature space at the cost of a plain MLP. Stages double the width from ``base_dim``; each opens
with a strided 3x3 conv + BN. The head normalises the last stage with a BatchNorm before pooling. Convs before a
BatchNorm carry no bias (Birder's change from the original), so Birder's checkpoints load strictly.
"""

from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import StochasticDepth

from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("base_dim", "depths", "mlp_ratio", "drop_path_rate")
_STEM_WIDTH = 32


class StarNetBlock(nn.Module):
    """dw7x7+BN -> ReLU6(f1(x)) * f2(x) -> 1x1+BN -> dw7x7, added to the input."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.dwconv1 = Conv2dNormActivation(
            dim, dim, kernel_size=(7, 7), stride=(1, 1), padding=(3, 3), groups=dim, activation_layer=None
        )
        self.f1 = nn.Conv2d(dim, hidden, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.f2 = nn.Conv2d(dim, hidden, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.g = Conv2dNormActivation(
            hidden, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), activation_layer=None
        )
        self.dwconv2 = nn.Conv2d(dim, dim, kernel_size=(7, 7), stride=(1, 1), padding=(3, 3), groups=dim)
        self.act = nn.ReLU6()
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv1(x)
        y = self.act(self.f1(y)) * self.f2(y)
        return x + self.drop_path(self.dwconv2(self.g(y)))  # type: ignore[no-any-return]


class StarNetStage(nn.Module):
    def __init__(self, in_channels: int, embed_dim: int, depth: int, mlp_ratio: float, drop_path: list[float]) -> None:
        super().__init__()
        self.downsample = Conv2dNormActivation(
            in_channels, embed_dim, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), activation_layer=None
        )
        self.blocks = nn.Sequential(
            *[StarNetBlock(embed_dim, mlp_ratio=mlp_ratio, drop_path=drop_path[i]) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))  # type: ignore[no-any-return]


class StarNet(StagedConvNet):
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
        base_dim: int = config["base_dim"]
        depths: list[int] = list(config["depths"])
        mlp_ratio: float = config["mlp_ratio"]
        drop_path_rate: float = config["drop_path_rate"]
        if len(depths) == 0 or base_dim <= 0 or mlp_ratio <= 0:
            raise ValueError(
                f"{type(self).__name__}: needs a positive base_dim and mlp_ratio and at least one stage depth, "
                f"got base_dim={base_dim}, mlp_ratio={mlp_ratio}, depths={depths}"
            )

        self.stem = Conv2dNormActivation(
            self.input_channels,
            _STEM_WIDTH,
            kernel_size=(3, 3),
            stride=(2, 2),
            padding=(1, 1),
            activation_layer=nn.ReLU6,
        )

        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        dims = [base_dim * 2**i for i in range(len(depths))]
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages[f"stage{i + 1}"] = StarNetStage(
                dims[i - 1] if i > 0 else _STEM_WIDTH, embed_dim=dim, depth=depth, mlp_ratio=mlp_ratio, drop_path=dpr[i]
            )

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.BatchNorm2d(dims[-1]),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = dims
        self.embedding_size = dims[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 2
        self.stem_width = _STEM_WIDTH
        self.feature_dim = dims[-1]

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
