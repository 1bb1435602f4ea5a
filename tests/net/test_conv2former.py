"""Conv2Former: Birder-exact on its fixtures, every name built, convolutional modulation, the detector and
masked pre-training interfaces, gradient checkpointing."""

import math
from typing import Any

import cnn_checks
import pytest
import staged_checks
import torch
from cnn_checks import check_adjust_size
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import build_filled
from conformance import check_layout
from conformance import fixture_names
from conformance import load_fixture
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_meta_builds_without_fixture
from family_checks import meta_build
from staged_checks import check_staged_behaviour

from birder_exp.model_registry import registry
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.conv2former import Conv2Former
from birder_exp.net.conv2former import Conv2FormerStage
from birder_exp.net.conv2former import SpatialAttention

FAMILY = "conv2former"
_FILL_BUILD = cnn_checks.build
TINY: dict[str, Any] = {"kernel_size": [5, 5], "dims": [8, 16, 24, 32], "depths": [1, 1, 2, 1], "drop_path_rate": 0.0}


def build_with_positive_eps(name: str, num_classes: int = 10, **kwargs: Any) -> torch.nn.Module:
    """cnn_checks.build, then each norm's stored eps made positive: fill v1 draws some negative, which gives NaN."""

    net = _FILL_BUILD(name, num_classes, **kwargs)
    with torch.no_grad():
        for key, buffer in net.named_buffers():
            if key.endswith(".eps"):
                buffer.abs_()

    return net


@pytest.fixture
def small(clean_registry: None, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(cnn_checks, "build", build_with_positive_eps)
    monkeypatch.setattr(staged_checks, "build", build_with_positive_eps)
    registry.register_model_config("conv2former_test_tiny", Conv2Former, config=TINY)
    return "conv2former_test_tiny"


def _all_nan(values: list[float]) -> bool:
    return all(math.isnan(v) for v in values)


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    """Fill v1 draws each norm's stored eps from N(0, 0.02): where one is negative Birder's outputs are NaN, and
    the fixture records NaN. Those fixtures pin the layout and the NaN outputs (ours are NaN too, for the same
    reason); outputs are compared value by value wherever the fixture has numbers."""

    fixture = load_fixture(name)
    outputs = fixture["outputs"]
    if not _all_nan(outputs["embedding"] + outputs["logits"]):
        check_birder_exact(name)
        return

    check_layout(name)
    net = build_filled(name)
    eps = [b.item() for key, b in net.named_buffers() if key.endswith(".eps")]
    assert min(eps) < 0.0
    x = torch.randn(fixture["input"]["shape"], generator=torch.Generator().manual_seed(fixture["input"]["seed"]))
    with torch.inference_mode():
        assert torch.isnan(net(x)).all() and torch.isnan(net.embedding(x)).all()
        stages = net.detection_features(x)
    for stage, ref in fixture["detection_features"].items():
        assert list(stages[stage].shape) == ref["shape"]
        assert math.isnan(ref["sum"]) is bool(torch.isnan(stages[stage]).any()), stage


def test_family_listing() -> None:
    check_family_listing(FAMILY, Conv2Former, 5)
    assert issubclass(Conv2Former, PreTrainEncoder)


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 4
    large = meta_build("conv2former_l")
    assert [len(stage.blocks) for stage in large.body.children()] == [4, 4, 48, 4]
    assert large.body.stage1.blocks[0].attn.attn[2].kernel_size == (11, 11)
    assert isinstance(large.body.stage1.downsample, torch.nn.Identity)
    assert large.return_channels == [128, 256, 512, 1024] and large.embedding_size == 1280


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(Conv2Former, "conv2former_test_custom", TINY, expected_dim=1280)


def test_bad_config() -> None:
    check_bad_config(Conv2Former)
    with pytest.raises(ValueError, match=r"Conv2Former: dims and depths need one entry per stage .* depths=\[1, 1\]"):
        Conv2Former(3, 10, config={**TINY, "depths": [1, 1]})
    with pytest.raises(ValueError, match=r"Conv2FormerStage: a stage without downsampling keeps its width"):
        Conv2FormerStage(8, 16, (3, 3), mlp_ratio=4.0, drop_path=[0.0], depth=1, downsample=False)


def test_convolutional_modulation() -> None:
    torch.manual_seed(0)
    attn = SpatialAttention(4, (5, 5))
    x = torch.randn(2, 4, 7, 7)
    normed = attn.norm(x)
    gate = attn.attn[2](torch.nn.functional.gelu(attn.attn[0](normed)))
    torch.testing.assert_close(attn(x), attn.proj(gate * attn.v(normed)))


def test_checkpoint_blocks_include_downsampling(small: str) -> None:
    net = registry.net_factory(small, 10)
    blocks = list(net.checkpoint_blocks())
    assert len(blocks) == 4 + 5 and isinstance(blocks[0], torch.nn.Identity)


def test_staged_behaviour(small: str) -> None:
    check_staged_behaviour(small, frozen_stages=2, checkpoint_segments=3, masked=True)


def test_adjust_size(small: str) -> None:
    check_adjust_size(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
