"""PVT v2 ("PVT v2: Improved Baselines with Pyramid Vision Transformer", https://arxiv.org/abs/2106.13797), laid out
as Birder lays it out.

Four stages of transformer blocks over overlapping-patch embeddings; keys and values come from a spatially reduced
map (a strided conv, or in the ``linear`` variants a 7x7 average pool), and the MLP holds a depthwise conv in place
of position embeddings. Module and parameter names follow Birder's, so its checkpoints load strictly.
"""

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.layers.masking import mask_tensor
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import StagedBackbone
from birder_exp.net.base import TokenRetentionResultType
from birder_exp.net.base import staged_stochastic_depth_rates

_REQUIRED_KEYS = ("depths", "embed_dims", "mlp_ratios", "linear", "drop_path_rate")
_NUM_HEADS = (1, 2, 5, 8)  # Per stage, fixed by the architecture
_SR_RATIOS = (8, 4, 2, 1)


class MLP(nn.Module):
    """Linear -> (ReLU in linear variants) -> depthwise 3x3 on the token grid -> GELU -> Linear."""

    def __init__(self, in_features: int, hidden_features: int, drop: float, extra_relu: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.relu = nn.ReLU() if extra_relu is True else nn.Identity()
        self.dwconv = nn.Conv2d(
            hidden_features, hidden_features, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=hidden_features
        )
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.relu(self.fc1(x))
        B, _, C = x.size()
        x = self.dwconv(x.transpose(1, 2).view(B, C, H, W)).flatten(2).transpose(1, 2)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class Attention(nn.Module):
    """Spatial-reduction attention: full-resolution queries, keys / values from a reduced map."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        linear: bool,
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5

        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        # Unused reductions are None (not Identity), as in Birder, so they stay out of the state_dict
        self.pool: Optional[nn.Module] = None
        self.act: Optional[nn.Module] = None
        self.sr: Optional[nn.Module] = None
        self.norm: Optional[nn.Module] = None
        if linear is True:
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.act = nn.GELU()
            self.sr = nn.Conv2d(dim, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
            self.norm = nn.LayerNorm(dim, eps=1e-6)
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=(sr_ratio, sr_ratio), stride=(sr_ratio, sr_ratio), padding=(0, 0))
            self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.size()
        q = self.q(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)

        if self.pool is not None and self.act is not None and self.sr is not None and self.norm is not None:
            x = x.permute(0, 2, 1).reshape(B, C, H, W)
            x = self.sr(self.pool(x)).reshape(B, C, -1).permute(0, 2, 1)
            x = self.act(self.norm(x))
        elif self.sr is not None and self.norm is not None:
            x = x.permute(0, 2, 1).reshape(B, C, H, W)
            x = self.sr(x).reshape(B, C, -1).permute(0, 2, 1)
            x = self.norm(x)

        kv = self.kv(x).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        dropout_p = self.attn_drop.p if self.training is True else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=self.scale)
        x = x.transpose(1, 2).reshape(B, N, C)

        return self.proj_drop(self.proj(x))


class PyramidVisionTransformerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        linear: bool,
        qkv_bias: bool,
        proj_drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            sr_ratio=sr_ratio,
            linear=linear,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop, extra_relu=linear)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch conv (kernel larger than stride) + LayerNorm; NCHW in, channels-last (B, H, W, C) out."""

    def __init__(self, patch_size: tuple[int, int], stride: tuple[int, int], in_channels: int, embed_dim: int) -> None:
        super().__init__()
        if patch_size[0] <= stride[0] or patch_size[1] <= stride[1]:
            raise ValueError(f"OverlapPatchEmbed: patch_size {patch_size} must be larger than stride {stride}")

        self.proj = nn.Conv2d(
            in_channels,
            embed_dim,
            kernel_size=patch_size,
            stride=stride,
            padding=(patch_size[0] // 2, patch_size[1] // 2),
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # type: ignore[no-any-return]


class PyramidVisionTransformerStage(nn.Module):
    """Optional overlapping downsample, blocks, LayerNorm; channels-last in, NCHW out."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        depth: int,
        num_heads: int,
        sr_ratio: int,
        linear: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        downsample: bool,
        proj_drop: float,
        attn_drop: float,
        drop_path: list[float],
    ) -> None:
        super().__init__()
        self.downsample: nn.Module
        if downsample is True:
            self.downsample = OverlapPatchEmbed(patch_size=(3, 3), stride=(2, 2), in_channels=dim, embed_dim=dim_out)
        else:
            if dim != dim_out:
                raise ValueError(f"PVT_v2: a stage without downsampling keeps its width ({dim} != {dim_out})")
            self.downsample = nn.Identity()

        self.blocks = nn.ModuleList(
            [
                PyramidVisionTransformerBlock(
                    dim=dim_out,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    sr_ratio=sr_ratio,
                    linear=linear,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=drop_path[i],
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim_out, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        B, H, W, C = x.size()
        x = x.reshape(B, -1, C)
        for blk in self.blocks:
            x = blk(x, H, W)

        x = self.norm(x)
        return x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()


class PVT_v2(StagedBackbone, DetectorBackbone, PreTrainEncoder, MaskedTokenRetentionMixin):
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

        depths: list[int] = list(config["depths"])
        embed_dims: list[int] = list(config["embed_dims"])
        mlp_ratios: list[float] = list(config["mlp_ratios"])
        linear: bool = config["linear"]
        drop_path_rate: float = config["drop_path_rate"]
        if not len(depths) == len(embed_dims) == len(mlp_ratios) == len(_NUM_HEADS):
            raise ValueError(
                f"{type(self).__name__}: depths, embed_dims and mlp_ratios need 4 entries each (one per stage), "
                f"got {len(depths)}, {len(embed_dims)} and {len(mlp_ratios)}"
            )
        bad = [(dim, heads) for dim, heads in zip(embed_dims, _NUM_HEADS) if dim % heads != 0]
        if len(bad) > 0:
            raise ValueError(
                f"{type(self).__name__}: embed_dims must be divisible by the stage heads {list(_NUM_HEADS)}, "
                f"got {embed_dims}"
            )

        self.patch_embed = OverlapPatchEmbed(
            patch_size=(7, 7), stride=(4, 4), in_channels=self.input_channels, embed_dim=embed_dims[0]
        )

        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        prev_dim = embed_dims[0]
        for i, depth in enumerate(depths):
            stages[f"stage{i + 1}"] = PyramidVisionTransformerStage(
                dim=prev_dim,
                dim_out=embed_dims[i],
                depth=depth,
                num_heads=_NUM_HEADS[i],
                sr_ratio=_SR_RATIOS[i],
                linear=linear,
                mlp_ratio=mlp_ratios[i],
                qkv_bias=True,
                downsample=i > 0,
                proj_drop=0.0,
                attn_drop=0.0,
                drop_path=dpr[i],
            )
            prev_dim = embed_dims[i]

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_channels = embed_dims
        self.embedding_size = embed_dims[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = embed_dims[0]
        self.feature_dim = embed_dims[-1]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _get_input_conv(self) -> nn.Conv2d:
        return self.patch_embed.proj

    def _detection_stem(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.patch_embed(x)
        return out

    def _stem_parameters(self) -> Iterator[nn.Parameter]:
        params: Iterator[nn.Parameter] = self.patch_embed.parameters()
        return params

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        """Mask the (channels-last) patch embedding per max-stride cell, then run all stages."""

        x = self.patch_embed(x)
        x = mask_tensor(
            x, mask, channels_last=True, patch_factor=self.max_stride // self.stem_stride, mask_token=mask_token
        )
        x = self.body(x)

        return self._retention_result(x, return_keys)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(self.patch_embed(x))
        return out

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features(features)
        return out
