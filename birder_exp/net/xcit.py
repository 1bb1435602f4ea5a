"""XCiT ("XCiT: Cross-Covariance Image Transformers", https://arxiv.org/abs/2106.09681), laid out as Birder lays
it out.

Attention runs across channels (a d x d cross-covariance per head) instead of across tokens, so the cost is linear
in the number of patches; a depthwise-conv "local patch interaction" mixes neighbouring tokens. As in Birder, the
XCA blocks are split into four stages (the detection outputs), stochastic depth grows linearly, and the patch
stem accepts patch size 32. Module and parameter names follow Birder's, so its checkpoints load strictly.
"""

import math
from collections import OrderedDict
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import StochasticDepth

from birder_exp.layers.class_attention import ClassAttention
from birder_exp.layers.fourier_position import PositionalEncodingFourier
from birder_exp.layers.masking import mask_tensor
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import TokenRetentionResultType
from birder_exp.net.base import normalize_out_indices
from birder_exp.net.base import stochastic_depth_rates
from birder_exp.net.base import trunc_normal_init_
from birder_exp.net.cait import ClassTokenHead

_REQUIRED_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "eta", "tokens_norm", "drop_path_rate")
_STAGE_ENDS = {12: [3, 5, 7, 11], 24: [7, 11, 15, 23]}  # Last block of each stage, by depth


class SequentialWithSize(nn.Sequential):
    """A Sequential whose modules all take the token grid size with the tokens."""

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:  # type: ignore[override]
        for module in self:
            x = module(x, H, W)

        return x


class ConvPatchEmbed(nn.Module):
    """log2(patch) stride-2 3x3 conv + BN layers (GELU between), widening to ``dim``; returns tokens and grid."""

    def __init__(self, patch_size: Literal[8, 16, 32], in_channels: int, dim: int) -> None:
        super().__init__()
        if patch_size not in (8, 16, 32):
            raise ValueError(f"XCiT: patch_size must be 8, 16 or 32 for the convolutional projection, got {patch_size}")

        num_layers = int(math.log2(patch_size))
        channels = [dim // (2**i) for i in range(num_layers - 1, -1, -1)]
        self.proj = nn.Sequential(
            *[
                Conv2dNormActivation(
                    in_channels if idx == 0 else channels[idx - 1],
                    out_channels,
                    kernel_size=(3, 3),
                    stride=(2, 2),
                    padding=(1, 1),
                    activation_layer=nn.GELU if idx < num_layers - 1 else None,
                    inplace=None,
                )
                for idx, out_channels in enumerate(channels)
            ]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        H, W = x.shape[2], x.shape[3]
        return (x.flatten(2).transpose(1, 2), H, W)


class ClassAttentionBlock(nn.Module):
    """XCiT's class-attention block: every token is normed (``tokens_norm``) but only the class token is updated."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        proj_drop: float,
        drop_path: float,
        eta: float,
        tokens_norm: bool,
    ) -> None:
        super().__init__()
        self.tokens_norm = tokens_norm
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=proj_drop)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, [int(dim * mlp_ratio), dim], activation_layer=nn.GELU, dropout=proj_drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm1 = self.norm1(x)
        # The patch tokens' branch is their normed selves (the original's quirk, kept for checkpoint parity)
        x_attn = torch.concat([self.attn(x_norm1), x_norm1[:, 1:]], dim=1)
        x = x + self.drop_path(self.gamma1 * x_attn)
        if self.tokens_norm is True:
            x = self.norm2(x)
        else:
            x = torch.concat([self.norm2(x[:, 0:1]), x[:, 1:]], dim=1)

        x_res = x
        cls_token = self.gamma2 * self.mlp(x[:, 0:1])
        x = torch.concat([cls_token, x[:, 1:]], dim=1)
        return x_res + self.drop_path(x)


class LPI(nn.Module):
    """Local patch interaction: depthwise 3x3 conv, GELU, BN, depthwise 3x3 conv on the token grid."""

    def __init__(self, in_features: int, out_features: int, kernel_size: tuple[int, int]) -> None:
        super().__init__()
        padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        self.conv1 = nn.Conv2d(
            in_features, in_features, kernel_size=kernel_size, stride=(1, 1), padding=padding, groups=in_features
        )
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(in_features)
        self.conv2 = nn.Conv2d(
            in_features, out_features, kernel_size=kernel_size, stride=(1, 1), padding=padding, groups=out_features
        )

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.size()
        x = x.permute(0, 2, 1).reshape(B, C, H, W)
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.reshape(B, C, N).permute(0, 2, 1)


class XCA(nn.Module):
    """Cross-covariance attention: softmax(temperature * q_hat^T k_hat) over channels, L2-normalised over tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.size()
        # (3, B, heads, head_dim, N): channels play the role of the sequence
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        q = F.normalize(q, dim=-1) * self.temperature
        k = F.normalize(k, dim=-1)
        x = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        x = x.permute(0, 3, 1, 2).reshape(B, N, C)

        return self.proj_drop(self.proj(x))


class XCABlock(nn.Module):
    """XCA, local patch interaction and MLP, each pre-normed, layer-scaled by ``eta`` and residual."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, proj_drop: float, drop_path: float, eta: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = XCA(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=proj_drop)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.local_mp = LPI(in_features=dim, out_features=dim, kernel_size=(3, 3))
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, [int(dim * mlp_ratio), dim], activation_layer=nn.GELU, dropout=proj_drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.gamma3 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.gamma2 * self.local_mp(self.norm2(x), H, W))
        return x + self.drop_path(self.gamma3 * self.mlp(self.norm3(x)))


class XCiT(DetectorBackbone, ClassTokenHead, MaskedTokenRetentionMixin):
    block_group_regex: ClassVar[Optional[str]] = r"block1\.stage(\d+)\.(\d+)"  # Class attention goes with the head

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
        cls_attn_layers = 2
        mlp_ratio = 4.0
        qkv_bias = True
        patch_size: Literal[8, 16, 32] = config["patch_size"]
        embed_dim: int = config["embed_dim"]
        depth: int = config["depth"]
        num_heads: int = config["num_heads"]
        eta: float = config["eta"]
        tokens_norm: bool = config["tokens_norm"]
        drop_path_rate: float = config["drop_path_rate"]
        drop_path_uniform: bool = config.get("drop_path_uniform", False)
        if depth not in _STAGE_ENDS:
            raise ValueError(f"{type(self).__name__}: depth must be one of {sorted(_STAGE_ENDS)}, got {depth}")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"{type(self).__name__}: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )

        out_indices = normalize_out_indices(_STAGE_ENDS[depth], depth)
        self.patch_embed = ConvPatchEmbed(patch_size, self.input_channels, dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        dpr = stochastic_depth_rates(drop_path_rate, depth, constant=drop_path_uniform)

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(
                XCABlock(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    drop_path=dpr[i],
                    eta=eta,
                )
            )
            if i in out_indices:
                stages[f"stage{len(stages) + 1}"] = SequentialWithSize(*layers)
                layers = []

        self.block1 = SequentialWithSize(stages)
        self.block2 = nn.Sequential(
            *[
                ClassAttentionBlock(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=drop_rate,
                    drop_path=0.0,
                    eta=eta,
                    tokens_norm=tokens_norm,
                )
                for _ in range(cls_attn_layers)
            ],
            nn.LayerNorm(embed_dim, eps=1e-6),
        )
        self.pos_embed = PositionalEncodingFourier(hidden_dim=32, dim=embed_dim)

        self.return_channels = [embed_dim] * len(out_indices)
        self.num_special_tokens = 1
        self.embedding_size = embed_dim
        self.classifier = self.create_classifier()

        self.max_stride = patch_size
        self.stem_stride = patch_size
        self.stem_width = embed_dim
        self.feature_dim = embed_dim

        nn.init.trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_init_(self, reset_layer_norm=True)

    def _get_input_conv(self) -> nn.Conv2d:
        conv = self.patch_embed.proj[0][0]  # type: ignore[index]
        assert isinstance(conv, nn.Conv2d)
        return conv

    def strip_for_detection_features(self) -> None:
        self.block2 = nn.Identity()  # type: ignore[assignment]
        self.cls_token = None  # type: ignore[assignment]
        self.classifier = nn.Identity()

    def _embed(
        self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, mask_token: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, int, int]:
        """Patch tokens (masked in place when ``mask`` is given) plus the Fourier position encoding."""

        B = x.size(0)
        x, H, W = self.patch_embed(x)
        if mask is not None:
            grid = x.permute(0, 2, 1).reshape(B, -1, H, W)
            grid = mask_tensor(grid, mask, patch_factor=self.max_stride // self.stem_stride, mask_token=mask_token)
            x = grid.flatten(2).transpose(1, 2)

        pos_encoding = self.pos_embed(B, H, W).reshape(B, -1, x.size(1)).permute(0, 2, 1)
        return (x + pos_encoding, H, W)

    def _encode(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.block1(x, H, W)
        cls_tokens = self.cls_token.expand(x.size(0), -1, -1)
        x = torch.concat((cls_tokens, x), dim=1)
        out: torch.Tensor = self.block2(x)
        return out

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        B = x.size(0)
        x, H, W = self._embed(x)
        out = {}
        for name, module in self.block1.named_children():
            x = module(x, H, W)
            if name in self.return_stages:
                out[name] = x.permute(0, 2, 1).reshape(B, -1, H, W)

        return out

    def freeze_stages(self, up_to_stage: int) -> None:
        """Freeze the patch stem, the position encoding and the first ``up_to_stage`` stages."""

        for param in [*self.patch_embed.parameters(), *self.pos_embed.parameters()]:
            param.requires_grad_(False)

        for idx, module in enumerate(self.block1.children()):
            if idx >= up_to_stage:
                break
            for param in module.parameters():
                param.requires_grad_(False)

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        """Mask patch tokens in place (``mask`` per patch), encode; features as a (B, C, h, w) map."""

        x, H, W = self._embed(x, mask, mask_token)
        x = self._encode(x, H, W)

        return self._retention_result(x, return_keys, lambda tokens: self._patch_token_map(tokens, H, W))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, H, W = self._embed(x)
        return self._encode(x, H, W)
