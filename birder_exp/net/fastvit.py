"""FastViT ("FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization",
https://arxiv.org/abs/2303.14189) and the MobileCLIP image towers built on it (https://arxiv.org/abs/2311.17049,
https://arxiv.org/abs/2508.20691), laid out as Birder lays them out.

Early stages mix tokens with RepMixer (depthwise conv branches that fold into one conv), late stages with attention
behind a conditional position encoding; stems, patch embeddings and the head are MobileOne / large-kernel blocks.
``reparameterize_model`` folds every re-parameterisable module for inference. Module and parameter names follow
Birder's, so its checkpoints (plain or reparameterised) load strictly.
"""

from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from typing import ClassVar
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from birder_exp.layers import LayerNorm2d
from birder_exp.layers import LayerScale2d
from birder_exp.layers.mobileone_block import MobileOneBlock
from birder_exp.layers.reparam_large_kernel import ReparamLargeKernelConv
from birder_exp.net.base import staged_stochastic_depth_rates
from birder_exp.net.base import trunc_normal_init_
from birder_exp.net.staged_convnet import MaskedStagedConvNet

_REQUIRED_KEYS = (
    "layers",
    "embed_dims",
    "mlp_ratios",
    "se_downsamples",
    "use_cpe",
    "token_mixers",
    "layer_scale_init_value",
    "drop_path_rate",
)
_PER_STAGE_KEYS = ("embed_dims", "mlp_ratios", "se_downsamples", "use_cpe", "token_mixers")
_NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {"BatchNorm2d": nn.BatchNorm2d, "LayerNorm2d": LayerNorm2d}
_TOKEN_MIXERS = ("repmixer", "attention")


def _layer_scale_or_identity(dim: int, init_value: Optional[float]) -> nn.Module:
    return LayerScale2d(dim, init_value) if init_value is not None else nn.Identity()


def _mobileone(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, **kwargs: Any
) -> MobileOneBlock:
    """A single-branch MobileOne block with GELU (FastViT's stem, patch embedding and head flavour)."""

    options: dict[str, Any] = {
        "padding": kernel_size // 2,
        "use_se": False,
        "use_act": True,
        "use_scale_branch": True,
        "num_conv_branches": 1,
        "reparameterized": False,
        "activation_layer": nn.GELU,
    }
    options.update(kwargs)
    return MobileOneBlock(
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        stride=stride,
        groups=groups,
        **options,
    )


class MHSA(nn.Module):
    """Global multi-head self-attention over an NCHW map, heads of width ``head_dim``."""

    def __init__(self, dim: int, head_dim: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        if dim % head_dim != 0:
            raise ValueError(f"FastViT attention: dim ({dim}) must be divisible by head_dim ({head_dim})")

        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.size()
        N = H * W
        x = x.flatten(2).transpose(-2, -1)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dropout_p = self.attn_drop.p if self.training is True else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=self.scale)
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))

        return x.transpose(-2, -1).reshape(B, C, H, W)


class PatchEmbed(nn.Module):
    """Strided depthwise large-kernel conv (7x7 with a 3x3 branch), then a 1x1 MobileOne block."""

    def __init__(
        self, patch_size: int, stride: int, in_channels: int, embed_dim: int, use_se: bool, reparameterized: bool
    ) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(
                in_channels=in_channels,
                out_channels=embed_dim,
                kernel_size=patch_size,
                stride=stride,
                groups=in_channels,
                small_kernel=3,
                use_se=use_se,
                reparameterized=reparameterized,
            ),
            _mobileone(embed_dim, embed_dim, 1, 1, 1, reparameterized=reparameterized),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # type: ignore[no-any-return]


class RepMixer(nn.Module):
    """x + layer_scale(mixer(x) - norm(x)) with depthwise MobileOne blocks; folds into one depthwise conv."""

    def __init__(
        self, dim: int, kernel_size: int, layer_scale_init_value: Optional[float], reparameterized: bool
    ) -> None:
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.reparameterized = reparameterized

        self.reparam_conv: Optional[nn.Conv2d] = None
        if reparameterized is True:
            self.reparam_conv = self._depthwise_conv()
        else:
            # "norm" is a BN-only identity branch (no conv branches, no scale branch)
            self.norm = _mobileone(
                dim, dim, kernel_size, 1, dim, use_act=False, use_scale_branch=False, num_conv_branches=0
            )
            self.mixer = _mobileone(dim, dim, kernel_size, 1, dim, use_act=False)
            self.layer_scale = _layer_scale_or_identity(dim, layer_scale_init_value)

    def _depthwise_conv(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> nn.Conv2d:
        return nn.Conv2d(
            self.dim,
            self.dim,
            kernel_size=self.kernel_size,
            stride=(1, 1),
            padding=self.kernel_size // 2,
            groups=self.dim,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)  # type: ignore[no-any-return]

        return x + self.layer_scale(self.mixer(x) - self.norm(x))  # type: ignore[no-any-return]

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize(self) -> None:
        if self.reparameterized is True:
            return

        self.mixer.reparameterize()
        self.norm.reparameterize()
        mixer_conv = self.mixer.reparam_conv
        norm_conv = self.norm.reparam_conv
        assert mixer_conv is not None and norm_conv is not None
        assert mixer_conv.bias is not None and norm_conv.bias is not None
        assert self.mixer.id_tensor is not None

        if isinstance(self.layer_scale, LayerScale2d):
            gamma = self.layer_scale.gamma
            kernel = self.mixer.id_tensor + gamma.unsqueeze(-1) * (mixer_conv.weight - norm_conv.weight)
            bias = torch.squeeze(gamma) * (mixer_conv.bias - norm_conv.bias)
        else:
            kernel = self.mixer.id_tensor + mixer_conv.weight - norm_conv.weight
            bias = mixer_conv.bias - norm_conv.bias

        self.reparam_conv = self._depthwise_conv(device=kernel.device, dtype=kernel.dtype)
        self.reparam_conv.weight.copy_(kernel)
        assert self.reparam_conv.bias is not None
        self.reparam_conv.bias.copy_(bias)

        del self.mixer
        del self.norm
        del self.layer_scale
        self.reparameterized = True


class ConvMLP(nn.Module):
    """Depthwise 7x7 conv + BN, then a 1x1 conv MLP."""

    def __init__(self, in_channels: int, hidden_channels: int, drop: float) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        self.conv.add_module(
            "conv",
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size=(7, 7),
                stride=(1, 1),
                padding=(3, 3),
                groups=in_channels,
                bias=False,
            ),
        )
        self.conv.add_module("bn", nn.BatchNorm2d(num_features=in_channels))
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_channels, in_channels, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0))
        self.drop = nn.Dropout(drop)

        trunc_normal_init_(self, (nn.Conv2d,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(self.conv(x))))
        return self.drop(self.fc2(x))  # type: ignore[no-any-return]


class RepCPE(nn.Module):
    """Conditional position encoding (https://arxiv.org/abs/2102.10882): x + depthwise conv(x), foldable."""

    def __init__(self, in_channels: int, embed_dim: int, spatial_shape: tuple[int, int], reparameterized: bool) -> None:
        super().__init__()
        self.spatial_shape = spatial_shape
        self.embed_dim = embed_dim
        self.in_channels = in_channels
        self.groups = embed_dim
        self.reparameterized = reparameterized

        self.reparam_conv: Optional[nn.Conv2d] = None
        if reparameterized is True:
            self.reparam_conv = self._conv()
        else:
            self.pe = self._conv()

    def _conv(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> nn.Conv2d:
        return nn.Conv2d(
            self.in_channels,
            self.embed_dim,
            kernel_size=self.spatial_shape,
            stride=(1, 1),
            padding=self.spatial_shape[0] // 2,
            groups=self.groups,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)  # type: ignore[no-any-return]

        return self.pe(x) + x  # type: ignore[no-any-return]

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize(self) -> None:
        """Fold the skip connection into the conv as a centre-tap identity kernel."""

        if self.reparameterized is True:
            return

        input_dim = self.in_channels // self.groups
        kernel_identity = torch.zeros(
            (self.in_channels, input_dim, self.spatial_shape[0], self.spatial_shape[1]),
            dtype=self.pe.weight.dtype,
            device=self.pe.weight.device,
        )
        for i in range(self.in_channels):
            kernel_identity[i, i % input_dim, self.spatial_shape[0] // 2, self.spatial_shape[1] // 2] = 1

        assert self.pe.bias is not None
        kernel = kernel_identity + self.pe.weight
        self.reparam_conv = self._conv(device=kernel.device, dtype=kernel.dtype)
        self.reparam_conv.weight.copy_(kernel)
        assert self.reparam_conv.bias is not None
        self.reparam_conv.bias.copy_(self.pe.bias)

        del self.pe
        self.reparameterized = True


class RepMixerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        kernel_size: int,
        mlp_ratio: float,
        proj_drop: float,
        drop_path: float,
        layer_scale_init_value: Optional[float],
        reparameterized: bool,
    ) -> None:
        super().__init__()
        self.token_mixer = RepMixer(
            dim,
            kernel_size=kernel_size,
            layer_scale_init_value=layer_scale_init_value,
            reparameterized=reparameterized,
        )
        self.mlp = ConvMLP(in_channels=dim, hidden_channels=int(dim * mlp_ratio), drop=proj_drop)
        self.layer_scale = _layer_scale_or_identity(dim, layer_scale_init_value)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        return x + self.drop_path(self.layer_scale(self.mlp(x)))


class AttentionBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        proj_drop: float,
        drop_path: float,
        layer_scale_init_value: Optional[float],
        norm_layer: Callable[..., nn.Module],
    ) -> None:
        super().__init__()
        self.norm = norm_layer(dim)
        self.token_mixer = MHSA(dim, head_dim=32, qkv_bias=False, attn_drop=0.0, proj_drop=0.0)
        self.layer_scale_1 = _layer_scale_or_identity(dim, layer_scale_init_value)
        self.mlp = ConvMLP(in_channels=dim, hidden_channels=int(dim * mlp_ratio), drop=proj_drop)
        self.layer_scale_2 = _layer_scale_or_identity(dim, layer_scale_init_value)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1(self.token_mixer(self.norm(x))))
        return x + self.drop_path(self.layer_scale_2(self.mlp(x)))


class FastVitStage(nn.Module):
    """Optional patch-embedding downsample, optional conditional position encoding, then the blocks."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        depth: int,
        token_mixer_type: str,
        downsample: bool,
        se_downsample: bool,
        down_patch_size: int,
        down_stride: int,
        use_cpe: bool,
        kernel_size: int,
        mlp_ratio: float,
        proj_drop_rate: float,
        drop_path_rate: list[float],
        layer_scale_init_value: Optional[float],
        norm_layer: Callable[..., nn.Module],
        reparameterized: bool,
    ) -> None:
        super().__init__()
        if token_mixer_type not in _TOKEN_MIXERS:
            raise ValueError(f"FastViT: token mixer '{token_mixer_type}' is not one of {list(_TOKEN_MIXERS)}")

        self.downsample: nn.Module
        if downsample is True:
            self.downsample = PatchEmbed(
                patch_size=down_patch_size,
                stride=down_stride,
                in_channels=dim,
                embed_dim=dim_out,
                use_se=se_downsample,
                reparameterized=reparameterized,
            )
        else:
            self.downsample = nn.Identity()

        self.pos_emb: nn.Module
        if use_cpe is True:
            self.pos_emb = RepCPE(dim_out, dim_out, spatial_shape=(7, 7), reparameterized=reparameterized)
        else:
            self.pos_emb = nn.Identity()

        blocks: list[nn.Module] = []
        for block_idx in range(depth):
            if token_mixer_type == "repmixer":
                blocks.append(
                    RepMixerBlock(
                        dim_out,
                        kernel_size=kernel_size,
                        mlp_ratio=mlp_ratio,
                        proj_drop=proj_drop_rate,
                        drop_path=drop_path_rate[block_idx],
                        layer_scale_init_value=layer_scale_init_value,
                        reparameterized=reparameterized,
                    )
                )
            else:
                blocks.append(
                    AttentionBlock(
                        dim_out,
                        mlp_ratio=mlp_ratio,
                        proj_drop=proj_drop_rate,
                        drop_path=drop_path_rate[block_idx],
                        layer_scale_init_value=layer_scale_init_value,
                        norm_layer=norm_layer,
                    )
                )

        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pos_emb(self.downsample(x)))  # type: ignore[no-any-return]


class FastViT(MaskedStagedConvNet):
    default_size: ClassVar[tuple[int, int]] = (256, 256)
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
        cls_ratio = 2.0
        layers: list[int] = list(config["layers"])
        embed_dims: list[int] = list(config["embed_dims"])
        mlp_ratios: list[float] = list(config["mlp_ratios"])
        se_downsamples: list[bool] = list(config["se_downsamples"])
        use_cpe: list[bool] = list(config["use_cpe"])
        token_mixers: list[str] = list(config["token_mixers"])
        layer_scale_init_value: Optional[float] = config["layer_scale_init_value"]
        stem_use_scale_branch: bool = config.get("stem_use_scale_branch", True)
        norm_layer_type: str = config.get("norm_layer_type", "BatchNorm2d")
        drop_path_rate: float = config["drop_path_rate"]

        num_stages = len(layers)
        bad = [key for key in _PER_STAGE_KEYS if len(config[key]) != num_stages]
        if num_stages == 0 or len(bad) > 0:
            raise ValueError(
                f"{type(self).__name__}: layers and {', '.join(_PER_STAGE_KEYS)} need one entry per stage "
                f"(got {num_stages} layers; mismatched: {', '.join(bad) or 'layers is empty'})"
            )
        if norm_layer_type not in _NORM_LAYERS:
            raise ValueError(
                f"{type(self).__name__}: unknown norm_layer_type '{norm_layer_type}', expected one of "
                f"{sorted(_NORM_LAYERS)}"
            )

        self.reparameterized = False
        stem_options = {"use_scale_branch": stem_use_scale_branch}
        self.stem = nn.Sequential(
            _mobileone(self.input_channels, embed_dims[0], 3, 2, 1, **stem_options),
            _mobileone(embed_dims[0], embed_dims[0], 3, 2, embed_dims[0], **stem_options),
            _mobileone(embed_dims[0], embed_dims[0], 1, 1, 1, **stem_options),
        )

        dpr = staged_stochastic_depth_rates(drop_path_rate, layers)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        prev_dim = embed_dims[0]
        for i in range(num_stages):
            stages[f"stage{i + 1}"] = FastVitStage(
                dim=prev_dim,
                dim_out=embed_dims[i],
                depth=layers[i],
                token_mixer_type=token_mixers[i],
                downsample=i > 0 or prev_dim != embed_dims[i],
                se_downsample=se_downsamples[i],
                down_patch_size=7,
                down_stride=2,
                use_cpe=use_cpe[i],
                kernel_size=3,
                mlp_ratio=mlp_ratios[i],
                proj_drop_rate=0.0,
                drop_path_rate=dpr[i],
                layer_scale_init_value=layer_scale_init_value,
                norm_layer=_NORM_LAYERS[norm_layer_type],
                reparameterized=self.reparameterized,
            )
            prev_dim = embed_dims[i]

        self.body = nn.Sequential(stages)
        self.embedding_size = int(embed_dims[-1] * cls_ratio)
        self.features = nn.Sequential(  # type: ignore[assignment]
            _mobileone(embed_dims[-1], self.embedding_size, 3, 1, embed_dims[-1], use_se=True),
            nn.AdaptiveAvgPool2d(output_size=(1, 1)),
            nn.Flatten(1),
        )
        self.return_stages = [f"stage{i + 1}" for i in range(num_stages)]
        self.return_channels = embed_dims
        self.classifier = self.create_classifier()

        self.max_stride = 2 ** (num_stages + 1)
        self.stem_stride = 4
        self.stem_width = embed_dims[0]
        self.feature_dim = embed_dims[-1]

        trunc_normal_init_(self)

    @torch.no_grad()  # type: ignore[untyped-decorator]
    def reparameterize_model(self) -> None:
        """Fold every re-parameterisable module (before loading a reparameterised checkpoint, or to deploy)."""

        if self.reparameterized is True:
            return

        # Outer modules first, as Birder does: a RepMixer folds (and drops) its own MobileOne blocks
        for module in self.modules():
            reparameterize = getattr(module, "reparameterize", None)
            if module is not self and callable(reparameterize):
                reparameterize()

        self.reparameterized = True
