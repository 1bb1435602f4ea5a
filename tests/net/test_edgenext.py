"""EdgeNeXt: Birder-exact on its fixtures, every name built, the SDTA block, the detector interface."""

from collections.abc import Callable
from typing import Any

import pytest
import torch
from cnn_checks import STANDARD_CHECKS
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_meta_build
from cnn_checks import check_scriptable
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_meta_builds_without_fixture
from family_checks import meta_build

from birder_exp.model_registry import registry
from birder_exp.net.edgenext import SDTA
from birder_exp.net.edgenext import ConvBlock
from birder_exp.net.edgenext import CrossCovarianceAttn
from birder_exp.net.edgenext import EdgeNeXt

FAMILY = "edgenext"
TINY: dict[str, Any] = {"depths": [1, 2, 2, 2], "dims": [8, 16, 24, 32], "heads": [2, 2, 2, 2], "drop_path_rate": 0.0}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("edgenext_test_tiny", EdgeNeXt, config=TINY)
    return "edgenext_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, EdgeNeXt, 4)
    assert registry.get_default_size("edgenext_b") == (256, 256)


def test_every_other_name_builds_on_meta() -> None:
    assert check_meta_builds_without_fixture(FAMILY) == ["edgenext_b"]
    net = meta_build("edgenext_b")
    kinds = [[type(block).__name__ for block in stage.blocks] for stage in net.body.children()]
    assert kinds[0] == ["ConvBlock"] * 3 and kinds[2] == ["ConvBlock"] * 8 + ["SDTA"]
    assert net.body.stage2.blocks[-1].pos_embed is not None  # The Fourier encoding is only in stage 2
    assert net.body.stage3.blocks[-1].pos_embed is None
    assert len(net.body.stage4.blocks[-1].conv_list) == 3  # 4 scales: 3 cascaded convs, one split passes


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(EdgeNeXt, "edgenext_test_custom", TINY, expected_dim=32)


def test_bad_config() -> None:
    check_bad_config(EdgeNeXt)
    with pytest.raises(ValueError, match=r"need 4 entries each \(one per stage\), got 4, 4 and 2"):
        EdgeNeXt(3, 10, config={**TINY, "heads": [2, 2]})
    with pytest.raises(ValueError, match=r"dims must be divisible by heads \(stages \[3\]\)"):
        EdgeNeXt(3, 10, config={**TINY, "heads": [2, 2, 5, 2]})
    with pytest.raises(ValueError, match="attention dropout is not supported"):
        CrossCovarianceAttn(8, 2, True, attn_drop=0.1, proj_drop=0.0)


def test_sdta_split_cascade() -> None:
    """Split 0 -> conv0; split 1 + conv0 out -> conv1; the last split passes untouched into the attention."""

    torch.manual_seed(0)
    block = SDTA(
        12,
        drop_path=0.0,
        layer_scale_init_value=1.0,
        expand_ratio=2,
        use_pos_emb=False,
        num_heads=2,
        qkv_bias=True,
        attn_drop=0.0,
        drop=0.0,
        num_scales=3,
    ).eval()
    assert block.width == 4 and len(block.conv_list) == 2
    x = torch.randn(2, 12, 5, 6)
    with torch.no_grad():
        # Both branches zeroed: the block is the identity
        block.gamma.zero_()
        block.gamma_xca.zero_()
        torch.testing.assert_close(block(x), x)

        block.gamma_xca.fill_(1.0)
        s0, s1, s2 = x.chunk(3, dim=1)
        c0 = block.conv_list[0](s0)
        c1 = block.conv_list[1](s1 + c0)
        mixed = torch.concat([c0, c1, s2], dim=1).reshape(2, 12, 30).permute(0, 2, 1)
        expected = mixed + block.xca(block.norm_xca(mixed))
        block.gamma.fill_(1.0)
        y = block.norm(expected.reshape(2, 5, 6, 12))
        y = block.pw_conv2(block.act(block.pw_conv1(y))).permute(0, 3, 1, 2)
        torch.testing.assert_close(block(x), x + y)


def test_conv_block_is_a_residual() -> None:
    block = ConvBlock(8, 8, (5, 5), expand_ratio=4, layer_scale_init_value=0.0, drop_path=0.0)
    x = torch.randn(2, 8, 6, 7)
    torch.testing.assert_close(block(x), x)


# No masked encoding (not a pre-train encoder); the meta build has its own test below
_CHECKS = {key: check for key, check in STANDARD_CHECKS.items() if key not in ("masked_encoding", "meta_build")}


@pytest.mark.parametrize("check", _CHECKS.values(), ids=_CHECKS.keys())
def test_standard_behaviour(check: Callable[[str], None], small: str) -> None:
    check(small)


def test_meta_build(small: str) -> None:
    check_meta_build(small)
    assert build(small).max_stride == 32


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
