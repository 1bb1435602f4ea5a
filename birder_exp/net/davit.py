"""DaViT ("DaViT: Dual Attention Vision Transformers", https://arxiv.org/abs/2204.03645), laid out as Birder lays it
out (window size from the image size, image // 32, unless the config fixes it).

Every stage alternates a spatial block (multi-head attention inside non-overlapping windows) with a channel block
(attention across channels, each "token" a channel over all positions), each preceded by a depthwise-conv position
encoding. Blocks keep NCHW between them, so stages are convnet-shaped and the shared staged base supplies
detection features, freezing, masked encoding and gradient checkpointing. The Florence-2 variants ("fl") use a
differently normalised channel attention and 3x3 downsampling convs.
"""

from abc import ABC
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP
from torchvision.ops import StochasticDepth

from birder_exp.layers.layer_norm import LayerNorm2d
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.base import trunc_normal_init_
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_REQUIRED_KEYS = ("depths", "dims", "heads", "drop_path_rate")
_MLP_RATIO = 4.0
_QKV_BIAS = True


class Stem(nn.Module):
    """7x7 stride-4 conv and a channels-first LayerNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=(7, 7), stride=(4, 4), padding=(3, 3))
        self.norm = LayerNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))  # type: ignore[no-any-return]


class ConvPosEnc(nn.Module):
    """Depthwise-conv position encoding added to its input (optionally GELU'd)."""

    def __init__(self, dim: int, kernel_size: tuple[int, int], act: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            dim,
            dim,
            kernel_size=kernel_size,
            stride=(1, 1),
            padding=((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2),
            groups=dim,
        )
        self.act: nn.Module = nn.GELU() if act is True else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.proj(x))  # type: ignore[no-any-return]


class Downsample(nn.Module):
    """Channels-first norm, then a stride-2 conv; an even kernel pads the bottom/right to a multiple of itself."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_channels)
        self.even_k = kernel_size % 2 == 0
        padding = (0, 0) if self.even_k is True else (kernel_size // 2, kernel_size // 2)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size=(kernel_size, kernel_size), stride=(2, 2), padding=padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:]
        x = self.norm(x)
        if self.even_k is True:
            k_h, k_w = self.conv.kernel_size
            x = F.pad(x, (0, (k_w - W % k_w) % k_w, 0, (k_h - H % k_h) % k_h))

        return self.conv(x)  # type: ignore[no-any-return]


def _split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (B, N, 3C) qkv projection as q, k, v, each (B, heads, N, C / heads)."""

    B, N, C3 = qkv.size()
    q, k, v = qkv.reshape(B, N, 3, num_heads, C3 // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)
    return (q, k, v)


class ChannelAttention(nn.Module):
    """DaViT's channel attention: per head, a (head_dim x head_dim) map from scaled k^T v, applied to q."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.size()
        q, k, v = _split_heads(self.qkv(x), self.num_heads)
        attn = ((k * self.scale).transpose(-1, -2) @ v).softmax(dim=-1)
        x = (attn @ q.transpose(-1, -2)).transpose(-1, -2)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # type: ignore[no-any-return]


class FlorenceChannelAttention(nn.Module):
    """Florence-2's channel attention: q scaled by the token count, the (q^T k) map applied to v."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.size()
        q, k, v = _split_heads(self.qkv(x), self.num_heads)
        attn = ((q * N**-0.5).transpose(-1, -2) @ k).softmax(dim=-1)
        x = (attn @ v.transpose(-1, -2)).transpose(-1, -2)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # type: ignore[no-any-return]


_CHANNEL_ATTENTION: dict[str, type[ChannelAttention | FlorenceChannelAttention]] = {
    "ChannelAttention": ChannelAttention,
    "FlorenceChannelAttention": FlorenceChannelAttention,
}


class WindowAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = _split_heads(self.qkv(x), self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # type: ignore[no-any-return]


class _DualBlock(nn.Module, ABC):
    """The shared skeleton: cpe1 -> norm1 -> attention (residual) -> cpe2 -> norm2 -> MLP (residual), NCHW in/out."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float, cpe_act: bool, attn: nn.Module) -> None:
        super().__init__()
        self.cpe1 = ConvPosEnc(dim=dim, kernel_size=(3, 3), act=cpe_act)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn
        self.cpe2 = ConvPosEnc(dim=dim, kernel_size=(3, 3), act=cpe_act)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, [int(dim * mlp_ratio), dim], activation_layer=nn.GELU)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    @abstractmethod
    def mix(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The attention on normalised tokens (B, H * W, C), same shape out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = self.cpe1(x).flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.mix(self.norm1(x), H, W))

        x = self.cpe2(x.transpose(1, 2).view(B, C, H, W)).flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.transpose(1, 2).view(B, C, H, W)


class ChannelBlock(_DualBlock):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        channel_attention: type[ChannelAttention | FlorenceChannelAttention],
        cpe_act: bool = False,
    ) -> None:
        super().__init__(dim, mlp_ratio, drop_path, cpe_act, channel_attention(dim, num_heads, qkv_bias))

    def mix(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.attn(x)  # type: ignore[no-any-return]


class SpatialBlock(_DualBlock):
    """Window attention over ``window_size`` windows (the map zero-padded at the bottom/right to fit)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int],
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        cpe_act: bool,
    ) -> None:
        super().__init__(dim, mlp_ratio, drop_path, cpe_act, WindowAttention(dim, num_heads, qkv_bias))
        self.dim = dim
        self.window_size = window_size

    def mix(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        wh, ww = self.window_size
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        Hp, Wp = x.shape[1:3]

        windows = x.view(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)
        windows = self.attn(windows)
        x = windows.view(B, Hp // wh, Wp // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        return x[:, :H, :W, :].reshape(B, H * W, C)


class DaViTStage(nn.Module):
    """Optional downsampling, then ``depth`` (spatial, channel) block pairs."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int,
        downsample: bool,
        num_heads: int,
        window_size: tuple[int, int],
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_rates: list[float],
        cpe_act: bool,
        down_kernel_size: int,
        channel_attention: type[ChannelAttention | FlorenceChannelAttention],
    ) -> None:
        super().__init__()
        self.downsample: nn.Module = nn.Identity()
        if downsample is True:
            self.downsample = Downsample(in_channels, out_channels, kernel_size=down_kernel_size)

        blocks: list[nn.Module] = []
        for rate in drop_path_rates[:depth]:
            blocks.append(
                SpatialBlock(
                    out_channels,
                    num_heads=num_heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=rate,
                    cpe_act=cpe_act,
                )
            )
            blocks.append(
                ChannelBlock(
                    out_channels,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=rate,
                    channel_attention=channel_attention,
                    cpe_act=cpe_act,
                )
            )

        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))  # type: ignore[no-any-return]


class DaViT(MaskedStagedConvNet):
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
        down_kernel_size: int = config.get("down_kernel_size", 2)
        channel_attention_type: str = config.get("channel_attention_type", "ChannelAttention")
        depths: list[int] = list(config["depths"])
        dims: list[int] = list(config["dims"])
        heads: list[int] = list(config["heads"])
        drop_path_rate: float = config["drop_path_rate"]
        if channel_attention_type not in _CHANNEL_ATTENTION:
            raise ValueError(
                f"{type(self).__name__}: unknown channel_attention_type {channel_attention_type!r}, "
                f"expected one of {sorted(_CHANNEL_ATTENTION)}"
            )
        if not len(depths) == len(dims) == len(heads) == 4:
            raise ValueError(
                f"{type(self).__name__}: depths, dims and heads need 4 entries each (one per stage), "
                f"got {len(depths)}, {len(dims)} and {len(heads)}"
            )
        for dim, num_heads in zip(dims, heads):
            if dim % num_heads != 0:
                raise ValueError(
                    f"{type(self).__name__}: each dims entry must divide by its heads, got {dims} / {heads}"
                )

        self.window_size = self._window_size(self.size)
        if min(self.window_size) < 1:
            raise ValueError(
                f"{type(self).__name__}: the window (image size // 32) is empty at size {self.size}; "
                "use a size of at least 32 or set window_size"
            )

        self.stem = Stem(self.input_channels, dims[0])
        dpr = staged_stochastic_depth_rates(drop_path_rate, depths)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = dims[0]
        for idx, depth in enumerate(depths):
            stages[f"stage{idx + 1}"] = DaViTStage(
                in_channels,
                dims[idx],
                depth=depth,
                downsample=idx > 0,
                num_heads=heads[idx],
                window_size=self.window_size,
                mlp_ratio=_MLP_RATIO,
                qkv_bias=_QKV_BIAS,
                drop_path_rates=dpr[idx],
                cpe_act=False,
                down_kernel_size=down_kernel_size,
                channel_attention=_CHANNEL_ATTENTION[channel_attention_type],
            )
            in_channels = dims[idx]

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            LayerNorm2d(dims[-1]),
            nn.Flatten(1),
        )
        self.return_channels = list(dims)
        self.embedding_size = dims[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 32
        self.stem_stride = 4
        self.stem_width = dims[0]
        self.feature_dim = dims[-1]

        trunc_normal_init_(self)

    def _window_size(self, size: tuple[int, ...]) -> tuple[int, int]:
        window_size: Optional[list[int]] = None if self.config is None else self.config.get("window_size")
        if window_size is None:
            return (int(size[0] / 2**5), int(size[1] / 2**5))

        return (window_size[0], window_size[1])

    def checkpoint_blocks(self) -> Iterator[nn.Module]:
        """Birder's checkpoint units: each stage's downsampling, then each of its blocks."""

        for stage in self.body:
            assert isinstance(stage, DaViTStage)
            yield stage.downsample
            yield from stage.blocks

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        """Re-derive the window size from the new size (unless the config fixes it); no weights change."""

        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return

        super().adjust_size(new_size)
        self.window_size = self._window_size(new_size)
        for m in self.body.modules():
            if isinstance(m, SpatialBlock):
                m.window_size = self.window_size
