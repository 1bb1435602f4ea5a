"""Optimizers and learning-rate schedules from the ``optimizer`` / ``lr_scheduler`` config groups.

Keys are checked against the optimizer's signature, so a typo fails with one line instead of a TypeError deep
inside Lightning. Schedules are stepped every optimizer step (warm-up and decay are smooth within an epoch).
"""

import inspect
import math
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import Optional

import torch
from torch import nn

from birder_exp.configs.errors import ConfigError

OWN_OPTIMIZER_KEYS = ("name", "decay_norm_and_bias")


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam moments with decoupled weight decay, each tensor's step scaled by ||w|| / ||update||."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        max_trust_ratio: Optional[float] = 10.0,
    ) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ConfigError(f"lamb: lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ConfigError(f"lamb: betas must be in [0, 1), got {tuple(betas)}")

        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "max_trust_ratio": max_trust_ratio,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            (beta1, beta2) = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue

                state = self.state[param]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)

                state["step"] += 1
                exp_avg = state["exp_avg"]
                exp_avg_sq = state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(param.grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(param.grad, param.grad, value=1.0 - beta2)
                m_hat = exp_avg / (1.0 - beta1 ** state["step"])
                v_hat = exp_avg_sq / (1.0 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"] != 0.0:
                    update.add_(param, alpha=group["weight_decay"])

                w_norm = param.norm()
                u_norm = update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                if group["max_trust_ratio"] is not None:
                    trust = trust.clamp(max=group["max_trust_ratio"])

                param.sub_(update * (group["lr"] * trust))

        return loss


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "lamb": Lamb,
}


def _accepted_keys(cls: type) -> list[str]:
    params = inspect.signature(cls).parameters
    return [name for name in params if name not in ("self", "params")]


def parameter_groups(net: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict[str, Any]]:
    """Trainable parameters; biases and norm / scale vectors (ndim <= 1) get no weight decay unless asked."""

    decay = []
    no_decay = []
    for param in net.parameters():
        if param.requires_grad is False:
            continue
        if decay_norm_and_bias is False and param.ndim <= 1:
            no_decay.append(param)
        else:
            decay.append(param)

    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": weight_decay}]
    if len(no_decay) > 0:
        groups.append({"params": no_decay, "weight_decay": 0.0})

    return [g for g in groups if len(g["params"]) > 0]


def build_optimizer(net: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = cfg.get("name")
    cls = OPTIMIZERS.get(str(name))
    if cls is None:
        raise ConfigError(f"unknown optimizer '{name}' (valid: {', '.join(OPTIMIZERS)})")

    accepted = _accepted_keys(cls)
    kwargs: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in OWN_OPTIMIZER_KEYS:
            continue
        if key not in accepted:
            raise ConfigError(f"optimizer.{key} is not an option of {name} (valid: {', '.join(accepted)})")
        kwargs[key] = tuple(value) if isinstance(value, list) else value

    weight_decay = float(kwargs.pop("weight_decay", 0.0))
    groups = parameter_groups(net, weight_decay, bool(cfg.get("decay_norm_and_bias", False)))
    if len(groups) == 0:
        raise ConfigError("no trainable parameters (module.finetune froze everything)")

    return cls(groups, **kwargs)


class WarmupSchedule:
    """Learning-rate factor per optimizer step: linear warm-up, then cosine / step / constant."""

    def __init__(
        self,
        kind: str,
        total_steps: int,
        steps_per_epoch: float,
        warmup_epochs: float = 0.0,
        warmup_start_factor: float = 0.01,
        min_factor: float = 0.0,
        step_epochs: int = 30,
        gamma: float = 0.1,
    ) -> None:
        self.kind = kind
        self.total_steps = max(1, total_steps)
        self.steps_per_epoch = max(1.0, steps_per_epoch)
        self.warmup_steps = min(round(warmup_epochs * self.steps_per_epoch), self.total_steps)
        self.warmup_start_factor = warmup_start_factor
        self.min_factor = min_factor
        self.step_epochs = max(1, step_epochs)
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            progress = step / max(1, self.warmup_steps)
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * progress
        if self.kind == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, progress)
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "step":
            epoch = int(step // self.steps_per_epoch)
            return float(self.gamma ** (epoch // self.step_epochs))

        return 1.0


SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {
    "cosine": ("warmup_epochs", "warmup_start_factor", "min_lr"),
    "step": ("warmup_epochs", "warmup_start_factor", "step_epochs", "gamma"),
    "constant": ("warmup_epochs", "warmup_start_factor"),
}


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], total_steps: int, max_epochs: Optional[int]
) -> dict[str, Any]:
    """A LambdaLR stepped every optimizer step, in Lightning's scheduler-dict form."""

    kind = str(cfg.get("name"))
    if kind not in SCHEDULE_KEYS:
        raise ConfigError(f"unknown lr_scheduler '{kind}' (valid: {', '.join(SCHEDULE_KEYS)})")
    for key in cfg:
        if key != "name" and key not in SCHEDULE_KEYS[kind]:
            raise ConfigError(
                f"lr_scheduler.{key} is not an option of {kind} (valid: {', '.join(SCHEDULE_KEYS[kind])})"
            )

    epochs = max_epochs if max_epochs is not None and max_epochs > 0 else 1
    base_lr = float(optimizer.param_groups[0]["lr"])
    min_lr = float(cfg.get("min_lr", 0.0))
    schedule = WarmupSchedule(
        kind,
        total_steps=total_steps,
        steps_per_epoch=total_steps / epochs,
        warmup_epochs=float(cfg.get("warmup_epochs", 0.0)),
        warmup_start_factor=float(cfg.get("warmup_start_factor", 0.01)),
        min_factor=min_lr / base_lr if base_lr > 0 else 0.0,
        step_epochs=int(cfg.get("step_epochs", 30)),
        gamma=float(cfg.get("gamma", 0.1)),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}
