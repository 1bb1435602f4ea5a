"""MobileOne: Birder-exact on its fixtures, every name built, re-parameterisation, the encoder interfaces."""

from collections.abc import Callable
from typing import Any

import pytest
import torch
from cnn_checks import STANDARD_CHECKS
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import image
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_map_masked_encoding
from family_checks import check_meta_builds_without_fixture
from family_checks import check_reparameterize_model
from family_checks import meta_build
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.base import reparameterize_available
from birder_exp.net.mobileone import MobileOne

FAMILY = "mobileone"
TINY: dict[str, Any] = {
    "width_multipliers": [0.125, 0.125, 0.125, 0.25],
    "num_conv_branches": 2,
    "num_se_blocks": [0, 0, 1, 1],
}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("mobileone_test_tiny", MobileOne, config=TINY)
    return "mobileone_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, MobileOne, 5)


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 3
    s4 = meta_build("mobileone_s4")
    assert s4.stem.out_channels == 64  # min(64, 64 * 3.0)
    se = [isinstance(block.se, SqueezeExcitation) for block in s4.body.stage3]
    assert se == [False] * 10 + [True] * 10  # The last 5 (depthwise, pointwise) pairs
    assert s4.embedding_size == 2048


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(MobileOne, "mobileone_test_custom", TINY, expected_dim=128)


def test_bad_config() -> None:
    check_bad_config(MobileOne)
    with pytest.raises(ValueError, match=r"need 4 entries each \(one per stage\), got 3 and 4"):
        MobileOne(3, 10, config={**TINY, "width_multipliers": [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match=r"num_se_blocks \(3\) cannot exceed the stage's blocks \(2\)"):
        MobileOne(3, 10, config={**TINY, "num_se_blocks": [3, 0, 0, 0]})


def test_reparameterize_model(small: str) -> None:
    """Folding every block keeps the outputs; a Birder-style reparameterised checkpoint then loads strictly."""

    net = build(small).eval()
    assert reparameterize_available(net)
    check_reparameterize_model(net, small, image(), (".rbr_",), rtol=1e-4, atol=1e-5)
    assert net.reparameterized is True


# Masked encoding has its own test below; MobileOne does not support input channel adjustment
_CHECKS = {
    key: check for key, check in STANDARD_CHECKS.items() if key not in ("masked_encoding", "adjust_input_channels")
}


@pytest.mark.parametrize("check", _CHECKS.values(), ids=_CHECKS.keys())
def test_standard_behaviour(check: Callable[[str], None], small: str) -> None:
    check(small)


def test_masked_encoding_retention(small: str) -> None:
    torch.manual_seed(0)
    check_map_masked_encoding(registry.net_factory(small, 10).eval(), image())


def test_gradient_checkpointing_is_refused(small: str) -> None:
    with pytest.raises(RuntimeError, match="does not support gradient checkpointing"):
        build(small).set_grad_checkpointing()
