"""One training run, as functions the entry point (and later sweeps / reruns) call in order:

    check_config -> build_datamodule -> build_module -> build_trainer -> fit -> test -> summarize

``run(cfg)`` chains them; ``dry_run(cfg)`` stops after building the network on the meta device.
"""

import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import Optional

from omegaconf import DictConfig
from omegaconf import OmegaConf

from birder_exp.configs.errors import ConfigError
from birder_exp.configs.overrides import check_model_matches_entry
from birder_exp.training.build import build_network
from birder_exp.training.build import count_parameters
from birder_exp.training.build import model_task
from birder_exp.training.build import module_class
from birder_exp.training.build import resolve_size

if TYPE_CHECKING:
    # Lightning and torchvision load only for real runs: a dry run needs torch and the registry alone
    import lightning.pytorch as pl

    from birder_exp.training.datamodule import ImageFolderDataModule

logger = logging.getLogger(__name__)
DRY_RUN_CLASSES = 1000
PREFIX = "birder_exp.train"


@dataclass
class RunResult:
    model: str
    output_dir: Optional[str]
    seconds: float
    summary: str
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: Optional[str] = None
    last_checkpoint: Optional[str] = None
    goal_met: Optional[bool] = None

    @property
    def objective(self) -> Optional[float]:
        """The number a sweeper optimises: test accuracy, else the best validation accuracy."""

        return self.metrics.get("test/acc", self.metrics.get("val/acc"))


def _container(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def output_dir() -> Optional[str]:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.output_dir)
    return None


def check_config(cfg: DictConfig) -> str:
    """Refuse contradictions before any work; returns the model's task."""

    if cfg.pretrained is not None:
        check_model_matches_entry(cfg.model.name, cfg.pretrained.name)
    task = model_task(cfg.model)
    if cfg.pretrained is not None and cfg.pretrained.task != task:
        raise ConfigError(f"pretrained={cfg.pretrained.name} is a {cfg.pretrained.task} entry, the model a {task} one")

    return task


def dry_run(cfg: DictConfig, start: Optional[float] = None) -> RunResult:
    """Compose-and-build check: the network on the meta device at model.size (else its default), no data read."""

    start = time.perf_counter() if start is None else start
    check_config(cfg)
    model = _container(cfg.model)
    size = resolve_size(model)
    num_classes = model.get("num_classes") or DRY_RUN_CLASSES
    net = build_network(model, num_classes, size, device="meta")
    seconds = time.perf_counter() - start
    summary = (
        f"{PREFIX}: dry run: {model['name']} at {size[0]}x{size[1]}, {num_classes} classes: "
        f"{count_parameters(net) / 1e6:.2f}M parameters built on the meta device"
    )
    return RunResult(model=model["name"], output_dir=output_dir(), seconds=seconds, summary=summary)


def build_datamodule(cfg: DictConfig) -> "ImageFolderDataModule":
    from birder_exp.training.datamodule import ImageFolderDataModule

    data = _container(cfg.data)
    model = _container(cfg.model)
    size = resolve_size(model, data.get("size"))
    return ImageFolderDataModule(data, size, input_channels=int(model.get("input_channels", 3)))


def build_module(cfg: DictConfig, datamodule: "ImageFolderDataModule", task: str) -> "pl.LightningModule":
    model = _container(cfg.model)
    num_classes = datamodule.num_classes
    requested = model.get("num_classes")
    if requested is not None and requested != num_classes:
        raise ConfigError(f"model.num_classes={requested} but data.root has {num_classes} classes (leave it unset)")

    model["num_classes"] = num_classes
    model["size"] = list(datamodule.size)
    cls = module_class(task)
    return cls(  # type: ignore[no-any-return]
        model=model,
        num_classes=num_classes,
        optimizer=_container(cfg.optimizer),
        lr_scheduler=_container(cfg.lr_scheduler),
        module=_container(cfg.module),
        class_to_idx=datamodule.class_to_idx,
    )


def _instantiate_all(nodes: Optional[Mapping[str, Any]]) -> list[Any]:
    from hydra.utils import instantiate

    if nodes is None:
        return []
    return [instantiate(node) for node in nodes.values() if node is not None and "_target_" in node]


def build_callbacks(cfg: DictConfig, size: tuple[int, int]) -> list["pl.Callback"]:
    from birder_exp.runs.callbacks import run_callbacks
    from birder_exp.training.callbacks import PretrainedWeights

    callbacks: list[pl.Callback] = _instantiate_all(cfg.callbacks)
    callbacks.extend(run_callbacks())  # Final-weight digests in the run record, generator state in checkpoints
    if cfg.pretrained is not None:
        entry_size = tuple(cfg.pretrained.resolution)
        callbacks.append(
            PretrainedWeights(
                cfg.pretrained.name,
                file_format=cfg.pretrained.file_format,
                size=size if size != entry_size else None,
                custom_config=_container(cfg.model.config),
                resume_from=cfg.ckpt_path,
            )
        )
    ema = cfg.module.ema
    if ema.enabled is True:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(
            EMAWeightAveraging(
                decay=ema.decay, update_every_n_steps=ema.every_n_steps, update_starting_at_step=ema.start_step
            )
        )

    return callbacks


def build_trainer(cfg: DictConfig, callbacks: list["pl.Callback"]) -> "pl.Trainer":
    from hydra.utils import instantiate

    loggers = _instantiate_all(cfg.logger)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers if len(loggers) > 0 else False)  # type: ignore[no-any-return]


def test(trainer: "pl.Trainer", module: "pl.LightningModule", datamodule: "ImageFolderDataModule") -> dict[str, float]:
    """Test the best checkpoint when one was kept, else the weights as they are."""

    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
    results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    return {k: float(v) for k, v in results[0].items()} if len(results) > 0 else {}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def summarize(cfg: DictConfig, module: Any, metrics: dict[str, float], seconds: float, epochs: int) -> RunResult:
    name = cfg.model.name
    parts = [f"{PREFIX}: {name}"]
    if cfg.pretrained is not None:
        parts[0] += f" from {cfg.pretrained.name}"
    parts[0] += f" on {cfg.data.kind} ({module.num_classes} classes, {module.size[0]}x{module.size[1]})"
    goal_met: Optional[bool] = None
    if "test/acc" in metrics:
        parts.append(f"test accuracy {metrics['test/acc']:.2%} (top-5 {metrics.get('test/acc_top5', 0.0):.2%})")
        goal = cfg.data.goal
        shortened = bool(cfg.trainer.get("fast_dev_run")) or cfg.trainer.get("limit_train_batches") is not None
        if shortened is True:
            goal = OmegaConf.create({"test_acc": None, "minutes": None})  # A shortened run proves nothing
        checks = []
        if goal.test_acc is not None:
            ok = metrics["test/acc"] >= goal.test_acc
            sign = ">=" if ok else "<"
            checks.append((ok, f"test accuracy {metrics['test/acc']:.2%} {sign} {goal.test_acc:.0%}"))
        if goal.minutes is not None:
            ok = seconds <= goal.minutes * 60
            checks.append((ok, f"{_minutes(seconds)} {'<=' if ok else '>'} {goal.minutes:g} min"))
        if len(checks) > 0:
            goal_met = all(ok for ok, _ in checks)
            verdict = "goal met" if goal_met else "goal missed"
            parts.append(f"{verdict} ({', '.join(text for _, text in checks)})")
    else:
        parts.append("not tested")

    parts.append(f"{epochs} epoch{'s' if epochs != 1 else ''} in {_minutes(seconds)}")
    out = output_dir()
    if out is not None:
        parts.append(f"run dir {out}")

    return RunResult(
        model=name, output_dir=out, seconds=seconds, summary="; ".join(parts), metrics=metrics, goal_met=goal_met
    )


def _quiet_lightning() -> None:
    """One copy of each log line: under Hydra's logging, drop the console handler Lightning adds for itself."""

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    if logging.getLogger().hasHandlers():
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lightning_logger = logging.getLogger(name)
            for handler in list(lightning_logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    lightning_logger.removeHandler(handler)


def run(cfg: DictConfig, start: Optional[float] = None) -> RunResult:
    start = time.perf_counter() if start is None else start
    if cfg.dry_run is True:
        return dry_run(cfg, start)

    import lightning.pytorch as pl

    task = check_config(cfg)
    _quiet_lightning()
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    plan = datamodule.plan_splits()
    logger.info(f"Data: {plan.root}: {plan.describe()}")
    module = build_module(cfg, datamodule, task)
    trainer = build_trainer(cfg, build_callbacks(cfg, datamodule.size))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if cfg.run_test is True:
        metrics.update(test(trainer, module, datamodule))

    result = summarize(cfg, module, metrics, time.perf_counter() - start, trainer.current_epoch)
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None:
        result.best_checkpoint = getattr(checkpoint, "best_model_path", None) or None
        result.last_checkpoint = getattr(checkpoint, "last_model_path", None) or None

    return result
