"""HorNet ("HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions",
https://arxiv.org/abs/2207.14284), laid out as Birder lays it out (detection features without per-stage norms).

The spatial mixer is the recursive gated convolution g^n-Conv: one projection makes a gate and a stack of
depthwise-filtered features, and the gate is multiplied through them order by order. In the "gf" variants the
depthwise filter of the last stages is a global-local filter whose global half is a learned filter in the 2-D
Fourier domain, sized from the input resolution (hence square inputs only, and ``adjust_size`` resamples it).
"""

from collections import OrderedDict
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.layers.channels_first_layer_norm import ChannelsFirstLayerNorm
from birder_exp.layers.layer_scale import LayerScale2d
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.base import trunc_normal_init_
from birder_exp.net.staged_convnet import StagedConvNet

_REQUIRED_KEYS = ("depths", "base_dim", "gf_layer", "drop_path_rate")
_GN_CONV_ORDER = (2, 3, 4, 5)
_SCALE = 1.0 / 3.0
_LAYER_SCALE_INIT_VALUE = 1e-6


def filter_sizes(size: tuple[int, ...]) -> list[tuple[int, int]]:
    """The global filter's (height, rfft width) per stage: the stage's grid, with the last axis halved plus one."""

    heights = [size[0] // stride for stride in (4, 8, 16, 32)]
    return [(h, h // 2 + 1) for h in heights]


class GlobalLocalFilter(nn.Module):
    """Half the channels through a depthwise 3x3, half through a learned Fourier-domain filter, interleaved."""

    def __init__(self, dim: int, h: int, w: int) -> None:
        super().__init__()
        self.pre_norm = ChannelsFirstLayerNorm(dim, eps=1e-6)
        self.dw = nn.Conv2d(
            dim // 2, dim // 2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=dim // 2, bias=False
        )
        self.complex_weight = nn.Parameter(torch.empty(dim // 2, h, w, 2, dtype=torch.float32))
        self.post_norm = ChannelsFirstLayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.complex_weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        x1, x2 = torch.chunk(x, 2, dim=1)
        x1 = self.dw(x1)

        x2 = x2.to(torch.float32)
        B, C, a, b = x2.size()
        spectrum = torch.fft.rfft2(x2, dim=(2, 3), norm="ortho")
        spectrum = spectrum * torch.view_as_complex(self.complex_weight.contiguous())
        x2 = torch.fft.irfft2(spectrum, s=(a, b), dim=(2, 3), norm="ortho")

        # Channel pairs (local, global) interleaved
        x = torch.concat([x1.unsqueeze(2), x2.unsqueeze(2)], dim=2).reshape(B, 2 * C, a, b)
        return self.post_norm(x)  # type: ignore[no-any-return]

    def resize(self, h: int, w: int) -> None:
        """Resample the Fourier filter (bilinear, corners aligned) for a new grid."""

        with torch.no_grad():
            weight = F.interpolate(
                self.complex_weight.permute(3, 0, 1, 2), size=(h, w), mode="bilinear", align_corners=True
            ).permute(1, 2, 3, 0)

        self.complex_weight = nn.Parameter(weight, requires_grad=self.complex_weight.requires_grad)


class gnConv(nn.Module):
    """Recursive gated convolution of order ``order``: widths dim / 2^(order-1), ..., dim, gated step by step."""

    def __init__(self, dim: int, order: int, gf_layer: bool, h: int, w: int, scale: float) -> None:
        super().__init__()
        self.order = order
        self.dims = [dim // 2**i for i in range(order)][::-1]
        self.scale = scale
        total = sum(self.dims)
        self.proj_in = nn.Conv2d(dim, 2 * dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.dwconv: nn.Module
        if gf_layer is False:
            self.dwconv = nn.Conv2d(total, total, kernel_size=(7, 7), stride=(1, 1), padding=(3, 3), groups=total)
        else:
            self.dwconv = GlobalLocalFilter(total, h=h, w=w)

        self.proj_out = nn.Conv2d(dim, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.pws = nn.ModuleList(
            nn.Conv2d(self.dims[i], self.dims[i + 1], kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
            for i in range(order - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pwa, abc = torch.split(self.proj_in(x), [self.dims[0], sum(self.dims)], dim=1)
        dw_list = torch.split(self.dwconv(abc) * self.scale, self.dims, dim=1)
        x = pwa * dw_list[0]
        for i, pw in enumerate(self.pws):
            x = pw(x) * dw_list[i + 1]

        return self.proj_out(x)  # type: ignore[no-any-return]


class HorBlock(nn.Module):
    """g^n-Conv then an MLP (channels-last linears), each pre-normed, layer-scaled and residual."""

    def __init__(
        self,
        dim: int,
        layer_scale_init_value: Optional[float],
        order: int,
        gf_layer: bool,
        h: int,
        w: int,
        scale: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = ChannelsFirstLayerNorm(dim, eps=1e-6)
        self.gn_conv = gnConv(dim, order=order, gf_layer=gf_layer, h=h, w=w, scale=scale)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.pw_conv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pw_conv2 = nn.Linear(4 * dim, dim)
        self.layer_scale_1: nn.Module = nn.Identity()
        self.layer_scale_2: nn.Module = nn.Identity()
        if layer_scale_init_value is not None:
            self.layer_scale_1 = LayerScale2d(dim, layer_scale_init_value)
            self.layer_scale_2 = LayerScale2d(dim, layer_scale_init_value)

        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1(self.gn_conv(self.norm1(x))))

        y = x.permute(0, 2, 3, 1)
        y = self.pw_conv2(self.act(self.pw_conv1(self.norm2(y))))
        y = y.permute(0, 3, 1, 2)
        return x + self.drop_path(self.layer_scale_2(y))  # type: ignore[no-any-return]


class HorStage(nn.Module):
    """Optional (norm, 2x2 stride-2 conv) downsampling, then ``depth`` HorBlocks."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        layer_scale_init_value: Optional[float],
        order: int,
        gf_layer: bool,
        h: int,
        w: int,
        scale: float,
        drop_path: list[float],
        depth: int,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.downsample: nn.Module = nn.Identity()
        if downsample is True:
            self.downsample = nn.Sequential(
                ChannelsFirstLayerNorm(dim, eps=1e-6),
                nn.Conv2d(dim, out_dim, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)),
            )
        elif dim != out_dim:
            raise ValueError(f"HorStage: without downsampling the width must stay {dim}, got {out_dim}")

        self.blocks = nn.Sequential(
            *[
                HorBlock(
                    out_dim,
                    layer_scale_init_value=layer_scale_init_value,
                    order=order,
                    gf_layer=gf_layer,
                    h=h,
                    w=w,
                    scale=scale,
                    drop_path=drop_path[i],
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))  # type: ignore[no-any-return]


class HorNet(StagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.blocks\.(\d+)"
    square_only: ClassVar[bool] = True

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
        base_dim: int = config["base_dim"]
        gf_layer: list[bool] = list(config["gf_layer"])
        drop_path_rate: float = config["drop_path_rate"]
        if not len(depths) == len(gf_layer) == len(_GN_CONV_ORDER):
            raise ValueError(
                f"{type(self).__name__}: depths and gf_layer need 4 entries each (one per stage), "
                f"got {len(depths)} and {len(gf_layer)}"
            )
        if base_dim % 2 != 0:
            raise ValueError(f"{type(self).__name__}: base_dim must be even (g^n-Conv halves it), got {base_dim}")

        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        dims = [base_dim, base_dim * 2, base_dim * 4, base_dim * 8]
        sizes = filter_sizes(self.size)

        self.stem = nn.Sequential(
            nn.Conv2d(self.input_channels, dims[0], kernel_size=(4, 4), stride=(4, 4), padding=(0, 0)),
            ChannelsFirstLayerNorm(dims[0], eps=1e-6),
        )

        prev_dim = dims[0]
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, depth in enumerate(depths):
            stages[f"stage{i + 1}"] = HorStage(
                prev_dim,
                dims[i],
                layer_scale_init_value=_LAYER_SCALE_INIT_VALUE,
                order=_GN_CONV_ORDER[i],
                gf_layer=gf_layer[i],
                h=sizes[i][0],
                w=sizes[i][1],
                scale=_SCALE,
                drop_path=dpr[i],
                depth=depth,
                downsample=i > 0,
            )
            prev_dim = dims[i]

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
            nn.LayerNorm(dims[-1], eps=1e-6),
        )
        self.return_channels = list(dims)
        self.embedding_size = dims[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = dims[0]
        self.feature_dim = dims[-1]

        trunc_normal_init_(self, layer_types=(nn.Conv2d, nn.Linear))

    def set_dynamic_size(self, dynamic_size: bool = True) -> None:
        if dynamic_size is True:
            raise ValueError(
                f"{type(self).__name__} does not support dynamic size (its global filters are sized for the input); "
                "use adjust_size(new_size) instead"
            )

        super().set_dynamic_size(dynamic_size)

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        """Resample every global filter for the new (square) resolution."""

        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return

        super().adjust_size(new_size)
        sizes = filter_sizes(new_size)
        for stage, (h, w) in zip(self.body.children(), sizes):
            for module in stage.modules():
                if isinstance(module, GlobalLocalFilter):
                    module.resize(h, w)
