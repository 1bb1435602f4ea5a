import pytest
import torch
from torch import nn

from birder_exp.layers.ffn import FFN
from birder_exp.layers.moe import SoftMoE_FFN


def moe(num_experts: int = 3, num_slots: int = 2, normalize: bool = True) -> SoftMoE_FFN:
    torch.manual_seed(0)
    return SoftMoE_FFN(16, 24, num_experts=num_experts, num_slots=num_slots, normalize=normalize).eval()


def reference_soft_moe(layer: SoftMoE_FFN, x: torch.Tensor) -> torch.Tensor:
    """Soft MoE written out token by token, slot by slot (the paper's equations, no einsum)."""

    B = x.size(0)
    E, S, _ = layer.slot_embeds.size()
    keys = layer.slot_norm(layer.slot_embeds).reshape(E * S, -1)
    out = torch.zeros_like(x)
    for b in range(B):
        logits = layer.token_norm(x[b]) @ keys.t()  # (N, E*S)
        dispatch = logits.softmax(dim=0)  # Each slot: weights over tokens
        combine = logits.softmax(dim=1)  # Each token: weights over slots
        slots = (dispatch.t() @ x[b]).reshape(E, S, -1)
        expert_out = torch.concat([layer.experts[e](slots[e]) for e in range(E)], dim=0)  # (E*S, D)
        out[b] = combine @ expert_out

    return out


def test_layout_matches_birder_names() -> None:
    layer = moe()
    keys = list(layer.state_dict())
    assert keys[0] == "slot_embeds"
    assert "experts.2.3.weight" in keys and "token_norm.weight" in keys and "slot_norm.weight" in keys
    assert layer.slot_embeds.shape == (3, 2, 16)
    assert all(isinstance(expert, FFN) for expert in layer.experts)
    assert isinstance(layer.token_norm, nn.RMSNorm)
    assert isinstance(moe(normalize=False).token_norm, nn.Identity)


@pytest.mark.parametrize(("num_experts", "num_slots", "normalize"), [(3, 2, True), (1, 1, True), (4, 3, False)])
def test_matches_the_written_out_equations(num_experts: int, num_slots: int, normalize: bool) -> None:
    layer = moe(num_experts, num_slots, normalize)
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = layer(x)
        assert out.shape == (2, 7, 16)
        assert torch.allclose(out, reference_soft_moe(layer, x), atol=1e-5)


def test_token_permutation_equivariant() -> None:
    """Slots are token mixtures, so shuffling tokens only shuffles the outputs."""

    layer = moe()
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(2))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.allclose(layer(x[:, perm]), layer(x)[:, perm], atol=1e-5)


def test_gradients_reach_slots_and_every_expert() -> None:
    layer = moe().train()
    layer(torch.randn(2, 5, 16)).sum().backward()
    assert layer.slot_embeds.grad is not None and layer.slot_embeds.grad.abs().sum() > 0
    for expert in layer.experts:
        assert expert[0].weight.grad is not None and expert[0].weight.grad.abs().sum() > 0
