"""VAN: Birder-exact on its fixtures, every name built, large kernel attention, the detector interface."""

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

from birder_exp.model_registry import registry
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.van import LKA
from birder_exp.net.van import VAN

FAMILY = "van"
TINY: dict[str, Any] = {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 2, 1], "drop_path_rate": 0.0}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("van_test_tiny", VAN, config=TINY)
    return "van_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, VAN, 7)
    assert not issubclass(VAN, PreTrainEncoder)  # As in Birder: no masked pre-training interface


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 5
    b6 = meta_build("van_b6")
    assert [len(stage.block) for stage in b6.body.children()] == [6, 6, 90, 6]
    assert b6.body.stage1.block[0].mlp.fc1.out_channels == 8 * 96  # mlp_ratio 8 in the first two stages
    assert b6.body.stage4.block[0].mlp.fc1.out_channels == 4 * 768


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(VAN, "van_test_custom", TINY, expected_dim=32)


def test_bad_config() -> None:
    check_bad_config(VAN)
    with pytest.raises(ValueError, match=r"VAN: embed_dims and depths need 4 entries each .* got 3 and 4"):
        VAN(3, 10, config={**TINY, "embed_dims": [8, 16, 24]})


def test_large_kernel_attention_gates_the_input() -> None:
    torch.manual_seed(0)
    lka = LKA(4)
    x = torch.randn(2, 4, 30, 30)
    gate = lka.conv1(lka.conv_spatial(lka.conv0(x)))
    torch.testing.assert_close(lka(x), x * gate)

    # Receptive field: 5x5, then 7x7 dilated by 3 (19 wide) -> 23x23 around a pixel
    y = x.clone()
    y[:, :, 0, 0] += 10.0
    changed = (lka.conv_spatial(lka.conv0(y)) - lka.conv_spatial(lka.conv0(x))).abs().sum(dim=(0, 1)) > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert rows.max().item() == 11 and cols.max().item() == 11


# No masked encoding (not a pre-train encoder); the stage freeze has its own test below
_CHECKS = {key: check for key, check in STANDARD_CHECKS.items() if key not in ("masked_encoding", "freeze")}


@pytest.mark.parametrize("check", _CHECKS.values(), ids=_CHECKS.keys())
def test_standard_behaviour(check: Callable[[str], None], small: str) -> None:
    check(small)


def test_freeze(small: str) -> None:
    check_stage_freeze(small, ("body.stage1.", "body.stage2."))  # No stem: each stage embeds its own patches


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
