"""RepGhost: Birder-exact on its fixture, every name builds, re-parameterisation, the detector interfaces."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_reparameterize_model
from ghost_checks import check_ghost_meta_layout
from staged_checks import check_family_catalogue
from staged_checks import check_staged_behaviour
from staged_checks import family_names
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.repghost import BLOCK_SETTINGS
from birder_exp.net.repghost import RepGhost
from birder_exp.net.repghost import RepGhostModule

FAMILY = "repghost"


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("repghost_test_tiny", RepGhost, config={"width": 0.25})
    return "repghost_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue(FAMILY, "RepGhost", 4, pretrain_encoder=False)


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


@pytest.mark.parametrize("name", family_names(FAMILY))
def test_meta_layout(name: str) -> None:
    check_ghost_meta_layout(name)


def test_ghost_module_sums_its_branches() -> None:
    """Cheap depthwise branch + BN of the primary output (no concatenation), ReLU only when asked."""

    module = RepGhostModule(8, 12, kernel_size=1, dw_size=3, stride=1, relu=False, reparameterized=False).eval()
    assert module.fusion_bn is not None
    x = torch.randn(2, 8, 5, 5)
    with torch.inference_mode():
        primary = module.primary_conv(x)
        expected = module.cheap_operation(primary) + module.fusion_bn(primary)
        torch.testing.assert_close(module(x), expected)
        assert module(x).shape == (2, 12, 5, 5) and bool((module(x) < 0).any())

    fused = RepGhostModule(8, 12, kernel_size=1, dw_size=3, stride=1, relu=True, reparameterized=True)
    assert sorted(k for k in fused.state_dict() if k.startswith("cheap_operation.")) == [
        "cheap_operation.bias",
        "cheap_operation.weight",
    ]


def test_se_blocks(tiny: str) -> None:
    net = build(tiny)
    blocks = [block for stage in net.body for block in stage if hasattr(block, "se")]
    assert [isinstance(block.se, SqueezeExcitation) for block in blocks] == [s[3] > 0 for s in BLOCK_SETTINGS]


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(RepGhost, "repghost_test_custom", {"width": 0.3}, 1280)


def test_bad_config() -> None:
    check_bad_config(RepGhost)
    with pytest.raises(ValueError, match="width must be a positive multiplier, got width=0"):
        RepGhost(3, 10, config={"width": 0})


def test_reparameterize_model(tiny: str) -> None:
    """Folding every block keeps the outputs; a Birder-style reparameterised checkpoint then loads strictly."""

    net = build(tiny).eval()
    check_reparameterize_model(
        net, tiny, image(), forbidden_parts=("fusion_bn", "cheap_operation.0."), rtol=1e-4, atol=1e-5
    )
    assert net.reparameterized is True


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
