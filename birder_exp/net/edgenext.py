"""EdgeNeXt ("EdgeNeXt: Efficiently Amalgamated CNN-Transformer Architecture for Mobile Vision Applications",
https://arxiv.org/abs/2206.10589), laid out as Birder lays it out.

ConvNeXt-style stages whose last block (from stage 2 on) is an SDTA block: a Res2Net-like cascade of depthwise
convs over channel splits, then XCiT's cross-covariance attention (with a Fourier position encoding in stage 2),
then an inverted bottleneck. Module and parameter names follow Birder's, so its checkpoints load strictly.
"""

import math
from collections import OrderedDict
from functools import partial
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import StochasticDepth

from birder_exp.layers import LayerNorm2d
from birder_exp.layers.fourier_position import PositionalEncodingFourier
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.base import trunc_normal_init_
from birder_exp.net.staged_convnet import StagedConvNet
from birder_exp.net.xcit import XCA

_REQUIRED_KEYS = ("depths", "dims", "heads", "drop_path_rate")

# Per stage, fixed by the architecture
_GLOBAL_BLOCK_COUNTS = (0, 1, 1, 1)
_D2_SCALES = (2, 2, 3, 4)
_KERNEL_SIZES = ((3, 3), (5, 5), (7, 7), (9, 9))
_USE_POS_EMB = (False, True, False, False)


class ConvBlock(nn.Module):
    """Depthwise kxk conv, LayerNorm, inverted MLP on channels-last, layer-scaled residual."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        kernel_size: tuple[int, int],
        expand_ratio: int,
        layer_scale_init_value: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.dw_conv = nn.Conv2d(
            dim,
            dim_out,
            kernel_size=kernel_size,
            stride=(1, 1),
            padding=((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2),
            groups=dim,
        )
        self.norm = nn.LayerNorm(dim_out, eps=1e-6)
        self.pw_conv1 = nn.Linear(dim_out, expand_ratio * dim_out)
        self.act = nn.GELU()
        self.pw_conv2 = nn.Linear(expand_ratio * dim_out, dim_out)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim_out))
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm(self.dw_conv(x).permute(0, 2, 3, 1))
        x = self.gamma * self.pw_conv2(self.act(self.pw_conv1(x)))
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class CrossCovarianceAttn(XCA):
    """XCiT's cross-covariance attention; the attention dropout module is kept for layout parity (rate 0)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=proj_drop)
        if attn_drop != 0.0:
            raise ValueError(
                f"CrossCovarianceAttn: attention dropout is not supported (EdgeNeXt uses 0), got {attn_drop}"
            )

        self.attn_drop = nn.Dropout(attn_drop)


class SDTA(nn.Module):
    """Split depth-wise transpose attention: cascaded depthwise convs, XCA, inverted bottleneck."""

    def __init__(
        self,
        dim: int,
        drop_path: float,
        layer_scale_init_value: float,
        expand_ratio: int,
        use_pos_emb: bool,
        num_heads: int,
        qkv_bias: bool,
        attn_drop: float,
        drop: float,
        num_scales: int,
    ) -> None:
        super().__init__()
        width = math.ceil(dim / num_scales)  # The width of x.chunk(num_scales) splits
        self.width = width
        self.num_scales = max(1, num_scales - 1)
        self.conv_list = nn.ModuleList(
            [
                nn.Conv2d(width, width, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=width)
                for _ in range(self.num_scales)
            ]
        )
        self.pos_embed: Optional[PositionalEncodingFourier] = None
        if use_pos_emb is True:
            self.pos_embed = PositionalEncodingFourier(hidden_dim=32, dim=dim)

        self.norm_xca = nn.LayerNorm(dim, eps=1e-6)
        self.gamma_xca = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.xca = CrossCovarianceAttn(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)

        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw_conv1 = nn.Linear(dim, expand_ratio * dim)
        self.act = nn.GELU()
        self.pw_conv2 = nn.Linear(expand_ratio * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x

        # Each split after the first adds the previous conv's output before its own conv; the last split passes
        spx = x.chunk(len(self.conv_list) + 1, dim=1)
        sp_out = []
        sp = spx[0]
        for i, conv in enumerate(self.conv_list):
            if i > 0:
                sp = sp + spx[i]
            sp = conv(sp)
            sp_out.append(sp)

        sp_out.append(spx[-1])
        x = torch.concat(sp_out, dim=1)

        B, C, H, W = x.size()
        x = x.reshape(B, C, H * W).permute(0, 2, 1)
        if self.pos_embed is not None:
            x = x + self.pos_embed(B, H, W).reshape(B, -1, x.size(1)).permute(0, 2, 1)

        x = x + self.drop_path(self.gamma_xca * self.xca(self.norm_xca(x)))
        x = self.norm(x.reshape(B, H, W, C))
        x = self.gamma * self.pw_conv2(self.act(self.pw_conv1(x)))

        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class EdgeNeXtStage(nn.Module):
    """Optional LayerNorm + 2x2 strided conv downsample, conv blocks, then ``num_global_blocks`` SDTA blocks."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        depth: int,
        num_global_blocks: int,
        num_heads: int,
        scales: int,
        kernel_size: tuple[int, int],
        expand_ratio: int,
        use_pos_emb: bool,
        layer_scale_init_value: float,
        drop_path_rates: list[float],
    ) -> None:
        super().__init__()
        self.downsample: nn.Module
        if stride == 1:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_channels, eps=1e-6),
                nn.Conv2d(in_channels, out_channels, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)),
            )
            in_channels = out_channels

        stage_blocks: list[nn.Module] = []
        for i in range(depth):
            if i < depth - num_global_blocks:
                stage_blocks.append(
                    ConvBlock(
                        dim=in_channels,
                        dim_out=out_channels,
                        kernel_size=kernel_size,
                        expand_ratio=expand_ratio,
                        layer_scale_init_value=layer_scale_init_value,
                        drop_path=drop_path_rates[i],
                    )
                )
            else:
                stage_blocks.append(
                    SDTA(
                        dim=in_channels,
                        num_scales=scales,
                        num_heads=num_heads,
                        expand_ratio=expand_ratio,
                        use_pos_emb=use_pos_emb,
                        layer_scale_init_value=layer_scale_init_value,
                        drop_path=drop_path_rates[i],
                        qkv_bias=True,
                        attn_drop=0.0,
                        drop=0.0,
                    )
                )
            in_channels = out_channels

        self.blocks = nn.Sequential(*stage_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))  # type: ignore[no-any-return]


class EdgeNeXt(StagedConvNet):
    default_size: ClassVar[tuple[int, int]] = (256, 256)

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
        expand_ratio = 4
        layer_scale_init_value = 1e-6
        depths: list[int] = list(config["depths"])
        dims: list[int] = list(config["dims"])
        heads: list[int] = list(config["heads"])
        drop_path_rate: float = config["drop_path_rate"]
        if not len(depths) == len(dims) == len(heads) == len(_D2_SCALES):
            raise ValueError(
                f"{type(self).__name__}: depths, dims and heads need 4 entries each (one per stage), "
                f"got {len(depths)}, {len(dims)} and {len(heads)}"
            )
        bad = [i + 1 for i in range(1, 4) if dims[i] % heads[i] != 0]
        if len(bad) > 0:
            raise ValueError(
                f"{type(self).__name__}: dims must be divisible by heads (stages {bad}), got {dims} / {heads}"
            )

        self.stem = Conv2dNormActivation(
            self.input_channels,
            dims[0],
            kernel_size=(4, 4),
            stride=(4, 4),
            padding=(0, 0),
            bias=True,
            norm_layer=partial(LayerNorm2d, eps=1e-6),
            activation_layer=None,
        )

        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = dims[0]
        for i, (depth, dim, head) in enumerate(zip(depths, dims, heads)):
            stages[f"stage{i + 1}"] = EdgeNeXtStage(
                in_channels=in_channels,
                out_channels=dim,
                stride=1 if i == 0 else 2,  # The stem already brings stride 4
                depth=depth,
                num_global_blocks=_GLOBAL_BLOCK_COUNTS[i],
                num_heads=head,
                scales=_D2_SCALES[i],
                kernel_size=_KERNEL_SIZES[i],
                expand_ratio=expand_ratio,
                use_pos_emb=_USE_POS_EMB[i],
                layer_scale_init_value=layer_scale_init_value,
                drop_path_rates=dpr[i],
            )
            in_channels = dim

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            LayerNorm2d(dims[-1], eps=1e-6),
            nn.Flatten(1),
        )
        self.return_channels = dims
        self.embedding_size = dims[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = dims[0]
        self.feature_dim = dims[-1]

        trunc_normal_init_(self, (nn.Conv2d, nn.Linear))

    def _get_input_conv(self) -> nn.Conv2d:
        conv = self.stem.get_submodule("0")
        assert isinstance(conv, nn.Conv2d)
        return conv
