"""RDNet: Birder-exact on its fixtures, every name built, dense growth arithmetic, the encoder interfaces."""

from typing import Any

import pytest
import torch
from cnn_checks import check_adjust_size
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_meta_builds_without_fixture
from family_checks import meta_build
from staged_checks import check_family_catalogue
from staged_checks import check_staged_behaviour

from birder_exp.model_registry import registry
from birder_exp.net.base import MaskedTokenRetentionMixin
from birder_exp.net.rdnet import BlockESE
from birder_exp.net.rdnet import DenseStage
from birder_exp.net.rdnet import RDNet

FAMILY = "rdnet"
TINY: dict[str, Any] = {
    "num_init_features": 16,
    "growth_rates": [8, 8, 16, 16, 24],
    "num_blocks_list": [1, 1, 2, 1, 1],
    "is_downsample_block": [False, True, True, False, True],
    "transition_compression_ratio": 0.5,
    "block_type_name": ["Block", "Block", "BlockESE", "BlockESE", "BlockESE"],
    "drop_path_rate": 0.1,
}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("rdnet_test_tiny", RDNet, config=TINY)
    return "rdnet_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue(FAMILY, "RDNet", 4, pretrain_encoder=True)


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_every_other_name_builds_on_meta() -> None:
    assert sorted(check_meta_builds_without_fixture(FAMILY)) == ["rdnet_b", "rdnet_l"]
    net = meta_build("rdnet_l")
    assert isinstance(net, MaskedTokenRetentionMixin)
    assert len(net.return_channels) == 4 and net.return_channels[-1] == net.embedding_size
    assert (
        net.features[1].normalized_shape == (net.embedding_size,) and net.classifier.in_features == net.embedding_size
    )
    dense = [m for m in net.body.modules() if isinstance(m, DenseStage)]
    assert len(dense) == 12
    assert not isinstance(dense[1].layers[0].layers, BlockESE) and isinstance(dense[2].layers[0].layers, BlockESE)


def test_channel_arithmetic() -> None:
    """rdnet_t: each dense stage adds blocks * growth channels; transitions halve them (rounded down to 8)."""

    net = meta_build("rdnet_t")
    assert net.return_channels == [256, 440, 744, 1040]
    assert [len(stage) for stage in net.body] == [
        1,
        3,
        12,
        3,
    ]  # (norm, transition conv, dense stage) per dense stage after the first
    assert net.body.stage3[1].kernel_size == (2, 2) and net.body.stage3[4].kernel_size == (1, 1)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(RDNet, "rdnet_test_custom", TINY, expected_dim=40)  # 16 (compressed 32) + 24


def test_bad_config() -> None:
    check_bad_config(RDNet)
    with pytest.raises(ValueError, match=r"one entry per dense stage each, got lengths \[4, 5, 5, 5\]"):
        RDNet(3, 10, config={**TINY, "growth_rates": [8, 8, 16, 16]})
    with pytest.raises(ValueError, match=r"exactly 3 True entries after the first"):
        RDNet(3, 10, config={**TINY, "is_downsample_block": [False, True, False, False, True]})
    with pytest.raises(ValueError, match=r"unknown block_type_name 'Dense', expected one of \['Block', 'BlockESE'\]"):
        RDNet(3, 10, config={**TINY, "block_type_name": ["Dense"] * 5})


def test_dense_stage_appends() -> None:
    stage = DenseStage(2, 8, [0.0, 0.0], 4, 4.0, "Block", 1.0).eval()
    x = torch.randn(1, 8, 6, 6)
    out = stage(x)
    assert out.shape == (1, 16, 6, 6)
    torch.testing.assert_close(out[:, :8], x)


def test_staged_behaviour(small: str) -> None:
    check_staged_behaviour(small, frozen_stages=2, checkpoint_segments=2, masked=True)


def test_adjust_size(small: str) -> None:
    check_adjust_size(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
