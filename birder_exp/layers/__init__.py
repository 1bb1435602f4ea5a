"""Blocks shared by several families; each written once here."""

from birder_exp.layers.activations import QuickGELU
from birder_exp.layers.activations import get_activation_module
from birder_exp.layers.attention_pool import EfficientProbing
from birder_exp.layers.attention_pool import MultiHeadAttentionPool
from birder_exp.layers.ffn import FFN
from birder_exp.layers.ffn import SwiGLU_FFN
from birder_exp.layers.gem import FixedGeMPool2d
from birder_exp.layers.gem import GeMPool2d
from birder_exp.layers.layer_norm import LayerNorm2d
from birder_exp.layers.layer_scale import LayerScale
from birder_exp.layers.layer_scale import LayerScale2d

__all__ = [
    "EfficientProbing",
    "FFN",
    "FixedGeMPool2d",
    "GeMPool2d",
    "LayerNorm2d",
    "LayerScale",
    "LayerScale2d",
    "MultiHeadAttentionPool",
    "QuickGELU",
    "SwiGLU_FFN",
    "get_activation_module",
]
