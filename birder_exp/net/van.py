"""VAN ("Visual Attention Network", https://arxiv.org/abs/2202.09741), laid out as Birder lays it out.

Attention is a large-kernel gate: a 5x5 depthwise conv, a dilated 7x7 depthwise conv and a 1x1 conv produce a
map that multiplies the input. Four stages, each opening with an overlapping BN patch embedding and closing with a
channel LayerNorm. Module and parameter names follow Birder's, so its checkpoints load strictly.
"""

import math
from collections import OrderedDict
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.layers import LayerNorm2d
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("embed_dims", "depths", "drop_path_rate")
_MLP_RATIOS = (8.0, 8.0, 4.0, 4.0)  # Per stage, fixed by the architecture


class DWConvMLP(nn.Module):
    """1x1 conv -> depthwise 3x3 -> GELU -> 1x1 conv."""

    def __init__(self, in_features: int, hidden_features: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.dwconv = nn.Conv2d(
            hidden_features, hidden_features, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=hidden_features
        )
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_features, in_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class LKA(nn.Module):
    """Large kernel attention: x * conv1x1(dilated_dw7x7(dw5x5(x))), a 21x21 receptive field per channel."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2), groups=dim)
        self.conv_spatial = nn.Conv2d(
            dim, dim, kernel_size=(7, 7), stride=(1, 1), padding=(9, 9), dilation=(3, 3), groups=dim
        )
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class Attention(nn.Module):
    """1x1 conv, GELU, LKA gate, 1x1 conv, with its own residual."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(d_model, d_model, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.activation = nn.GELU()
        self.spatial_gating_unit = LKA(d_model)
        self.proj_2 = nn.Conv2d(d_model, d_model, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x


class OverlapPatchEmbed(nn.Module):
    """Overlapping strided conv + BatchNorm (NCHW throughout)."""

    def __init__(self, patch_size: tuple[int, int], stride: tuple[int, int], in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_dim, embed_dim, kernel_size=patch_size, stride=stride, padding=(patch_size[0] // 2, patch_size[1] // 2)
        )
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))  # type: ignore[no-any-return]


class VANBlock(nn.Module):
    """BN -> attention and BN -> MLP branches, each scaled by a learned per-channel factor (init 0.01)."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = Attention(dim)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = DWConvMLP(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=drop)

        layer_scale_init_value = 1e-2
        self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones((1, dim, 1, 1)))
        self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones((1, dim, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))


class VANStage(nn.Module):
    def __init__(
        self,
        patch_size: tuple[int, int],
        stride: tuple[int, int],
        in_dim: int,
        embed_dim: int,
        depth: int,
        mlp_ratio: float,
        drop: float,
        drop_path: list[float],
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(patch_size=patch_size, stride=stride, in_dim=in_dim, embed_dim=embed_dim)
        self.block = nn.Sequential(
            *[VANBlock(embed_dim, mlp_ratio=mlp_ratio, drop=drop, drop_path=drop_path[i]) for i in range(depth)]
        )
        self.norm = LayerNorm2d(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block(self.patch_embed(x)))  # type: ignore[no-any-return]


class VAN(StagedConvNet):
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
        drop_rate = 0.0
        embed_dims: list[int] = list(config["embed_dims"])
        depths: list[int] = list(config["depths"])
        drop_path_rate: float = config["drop_path_rate"]
        if not len(embed_dims) == len(depths) == len(_MLP_RATIOS):
            raise ValueError(
                f"{type(self).__name__}: embed_dims and depths need 4 entries each (one per stage), "
                f"got {len(embed_dims)} and {len(depths)}"
            )

        # No stem: each stage opens with its own patch embedding (an identity keeps the skeleton's stem -> body)
        self.stem = nn.Identity()
        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, depth in enumerate(depths):
            stages[f"stage{i + 1}"] = VANStage(
                patch_size=(7, 7) if i == 0 else (3, 3),
                stride=(4, 4) if i == 0 else (2, 2),
                in_dim=self.input_channels if i == 0 else embed_dims[i - 1],
                embed_dim=embed_dims[i],
                depth=depth,
                mlp_ratio=_MLP_RATIOS[i],
                drop=drop_rate,
                drop_path=dpr[i],
            )

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = embed_dims
        self.embedding_size = embed_dims[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.feature_dim = embed_dims[-1]

        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _get_input_conv(self) -> nn.Conv2d:
        stage1 = self.body[0]
        assert isinstance(stage1, VANStage)
        return stage1.patch_embed.proj
