"""PVT v2: Birder-exact on its fixtures, every name built, spatial-reduction attention, the encoder interfaces."""

from collections.abc import Callable
from typing import Any

import pytest
import torch
from cnn_checks import STANDARD_CHECKS
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_meta_builds_without_fixture
from family_checks import check_stage_freeze
from family_checks import meta_build
from torch import nn

from birder_exp.model_registry import registry
from birder_exp.net.pvt_v2 import Attention
from birder_exp.net.pvt_v2 import OverlapPatchEmbed
from birder_exp.net.pvt_v2 import PVT_v2

FAMILY = "pvt_v2"
TINY: dict[str, Any] = {
    "depths": [1, 1, 2, 1],
    "embed_dims": [8, 16, 40, 48],
    "mlp_ratios": [2.0, 2.0, 2.0, 2.0],
    "linear": False,
    "drop_path_rate": 0.0,
}


@pytest.fixture(params=[False, True], ids=["sr", "linear"])
def small(request: pytest.FixtureRequest, clean_registry: None) -> str:
    registry.register_model_config("pvt_v2_test_tiny", PVT_v2, config={**TINY, "linear": request.param})
    return "pvt_v2_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, PVT_v2, 10)


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 7
    b5 = meta_build("pvt_v2_b5")
    assert [len(stage.blocks) for stage in b5.body.children()] == [3, 6, 40, 3]
    assert b5.body.stage1.blocks[0].mlp.fc1.out_features == 256  # mlp_ratio 4
    assert isinstance(b5.body.stage1.downsample, nn.Identity)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(PVT_v2, "pvt_v2_test_custom", TINY, expected_dim=48)


def test_bad_config() -> None:
    check_bad_config(PVT_v2)
    with pytest.raises(ValueError, match=r"need 4 entries each \(one per stage\), got 3, 4 and 4"):
        PVT_v2(3, 10, config={**TINY, "depths": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"divisible by the stage heads \[1, 2, 5, 8\]"):
        PVT_v2(3, 10, config={**TINY, "embed_dims": [8, 16, 32, 48]})
    with pytest.raises(ValueError, match="must be larger than stride"):
        OverlapPatchEmbed((2, 2), (2, 2), 3, 8)


def test_attention_reductions() -> None:
    """sr_ratio > 1: strided conv + norm; sr_ratio 1: none; linear: 7x7 pool, 1x1 conv, norm, GELU."""

    plain = Attention(16, num_heads=2, sr_ratio=1, linear=False, qkv_bias=True, attn_drop=0.0, proj_drop=0.0)
    assert plain.sr is None and plain.norm is None and plain.pool is None
    assert not any(k.startswith(("sr.", "norm.")) for k in plain.state_dict())
    reduced = Attention(16, num_heads=2, sr_ratio=4, linear=False, qkv_bias=True, attn_drop=0.0, proj_drop=0.0)
    assert reduced.sr.stride == (4, 4) and reduced.pool is None
    linear = Attention(16, num_heads=2, sr_ratio=4, linear=True, qkv_bias=True, attn_drop=0.0, proj_drop=0.0)
    assert linear.sr.kernel_size == (1, 1) and linear.pool.output_size == 7

    x = torch.randn(2, 8 * 12, 16)
    for attn in (plain, reduced, linear):
        assert attn(x, 8, 12).shape == x.shape

    # Without reduction it is plain multi-head attention
    q = plain.q(x).reshape(2, 96, 2, 8).transpose(1, 2)
    k, v = plain.kv(x).reshape(2, 96, 2, 2, 8).permute(2, 0, 3, 1, 4)
    expected = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 96, 16)
    torch.testing.assert_close(plain(x, 8, 12), plain.proj(expected))


_CHECKS = {key: check for key, check in STANDARD_CHECKS.items() if key != "freeze"}  # Its own stage freeze check below


@pytest.mark.parametrize("check", _CHECKS.values(), ids=_CHECKS.keys())
def test_standard_behaviour(check: Callable[[str], None], small: str) -> None:
    check(small)


def test_freeze(small: str) -> None:
    check_stage_freeze(small, ("patch_embed.", "body.stage1.", "body.stage2."))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
