"""FasterNet ("Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks", https://arxiv.org/abs/2303.03667),
laid out as Birder lays it out.

Spatial mixing is a partial convolution: a 3x3 conv over the first quarter of the channels, the rest passed
through untouched, followed by a 1x1 -> BN -> act -> 1x1 MLP with a residual. Stages after the first open with a
2x2 patch merging that doubles the width (Birder keeps it as the stage's first child). The head pools first and
then lifts to 1280 features with a 1x1 conv. Names follow Birder's, so its checkpoints load strictly.
"""

from collections import OrderedDict
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.layers.activations import get_activation_module
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("depths", "embed_dim", "act_layer_name", "drop_path_rate")
_PATCH_SIZE = 4
_N_DIV = 4  # A quarter of the channels goes through the partial conv
_MLP_RATIO = 2.0
_HEAD_DIM = 1280


class PartialConv(nn.Module):
    """3x3 conv on the first ``dim // n_div`` channels; the others are concatenated back unchanged."""

    def __init__(self, dim: int, n_div: int) -> None:
        super().__init__()
        self.dim_conv3 = dim // n_div
        self.dim_untouched = dim - self.dim_conv3
        self.partial_conv3 = nn.Conv2d(
            self.dim_conv3, self.dim_conv3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed, untouched = torch.split(x, [self.dim_conv3, self.dim_untouched], dim=1)
        return torch.concat((self.partial_conv3(mixed), untouched), dim=1)


class MLPBlock(nn.Module):
    """Partial conv, then a 1x1 MLP whose output is added to the block's input (before the partial conv)."""

    def __init__(self, dim: int, n_div: int, mlp_ratio: float, drop_path: float, act_layer: type[nn.Module]) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.spatial_mixing = PartialConv(dim, n_div)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
            nn.BatchNorm2d(hidden),
            act_layer(),
            nn.Conv2d(hidden, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
        )
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.spatial_mixing(x)))  # type: ignore[no-any-return]


class PatchEmbed(nn.Module):
    """The stem: non-overlapping strided conv (no bias) + BN."""

    def __init__(
        self, in_channels: int, embed_dim: int, patch_size: tuple[int, int], patch_stride: tuple[int, int]
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_channels, embed_dim, kernel_size=patch_size, stride=patch_stride, padding=(0, 0), bias=False
        )
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))  # type: ignore[no-any-return]


class PatchMerging(nn.Module):
    """2x downsampling that doubles the width: Birder names its conv ``reduction``."""

    def __init__(self, dim: int, patch_size: tuple[int, int], patch_stride: tuple[int, int]) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(
            dim, 2 * dim, kernel_size=patch_size, stride=patch_stride, padding=(0, 0), bias=False
        )
        self.norm = nn.BatchNorm2d(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))  # type: ignore[no-any-return]


class FasterNetBlock(nn.Module):
    """The ``depth`` MLP blocks of one stage."""

    def __init__(
        self, dim: int, depth: int, n_div: int, mlp_ratio: float, drop_path: list[float], act_layer: type[nn.Module]
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                MLPBlock(dim=dim, n_div=n_div, mlp_ratio=mlp_ratio, drop_path=drop_path[i], act_layer=act_layer)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)  # type: ignore[no-any-return]


class FasterNet(StagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.(\d+)"

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
        depths: list[int] = list(config["depths"])
        embed_dim: int = config["embed_dim"]
        drop_path_rate: float = config["drop_path_rate"]
        if len(depths) == 0 or embed_dim <= 0:
            raise ValueError(
                f"{type(self).__name__}: needs a positive embed_dim and at least one stage depth, "
                f"got embed_dim={embed_dim}, depths={depths}"
            )
        act_layer = get_activation_module(config["act_layer_name"])

        patch = (_PATCH_SIZE, _PATCH_SIZE)
        self.stem = PatchEmbed(self.input_channels, embed_dim, patch_size=patch, patch_stride=patch)

        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            merge = [PatchMerging(dims[i - 1], patch_size=(2, 2), patch_stride=(2, 2))] if i > 0 else []
            stage = FasterNetBlock(
                dim, depth, n_div=_N_DIV, mlp_ratio=_MLP_RATIO, drop_path=dpr[i], act_layer=act_layer
            )
            stages[f"stage{i + 1}"] = nn.Sequential(*merge, stage)

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Conv2d(dims[-1], _HEAD_DIM, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False),
            act_layer(),
            nn.Flatten(1),
        )
        self.return_channels = dims
        self.embedding_size = _HEAD_DIM
        self.classifier = self.create_classifier()

        self.max_stride = _PATCH_SIZE * 2 ** (len(depths) - 1)
        self.stem_stride = _PATCH_SIZE
        self.stem_width = embed_dim
        self.feature_dim = dims[-1]
