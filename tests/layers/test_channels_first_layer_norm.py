"""ChannelsFirstLayerNorm: a channel LayerNorm whose eps is a stored buffer."""

import torch

from birder_exp.layers import LayerNorm2d
from birder_exp.layers.channels_first_layer_norm import ChannelsFirstLayerNorm


def test_matches_channel_layer_norm() -> None:
    torch.manual_seed(0)
    norm = ChannelsFirstLayerNorm(6, eps=1e-5)
    reference = LayerNorm2d(6, eps=1e-5)
    with torch.no_grad():
        for p in (norm.weight, norm.bias):
            p.normal_()
        reference.load_state_dict({"weight": norm.weight, "bias": norm.bias})
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(norm(x), reference(x))


def test_eps_is_a_stored_buffer() -> None:
    norm = ChannelsFirstLayerNorm(4)
    assert list(norm.state_dict()) == ["weight", "bias", "eps"]
    assert norm.eps.ndim == 0 and abs(norm.eps.item() - 1e-6) < 1e-12
    norm.load_state_dict({"weight": torch.ones(4), "bias": torch.zeros(4), "eps": torch.tensor(1.0)})
    x = torch.zeros(1, 4, 2, 2)
    x[:, 0] = 2.0  # Mean 0.5, biased variance 0.75 on every pixel
    expected = (x - 0.5) / torch.sqrt(torch.tensor(0.75 + 1.0))
    torch.testing.assert_close(norm(x), expected)
