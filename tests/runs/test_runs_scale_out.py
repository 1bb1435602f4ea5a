"""Scale-out on CPU: two "nodes" started by hand with a cluster's variables (pretrained weights fetched once per
node), and the distributed configs (ddp, fsdp, SLURM launcher examples). DDP launched by Lightning on one machine
(two gloo processes, the weights fetched once) runs in test_runs_sweeps, where each sweep job is such a run."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from runs_kit import URL_VARIABLE
from runs_kit import WEIGHTS_VARIABLE
from runs_kit import CountingServer
from runs_kit import cli_env
from runs_kit import free_port
from runs_kit import record
from runs_kit import tiny_args
from runs_kit import write_entry

from birder_exp.runs.record import read_rank_records

CONF = Path(__file__).resolve().parents[2] / "conf"
ENTRY = "runs_tiny_a-dino1"


@pytest.fixture
def weights_server(tmp_path: Path) -> tuple[Path, CountingServer]:
    folder = tmp_path / "published"
    write_entry(folder, ENTRY, seed=1)
    server = CountingServer(folder)
    yield (folder, server)  # type: ignore[misc]
    server.close()


def _ddp_args(images: Path, *extra: str) -> list[str]:
    args = [
        f"pretrained={ENTRY}",
        *tiny_args(images, "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "run_test=false"),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "seed=2",
        *extra,
    ]
    args.remove("trainer=cpu")
    return args


@pytest.mark.slow
def test_two_nodes_started_by_hand_train_the_same_model(
    tmp_path: Path, runs_plugin: Path, runs_images: Path, weights_server: tuple[Path, CountingServer]
) -> None:
    """What a cluster does: one process per node (one device each), the rendezvous in the environment, a shared
    run directory; each node has its own weights cache, so each fetches the entry once."""

    (folder, server) = weights_server
    run_dir = tmp_path / "outputs" / "two_nodes"
    port = str(free_port())
    processes = []
    for node in (0, 1):
        env = cli_env(
            runs_plugin,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            WORLD_SIZE="2",
            NODE_RANK=str(node),
            LOCAL_RANK="0",
            BIRDER_EXP_CACHE=str(tmp_path / f"cache_node{node}"),
            **{WEIGHTS_VARIABLE: str(folder), URL_VARIABLE: server.url},
        )
        args = _ddp_args(runs_images, "trainer.devices=1", "trainer.num_nodes=2", f"hydra.run.dir={run_dir}")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "birder_exp.train", *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [process.communicate(timeout=400) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, f"exit {process.returncode}\n{out[-3000:]}\n{err[-4000:]}"

    ranks = read_rank_records(run_dir)
    assert sorted(ranks) == [0, 1]
    assert ranks[1]["world_size"] == 2
    assert ranks[0]["final_weights_sha256"] == ranks[1]["final_weights_sha256"]
    assert record(run_dir)["status"] == "completed"  # Written by global rank 0 only
    assert record(run_dir)["start_state"]["environment"]["NODE_RANK"] == "0"
    assert server.counts == {f"/{ENTRY}.pt": 2}  # Once per node


def _compose(*overrides: str) -> dict:
    from hydra import compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from birder_exp.configs import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="birder_exp.conf", version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        return OmegaConf.to_container(cfg.trainer)  # type: ignore[return-value]
    finally:
        GlobalHydra.instance().clear()


def test_distributed_trainer_configs_compose_and_build() -> None:
    from hydra.utils import instantiate

    from birder_exp.runs.launch import needs_process_group

    ddp = _compose("trainer=ddp", "trainer.num_nodes=4", "trainer.devices=8")
    assert (ddp["strategy"], ddp["num_nodes"], ddp["devices"], ddp["sync_batchnorm"]) == ("ddp", 4, 8, False)
    fsdp = _compose("trainer=fsdp")
    assert fsdp["accelerator"] == "gpu" and fsdp["precision"] == "bf16-mixed"
    strategy = instantiate(fsdp["strategy"])  # Builds without a GPU; training with it needs CUDA
    assert type(strategy).__name__ == "FSDPStrategy"
    assert needs_process_group(fsdp) and needs_process_group(ddp)
    resumable = _compose("callbacks=resumable")
    assert resumable["_target_"] == "lightning.pytorch.Trainer"


def test_the_slurm_launcher_examples_extend_submitit() -> None:
    for name in ("slurm", "slurm_cpu"):
        text = (CONF / "hydra" / "launcher" / f"{name}.yaml").read_text(encoding="utf-8")
        assert text.startswith("# @package hydra.launcher")
        data = yaml.safe_load(text)
        assert data["defaults"] == ["submitit_slurm"]
        assert "timeout_min" in data and "tasks_per_node" in data
    slurm = yaml.safe_load((CONF / "hydra" / "launcher" / "slurm.yaml").read_text(encoding="utf-8"))
    assert (slurm["nodes"], slurm["tasks_per_node"]) == ("${trainer.num_nodes}", "${trainer.devices}")
