"""Conv2Former ("A Simple Transformer-Style ConvNet for Visual Recognition", https://arxiv.org/abs/2211.11943),
laid out as Birder lays it out.

Attention is a convolutional modulation: a large depthwise kernel on GELU(1x1(x)) gates a 1x1 value projection.
The MLP has a depthwise 3x3 positional branch. Both branches are pre-norm (channels-first LayerNorm) with layer
scale. Names follow Birder's, so its checkpoints load strictly; FCMAE / SimMIM can pre-train it.
"""

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.layers.channels_first_layer_norm import ChannelsFirstLayerNorm
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_REQUIRED_KEYS = ("kernel_size", "dims", "depths", "drop_path_rate")
_MLP_RATIO = 4.0
_HEAD_DIM = 1280


def _pointwise(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))


class MLP(nn.Module):
    """norm -> 1x1 -> GELU -> (+ GELU(depthwise 3x3)) -> 1x1."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = ChannelsFirstLayerNorm(dim, eps=1e-6)
        self.fc1 = _pointwise(dim, hidden)
        self.pos = nn.Conv2d(hidden, hidden, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=hidden)
        self.fc2 = _pointwise(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self.norm(x)))
        x = x + self.act(self.pos(x))
        return self.fc2(x)  # type: ignore[no-any-return]


class SpatialAttention(nn.Module):
    """Convolutional modulation: proj(dwconv_k(GELU(1x1(n))) * v(n)) with n the normalised input."""

    def __init__(self, dim: int, kernel_size: tuple[int, int]) -> None:
        super().__init__()
        self.norm = ChannelsFirstLayerNorm(dim, eps=1e-6)
        self.attn = nn.Sequential(
            _pointwise(dim, dim),
            nn.GELU(),
            nn.Conv2d(
                dim,
                dim,
                kernel_size=kernel_size,
                stride=(1, 1),
                padding=((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2),
                groups=dim,
            ),
        )
        self.v = _pointwise(dim, dim)
        self.proj = _pointwise(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.proj(self.attn(x) * self.v(x))  # type: ignore[no-any-return]


class Conv2FormerBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: tuple[int, int], mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.attn = SpatialAttention(dim, kernel_size)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.mlp = MLP(dim, mlp_ratio)

        layer_scale_init_value = 1e-6
        self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones((1, dim, 1, 1)))
        self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones((1, dim, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.attn(x))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(x))  # type: ignore[no-any-return]


class Conv2FormerStage(nn.Module):
    """Optional (norm -> 2x2 stride-2 conv) downsampling, then the blocks."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        kernel_size: tuple[int, int],
        mlp_ratio: float,
        drop_path: list[float],
        depth: int,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.downsample: nn.Module
        if downsample is True:
            self.downsample = nn.Sequential(
                ChannelsFirstLayerNorm(dim, eps=1e-6),
                nn.Conv2d(dim, out_dim, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)),
            )
        elif dim != out_dim:
            raise ValueError(f"Conv2FormerStage: a stage without downsampling keeps its width, got {dim} -> {out_dim}")
        else:
            self.downsample = nn.Identity()

        self.blocks = nn.Sequential(
            *[Conv2FormerBlock(out_dim, kernel_size, mlp_ratio=mlp_ratio, drop_path=drop_path[i]) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))  # type: ignore[no-any-return]


class Conv2Former(MaskedStagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.blocks.(\d+)"
    grad_checkpointing_supported: ClassVar[bool] = True

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
        kernel_size: tuple[int, int] = tuple(config["kernel_size"])  # type: ignore[assignment]
        dims: list[int] = list(config["dims"])
        depths: list[int] = list(config["depths"])
        drop_path_rate: float = config["drop_path_rate"]
        if len(dims) != len(depths) or len(depths) == 0 or len(kernel_size) != 2:
            raise ValueError(
                f"{type(self).__name__}: dims and depths need one entry per stage and kernel_size two values, "
                f"got dims={dims}, depths={depths}, kernel_size={config['kernel_size']}"
            )

        half = dims[0] // 2
        self.stem = nn.Sequential(
            nn.Conv2d(self.input_channels, half, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False),
            nn.GELU(),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False),
            nn.GELU(),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, dims[0], kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), bias=False),
        )

        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, depth in enumerate(depths):
            stages[f"stage{i + 1}"] = Conv2FormerStage(
                dims[i - 1] if i > 0 else dims[0],
                dims[i],
                kernel_size=kernel_size,
                mlp_ratio=_MLP_RATIO,
                drop_path=dpr[i],
                depth=depth,
                downsample=i > 0,
            )

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            _pointwise(dims[-1], _HEAD_DIM),
            nn.GELU(),
            ChannelsFirstLayerNorm(_HEAD_DIM, eps=1e-6),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = dims
        self.embedding_size = _HEAD_DIM
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = dims[0]
        self.feature_dim = dims[-1]

        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def checkpoint_blocks(self) -> Iterator[nn.Module]:
        """Birder checkpoints each stage's downsampling as a block of its own, then the stage's blocks."""

        for stage in self.body:
            assert isinstance(stage, Conv2FormerStage)
            yield stage.downsample
            yield from stage.blocks
