"""EfficientFormer v1 ("Vision Transformers at MobileNet Speed", https://arxiv.org/abs/2206.01191), laid out as
Birder lays it out.

Stages are PoolFormer-style 4D blocks (average pooling token mixer, BN conv MLP); the last ``num_vit`` blocks of
the last stage flatten the map to tokens and run attention with a learned relative-position bias. The head
averages a classifier and a distillation classifier (or stacks them when training with distillation output).

The bias index table ``attention_bias_idxs`` is a persistent buffer in Birder, so it is one here too (Birder's
checkpoints carry it and load strictly); the attention depends on the input resolution (``adjust_size``
re-interpolates the biases) and dynamic sizes are refused, as in Birder.
"""

from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import MLP
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import Permute
from torchvision.ops import StochasticDepth

from birder_exp.layers import LayerScale
from birder_exp.layers import LayerScale2d
from birder_exp.layers.attention_bias import relative_position_index
from birder_exp.net.base import interpolate_attention_bias
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.distilled_head import DistilledHeadNet
from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("embed_dims", "depths", "num_vit", "drop_path_rate")
_LAYER_SCALE = 1e-5
_MLP_RATIO = 4.0


class Attention(nn.Module):
    """Multi-head attention over the flattened grid plus a per-head bias indexed by relative position."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads

        self.qkv = nn.Linear(dim, key_dim * num_heads * 2 + self.val_attn_dim)
        self.proj = nn.Linear(self.val_attn_dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution[0] * resolution[1]))
        self.attention_bias_idxs = nn.Buffer(relative_position_index(resolution))

    def set_resolution(self, old_resolution: tuple[int, int], resolution: tuple[int, int]) -> None:
        """Interpolate the biases to a new grid and rebuild the index table for it."""

        with torch.no_grad():
            self.attention_biases = nn.Parameter(
                interpolate_attention_bias(self.attention_biases, old_resolution, resolution),
                requires_grad=self.attention_biases.requires_grad,
            )
            self.attention_bias_idxs = nn.Buffer(relative_position_index(resolution, self.attention_biases.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)

        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn + self.attention_biases[:, self.attention_bias_idxs]
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        return self.proj(x)  # type: ignore[no-any-return]


class Downsample(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], stride: tuple[int, int]
    ) -> None:
        super().__init__()
        padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))  # type: ignore[no-any-return]


class Pooling(nn.Module):
    """PoolFormer's token mixer: 3x3 average (padding excluded) minus the input."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x  # type: ignore[no-any-return]


class ConvMLP(nn.Module):
    """1x1 -> BN -> GELU -> 1x1 -> BN (the norms are registered after the convs, as in Birder)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_features, in_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.drop = nn.Dropout(drop)
        self.norm1 = nn.BatchNorm2d(hidden_features)
        self.norm2 = nn.BatchNorm2d(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.norm1(self.fc1(x))))
        return self.drop(self.norm2(self.fc2(x)))  # type: ignore[no-any-return]


class MetaBlock1d(nn.Module):
    """Token block: pre-norm attention and MLP, each with layer scale."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        resolution: tuple[int, int],
        proj_drop: float,
        drop_path: float,
        layer_scale_init_value: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, key_dim=32, num_heads=8, attn_ratio=4.0, resolution=resolution)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, [int(dim * mlp_ratio), dim], activation_layer=nn.GELU, dropout=proj_drop)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.ls1 = LayerScale(dim, layer_scale_init_value)
        self.ls2 = LayerScale(dim, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.token_mixer(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))  # type: ignore[no-any-return]


class MetaBlock2d(nn.Module):
    """Map block: pooling mixer and conv MLP, each with layer scale, no norm before them."""

    def __init__(
        self, dim: int, mlp_ratio: float, proj_drop: float, drop_path: float, layer_scale_init_value: float
    ) -> None:
        super().__init__()
        self.token_mixer = Pooling()
        self.ls1 = LayerScale2d(dim, layer_scale_init_value)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.mlp = ConvMLP(dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale2d(dim, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.token_mixer(x)))
        return x + self.drop_path(self.ls2(self.mlp(x)))  # type: ignore[no-any-return]


class Flat(nn.Module):
    """(B, C, H, W) -> (B, H * W, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class EfficientFormerStage(nn.Module):
    """Optional downsampling, then map blocks; the last ``num_vit`` blocks are token blocks behind a ``Flat``."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        depth: int,
        downsample: bool,
        num_vit: int,
        mlp_ratio: float,
        resolution: tuple[int, int],
        proj_drop: float,
        drop_path: list[float],
        layer_scale_init_value: float,
    ) -> None:
        super().__init__()
        self.downsample: nn.Module
        if downsample is True:
            self.downsample = Downsample(dim, dim_out, kernel_size=(3, 3), stride=(2, 2))
        elif dim != dim_out:
            raise ValueError(
                f"EfficientFormerStage: a stage without downsampling keeps its width, got {dim} -> {dim_out}"
            )
        else:
            self.downsample = nn.Identity()

        num_maps = depth - min(num_vit, depth)  # More attention blocks than blocks: all of them
        blocks: list[nn.Module] = [
            MetaBlock2d(
                dim_out,
                mlp_ratio=mlp_ratio,
                proj_drop=proj_drop,
                drop_path=drop_path[i],
                layer_scale_init_value=layer_scale_init_value,
            )
            for i in range(num_maps)
        ]
        if num_vit > 0:
            blocks.append(Flat())
        blocks.extend(
            MetaBlock1d(
                dim_out,
                mlp_ratio=mlp_ratio,
                resolution=resolution,
                proj_drop=proj_drop,
                drop_path=drop_path[i],
                layer_scale_init_value=layer_scale_init_value,
            )
            for i in range(num_maps, depth)
        )
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))  # type: ignore[no-any-return]


class EfficientFormer_v1(DistilledHeadNet, StagedConvNet):
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
        embed_dims: list[int] = list(config["embed_dims"])
        depths: list[int] = list(config["depths"])
        num_vit: int = config["num_vit"]
        drop_path_rate: float = config["drop_path_rate"]
        if len(embed_dims) != len(depths) or len(depths) == 0:
            raise ValueError(
                f"{type(self).__name__}: embed_dims and depths need one entry per stage, "
                f"got {len(embed_dims)} and {len(depths)}"
            )
        if num_vit < 0:
            raise ValueError(
                f"{type(self).__name__}: num_vit counts attention blocks of the last stage (0 or more), got {num_vit}"
            )

        resolution = (int(self.size[0] / 2**5), int(self.size[1] / 2**5))
        self.stem = nn.Sequential(
            Conv2dNormActivation(
                self.input_channels, embed_dims[0] // 2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)
            ),
            Conv2dNormActivation(embed_dims[0] // 2, embed_dims[0], kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
        )

        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        last = len(depths) - 1
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, depth in enumerate(depths):
            stages[f"stage{i + 1}"] = EfficientFormerStage(
                embed_dims[i - 1] if i > 0 else embed_dims[0],
                embed_dims[i],
                depth,
                downsample=i > 0,
                num_vit=num_vit if i == last else 0,
                mlp_ratio=_MLP_RATIO,
                resolution=resolution,
                proj_drop=0.0,
                drop_path=dpr[i],
                layer_scale_init_value=_LAYER_SCALE,
            )

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.LayerNorm(embed_dims[-1]),
            Permute([0, 2, 1]),
            nn.AdaptiveAvgPool1d(output_size=1),
            nn.Flatten(1),
        )
        self.return_channels = embed_dims
        self.embedding_size = embed_dims[-1]
        self.create_heads()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = embed_dims[0]
        self.feature_dim = embed_dims[-1]

        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage outputs as maps: a stage ending in tokens is folded back onto the grid of the configured size."""

        x = self.stem(x)
        out = {}
        for name, module in self.body.named_children():
            x = module(x)
            if name in self.return_stages:
                if x.ndim == 3:
                    grid = (int(self.size[0] / self.max_stride), int(self.size[1] / self.max_stride))
                    out[name] = x.transpose(1, 2).reshape(x.size(0), -1, grid[0], grid[1])
                else:
                    out[name] = x

        return out

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return

        old_size = self.size
        super().adjust_size(new_size)
        old_resolution = (int(old_size[0] / self.max_stride), int(old_size[1] / self.max_stride))
        resolution = (int(new_size[0] / self.max_stride), int(new_size[1] / self.max_stride))
        for m in self.body.modules():
            if isinstance(m, Attention):
                m.set_resolution(old_resolution, resolution)
