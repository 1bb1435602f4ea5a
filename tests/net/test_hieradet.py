import copy
from typing import Any

import pytest
import torch
from cnn_checks import HIERA_SMALL
from cnn_checks import check_checkpointed_copy
from cnn_checks import check_fixture
from cnn_checks import check_gray_input
from cnn_checks import check_listed
from cnn_checks import check_loads_into
from cnn_checks import check_meta_build_exact
from cnn_checks import check_reset_classifier
from conformance import fixture_names

from birder_exp.model_registry import registry
from birder_exp.net.hiera import Hiera
from birder_exp.net.hieradet import HieraDet
from birder_exp.net.hieradet import MultiScaleBlock
from birder_exp.net.hieradet import window_partition
from birder_exp.net.hieradet import window_unpartition

SMALL: dict[str, Any] = {
    "depths": [1, 2, 2, 1],
    "embed_dim": 16,
    "num_heads": 1,
    "global_pos_size": [4, 4],
    "global_att_blocks": [4],
    "window_spec": [4, 2, 2, 1],
    "drop_path_rate": 0.0,
}
SMALL_HIERA = HIERA_SMALL
SIZE = (64, 64)


def small_hieradet(size: tuple[int, int] = SIZE, **overrides: Any) -> HieraDet:
    return HieraDet(3, 10, config={**SMALL, **overrides}, size=size).eval()


def image(batch: int = 2, size: tuple[int, int] = SIZE, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


def window_sizes(net: HieraDet) -> list[int]:
    return [m.window_size for m in net.body.modules() if isinstance(m, MultiScaleBlock)]


@pytest.mark.parametrize("name", fixture_names("hieradet"))
def test_birder_exact(name: str) -> None:
    check_fixture(name)


def test_every_reference_name_is_listed() -> None:
    assert check_listed("hieradet", 10, "hieradet_d_small").config["window_spec"] == [8, 4, 0, 0]


def test_window_partition_round_trip_with_padding() -> None:
    x = torch.randn(2, 10, 13, 5)
    windows, pad_hw = window_partition(x, 4)
    assert pad_hw == (12, 16) and windows.shape == (2 * 3 * 4, 4, 4, 5)
    assert torch.equal(window_unpartition(windows, 4, pad_hw, (10, 13)), x)


def test_window_schedule_lags_one_block_and_follows_global_blocks() -> None:
    # Blocks 0 | 1 2 | 3 4 | 5: the first block of a stage keeps the previous stage's window, block 4 is global
    net = small_hieradet()
    assert window_sizes(net) == [4, 4, 2, 2, 0, 2]
    # d-variants: stages 3 and 4 attend globally
    d_small = registry.net_factory("hieradet_d_small", 10)
    sizes = window_sizes(d_small)
    assert sizes[:4] == [8, 8, 4, 4] and set(sizes[4:]) == {0}


@pytest.mark.usefixtures("clean_registry")
def test_register_model_config_custom_variant() -> None:
    registry.register_model_config("hieradet_unit_test", HieraDet, config=SMALL)
    net = registry.net_factory("hieradet_unit_test", 7, size=SIZE).eval()
    assert isinstance(net, HieraDet)
    assert net(image()).shape == (2, 7)


def test_detection_features() -> None:
    net = small_hieradet()
    assert net.return_channels == [16, 32, 64, 128]
    stages = net.detection_features(image())
    assert list(stages) == ["stage1", "stage2", "stage3", "stage4"]
    for stride, channels, out in zip([4, 8, 16, 32], net.return_channels, stages.values()):
        assert out.shape == (2, channels, SIZE[0] // stride, SIZE[1] // stride)

    features = net.forward_features(image())
    assert features.shape == (2, 2, 2, 128)
    assert torch.allclose(stages["stage4"], features.permute(0, 3, 1, 2), atol=1e-6)
    assert net.flatten_features(features).shape == (2, 4, 128)

    net.return_stages = ["stage3"]
    assert list(net.detection_features(image())) == ["stage3"]


def test_masked_encoding_retention() -> None:
    net = small_hieradet(size=(128, 128))
    x = image(size=(128, 128))
    assert net.max_stride == 32 and net.stem_stride == 4
    no_mask = torch.zeros(2, 16)
    result = net.masked_encoding_retention(x, no_mask, return_keys="all")
    assert result["features"].shape == (2, 128, 4, 4)
    assert result["embedding"].shape == (2, 128)
    # An empty mask is the plain forward pass
    assert torch.allclose(result["features"], net.forward_features(x).permute(0, 3, 1, 2), atol=1e-6)

    mask = torch.zeros(2, 16)
    mask[:, ::3] = 1.0
    token = torch.randn(1, 1, 1, 16)
    masked = net.masked_encoding_retention(x, mask, mask_token=token, return_keys="features")
    assert set(masked) == {"features"}
    assert masked["features"].shape == (2, 128, 4, 4)
    assert not torch.allclose(masked["features"], result["features"])

    # Masked cells are replaced after the stem, so their pixels cannot matter (away from the 7x7 stem's reach
    # into the neighbouring cells)
    y = x.clone()
    y[:, :, :28, :28] = 7.0  # inside cell 0, which is masked
    again = net.masked_encoding_retention(y, mask, mask_token=token, return_keys="embedding")
    assert torch.allclose(again["embedding"], net.masked_encoding_retention(x, mask, token, "embedding")["embedding"])


def test_dynamic_size_runs_other_resolutions() -> None:
    net = small_hieradet()
    net.set_dynamic_size(True)
    assert net.dynamic_size is True
    out = net.detection_features(image(size=(96, 128)))
    assert out["stage4"].shape == (2, 128, 3, 4)
    assert net(image(size=(96, 128))).shape == (2, 10)


def test_adjust_size_recomputes_size_following_windows() -> None:
    net = small_hieradet(window_spec=[4, -8, -16, 1])
    assert window_sizes(net) == [4, 4, 8, 8, 0, 4]
    net.adjust_size((128, 160))
    assert net.size == (128, 160)
    assert window_sizes(net) == [4, 4, 16, 16, 0, 8]
    assert net(image(size=(128, 160))).shape == (2, 10)

    fresh = small_hieradet(size=(128, 160), window_spec=[4, -8, -16, 1])
    assert window_sizes(fresh) == window_sizes(net)
    check_loads_into(net, fresh, image(size=(128, 160)))


def test_input_channels_and_classifier() -> None:
    check_gray_input(small_hieradet(), image(channels=1))
    check_reset_classifier(small_hieradet(), image())


def test_grad_checkpointing_matches_plain_training_step() -> None:
    check_checkpointed_copy(small_hieradet().train(), image())


def test_meta_build_assign_load_equals_normal_build() -> None:
    check_meta_build_exact("hieradet_d_tiny", SIZE)


def test_load_hiera_weights() -> None:
    hiera = Hiera(3, 10, config={**SMALL_HIERA, "abs_win_pos_embed": True}, size=(128, 128))
    net = small_hieradet(size=(128, 128), window_spec=[8, 4, 2, 1])
    state = copy.deepcopy(hiera.state_dict())
    net.load_hiera_weights(state)
    assert torch.equal(net.features[0].weight, hiera.features[1].weight)
    assert torch.equal(net.body.stage3[1].mlp[0].weight, hiera.body.stage3[1].mlp[0].weight)
    # The 8x8 global table of a 128 px Hiera is resized to HieraDet's 4x4
    assert net.pos_embed.shape == (1, 16, 4, 4)

    with pytest.raises(ValueError, match="AbsWin"):
        net.load_hiera_weights(copy.deepcopy(Hiera(3, 10, config=SMALL_HIERA, size=(128, 128)).state_dict()))
