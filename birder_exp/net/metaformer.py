"""MetaFormer ("MetaFormer Baselines for Vision", https://arxiv.org/abs/2210.13452), laid out as Birder lays it out.

One skeleton (stem, four stages of norm -> token mixer -> norm -> MLP blocks, pooled LayerNorm head) covers
PoolFormer v1/v2, ConvFormer and CAFormer; the config picks the token mixer, norm, MLP activation and the
layer / residual scales per stage by name. Module and parameter names follow Birder's, so its checkpoints load
strictly.
"""

from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.layers import LayerNorm2d
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.base import trunc_normal_init_
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_REQUIRED_KEYS = (
    "depths",
    "dims",
    "token_mixer_names",
    "mlp_act_name",
    "mlp_bias",
    "layer_scale_init_values",
    "res_scale_init_values",
    "norm_layer_names",
    "downsample_norm_name",
    "drop_path_rate",
    "mlp_head",
    "mlp_head_dropout",
)
_PER_STAGE_KEYS = ("dims", "token_mixer_names", "layer_scale_init_values", "res_scale_init_values", "norm_layer_names")


class Downsample(nn.Module):
    """Norm, then a strided convolution (the norm sits before the conv, unlike a ConvNeXt stem)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        norm_layer: Optional[Callable[..., nn.Module]],
    ) -> None:
        super().__init__()
        self.norm = norm_layer(in_channels) if norm_layer is not None else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class ConvMLP(nn.Module):
    """Two 1x1 convolutions around an activation (the channel MLP of every MetaFormer block)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        act_layer: Callable[..., nn.Module],
        bias: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Conv2d(
            hidden_features, out_features, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=bias
        )
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))


class Scale(nn.Module):
    """Learned per-channel scale of an NCHW tensor (both the layer scale and the residual scale)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(init_value * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SquaredReLU(nn.Module):
    """relu(x)^2 ("Primer", https://arxiv.org/abs/2109.08668); the MLP head's activation."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(self.relu(x))


class StarReLU(nn.Module):
    """s * relu(x)^2 + b with learned scalars s and b."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0, inplace: bool = False) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=inplace)
        self.scale = nn.Parameter(scale_value * torch.ones(1))
        self.bias = nn.Parameter(bias_value * torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.relu(x) ** 2 + self.bias


class Attention(nn.Module):
    """Global self-attention over an NCHW map, heads of a fixed width (32), no biases."""

    def __init__(self, dim: int, head_dim: int = 32, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.num_heads = dim // head_dim
        self.attention_dim = self.num_heads * self.head_dim

        self.qkv = nn.Linear(dim, self.attention_dim * 3, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.attention_dim, dim, bias=False)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        B, H, W, _ = x.size()
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dropout_p = self.attn_drop.p if self.training is True else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=self.scale)
        x = x.transpose(1, 2).reshape(B, H, W, self.attention_dim)
        x = self.proj_drop(self.proj(x))
        return x.permute(0, 3, 1, 2)


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with a single group: normalises over (C, H, W) with a per-channel affine."""

    def __init__(self, num_channels: int) -> None:
        super().__init__(num_groups=1, num_channels=num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class GroupNorm1NoBias(nn.GroupNorm):
    """Single-group GroupNorm, eps 1e-6, scale only (PoolFormer v2)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__(num_groups=1, num_channels=num_channels, eps=1e-6)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm2dNoBias(LayerNorm2d):
    """Channel LayerNorm of an NCHW map, eps 1e-6, scale only."""

    def __init__(self, num_channels: int) -> None:
        super().__init__(num_channels, eps=1e-6, bias=False)


class SepConv(nn.Module):
    """Inverted separable convolution (MobileNet v2's, without norms): 1x1 up, act, depthwise 7x7, 1x1 down."""

    def __init__(
        self,
        dim: int,
        expansion_ratio: float = 2,
        act1_layer: Callable[..., nn.Module] = StarReLU,
        kernel_size: tuple[int, int] = (7, 7),
        padding: tuple[int, int] = (3, 3),
        **kwargs: Any,
    ) -> None:
        super().__init__()
        mid_channels = int(expansion_ratio * dim)
        self.pw_conv1 = nn.Conv2d(dim, mid_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False)
        self.act = act1_layer()
        self.dwconv = nn.Conv2d(
            mid_channels,
            mid_channels,
            kernel_size=kernel_size,
            stride=(1, 1),
            padding=padding,
            groups=mid_channels,
            bias=False,
        )
        self.pw_conv2 = nn.Conv2d(mid_channels, dim, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw_conv2(self.dwconv(self.act(self.pw_conv1(x))))


class Pooling(nn.Module):
    """PoolFormer's mixer (https://arxiv.org/abs/2111.11418): 3x3 average pool minus the input."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


_TOKEN_MIXERS: dict[str, Callable[..., nn.Module]] = {"Pooling": Pooling, "SepConv": SepConv, "Attention": Attention}
_MLP_ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {"StarReLU": StarReLU, "GELU": nn.GELU}
_NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "GroupNorm1": GroupNorm1,
    "GroupNorm1NoBias": GroupNorm1NoBias,
    "LayerNorm2dNoBias": LayerNorm2dNoBias,
}
_DOWNSAMPLE_NORMS: dict[str, Callable[..., nn.Module]] = {
    "Identity": nn.Identity,
    "LayerNorm2dNoBias": LayerNorm2dNoBias,
}


def _scale_or_identity(dim: int, init_value: Optional[float]) -> nn.Module:
    return nn.Identity() if init_value is None else Scale(dim=dim, init_value=init_value)


class MetaFormerBlock(nn.Module):
    """x = res_scale(x) + layer_scale(drop_path(mixer(norm(x)))), then the same with the MLP."""

    def __init__(
        self,
        dim: int,
        token_mixer: Callable[..., nn.Module],
        mlp_act: Callable[..., nn.Module],
        mlp_bias: bool,
        norm_layer: Callable[..., nn.Module],
        proj_drop: float,
        drop_path: float,
        layer_scale_init_value: Optional[float],
        res_scale_init_value: Optional[float],
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.token_mixer = token_mixer(dim=dim, proj_drop=proj_drop)
        self.drop_path1 = StochasticDepth(drop_path, mode="row")
        self.layer_scale1 = _scale_or_identity(dim, layer_scale_init_value)
        self.layer_scale2 = _scale_or_identity(dim, layer_scale_init_value)
        self.res_scale1 = _scale_or_identity(dim, res_scale_init_value)
        self.res_scale2 = _scale_or_identity(dim, res_scale_init_value)
        self.norm2 = norm_layer(dim)
        self.mlp = ConvMLP(dim, 4 * dim, dim, act_layer=mlp_act, bias=mlp_bias, dropout=proj_drop)
        self.drop_path2 = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        x = self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))
        return x


class MetaFormerStage(nn.Module):
    """A strided 3x3 downsample when the width changes, then ``depth`` blocks."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        token_mixer: Callable[..., nn.Module],
        mlp_act: Callable[..., nn.Module],
        mlp_bias: bool,
        downsample_norm: Callable[..., nn.Module],
        norm_layer: Callable[..., nn.Module],
        proj_drop: float,
        dp_rates: list[float],
        layer_scale_init_value: Optional[float],
        res_scale_init_value: Optional[float],
    ) -> None:
        super().__init__()
        self.downsample: nn.Module
        if in_chs == out_chs:
            self.downsample = nn.Identity()
        else:
            self.downsample = Downsample(
                in_chs, out_chs, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), norm_layer=downsample_norm
            )

        self.blocks = nn.Sequential(
            *[
                MetaFormerBlock(
                    dim=out_chs,
                    token_mixer=token_mixer,
                    mlp_act=mlp_act,
                    mlp_bias=mlp_bias,
                    norm_layer=norm_layer,
                    proj_drop=proj_drop,
                    drop_path=dp_rates[i],
                    layer_scale_init_value=layer_scale_init_value,
                    res_scale_init_value=res_scale_init_value,
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


def _lookup(kind: str, table: dict[str, Callable[..., nn.Module]], name: str) -> Callable[..., nn.Module]:
    if name not in table:
        raise ValueError(f"MetaFormer: unknown {kind} '{name}', expected one of {sorted(table)}")

    return table[name]


class MetaFormer(MaskedStagedConvNet):
    block_group_regex: ClassVar[Optional[str]] = r"body\.stage(\d+)\.blocks\.(\d+)"
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
        depths: list[int] = list(config["depths"])
        num_stages = len(depths)
        bad = [key for key in _PER_STAGE_KEYS if len(config[key]) != num_stages]
        if num_stages == 0 or len(bad) > 0:
            raise ValueError(
                f"{type(self).__name__}: depths and {', '.join(_PER_STAGE_KEYS)} need one entry per stage "
                f"(got {num_stages} depths; mismatched: {', '.join(bad) or 'depths is empty'})"
            )

        dims: list[int] = list(config["dims"])
        token_mixers = [_lookup("token_mixer_name", _TOKEN_MIXERS, n) for n in config["token_mixer_names"]]
        mlp_act = _lookup("mlp_act_name", _MLP_ACTIVATIONS, config["mlp_act_name"])
        mlp_bias: bool = config["mlp_bias"]
        layer_scale_init_values: list[Optional[float]] = config["layer_scale_init_values"]
        res_scale_init_values: list[Optional[float]] = config["res_scale_init_values"]
        norm_layers = [_lookup("norm_layer_name", _NORM_LAYERS, n) for n in config["norm_layer_names"]]
        downsample_norm = _lookup("downsample_norm_name", _DOWNSAMPLE_NORMS, config["downsample_norm_name"])
        drop_path_rate: float = config["drop_path_rate"]
        drop_path_uniform: bool = config.get("drop_path_uniform", False)

        # The config's head choice wins over BaseNet's mlp_head default
        self.mlp_head = config["mlp_head"]
        self.mlp_head_dropout: float = config["mlp_head_dropout"]
        self.stem = nn.Sequential(
            nn.Conv2d(self.input_channels, dims[0], kernel_size=(7, 7), stride=(4, 4), padding=(2, 2)),
            downsample_norm(dims[0]),
        )

        dp_rates = staged_stochastic_depth_rates(drop_path_rate, depths, constant=drop_path_uniform)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        prev_dim = dims[0]
        for i in range(num_stages):
            stages[f"stage{i + 1}"] = MetaFormerStage(
                prev_dim,
                dims[i],
                depth=depths[i],
                token_mixer=token_mixers[i],
                mlp_act=mlp_act,
                mlp_bias=mlp_bias,
                downsample_norm=downsample_norm,
                norm_layer=norm_layers[i],
                proj_drop=0.0,
                dp_rates=dp_rates[i],
                layer_scale_init_value=layer_scale_init_values[i],
                res_scale_init_value=res_scale_init_values[i],
            )
            prev_dim = dims[i]

        self.body = nn.Sequential(stages)
        self.features = nn.Sequential(  # type: ignore[assignment]
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            LayerNorm2d(dims[-1], eps=1e-6),
            nn.Flatten(1),
        )
        self.return_channels = dims
        self.embedding_size = dims[-1]
        self.classifier = self.create_classifier()

        self.max_stride = 4 * 2 ** (num_stages - 1)
        self.stem_stride = 4
        self.stem_width = dims[0]
        self.feature_dim = dims[-1]

        trunc_normal_init_(self, (nn.Conv2d, nn.Linear))

    def _get_input_conv(self) -> nn.Conv2d:
        conv = self.stem.get_submodule("0")
        assert isinstance(conv, nn.Conv2d)
        return conv

    def checkpoint_blocks(self) -> Iterator[nn.Module]:
        """Checkpoint units, in Birder's order: each stage's downsample, then each of its blocks."""

        for stage in self.body.children():
            assert isinstance(stage, MetaFormerStage)
            yield stage.downsample
            yield from stage.blocks.children()

    def create_classifier(
        self, embed_dim: Optional[int] = None, head_bias: Optional[bool] = None, mlp_head: Optional[bool] = None
    ) -> nn.Module:
        """MetaFormer's own MLP head (4x wide, squared ReLU, LayerNorm, dropout) when ``mlp_head`` is set."""

        if self.num_classes == 0:
            return nn.Identity()

        embed_dim = self.embedding_size if embed_dim is None else embed_dim
        head_bias = self.head_bias if head_bias is None else head_bias
        mlp_head = self.mlp_head if mlp_head is None else mlp_head
        if mlp_head is False:
            return nn.Linear(embed_dim, self.num_classes, bias=head_bias)

        return nn.Sequential(
            nn.Linear(embed_dim, 4 * embed_dim),
            SquaredReLU(),
            nn.LayerNorm(4 * embed_dim),
            nn.Dropout(self.mlp_head_dropout),
            nn.Linear(4 * embed_dim, self.num_classes, bias=head_bias),
        )
