"""EdgeViT ("EdgeViTs: Competing Light-weight CNNs on Mobile Devices with Vision Transformers",
https://arxiv.org/abs/2205.03436), laid out as Birder lays it out.

Each block is local-global-local: a conv "local aggregation" (depthwise 5x5 between two 1x1 convs, then a conv
MLP), then attention over a map subsampled by ``sr_ratio`` whose output is spread back with a depthwise transposed
conv. The last stage (``sr_ratio`` 1) skips the local part and attends on the full map. No stem: each stage embeds
its own patches with a LayerNorm. As in Birder, the classifier has no bias unless the config asks for one.
"""

from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("depth", "embed_dim", "head_dim")
_PATCH_SIZES = (4, 2, 2, 2)
_SR_RATIOS = (4, 2, 2, 1)
_MLP_RATIO = 4.0


class MLP(nn.Module):
    """Token MLP (Linear -> GELU -> Linear)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # type: ignore[no-any-return]


class ConvMLP(nn.Module):
    """Map MLP (1x1 -> GELU -> 1x1)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_features, out_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # type: ignore[no-any-return]


class GlobalSparseAttn(nn.Module):
    """Attention among every ``sr``-th pixel of the map; the result is propagated back by a transposed conv."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

        self.sr = sr_ratio
        self.sampler: nn.Module
        self.local_prop: nn.Module
        self.norm: nn.Module
        if self.sr > 1:
            self.sampler = nn.AvgPool2d(kernel_size=(1, 1), stride=(self.sr, self.sr), padding=(0, 0))
            self.local_prop = nn.ConvTranspose2d(
                dim,
                dim,
                kernel_size=(self.sr, self.sr),
                stride=(self.sr, self.sr),
                padding=(0, 0),
                output_padding=(0, 0),
                groups=dim,
            )
            self.norm = nn.LayerNorm(dim)
        else:
            self.local_prop = nn.Identity()
            self.sampler = nn.Identity()
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.size()
        if self.sr > 1:
            x = self.sampler(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)

        qkv = self.qkv(x).reshape(B, -1, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, -1, C)

        if self.sr > 1:
            x = x.permute(0, 2, 1).reshape(B, C, int(H / self.sr), int(W / self.sr))
            x = self.local_prop(x).reshape(B, C, -1).permute(0, 2, 1)
            x = self.norm(x)

        return self.proj(x)  # type: ignore[no-any-return]


class LocalAgg(nn.Module):
    """Conv position embedding, BN -> 1x1 -> depthwise 5x5 -> 1x1 branch, BN -> conv MLP branch."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.attn = nn.Conv2d(dim, dim, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2), groups=dim)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMLP(in_features=dim, hidden_features=int(dim * mlp_ratio), out_features=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))  # type: ignore[no-any-return]


class SelfAttn(nn.Module):
    """Conv position embedding, then pre-norm sparse attention and MLP on the flattened map."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, sr_ratio: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = GlobalSparseAttn(dim, num_heads=num_heads, sr_ratio=sr_ratio)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(in_features=dim, hidden_features=int(dim * mlp_ratio), out_features=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        B, C, H, W = x.size()
        x = x.flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.transpose(1, 2).reshape(B, C, H, W)


class LGLBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, sr_ratio: int) -> None:
        super().__init__()
        self.local_agg: nn.Module = LocalAgg(dim, mlp_ratio, drop_path) if sr_ratio > 1 else nn.Identity()
        self.self_attn = SelfAttn(dim, num_heads, mlp_ratio, drop_path, sr_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.self_attn(self.local_agg(x))  # type: ignore[no-any-return]


class PatchEmbed(nn.Module):
    """Non-overlapping patch conv, LayerNorm over channels (as tokens), back to a map."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_channels,
            embed_dim,
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            padding=(0, 0),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        B, _, H, W = x.size()
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()


class EdgeViTSage(nn.Module):
    """One stage (Birder's spelling of the class name)."""

    def __init__(
        self,
        patch_size: int,
        in_channels: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: list[float],
        sr_ratio: int,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_channels=in_channels, embed_dim=embed_dim)
        self.blocks = nn.Sequential(
            *[
                LGLBlock(embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path=drop_path[i], sr_ratio=sr_ratio)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.patch_embed(x))  # type: ignore[no-any-return]


class EdgeViT(StagedConvNet):
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
        depths: list[int] = list(config["depth"])
        embed_dims: list[int] = list(config["embed_dim"])
        head_dim: int = config["head_dim"]
        self.head_bias = config.get("head_bias", False)  # Birder drops the classifier bias by default
        drop_path_rate: float = config.get("drop_path_rate", 0.1)
        if len(depths) != len(embed_dims) or not 1 <= len(depths) <= len(_PATCH_SIZES):
            raise ValueError(
                f"{type(self).__name__}: depth and embed_dim need one entry per stage, 1 to {len(_PATCH_SIZES)} "
                f"stages, got {len(depths)} and {len(embed_dims)}"
            )
        if head_dim <= 0 or any(dim < head_dim for dim in embed_dims):
            raise ValueError(
                f"{type(self).__name__}: every embed_dim needs at least one head of head_dim channels, "
                f"got embed_dim={embed_dims}, head_dim={head_dim}"
            )

        self.stem = nn.Identity()  # Each stage embeds its own patches
        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (depth, dim) in enumerate(zip(depths, embed_dims)):
            stages[f"stage{i + 1}"] = EdgeViTSage(
                patch_size=_PATCH_SIZES[i],
                in_channels=embed_dims[i - 1] if i > 0 else self.input_channels,
                embed_dim=dim,
                depth=depth,
                num_heads=dim // head_dim,
                mlp_ratio=_MLP_RATIO,
                drop_path=dpr[i],
                sr_ratio=_SR_RATIOS[i],
            )

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.BatchNorm2d(embed_dims[-1]),
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
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.zeros_(m.bias)
                nn.init.ones_(m.weight)

    def freeze_stages(self, up_to_stage: int) -> None:
        """The first stage's patch embedding is the stem: frozen whatever ``up_to_stage`` (0 included)."""

        stage1 = self.body[0]
        assert isinstance(stage1, EdgeViTSage)
        for param in stage1.patch_embed.parameters():
            param.requires_grad_(False)

        super().freeze_stages(up_to_stage)
