"""RoPE ViT: a ViT whose attention rotates patch queries and keys by their 2D position.

Paper "Rotary Position Embedding for Vision Transformer", https://arxiv.org/abs/2403.13298. Module and
attribute names follow Birder's ``birder.net.rope_vit`` so its checkpoints load with ``strict=True``.

Token order is ``[registers..., class token, patches...]``. Special tokens are never rotated: the RoPE table
covers the patch grid only and blocks receive it as an argument, so masked encoding can gather it per token.
"""

from collections.abc import Callable
from functools import partial
from typing import Any
from typing import Literal
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from birder_exp.layers.ffn import FFN
from birder_exp.layers.rope import RoPE
from birder_exp.layers.rope import RoPERotationType
from birder_exp.layers.rope import RoPEStyleType
from birder_exp.layers.rope import get_rope_apply_fn
from birder_exp.net.vit_common import EncoderBase
from birder_exp.net.vit_common import PreNormBlockBase
from birder_exp.net.vit_common import SelfAttentionBase
from birder_exp.net.vit_common import ViTLikeNet


class SequentialWithRope(nn.Sequential):
    """A Sequential whose blocks all take the same RoPE table."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for module in self:
            x = module(x, rope)

        return x


class RoPEAttention(SelfAttentionBase):
    """Multi-head self-attention with RoPE applied to the patch part of q and k (special tokens left as is).

    Takes ``SelfAttentionBase``'s arguments, plus the number of leading special tokens and the rotation type.
    """

    def __init__(
        self, *args: Any, num_special_tokens: int, rope_rot_type: RoPERotationType = "standard", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.num_special_tokens = num_special_tokens
        self.apply_rot_fn = get_rope_apply_fn(rope_rot_type)

    def _rotate(self, t: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        n = self.num_special_tokens
        return torch.concat([t[:, :, :n, :], self.apply_rot_fn(t[:, :, n:, :], rope)], dim=2)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, is_causal: bool = False, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        B, N, C = x.size()
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = self._rotate(self.q_norm(q), rope).type_as(v)
        k = self._rotate(self.k_norm(k), rope).type_as(v)

        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scale,
        )
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)  # type: ignore[no-any-return]


class EncoderBlock(PreNormBlockBase):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with optional layer scale.

    ``num_special_tokens`` and ``rope_rot_type`` (keywords) go to its ``RoPEAttention``.
    """

    attention_type = RoPEAttention

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        attn_out = self.attn(self.norm1(x), rope, is_causal=is_causal, attn_mask=attn_mask)
        x = x + self.drop_path(self.layer_scale_1(attn_out))
        return x + self.drop_path(self.layer_scale_2(self.mlp(self.norm2(x))))  # type: ignore[no-any-return]


class Encoder(EncoderBase):
    """Optional dropout / pre-norm (``pre_block``), then the blocks (``block``), which all take the RoPE table.

    ``block_options`` carries the blocks' ``num_special_tokens`` and ``rope_rot_type``.
    """

    block_type = EncoderBlock
    sequential_type = SequentialWithRope

    def _checkpoint_blocks(
        self, x: torch.Tensor, rope: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        blocks = [partial(block, rope=rope, attn_mask=attn_mask, is_causal=is_causal) for block in self.block]
        return self._run_checkpointed(blocks, x)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.pre_block(x)
        attn_mask, is_causal = self._prepare_attention_mask(x, attn_mask)
        if self._checkpointing_active() is True:
            return self._checkpoint_blocks(x, rope, attn_mask=attn_mask, is_causal=is_causal)

        if attn_mask is None and is_causal is False:
            return self.block(x, rope)  # type: ignore[no-any-return]

        for blk in self.block:
            x = blk(x, rope, attn_mask=attn_mask, is_causal=is_causal)

        return x

    def forward_features(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        out_indices: Optional[list[int]] = None,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> list[torch.Tensor]:
        """Outputs of the blocks in ``out_indices`` (all blocks when None)."""

        x = self.pre_block(x)
        attn_mask, is_causal = self._prepare_attention_mask(x, attn_mask)
        wanted = set(out_indices) if out_indices is not None else None
        xs = []
        for idx, blk in enumerate(self.block):
            x = blk(x, rope, attn_mask=attn_mask, is_causal=is_causal)
            if wanted is None or idx in wanted:
                xs.append(x)

        return xs


class MAEDecoderBlock(PreNormBlockBase):
    """Decoder block for MAE-style pre-training; owns its own RoPE table for the full patch grid."""

    attention_type = RoPEAttention

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        num_special_tokens: int,
        activation_layer: Callable[..., nn.Module],
        grid_size: tuple[int, int],
        rope_grid_indexing: Literal["ij", "xy"],
        rope_grid_offset: int,
        rope_temperature: float,
        layer_scale_init_value: Optional[float] = None,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        norm_layer_eps: float = 1e-6,
        mlp_layer: Callable[..., nn.Module] = FFN,
        rope_style: RoPEStyleType = "default",
        rope_rot_type: RoPERotationType = "standard",
    ) -> None:
        super().__init__(
            num_heads,
            hidden_dim,
            None,
            0.0,
            0.0,
            0.0,
            None,
            activation_layer,
            layer_scale_init_value=layer_scale_init_value,
            norm_layer=norm_layer,
            norm_layer_eps=norm_layer_eps,
            mlp_layer=mlp_layer,
            num_special_tokens=num_special_tokens,
            rope_rot_type=rope_rot_type,
        )
        self.rope = RoPE(
            hidden_dim // num_heads,
            temperature=rope_temperature,
            grid_size=grid_size,
            grid_indexing=rope_grid_indexing,
            grid_offset=rope_grid_offset,
            rope_style=rope_style,
            rope_rot_type=rope_rot_type,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1(self.attn(self.norm1(x), self.rope.pos_embed))
        return x + self.layer_scale_2(self.mlp(self.norm2(x)))  # type: ignore[no-any-return]


class RoPE_ViT(ViTLikeNet):
    """ViT with 2D rotary position embedding in every block (absolute position embedding optional, on by default).

    Config keys: those of ViT, plus rope_style [default], rope_rot_type [standard], rope_grid_indexing [ij],
    rope_grid_offset [0], rope_temperature [100.0], rope_shift_coords, rope_jitter_coords, rope_rescale_coords,
    pt_grid_size.
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        owner = type(self).__name__
        parts = self._init_common(owner, "rope_vit_b16")
        cfg = parts.cfg
        rope_rot_type: RoPERotationType = cfg.get("rope_rot_type", "standard")
        pt_grid_size: Optional[tuple[int, int]] = cfg.get("pt_grid_size")

        self.num_heads = parts.num_heads
        self.layer_scale_init_value: Optional[float] = cfg.get("layer_scale_init_value")
        self.norm_layer = parts.norm_layer
        self.norm_layer_eps = parts.norm_layer_eps
        self.decoder_mlp_layer = FFN if parts.mlp_layer_type == "SoftMoE_FFN" else parts.mlp_layer
        self.act_layer = parts.act_layer
        self.rope_rot_type = rope_rot_type
        self.rope_style: RoPEStyleType = cfg.get("rope_style", "default")
        self.rope_grid_indexing: Literal["ij", "xy"] = cfg.get("rope_grid_indexing", "ij")
        self.rope_grid_offset: int = cfg.get("rope_grid_offset", 0)
        self.rope_temperature: float = cfg.get("rope_temperature", 100.0)
        self.pt_grid_size = (pt_grid_size[0], pt_grid_size[1]) if pt_grid_size is not None else None  # JSON: list

        grid_size = (self.size[0] // self.patch_size, self.size[1] // self.patch_size)
        self.rope = RoPE(
            parts.hidden_dim // parts.num_heads,
            temperature=self.rope_temperature,
            grid_size=grid_size,
            grid_indexing=self.rope_grid_indexing,
            grid_offset=self.rope_grid_offset,
            pt_grid_size=self.pt_grid_size,
            rope_style=self.rope_style,
            rope_rot_type=rope_rot_type,
            shift_coords=cfg.get("rope_shift_coords"),
            jitter_coords=cfg.get("rope_jitter_coords"),
            rescale_coords=cfg.get("rope_rescale_coords"),
        )
        self._init_encoder(Encoder, parts, num_special_tokens=self.num_special_tokens, rope_rot_type=rope_rot_type)
        self._init_head(owner, parts)
        self.decoder_block = self._make_decoder_block(grid_size)
        self._init_weights()

    def _make_decoder_block(self, grid_size: tuple[int, int]) -> Callable[[int], nn.Module]:
        """MAE decoder block factory (16 heads) matching this encoder's tokens and RoPE options."""

        return partial(
            MAEDecoderBlock,
            16,
            num_special_tokens=self.num_special_tokens,
            activation_layer=self.act_layer,
            grid_size=grid_size,
            rope_grid_indexing=self.rope_grid_indexing,
            rope_grid_offset=self.rope_grid_offset,
            rope_temperature=self.rope_temperature,
            layer_scale_init_value=self.layer_scale_init_value,
            norm_layer=self.norm_layer,
            norm_layer_eps=self.norm_layer_eps,
            mlp_layer=self.decoder_mlp_layer,
            rope_style=self.rope_style,
            rope_rot_type=self.rope_rot_type,
        )

    def _get_rope_embed(self, H: int, W: int) -> torch.Tensor:
        if self.dynamic_size is False:
            return self.rope.get_pos_embed(self.rope.grid_size)

        return self.rope.get_pos_embed((H // self.patch_size, W // self.patch_size))

    def _positions(self, H: int, W: int, ids_keep: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The RoPE table of the patch grid; per sample, gathered to the kept patches, when ``ids_keep`` is set."""

        rope = self._get_rope_embed(H, W)
        if ids_keep is None:
            return rope

        rope_dim = rope.size(1)
        rope = rope.unsqueeze(0).expand(ids_keep.size(0), -1, -1)
        return torch.gather(rope, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, rope_dim))

    def _encode(
        self, x: torch.Tensor, positions: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        assert positions is not None
        out: torch.Tensor = self.encoder(x, positions, attn_mask=attn_mask)
        return out

    def _encode_layers(
        self, x: torch.Tensor, positions: Optional[torch.Tensor], out_indices: Optional[list[int]] = None
    ) -> list[torch.Tensor]:
        assert positions is not None
        outs: list[torch.Tensor] = self.encoder.forward_features(x, positions, out_indices=out_indices)
        return outs

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        """Resize the position embedding and rebuild the RoPE table (and the decoder's) for a new resolution."""

        new_size = (new_size[0], new_size[1])
        if new_size == self.size:
            return

        super().adjust_size(new_size)
        grid_size = (new_size[0] // self.patch_size, new_size[1] // self.patch_size)
        self.rope.set_grid_size(grid_size)
        self.decoder_block = self._make_decoder_block(grid_size)
