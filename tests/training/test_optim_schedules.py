"""Optimizers and schedules of the `optimizer` / `lr_scheduler` groups: LAMB's maths, parameter groups, the
warm-up + decay factors, and one-line key errors."""

import math

import pytest
import torch
from torch import nn

from birder_exp.configs import ConfigError
from birder_exp.training.optim import Lamb
from birder_exp.training.optim import WarmupSchedule
from birder_exp.training.optim import build_optimizer
from birder_exp.training.optim import build_scheduler
from birder_exp.training.optim import parameter_groups


def test_lamb_step_matches_the_formula() -> None:
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(4, 3))
    grad = torch.randn(4, 3)
    weight.grad = grad.clone()
    before = weight.detach().clone()
    Lamb([weight], lr=0.1, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01, max_trust_ratio=None).step()

    m_hat = (0.1 * grad) / (1 - 0.9)
    v_hat = (0.01 * grad * grad) / (1 - 0.99)
    update = m_hat / (v_hat.sqrt() + 1e-6) + 0.01 * before
    trust = before.norm() / update.norm()
    assert torch.allclose(weight.detach(), before - 0.1 * trust * update, atol=1e-6)


def test_lamb_minimises_a_least_squares_problem() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    target = x @ torch.randn(8, 1)
    layer = nn.Linear(8, 1)
    optimizer = Lamb(layer.parameters(), lr=0.05)
    first = None
    for _ in range(200):
        optimizer.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        first = loss.item() if first is None else first
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * first


def test_norms_and_biases_get_no_weight_decay() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    groups = parameter_groups(net, 0.05, decay_norm_and_bias=False)
    assert [len(g["params"]) for g in groups] == [2, 4] and [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert len(parameter_groups(net, 0.05, decay_norm_and_bias=True)) == 1
    net[0].weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in parameter_groups(net, 0.05, False)) == 5


def test_optimizer_keys_are_checked_in_one_line() -> None:
    net = nn.Linear(2, 2)
    optimizer = build_optimizer(net, {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True})
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["nesterov"] is True
    adamw = build_optimizer(net, {"name": "adamw", "lr": 1e-3, "betas": [0.8, 0.9]})
    assert adamw.param_groups[0]["betas"] == (0.8, 0.9)
    with pytest.raises(ConfigError, match=r"optimizer.momentom is not an option of sgd \(valid: lr, momentum"):
        build_optimizer(net, {"name": "sgd", "momentom": 0.9})
    with pytest.raises(ConfigError, match=r"unknown optimizer 'rmsprop' \(valid: adamw, sgd, lamb\)"):
        build_optimizer(net, {"name": "rmsprop"})


def test_cosine_with_warmup_and_step_schedules() -> None:
    cosine = WarmupSchedule("cosine", total_steps=100, steps_per_epoch=10, warmup_epochs=1, warmup_start_factor=0.1)
    assert cosine(0) == pytest.approx(0.1) and cosine(5) == pytest.approx(0.55) and cosine(10) == pytest.approx(1.0)
    assert cosine(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine(100) == pytest.approx(0.0)
    step = WarmupSchedule("step", total_steps=100, steps_per_epoch=10, step_epochs=3, gamma=0.5)
    assert [step(s) for s in (0, 29, 30, 60, 99)] == [1.0, 1.0, 0.5, 0.25, 0.125]
    assert WarmupSchedule("constant", total_steps=10, steps_per_epoch=5)(9) == 1.0


def test_scheduler_is_stepped_per_optimizer_step() -> None:
    net = nn.Linear(2, 2)
    optimizer = build_optimizer(net, {"name": "adamw", "lr": 1.0})
    config = build_scheduler(optimizer, {"name": "cosine", "warmup_epochs": 0, "min_lr": 0.1}, 10, max_epochs=2)
    assert config["interval"] == "step"
    for _ in range(10):
        optimizer.step()
        config["scheduler"].step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=r"lr_scheduler.gamma is not an option of cosine"):
        build_scheduler(optimizer, {"name": "cosine", "gamma": 0.1}, 10, max_epochs=1)
    with pytest.raises(ConfigError, match=r"unknown lr_scheduler 'poly' \(valid: cosine, step, constant\)"):
        build_scheduler(optimizer, {"name": "poly"}, 10, max_epochs=1)
