"""CaiT ("Going deeper with Image Transformers", https://arxiv.org/abs/2103.17239), laid out as Birder lays it out.

Patch tokens run through talking-heads attention blocks with layer scale (``block1``); the class token joins only
at the end, in two class-attention blocks (``block2``) that read the patch tokens without updating them.
Module and parameter names follow Birder's, so its checkpoints load strictly.
"""

import logging
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import MLP
from torchvision.ops import StochasticDepth

from birder_exp.layers.class_attention import ClassAttention
from birder_exp.layers.masking import mask_tensor
from birder_exp.layers.patch_embed import adjust_position_embedding
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import TokenRetentionResultType
from birder_exp.net.base import trunc_normal_init_

logger = logging.getLogger(__name__)

_REQUIRED_KEYS = ("embed_dim", "depth", "num_heads", "init_values", "drop_path_rate")


class PatchEmbed(nn.Module):
    """Non-overlapping patch convolution, flattened to (B, N, C)."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, padding=(0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ClassAttentionBlock(nn.Module):
    """Updates the class token only: attention over [cls, patches], then an MLP, both layer-scaled."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, proj_drop: float, drop_path: float, eta: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=proj_drop)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, [int(dim * mlp_ratio), dim], activation_layer=nn.GELU, dropout=proj_drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor, x_cls: torch.Tensor) -> torch.Tensor:
        u = torch.concat((x_cls, x), dim=1)
        x_cls = x_cls + self.drop_path(self.gamma1 * self.attn(self.norm1(u)))
        return x_cls + self.drop_path(self.gamma2 * self.mlp(self.norm2(x_cls)))


class TalkingHeadAttn(nn.Module):
    """Attention whose logits and weights are mixed across heads (linear maps before and after the softmax)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_l = nn.Linear(num_heads, num_heads)
        self.proj_w = nn.Linear(num_heads, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.size()
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q = qkv[0] * self.scale
        k = qkv[1]
        v = qkv[2]

        # Heads sit on the last axis for the head-mixing linears
        attn = q @ k.transpose(-2, -1)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = attn.softmax(dim=-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = self.attn_drop(attn)

        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class LayerScaleBlock(nn.Module):
    """Pre-norm transformer block (talking-heads attention, MLP), each branch scaled by a learned gamma."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        proj_drop: float,
        attn_drop: float,
        drop_path: float,
        init_values: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TalkingHeadAttn(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, [int(dim * mlp_ratio), dim], activation_layer=nn.GELU, dropout=proj_drop)
        self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
        self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class ClassTokenHead(PreTrainEncoder):
    """The CaiT / XCiT head: patch tokens are encoded first, a class token joins for the last (class-attention)
    blocks, and the embedding is that class token. ``head_modules`` names what ``unfreeze_features`` re-opens."""

    layer_freeze_exempt_parameters: ClassVar[frozenset[str]] = frozenset({"cls_token"})
    head_modules: ClassVar[tuple[str, ...]] = ("block2",)
    if TYPE_CHECKING:  # Not class annotations at runtime: TorchScript would read them as attribute types
        cls_token: nn.Parameter
        num_special_tokens: int

    def freeze(self, freeze_classifier: bool = True, unfreeze_features: bool = False) -> None:
        for param in self.parameters():
            param.requires_grad_(False)

        if freeze_classifier is False:
            for param in self.classifier.parameters():
                param.requires_grad_(True)

        if unfreeze_features is True:
            self.cls_token.requires_grad_(True)
            for name in self.head_modules:
                for param in self.get_submodule(name).parameters():
                    param.requires_grad_(True)

    def flatten_features(self, features: torch.Tensor, include_special_tokens: bool = True) -> torch.Tensor:
        if include_special_tokens is False:
            return features[:, self.num_special_tokens :]

        return features

    def embedding_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, 0]

    def _patch_token_map(self, x: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """The patch tokens of an encoder output ([cls, patches]) as a (B, C, grid_h, grid_w) map."""

        features = x[:, self.num_special_tokens :].permute(0, 2, 1)
        B, C, _ = features.size()
        return features.reshape(B, C, grid_h, grid_w)


class CaiT(ClassTokenHead, MaskedTokenRetentionMixin):
    block_group_regex: ClassVar[Optional[str]] = r"block1\.(\d+)"  # The class-attention blocks go with the head
    head_modules: ClassVar[tuple[str, ...]] = ("block2", "norm")

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

        proj_drop = 0.0
        attn_drop = 0.0
        cls_attn_layers = 2
        mlp_ratio = 4.0
        qkv_bias = True
        patch_size: tuple[int, int] = tuple(config.get("patch_size", (16, 16)))  # type: ignore[assignment]
        embed_dim: int = config["embed_dim"]
        depth: int = config["depth"]
        num_heads: int = config["num_heads"]
        init_values: float = config["init_values"]
        drop_path_rate: float = config["drop_path_rate"]
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"{type(self).__name__}: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )

        self._init_grad_checkpointing()

        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(self.input_channels, embed_dim, patch_size)
        num_patches = (self.size[0] // patch_size[0]) * (self.size[1] // patch_size[1])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))

        # The same drop path rate in every block (CaiT's choice)
        self.block1 = nn.Sequential(
            *[
                LayerScaleBlock(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=drop_path_rate,
                    init_values=init_values,
                )
                for _ in range(depth)
            ]
        )
        self.block2 = nn.ModuleList(
            [
                ClassAttentionBlock(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    drop_path=0.0,
                    eta=init_values,
                )
                for _ in range(cls_attn_layers)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        self.num_special_tokens = 1
        self.embedding_size = embed_dim
        self.classifier = self.create_classifier()

        self.max_stride = patch_size[0]
        self.stem_stride = patch_size[0]
        self.stem_width = embed_dim
        self.feature_dim = embed_dim

        trunc_normal_init_(self, reset_layer_norm=True)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _get_input_conv(self) -> nn.Conv2d:
        return self.patch_embed.proj

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (position embedding added) -> block1 -> class attention -> norm, as [cls, patches]."""

        x = x + self.pos_embed
        if self.grad_checkpointing is True and torch.is_grad_enabled() is True and not torch.jit.is_scripting():
            x = self._run_checkpointed(self.block1, x)
        else:
            x = self.block1(x)

        cls_tokens = self.cls_token.expand(x.size(0), -1, -1)
        for blk in self.block2:
            if self.grad_checkpointing is True and torch.is_grad_enabled() is True and not torch.jit.is_scripting():
                cls_tokens = checkpoint(
                    blk,
                    x,
                    cls_tokens,
                    use_reentrant=self.grad_checkpointing_use_reentrant,
                    preserve_rng_state=self.grad_checkpointing_preserve_rng_state,
                )
            else:
                cls_tokens = blk(x, cls_tokens)

        x = torch.concat((cls_tokens, x), dim=1)
        out: torch.Tensor = self.norm(x)
        return out

    def masked_encoding_retention(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mask_token: Optional[torch.Tensor] = None,
        return_keys: Literal["all", "features", "embedding"] = "features",
    ) -> TokenRetentionResultType:
        """Mask patch embeddings in place (``mask`` per patch), encode; features come back as a (B, C, h, w) map."""

        H, W = x.shape[-2:]
        x = self.patch_embed.proj(x)
        x = mask_tensor(x, mask, patch_factor=self.max_stride // self.stem_stride, mask_token=mask_token)
        x = self._encode(x.flatten(2).transpose(1, 2))

        grid_h = H // self.patch_size[0]
        grid_w = W // self.patch_size[1]
        return self._retention_result(x, return_keys, lambda tokens: self._patch_token_map(tokens, grid_h, grid_w))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(self.patch_embed(x))

    def set_dynamic_size(self, dynamic_size: bool = True) -> None:
        if dynamic_size is True:
            raise RuntimeError(f"{type(self).__name__} does not support dynamic size (its position embedding is fixed)")

        super().set_dynamic_size(dynamic_size)

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        """Resize the position embedding to the new patch grid (bicubic, as Birder does)."""

        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return
        old_size = self.size
        super().adjust_size(new_size)
        with torch.no_grad():
            pos_embed = adjust_position_embedding(
                self.pos_embed,
                (old_size[0] // self.patch_size[0], old_size[1] // self.patch_size[1]),
                (new_size[0] // self.patch_size[0], new_size[1] // self.patch_size[1]),
                0,
            )

        self.pos_embed = nn.Parameter(pos_embed, requires_grad=self.pos_embed.requires_grad)
