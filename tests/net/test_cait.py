"""CaiT: Birder-exact on its fixture, every name built, talking heads, class attention, resizing."""

from typing import Any

import pytest
import torch
from cnn_checks import SIZE
from cnn_checks import build
from cnn_checks import check_adjust_input_channels
from cnn_checks import check_adjust_size
from cnn_checks import check_bad_config
from cnn_checks import check_classifier_and_embedding
from cnn_checks import check_custom_variant
from cnn_checks import check_grad_checkpointing
from cnn_checks import check_meta_build
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_class_token_features
from family_checks import check_family_listing
from family_checks import check_head_only_trainable
from family_checks import check_meta_builds_without_fixture
from family_checks import check_token_masked_encoding
from family_checks import meta_build

from birder_exp.model_registry import registry
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.cait import CaiT
from birder_exp.net.cait import TalkingHeadAttn

FAMILY = "cait"
TINY: dict[str, Any] = {"embed_dim": 32, "depth": 2, "num_heads": 4, "init_values": 0.1, "drop_path_rate": 0.0}


@pytest.fixture
def small(clean_registry: None) -> str:
    # Built at the tests' size by default: CaiT's position embedding is fixed to the build size
    registry.register_model_config(
        "cait_test_tiny", type("CaiTAtTestSize", (CaiT,), {"default_size": SIZE}), config=TINY
    )
    return "cait_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, CaiT, 7)
    assert not issubclass(CaiT, DetectorBackbone)  # As in Birder: no detection interface


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 6
    m48 = meta_build("cait_m48")
    assert len(m48.block1) == 48 and len(m48.block2) == 2
    assert all(block.drop_path.p == 0.4 for block in m48.block1)  # Uniform drop path
    assert m48.pos_embed.shape == (1, 196, 768)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(CaiT, "cait_test_custom", TINY, expected_dim=32)


def test_bad_config() -> None:
    check_bad_config(CaiT)
    with pytest.raises(ValueError, match=r"embed_dim \(32\) must be divisible by num_heads \(5\)"):
        CaiT(3, 10, config={**TINY, "num_heads": 5})


def test_talking_heads_attention() -> None:
    """Heads are mixed by proj_l on the logits and by proj_w on the weights; identity maps give plain attention."""

    torch.manual_seed(0)
    attn = TalkingHeadAttn(16, num_heads=4, qkv_bias=True, attn_drop=0.0, proj_drop=0.0).eval()
    with torch.no_grad():
        for proj in (attn.proj_l, attn.proj_w):
            proj.weight.copy_(torch.eye(4))
            proj.bias.zero_()
    x = torch.randn(2, 7, 16)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 4, 4).permute(2, 0, 3, 1, 4)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attn(x), attn.proj(plain.transpose(1, 2).reshape(2, 7, 16)))

    with torch.no_grad():
        attn.proj_l.weight.copy_(torch.randn(4, 4))
    assert not torch.allclose(attn(x), attn.proj(plain.transpose(1, 2).reshape(2, 7, 16)))


def test_features_and_embedding(small: str) -> None:
    check_class_token_features(small, num_patches=4 * 6, dim=32)


def test_masked_encoding_retention(small: str) -> None:
    check_token_masked_encoding(build(small).eval(), image())


def test_adjust_size(small: str) -> None:
    net = build(small)
    assert net.pos_embed.shape == (1, 24, 32)
    check_adjust_size(small)
    net.adjust_size((32, 48))
    assert net.pos_embed.shape == (1, 6, 32)


def test_dynamic_size_is_refused(small: str) -> None:
    net = build(small)
    net.set_dynamic_size(False)
    with pytest.raises(RuntimeError, match="does not support dynamic size"):
        net.set_dynamic_size()


def test_adjust_input_channels(small: str) -> None:
    check_adjust_input_channels(small)


def test_classifier_and_embedding(small: str) -> None:
    check_classifier_and_embedding(small)


def test_freeze(small: str) -> None:
    net = check_head_only_trainable(small, ("classifier.", "block2.", "norm.", "cls_token"))
    assert net.layer_freeze_exempt_parameters == frozenset({"cls_token"})


def test_meta_build(small: str) -> None:
    check_meta_build(small)


def test_gradient_checkpointing() -> None:
    torch.manual_seed(0)
    check_grad_checkpointing(CaiT(3, 4, config=TINY, size=SIZE), segments=1)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
