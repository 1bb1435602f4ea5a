"""MetaFormer (PoolFormer v1/v2, ConvFormer, CAFormer): Birder-exact fixtures, every name built, the mixers."""

from collections.abc import Callable
from typing import Any

import pytest
import torch
from cnn_checks import STANDARD_CHECKS
from cnn_checks import check_custom_variant
from cnn_checks import check_grad_checkpointing
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_meta_builds_without_fixture
from family_checks import meta_build
from torch import nn

from birder_exp.model_registry import registry
from birder_exp.net.metaformer import Attention
from birder_exp.net.metaformer import GroupNorm1NoBias
from birder_exp.net.metaformer import LayerNorm2dNoBias
from birder_exp.net.metaformer import MetaFormer
from birder_exp.net.metaformer import Pooling
from birder_exp.net.metaformer import SepConv
from birder_exp.net.metaformer import SquaredReLU
from birder_exp.net.metaformer import StarReLU

FAMILY = "metaformer"

# A CAFormer-like variant: SepConv then Attention stages, StarReLU, res scale, MLP head
TINY_CAFORMER: dict[str, Any] = {
    "depths": [1, 1, 1, 1],
    "dims": [16, 32, 64, 64],
    "token_mixer_names": ["SepConv", "SepConv", "Attention", "Attention"],
    "mlp_act_name": "StarReLU",
    "mlp_bias": False,
    "layer_scale_init_values": [None, None, None, None],
    "res_scale_init_values": [None, None, 1.0, 1.0],
    "norm_layer_names": ["LayerNorm2dNoBias"] * 4,
    "downsample_norm_name": "LayerNorm2dNoBias",
    "drop_path_rate": 0.1,
    "mlp_head": True,
    "mlp_head_dropout": 0.0,
}


# A PoolFormer-v2-like variant for the behaviour checks (the fixtures cover the full-size maths)
TINY_POOLFORMER: dict[str, Any] = {
    **TINY_CAFORMER,
    "token_mixer_names": ["Pooling"] * 4,
    "norm_layer_names": ["GroupNorm1NoBias"] * 4,
    "dims": [16, 24, 32, 48],
    "drop_path_rate": 0.0,
    "mlp_head": False,
}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("poolformer_test_tiny", MetaFormer, config=TINY_POOLFORMER)
    return "poolformer_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, MetaFormer, 18)


def test_every_other_name_builds_on_meta() -> None:
    others = check_meta_builds_without_fixture(FAMILY)
    assert len(others) == 16
    caformer = meta_build("caformer_b36")
    assert isinstance(caformer.body.stage3.blocks[0].token_mixer, Attention)
    assert isinstance(caformer.body.stage1.blocks[0].token_mixer, SepConv)
    assert isinstance(caformer.classifier, nn.Sequential)  # mlp_head
    assert caformer.classifier[3].p == 0.5
    assert meta_build("convformer_m36").embedding_size == 576


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(MetaFormer, "caformer_test_tiny", {**TINY_CAFORMER, "mlp_head": False}, expected_dim=64)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant_downsample_only_when_width_changes() -> None:
    """Stage 4 keeps stage 3's width: no downsample, so the output stride stops at 16."""

    net = MetaFormer(3, 4, config=TINY_CAFORMER, size=(64, 64)).eval()
    assert isinstance(net.body.stage4.downsample, nn.Identity)
    with torch.inference_mode():
        assert net.forward_features(image(size=(64, 64))).shape == (2, 64, 4, 4)


def test_bad_config() -> None:
    with pytest.raises(ValueError, match=r"MetaFormer needs a config with depths"):
        MetaFormer(3, 10, config={"depths": [1]})
    with pytest.raises(ValueError, match=r"unknown token_mixer_name 'Conv', expected one of"):
        MetaFormer(3, 10, config={**TINY_CAFORMER, "token_mixer_names": ["Conv"] * 4})
    with pytest.raises(ValueError, match=r"unknown norm_layer_name"):
        MetaFormer(3, 10, config={**TINY_CAFORMER, "norm_layer_names": ["BatchNorm"] * 4})
    with pytest.raises(ValueError, match=r"unknown mlp_act_name 'ReLU'"):
        MetaFormer(3, 10, config={**TINY_CAFORMER, "mlp_act_name": "ReLU"})
    with pytest.raises(ValueError, match=r"unknown downsample_norm_name"):
        MetaFormer(3, 10, config={**TINY_CAFORMER, "downsample_norm_name": "GroupNorm1"})
    with pytest.raises(ValueError, match=r"one entry per stage .*mismatched: dims"):
        MetaFormer(3, 10, config={**TINY_CAFORMER, "dims": [16, 32]})


def test_activations_and_norms() -> None:
    x = torch.randn(2, 6, 5, 5)
    act = StarReLU(scale_value=2.0, bias_value=0.5)
    torch.testing.assert_close(act(x), 2.0 * torch.relu(x) ** 2 + 0.5)
    torch.testing.assert_close(SquaredReLU()(x), torch.relu(x) ** 2)
    torch.testing.assert_close(Pooling()(x), nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x)

    gn = GroupNorm1NoBias(6)
    assert gn.bias is None and gn.eps == 1e-6
    flat = x.flatten(1)
    expected = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(gn(x), expected.view_as(x))

    ln = LayerNorm2dNoBias(6)
    assert ln.bias is None
    torch.testing.assert_close(
        ln(x), nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-6).permute(0, 3, 1, 2)
    )


def test_attention_heads_are_32_wide() -> None:
    attn = Attention(96)
    assert attn.num_heads == 3 and attn.qkv.out_features == 3 * 96 and attn.qkv.bias is None
    x = torch.randn(2, 96, 3, 4)
    assert attn(x).shape == x.shape


@pytest.mark.parametrize("check", STANDARD_CHECKS.values(), ids=STANDARD_CHECKS.keys())
def test_standard_behaviour(check: Callable[[str], None], small: str) -> None:
    check(small)


def test_gradient_checkpointing() -> None:
    torch.manual_seed(0)
    net = MetaFormer(3, 4, config={**TINY_CAFORMER, "drop_path_rate": 0.0})
    net.set_grad_checkpointing()
    assert len(net._grad_checkpointing_blocks) == 8  # Each stage's downsample, then its blocks
    net.set_grad_checkpointing(False)
    check_grad_checkpointing(net, segments=3)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
