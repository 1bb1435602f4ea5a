"""RepVGG: Birder-exact on its fixture, every name built, re-parameterisation, the detector interfaces."""

from typing import Any

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
from staged_checks import check_family_catalogue
from staged_checks import check_meta_layout
from staged_checks import check_staged_behaviour
from staged_checks import family_names
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.repvgg import RepVgg
from birder_exp.net.repvgg import RepVggBlock

FAMILY = "repvgg"
FIXTURES = fixture_names(FAMILY)
TINY: dict[str, Any] = {
    "width_multipliers": [0.25, 0.25, 0.25, 0.25],
    "num_blocks_per_stage": [1, 2, 2, 1],
    "groups": 2,
    "use_se": True,
}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("repvgg_test_tiny", RepVgg, config=TINY)
    return "repvgg_test_tiny"


def test_catalogue() -> None:
    names = check_family_catalogue(FAMILY, "RepVgg", 11, pretrain_encoder=False)
    assert sum(name.endswith("g4") for name in names) == 3


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


@pytest.mark.parametrize("name", [n for n in family_names(FAMILY) if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=False)


def test_grouped_layers_and_se() -> None:
    """Birder groups the even layers after the stem (layer 0) below layer 27; D2se has SE everywhere."""

    with torch.device("meta"):
        b1g4 = registry.net_factory("repvgg_b1g4", 10)
        d2se = registry.net_factory("repvgg_d2se", 10)

    blocks = [b1g4.stem] + [block for stage in b1g4.body for block in stage]
    assert [block.groups for block in blocks] == [4 if 0 < i < 27 and i % 2 == 0 else 1 for i in range(28)]
    assert all(isinstance(m.se, SqueezeExcitation) for m in d2se.modules() if isinstance(m, RepVggBlock))
    assert b1g4.embedding_size == 2048 and b1g4.stem_width == 64


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(RepVgg, "repvgg_test_custom", TINY, expected_dim=128)


def test_bad_config() -> None:
    check_bad_config(RepVgg)
    with pytest.raises(ValueError, match=r"need 4 entries each \(one per stage\), got 3 and 4"):
        RepVgg(3, 10, config={**TINY, "width_multipliers": [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match=r"at least one block, got \[0, 2, 2, 1\]"):
        RepVgg(3, 10, config={**TINY, "num_blocks_per_stage": [0, 2, 2, 1]})
    with pytest.raises(ValueError, match=r"groups \(3\) must divide every stage width, got 16"):
        RepVgg(3, 10, config={**TINY, "groups": 3, "use_se": False})
    with pytest.raises(ValueError, match=r"stem width \(min\(64, 64 \* width_multipliers\[0\]\) = 8\) must be"):
        RepVgg(3, 10, config={**TINY, "width_multipliers": [0.125, 0.25, 0.25, 0.25]})


def test_reparameterize_model(small: str) -> None:
    """Folding every block keeps the outputs; a Birder-style reparameterised checkpoint then loads strictly."""

    net = build(small).eval()
    check_reparameterize_model(
        net, small, image(), forbidden_parts=(".conv_kxk.", ".conv_1x1.", ".rbr_identity."), rtol=1e-4, atol=1e-5
    )
    assert net.reparameterized is True
    assert "stem.reparam_conv.weight" in net.state_dict() and "stem.reparam_conv.bias" in net.state_dict()


def test_reparameterized_block_is_built_fused() -> None:
    block = RepVggBlock(8, 8, 3, 1, 1, 1, use_se=False, reparameterized=True)
    assert [k for k in block.state_dict()] == ["reparam_conv.weight", "reparam_conv.bias"]
    assert block(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)


def test_staged_behaviour(small: str) -> None:
    check_staged_behaviour(small, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
