"""DaViT: Birder-exact on its fixtures, every name built, dual attention, window sizing, the encoder interfaces."""

from typing import Any

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_adjust_size
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import fixture_names
from family_checks import check_birder_exact
from staged_checks import check_family_catalogue
from staged_checks import check_meta_layout
from staged_checks import check_staged_behaviour
from staged_checks import family_names

from birder_exp.model_registry import registry
from birder_exp.net.davit import ChannelAttention
from birder_exp.net.davit import DaViT
from birder_exp.net.davit import FlorenceChannelAttention
from birder_exp.net.davit import SpatialBlock

FAMILY = "davit"
FIXTURES = fixture_names(FAMILY)
TINY: dict[str, Any] = {"depths": [1, 1, 2, 1], "dims": [8, 16, 24, 32], "heads": [1, 2, 2, 4], "drop_path_rate": 0.1}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("davit_test_tiny", DaViT, config=TINY)
    return "davit_test_tiny"


def test_catalogue() -> None:
    names = check_family_catalogue(FAMILY, "DaViT", 12, pretrain_encoder=True)
    assert sum(name.startswith("davit_fl_") for name in names) == 6


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


@pytest.mark.parametrize("name", [n for n in family_names(FAMILY) if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=True)
    with torch.device("meta"):
        net = registry.net_factory(name, 10)
    florence = name.startswith("davit_fl_")
    attn = net.body.stage1.blocks[1].attn
    assert isinstance(attn, FlorenceChannelAttention if florence else ChannelAttention)
    assert net.window_size == ((12, 12) if florence else (7, 7))
    assert net.body.stage2.downsample.conv.kernel_size == ((3, 3) if florence else (2, 2))


def test_window_size_follows_the_image(small: str) -> None:
    """Windows are image // 32 unless the config fixes them; adjust_size re-derives them (weights unchanged)."""

    assert build(small).window_size == (7, 7)  # The default 224 x 224
    net = registry.net_factory(small, 10, size=(64, 96))
    assert net.window_size == (2, 3)
    net.adjust_size((128, 64))
    assert net.window_size == (4, 2)
    assert all(m.window_size == (4, 2) for m in net.modules() if isinstance(m, SpatialBlock))
    fixed = registry.net_factory(small, 10, size=(64, 96), config={"window_size": [5, 5]})
    fixed.adjust_size((128, 128))
    assert fixed.window_size == (5, 5)
    with torch.inference_mode():  # Windows larger than or not dividing the map are padded
        assert fixed.eval()(image(size=(128, 128))).shape == (2, 10)


def test_channel_attention_variants() -> None:
    x = torch.randn(2, 10, 16)
    for attention in (ChannelAttention(16, 4, True), FlorenceChannelAttention(16, 4, True)):
        out = attention(x)
        assert out.shape == x.shape
        # Channel attention mixes channels, not positions: permuting the tokens permutes the output
        perm = torch.randperm(10)
        torch.testing.assert_close(attention(x[:, perm]), out[:, perm], rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(DaViT, "davit_test_custom", TINY, expected_dim=32)


def test_bad_config() -> None:
    check_bad_config(DaViT)
    with pytest.raises(ValueError, match=r"need 4 entries each \(one per stage\), got 3, 4 and 4"):
        DaViT(3, 10, config={**TINY, "depths": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"unknown channel_attention_type 'Spatial'"):
        DaViT(3, 10, config={**TINY, "channel_attention_type": "Spatial"})
    with pytest.raises(ValueError, match=r"each dims entry must divide by its heads"):
        DaViT(3, 10, config={**TINY, "heads": [3, 2, 2, 4]})
    with pytest.raises(ValueError, match=r"the window \(image size // 32\) is empty at size \(16, 16\)"):
        DaViT(3, 10, config=TINY, size=(16, 16))


def test_staged_behaviour(small: str) -> None:
    check_staged_behaviour(small, frozen_stages=2, checkpoint_segments=3, masked=True)


def test_adjust_size(small: str) -> None:
    check_adjust_size(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
