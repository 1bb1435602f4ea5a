"""EfficientFormer v2 ("Rethinking Vision Transformers for MobileNet Size and Speed", https://arxiv.org/abs/2212.08059),
laid out as Birder lays it out.

Every block has a BN conv MLP with a depthwise middle conv; the last ``num_vit`` blocks of stages 3 and 4 also run
2D attention with talking heads, a local value branch and a learned relative-position bias (stage 3 attends on a
stride-2 map and upsamples back). Stage 4 downsamples with a conv plus an attention whose queries are pooled. The
head averages a classifier and a distillation classifier.

The bias index tables are non-persistent buffers (``compute_buffers``); they and the biases are laid out for the
configured size: ``adjust_size`` re-interpolates them with Birder's arithmetic, and dynamic sizes are refused.
"""

import math
from collections import OrderedDict
from typing import Any
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import StochasticDepth

from birder_exp.layers import LayerScale2d
from birder_exp.layers.attention_bias import relative_position_index
from birder_exp.net.base import interpolate_attention_bias
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.distilled_head import DistilledHeadNet
from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("embed_dims", "depths", "drop_path_rate", "num_vit", "mlp_ratios")
_LAYER_SCALE = 1e-5


def _conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Module:
    return Conv2dNormActivation(
        in_channels,
        out_channels,
        kernel_size=(kernel, kernel),
        stride=(stride, stride),
        padding=(kernel // 2, kernel // 2),
        groups=groups,
        activation_layer=None,
    )


def _conv_bn_gelu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Module:
    return Conv2dNormActivation(
        in_channels,
        out_channels,
        kernel_size=(kernel, kernel),
        stride=(stride, stride),
        padding=(kernel // 2, kernel // 2),
        groups=groups,
        activation_layer=nn.GELU,
        inplace=None,
    )


class Attention2d(nn.Module):
    """Talking-heads attention over a (possibly stride-2) map, a depthwise local value branch, GELU, projection."""

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int,
        attn_ratio: float,
        resolution: tuple[int, int],
        stride: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.stride_conv: nn.Module
        self.upsample: nn.Module
        if stride is not None:
            resolution = (math.ceil(resolution[0] / stride), math.ceil(resolution[1] / stride))
            self.stride_conv = _conv_bn(dim, dim, kernel=3, stride=stride, groups=dim)
            self.upsample = nn.Upsample(scale_factor=stride, mode="bilinear")
        else:
            self.stride_conv = nn.Identity()
            self.upsample = nn.Identity()

        self.resolution = resolution
        self.N = resolution[0] * resolution[1]
        self.dh = int(attn_ratio * key_dim) * num_heads
        kh = key_dim * num_heads

        self.q = _conv_bn(dim, kh)
        self.k = _conv_bn(dim, kh)
        self.v = _conv_bn(dim, self.dh)
        self.v_local = _conv_bn(self.dh, self.dh, kernel=3, groups=self.dh)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.act = nn.GELU()
        self.proj = _conv_bn(self.dh, dim)

        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        self.attention_bias_idxs: torch.Tensor
        self.compute_buffers(None)

    def compute_buffers(self, device: Optional[torch.device]) -> None:
        self.register_buffer("attention_bias_idxs", relative_position_index(self.resolution, device), persistent=False)

    def set_resolution(self, old_resolution: tuple[int, int], resolution: tuple[int, int]) -> None:
        """Attend on a new grid: biases interpolated from the old one, index table rebuilt."""

        self.resolution = resolution
        self.N = resolution[0] * resolution[1]
        with torch.no_grad():
            self.attention_biases = nn.Parameter(
                interpolate_attention_bias(self.attention_biases, old_resolution, resolution),
                requires_grad=self.attention_biases.requires_grad,
            )
        self.compute_buffers(self.attention_biases.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.size(0)
        x = self.stride_conv(x)

        q = self.q(x).reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)
        k = self.k(x).reshape(B, self.num_heads, -1, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)

        attn = (q @ k) * self.scale
        attn = attn + self.attention_biases[:, self.attention_bias_idxs]
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))

        x = (attn @ v).transpose(2, 3).reshape(B, self.dh, self.resolution[0], self.resolution[1]) + v_local
        return self.proj(self.act(self.upsample(x)))  # type: ignore[no-any-return]


class LocalGlobalQuery(nn.Module):
    """Stride-2 queries: a depthwise 3x3 conv plus a 1x1 stride-2 average (subsampling), projected."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=(1, 1), stride=(2, 2), padding=(0, 0))
        self.local = nn.Conv2d(in_dim, in_dim, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), groups=in_dim)
        self.proj = _conv_bn(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.local(x) + self.pool(x))  # type: ignore[no-any-return]


class Attention2dDownsample(nn.Module):
    """Attention from the half-resolution queries to the full-resolution keys, with a stride-2 local value."""

    def __init__(
        self, dim: int, key_dim: int, out_dim: int, num_heads: int, attn_ratio: float, resolution: tuple[int, int]
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.set_grid(resolution)
        self.dh = int(attn_ratio * key_dim) * num_heads
        kh = key_dim * num_heads

        self.q = LocalGlobalQuery(dim, kh)
        self.k = _conv_bn(dim, kh)
        self.v = _conv_bn(dim, self.dh)
        self.v_local = _conv_bn(self.dh, self.dh, kernel=3, stride=2, groups=self.dh)
        self.act = nn.GELU()
        self.proj = _conv_bn(self.dh, out_dim)

        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        self.attention_bias_idxs: torch.Tensor
        self.compute_buffers(None)

    def set_grid(self, resolution: tuple[int, int]) -> None:
        self.resolution = resolution
        self.resolution2 = (math.ceil(resolution[0] / 2), math.ceil(resolution[1] / 2))
        self.N = resolution[0] * resolution[1]
        self.N2 = self.resolution2[0] * self.resolution2[1]

    def compute_buffers(self, device: Optional[torch.device]) -> None:
        idxs = relative_position_index(self.resolution, device, query_step=2)
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def set_resolution(self, old_resolution: tuple[int, int], resolution: tuple[int, int]) -> None:
        self.set_grid(resolution)
        with torch.no_grad():
            self.attention_biases = nn.Parameter(
                interpolate_attention_bias(self.attention_biases, old_resolution, resolution),
                requires_grad=self.attention_biases.requires_grad,
            )
        self.compute_buffers(self.attention_biases.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.size(0)
        q = self.q(x).reshape(B, self.num_heads, -1, self.N2).permute(0, 1, 3, 2)
        k = self.k(x).reshape(B, self.num_heads, -1, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)

        attn = (q @ k) * self.scale
        attn = (attn + self.attention_biases[:, self.attention_bias_idxs]).softmax(dim=-1)

        x = (attn @ v).transpose(2, 3).reshape(B, self.dh, self.resolution2[0], self.resolution2[1]) + v_local
        return self.proj(self.act(x))  # type: ignore[no-any-return]


class Downsample(nn.Module):
    """Strided conv + BN, plus (stage 4) the downsampling attention added to it."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        resolution: tuple[int, int],
        use_attn: bool,
    ) -> None:
        super().__init__()
        self.conv = Conv2dNormActivation(
            in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding, activation_layer=None
        )
        self.attn: Optional[Attention2dDownsample] = None
        if use_attn is True:
            self.attn = Attention2dDownsample(
                dim=in_channels, key_dim=16, out_dim=out_channels, num_heads=8, attn_ratio=4, resolution=resolution
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        if self.attn is not None:
            return self.attn(x) + out

        return out


class ConvMLP(nn.Module):
    """1x1+BN+GELU -> depthwise 3x3+BN+GELU -> 1x1+BN."""

    def __init__(self, in_features: int, hidden_features: int, drop: float) -> None:
        super().__init__()
        self.fc1 = _conv_bn_gelu(in_features, hidden_features, kernel=1)
        self.mid = _conv_bn_gelu(hidden_features, hidden_features, kernel=3, groups=hidden_features)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = _conv_bn(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.mid(self.fc1(x)))
        return self.drop2(self.fc2(x))  # type: ignore[no-any-return]


class EfficientFormerBlock(nn.Module):
    """Optional attention branch, then the MLP branch, each with layer scale and drop path."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: int,
        proj_drop: float,
        drop_path: float,
        layer_scale_init_value: float,
        resolution: tuple[int, int],
        stride: Optional[int],
        use_attn: bool,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.stride = stride
        self.use_attn = use_attn
        self.token_mixer: Optional[Attention2d] = None
        self.ls1: Optional[LayerScale2d] = None
        self.drop_path1: Optional[StochasticDepth] = None
        if use_attn is True:
            self.token_mixer = Attention2d(
                dim, key_dim=32, num_heads=8, attn_ratio=4.0, resolution=resolution, stride=stride
            )
            self.ls1 = LayerScale2d(dim, layer_scale_init_value)
            self.drop_path1 = StochasticDepth(drop_path, mode="row")

        self.mlp = ConvMLP(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale2d(dim, layer_scale_init_value)
        self.drop_path2 = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mixer is not None and self.ls1 is not None and self.drop_path1 is not None:
            x = x + self.drop_path1(self.ls1(self.token_mixer(x)))

        return x + self.drop_path2(self.ls2(self.mlp(x)))  # type: ignore[no-any-return]


class EfficientFormerStage(nn.Module):
    def __init__(
        self,
        dim: int,
        dim_out: int,
        depth: int,
        resolution: tuple[int, int],
        downsample: bool,
        block_stride: Optional[int],
        downsample_use_attn: bool,
        block_use_attn: bool,
        num_vit: int,
        mlp_ratios: list[int],
        proj_drop: float,
        drop_path: list[float],
        layer_scale_init_value: float,
    ) -> None:
        super().__init__()
        self.downsample = downsample
        self.downsample_block: nn.Module
        if downsample is True:
            self.downsample_block = Downsample(
                dim,
                dim_out,
                kernel_size=(3, 3),
                stride=(2, 2),
                padding=(1, 1),
                resolution=resolution,
                use_attn=downsample_use_attn,
            )
            resolution = (math.ceil(resolution[0] / 2), math.ceil(resolution[1] / 2))
        elif dim != dim_out:
            raise ValueError(
                f"EfficientFormerStage: a stage without downsampling keeps its width, got {dim} -> {dim_out}"
            )
        else:
            self.downsample_block = nn.Identity()

        first_attn = depth - num_vit  # The last num_vit blocks attend (where the stage allows attention)
        self.blocks = nn.Sequential(
            *[
                EfficientFormerBlock(
                    dim_out,
                    mlp_ratio=mlp_ratios[i],
                    proj_drop=proj_drop,
                    drop_path=drop_path[i],
                    layer_scale_init_value=layer_scale_init_value,
                    resolution=resolution,
                    stride=block_stride,
                    use_attn=block_use_attn and i >= first_attn,
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample_block(x))  # type: ignore[no-any-return]


class EfficientFormer_v2(DistilledHeadNet, StagedConvNet):
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
        drop_path_rate: float = config["drop_path_rate"]
        num_vit: int = config["num_vit"]
        mlp_ratios: list[list[int]] = [list(r) for r in config["mlp_ratios"]]
        if not len(embed_dims) == len(depths) == len(mlp_ratios) or len(depths) == 0:
            raise ValueError(
                f"{type(self).__name__}: embed_dims, depths and mlp_ratios need one entry per stage, "
                f"got {len(embed_dims)}, {len(depths)} and {len(mlp_ratios)}"
            )
        if any(len(ratios) != depth for ratios, depth in zip(mlp_ratios, depths)):
            raise ValueError(
                f"{type(self).__name__}: mlp_ratios needs one ratio per block of each stage, "
                f"got {[len(r) for r in mlp_ratios]} for depths {depths}"
            )

        self.stem = nn.Sequential(
            _conv_bn_gelu(self.input_channels, embed_dims[0] // 2, kernel=3, stride=2),
            _conv_bn_gelu(embed_dims[0] // 2, embed_dims[0], kernel=3, stride=2),
        )

        stride = 4
        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, depth in enumerate(depths):
            stages[f"stage{i + 1}"] = EfficientFormerStage(
                embed_dims[i - 1] if i > 0 else embed_dims[0],
                embed_dims[i],
                depth=depth,
                resolution=(math.ceil(self.size[0] / stride), math.ceil(self.size[1] / stride)),
                downsample=i > 0,
                block_stride=2 if i == 2 else None,
                downsample_use_attn=i >= 3,
                block_use_attn=i >= 2,
                num_vit=num_vit,
                mlp_ratios=mlp_ratios[i],
                proj_drop=0.0,
                drop_path=dpr[i],
                layer_scale_init_value=_LAYER_SCALE,
            )
            if i > 0:
                stride *= 2

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.BatchNorm2d(embed_dims[-1]),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
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

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        """Re-grid every attention. Birder floors the stride-4 grid and halves it (floored) per downsampling stage,
        where construction rounds up; the same arithmetic is kept so adjusted checkpoints agree."""

        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return

        old_size = self.size
        super().adjust_size(new_size)
        old_base = (old_size[0] // 4, old_size[1] // 4)
        new_base = (new_size[0] // 4, new_size[1] // 4)
        for stage in self.body.children():
            assert isinstance(stage, EfficientFormerStage)
            if stage.downsample is True:
                downsample = stage.downsample_block
                assert isinstance(downsample, Downsample)
                if downsample.attn is not None:
                    downsample.attn.set_resolution(old_base, new_base)

                old_base = (old_base[0] // 2, old_base[1] // 2)
                new_base = (new_base[0] // 2, new_base[1] // 2)

            for block in stage.blocks:
                assert isinstance(block, EfficientFormerBlock)
                if block.token_mixer is None:
                    continue

                old_grid, new_grid = old_base, new_base
                if block.stride is not None:
                    old_grid = (math.ceil(old_base[0] / block.stride), math.ceil(old_base[1] / block.stride))
                    new_grid = (math.ceil(new_base[0] / block.stride), math.ceil(new_base[1] / block.stride))
                block.token_mixer.set_resolution(old_grid, new_grid)
