"""ViT, Birder-exact: the plain Vision Transformer and its many config variants.

Covers "An Image is Worth 16x16 Words" (https://arxiv.org/abs/2010.11929), registers
("Vision Transformers Need Registers", https://arxiv.org/abs/2309.16588), DeiT III
(https://arxiv.org/abs/2204.07118), SoViT shapes (https://arxiv.org/abs/2305.13035), Soft MoE
(https://arxiv.org/abs/2308.00951) and the hMLP stem ("Three things everyone should know about Vision
Transformers", https://arxiv.org/abs/2203.09795).

Module and attribute names follow Birder's, so its checkpoints load with ``strict=True``. The special tokens sit
in front of the patch tokens in the order ``[REG..., CLS, PATCH...]``.

``PatchEmbed``, ``hMLPStem`` and ``adjust_position_embedding`` live in :mod:`birder_exp.layers.patch_embed` and
are re-exported here, where Birder's sibling families (RoPE ViT, DeiT, ...) import them from.
"""

import logging
from functools import partial
from typing import Any
from typing import Optional

import torch
import torch.nn.functional as F

from birder_exp.layers.ffn import FFN
from birder_exp.layers.patch_embed import PatchEmbed
from birder_exp.layers.patch_embed import adjust_position_embedding
from birder_exp.layers.patch_embed import hMLPStem
from birder_exp.net.vit_common import EncoderBase
from birder_exp.net.vit_common import PreNormBlockBase
from birder_exp.net.vit_common import SelfAttentionBase
from birder_exp.net.vit_common import ViTLikeNet

__all__ = [
    "Attention",
    "Encoder",
    "EncoderBlock",
    "PatchEmbed",
    "ViT",
    "adjust_position_embedding",
    "apply_attention_mask",
    "hMLPStem",
]

logger = logging.getLogger(__name__)


def apply_attention_mask(attn: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Apply an SDPA-style mask to explicit attention scores (bool: True attends, float: additive)."""

    if attn_mask is None:
        return attn
    if attn_mask.dtype == torch.bool:
        return attn.masked_fill(attn_mask.logical_not(), float("-inf"))

    return attn + attn_mask


class Attention(SelfAttentionBase):
    """Multi-head self-attention; fused SDPA unless the attention weights are asked for."""

    def forward(
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        average_attn_weights: bool = False,
        is_causal: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, N, C) -> ((B, N, C), weights): weights are (B, heads, N, N), or (B, N, N) when averaged,
        and only computed when ``need_weights`` (otherwise None). Bool masks mark allowed positions."""

        B, N, C = x.size()
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = self.q_norm(q)
        k = self.k_norm(k)

        weights: Optional[torch.Tensor] = None
        if need_weights is True:
            scores = (q @ k.transpose(-2, -1)) * self.scale
            if is_causal is True:
                scores = scores + torch.full((N, N), float("-inf"), dtype=scores.dtype, device=scores.device).triu_(
                    diagonal=1
                )

            probs = apply_attention_mask(scores, attn_mask).softmax(dim=-1)
            weights = probs.mean(dim=1) if average_attn_weights is True else probs
            x = self.attn_drop(probs) @ v
        else:
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
        x = self.proj(self.norm(x))
        return (self.proj_drop(x), weights)


class EncoderBlock(PreNormBlockBase):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each optionally layer-scaled."""

    attention_type = Attention

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        attn_out, _ = self.attn(
            self.norm1(x),
            need_weights=self.need_attn,
            average_attn_weights=False,
            is_causal=is_causal,
            attn_mask=attn_mask,
        )
        x = x + self.drop_path(self.layer_scale_1(attn_out))
        return x + self.drop_path(self.layer_scale_2(self.mlp(self.norm2(x))))

    def set_need_attn(self, need_attn: bool = True) -> None:
        self.need_attn = need_attn


class Encoder(EncoderBase):
    """Optional input dropout / pre-norm (``pre_block``) followed by the stack of blocks (``block``).

    With Soft MoE, the second half of the blocks swap their FFN for a ``SoftMoE_FFN``.
    """

    block_type = EncoderBlock

    def _checkpoint_blocks(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        functions: Any = self.block
        if attn_mask is not None or is_causal is True:
            functions = tuple(partial(blk, attn_mask=attn_mask, is_causal=is_causal) for blk in self.block)

        return self._run_checkpointed(functions, x)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.pre_block(x)
        attn_mask, is_causal = self._prepare_attention_mask(x, attn_mask)
        if self.grad_checkpointing is True and torch.is_grad_enabled() is True and not torch.jit.is_scripting():
            return self._checkpoint_blocks(x, attn_mask=attn_mask, is_causal=is_causal)

        if attn_mask is None and is_causal is False:
            return self.block(x)  # type: ignore[no-any-return]

        for blk in self.block:
            x = blk(x, attn_mask=attn_mask, is_causal=is_causal)

        return x

    def forward_features(
        self, x: torch.Tensor, out_indices: Optional[list[int]] = None, attn_mask: Optional[torch.Tensor] = None
    ) -> list[torch.Tensor]:
        """Outputs of the blocks listed in ``out_indices`` (every block when None)."""

        x = self.pre_block(x)
        attn_mask, is_causal = self._prepare_attention_mask(x, attn_mask)
        wanted = set(out_indices) if out_indices is not None else None
        outputs = []
        for idx, blk in enumerate(self.block):
            x = blk(x, attn_mask=attn_mask, is_causal=is_causal)
            if wanted is None or idx in wanted:
                outputs.append(x)

        return outputs

    def set_need_attn(self, need_attn: bool = True) -> None:
        if need_attn is True and self.grad_checkpointing is True:
            raise ValueError("Attention weights cannot be returned when gradient checkpointing is enabled")

        self.need_attn = need_attn
        for blk in self.block:
            blk.set_need_attn(need_attn)  # type: ignore[operator]

    def _validate_grad_checkpointing(self, enable: bool, segments: Optional[int]) -> None:
        if enable is True and self.need_attn is True:
            raise ValueError("Gradient checkpointing cannot be enabled when attention weights are returned")

        super()._validate_grad_checkpointing(enable, segments)


class ViT(ViTLikeNet):
    """Vision Transformer; every variant is a config (see catalogue/vit.json).

    Config keys (defaults in brackets): patch_size, num_layers, num_heads, hidden_dim, mlp_dim, drop_path_rate;
    abs_pos_embed [True], pos_embed_special_tokens [True], pos_embed_interpolation_mode [bicubic],
    pos_embed_antialias [False], stem_type [patchify|hmlp], stem_norm_layer_type [None], layer_scale_init_value,
    pre_norm [False], post_norm [True], norm_after_pool [False], qkv_bias [True], qk_norm [False],
    attn_norm [False], num_reg_tokens [0], class_token [True], attn_pool_head [False], attn_pool_type,
    attn_pool_num_heads, attn_pool_special_tokens [False], attn_pool_norm_eps [1e-5], attn_pool_act_layer_type
    [gelu], norm_layer_type [LayerNorm|RMSNorm], norm_layer_eps [1e-6], mlp_layer_type [FFN], soft_moe_num_experts,
    soft_moe_num_slots [1], act_layer_type, out_indices, dropout, attention_dropout, projection_dropout,
    drop_path_uniform [False].
    """

    soft_moe_experts_need_moe_ffn = True

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        super().__init__(input_channels, num_classes, config=config, size=size)
        parts = self._init_common("ViT", "vit_b16")
        self._init_encoder(Encoder, parts)
        self._init_head("ViT", parts)
        self.decoder_block = partial(
            EncoderBlock,
            16,
            mlp_dim=None,
            dropout=0.0,
            attention_dropout=0.0,
            projection_dropout=0.0,
            drop_path=0.0,
            activation_layer=parts.act_layer,
            norm_layer=parts.norm_layer,
            norm_layer_eps=parts.norm_layer_eps,
            mlp_layer=FFN if parts.mlp_layer_type == "SoftMoE_FFN" else parts.mlp_layer,
        )
        self._init_weights()

    def _encode(
        self, x: torch.Tensor, positions: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        out: torch.Tensor = self.encoder(x, attn_mask=attn_mask)
        return out

    def _encode_layers(
        self, x: torch.Tensor, positions: Optional[torch.Tensor], out_indices: Optional[list[int]] = None
    ) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = self.encoder.forward_features(x, out_indices=out_indices)
        return outs
