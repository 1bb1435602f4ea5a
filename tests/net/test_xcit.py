"""XCiT: Birder-exact on its fixture, every name built, cross-covariance attention, the detector interface."""

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
from cnn_checks import check_meta_build
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_class_token_features
from family_checks import check_family_listing
from family_checks import check_head_only_trainable
from family_checks import check_meta_builds_without_fixture
from family_checks import check_stage_freeze
from family_checks import check_token_masked_encoding
from family_checks import meta_build
from torch import nn

from birder_exp.model_registry import registry
from birder_exp.net.xcit import XCA
from birder_exp.net.xcit import ConvPatchEmbed
from birder_exp.net.xcit import XCiT

FAMILY = "xcit"
TINY: dict[str, Any] = {
    "patch_size": 16,
    "embed_dim": 32,
    "depth": 12,
    "num_heads": 2,
    "eta": 1.0,
    "tokens_norm": False,
    "drop_path_rate": 0.0,
}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("xcit_test_tiny", XCiT, config=TINY)
    return "xcit_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, XCiT, 19)


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 18
    large = meta_build("xcit_large24_8")
    assert [len(stage) for stage in large.block1.children()] == [8, 4, 4, 8]
    assert len(large.patch_embed.proj) == 3  # log2(8) stride-2 convs
    assert len(meta_build("xcit_tiny12_p32").patch_embed.proj) == 5


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(XCiT, "xcit_test_custom", {**TINY, "tokens_norm": True}, expected_dim=32)


def test_bad_config() -> None:
    check_bad_config(XCiT)
    with pytest.raises(ValueError, match=r"XCiT: depth must be one of \[12, 24\], got 6"):
        XCiT(3, 10, config={**TINY, "depth": 6})
    with pytest.raises(ValueError, match=r"XCiT: patch_size must be 8, 16 or 32"):
        XCiT(3, 10, config={**TINY, "patch_size": 4})
    with pytest.raises(ValueError, match=r"embed_dim \(32\) must be divisible by num_heads \(3\)"):
        XCiT(3, 10, config={**TINY, "num_heads": 3})


def test_xca_is_attention_over_channels() -> None:
    """softmax(t * q_hat^T k_hat) v per head, q / k normalised along tokens: a (d x d) map, linear in N."""

    torch.manual_seed(0)
    xca = XCA(8, num_heads=2, qkv_bias=True, proj_drop=0.0).eval()
    with torch.no_grad():
        xca.temperature.copy_(torch.tensor([0.5, 2.0]).view(2, 1, 1))
    x = torch.randn(3, 10, 8)
    q, k, v = xca.qkv(x).reshape(3, 10, 3, 2, 4).permute(2, 0, 3, 4, 1)
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    attn = (q @ k.transpose(-2, -1) * xca.temperature).softmax(dim=-1)  # (B, heads, d, d)
    expected = xca.proj((attn @ v).permute(0, 3, 1, 2).reshape(3, 10, 8))
    torch.testing.assert_close(xca(x), expected)


def test_patch_embed() -> None:
    embed = ConvPatchEmbed(32, 3, 64)
    tokens, H, W = embed(image(size=(64, 96)))
    assert (H, W) == (2, 3) and tokens.shape == (2, 6, 64)
    assert [m[0].out_channels for m in embed.proj] == [4, 8, 16, 32, 64]


def test_detection_features(small: str) -> None:
    net = build(small).eval()
    x = image()
    grid = (SIZE[0] // 16, SIZE[1] // 16)
    with torch.inference_mode():
        stages = net.detection_features(x)
        assert list(stages) == ["stage1", "stage2", "stage3", "stage4"]
        for out in stages.values():
            assert out.shape == (2, 32, *grid)  # Isotropic: every stage at the patch stride

        net.return_stages = ["stage3"]
        assert list(net.detection_features(x)) == ["stage3"]

    assert net.return_channels == [32] * 4
    net.strip_for_detection_features()
    assert net.cls_token is None and isinstance(net.block2, nn.Identity)
    with torch.inference_mode():
        torch.testing.assert_close(net.detection_features(x)["stage3"], stages["stage3"])


def test_features_carry_the_class_token(small: str) -> None:
    check_class_token_features(small, num_patches=4 * 6, dim=32)


def test_masked_encoding_retention(small: str) -> None:
    check_token_masked_encoding(build(small).eval(), image())


def test_adjust_size(small: str) -> None:
    check_adjust_size(small)


def test_adjust_input_channels(small: str) -> None:
    check_adjust_input_channels(small)


def test_classifier_and_embedding(small: str) -> None:
    check_classifier_and_embedding(small)


def test_freeze(small: str) -> None:
    check_head_only_trainable(small, ("classifier.", "block2.", "cls_token"))

    check_stage_freeze(small, ("patch_embed.", "pos_embed.", "block1.stage1.", "block1.stage2."))


def test_meta_build(small: str) -> None:
    check_meta_build(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
