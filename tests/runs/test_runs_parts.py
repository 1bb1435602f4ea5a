"""birder_exp.runs piece by piece, in this process: records, job isolation, launch decisions, summaries,
override merging and config diffs, run-directory suffixes, the resumable data order."""

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from birder_exp.runs import environment
from birder_exp.runs import record
from birder_exp.runs.isolation import JobState
from birder_exp.runs.launch import job_command
from birder_exp.runs.launch import needs_process_group
from birder_exp.runs.resume import ResumableSampler
from birder_exp.runs.resume import ResumeRandomState
from birder_exp.runs.resume import SeededSamples
from birder_exp.runs.resume import TrainOrder
from birder_exp.runs.rundir import diff_configs
from birder_exp.runs.rundir import merge_overrides
from birder_exp.runs.rundir import override_key
from birder_exp.runs.summary import SUMMARY_FILE
from birder_exp.runs.summary import collect
from birder_exp.runs.summary import summarize_sweep

FSDP = "lightning.pytorch.strategies.FSDPStrategy"
RANK_VARIABLES = ("RANK", "GROUP_RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID")


@pytest.fixture
def rank_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("variables", "primary"),
    [
        ({}, True),
        ({"LOCAL_RANK": "0"}, True),
        ({"LOCAL_RANK": "1"}, False),
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),
        ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),
        ({"RANK": "3", "LOCAL_RANK": "1"}, False),
        ({"SLURM_PROCID": "0"}, True),
        ({"SLURM_PROCID": "2"}, False),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # A Lightning child inside an allocation
    ],
)
def test_only_global_rank_zero_owns_the_record(
    rank_env: pytest.MonkeyPatch, variables: dict[str, str], primary: bool
) -> None:
    for name, value in variables.items():
        rank_env.setenv(name, value)
    assert environment.is_primary_process() is primary


def test_versions_and_git_come_without_torch_imports() -> None:
    code = (
        "import sys\n"
        "from birder_exp.runs import environment, record, summary, rundir, hydra_callback, launch\n"
        "import birder_exp.cli.rerun_cmds\n"
        "v = environment.package_versions()\n"
        "assert v['torch'] and v['lightning'] and v['hydra-core'] and v['torchvision'], v\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(environment.birder_exp_git())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_record_updates_merge_and_the_first_outcome_stays(tmp_path: Path) -> None:
    record.write_record(tmp_path, {"status": record.STATUS_RUNNING, "result": {"a": 1}})
    record.update_record(tmp_path, result={"b": 2}, final_weights_sha256="x")
    data = record.read_record(tmp_path)
    assert data is not None
    assert data["result"] == {"a": 1, "b": 2}
    assert data["format"] == record.RECORD_FORMAT

    record.mark_finished(tmp_path, record.STATUS_FAILED, "ConfigError: bad")
    record.mark_finished(tmp_path, record.STATUS_COMPLETED)  # Hydra's later "completed" must not hide the failure
    data = record.read_record(tmp_path)
    assert data is not None and data["status"] == "failed" and data["error"] == "ConfigError: bad"

    record.write_rank_record(tmp_path, 1, {"final_weights_sha256": "x"})
    ranks = record.read_rank_records(tmp_path)
    assert {rank: r["final_weights_sha256"] for rank, r in ranks.items()} == {0: "x", 1: "x"}
    assert record.read_record(tmp_path / "missing") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"run\.json is not valid JSON"):
        record.read_record(tmp_path / "bad")


@pytest.fixture
def torch_defaults() -> Iterator[None]:
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_float32_matmul_precision("highest")


def test_a_job_leaves_no_environment_torch_switch_seed_or_filter_behind(
    monkeypatch: pytest.MonkeyPatch, torch_defaults: None
) -> None:
    monkeypatch.setenv("KEPT_BY_THE_JOB", "before")
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("SET_BY_HYDRA_ENV_SET", raising=False)
    filters = list(warnings.filters)
    state = JobState.capture(ignore={"SET_BY_HYDRA_ENV_SET"})
    assert state.torch["deterministic_algorithms"] is False

    # What a seeded, deterministic DDP job does to its process
    os.environ.update({"PL_GLOBAL_SEED": "3", "LOCAL_RANK": "0", "MASTER_PORT": "29500", "WORLD_SIZE": "2"})
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    os.environ["KEPT_BY_THE_JOB"] = "changed"
    os.environ["SET_BY_HYDRA_ENV_SET"] = "hydra restores this one itself"
    torch.use_deterministic_algorithms(True)
    torch.set_float32_matmul_precision("medium")
    torch.manual_seed(3)
    seeded = torch.rand(4)
    warnings.filterwarnings("ignore", "something the job silenced")
    assert set(state.leaked_variables()) >= {"PL_GLOBAL_SEED", "LOCAL_RANK", "MASTER_PORT", "KEPT_BY_THE_JOB"}

    state.restore()
    for name in ("PL_GLOBAL_SEED", "LOCAL_RANK", "MASTER_PORT", "WORLD_SIZE", "CUBLAS_WORKSPACE_CONFIG"):
        assert name not in os.environ, name
    assert os.environ["KEPT_BY_THE_JOB"] == "before"
    assert os.environ["SET_BY_HYDRA_ENV_SET"] == "hydra restores this one itself"
    assert torch.are_deterministic_algorithms_enabled() is False
    assert torch.get_float32_matmul_precision() == "highest"
    assert warnings.filters == filters
    # The next job does not continue the seeded sequence
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), seeded)
    state_after = JobState.capture()
    state_after.restore()
    assert not torch.equal(torch.rand(4), seeded)
    os.environ.pop("SET_BY_HYDRA_ENV_SET")


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ({"accelerator": "cpu", "devices": 1}, False),
        ({"accelerator": "cpu", "devices": "auto"}, False),
        ({"accelerator": "cpu", "devices": 2}, True),
        ({"accelerator": "cpu", "devices": "2"}, True),
        ({"accelerator": "gpu", "devices": [0, 1]}, True),
        ({"accelerator": "gpu", "devices": "0,1"}, True),
        ({"accelerator": "cpu", "devices": 1, "strategy": "ddp"}, True),
        ({"accelerator": "cpu", "devices": 1, "num_nodes": 2}, True),
        ({"accelerator": "gpu", "devices": 1, "strategy": {"_target_": FSDP}}, True),
        ({"accelerator": "cpu", "devices": 1, "strategy": "auto"}, False),
    ],
)
def test_which_trainers_need_a_process_group(trainer: dict[str, Any], expected: bool) -> None:
    assert needs_process_group(trainer) is expected


def test_an_unreadable_device_count_is_one_line() -> None:
    from birder_exp.configs import ConfigError

    with pytest.raises(ConfigError, match=r"^trainer.devices='many' is not a count"):
        needs_process_group({"accelerator": "cpu", "devices": "many"})


def test_a_sweep_job_relaunches_as_a_single_run_in_its_own_directory(tmp_path: Path) -> None:
    hydra_cfg = OmegaConf.create(
        {
            "overrides": {
                "task": ["model=runs_tiny_a", "optimizer.lr=0.001", "trainer=ddp"],
                "hydra": [
                    "hydra.mode=MULTIRUN",
                    "hydra/launcher=basic",
                    "hydra.sweep.dir=/somewhere",
                    "hydra.searchpath=[file:///extra]",
                    "hydra.job.chdir=false",
                ],
            }
        }
    )
    command = job_command(hydra_cfg, str(tmp_path / "sweep" / "3"))
    assert command[0] == sys.executable
    tail = command[command.index("model=runs_tiny_a") :]
    assert tail == [
        "model=runs_tiny_a",
        "optimizer.lr=0.001",
        "trainer=ddp",
        "hydra.searchpath=[file:///extra]",
        "hydra.job.chdir=false",
        f"hydra.run.dir='{tmp_path / 'sweep' / '3'}'",
        "hydra.output_subdir=null",
    ]
    assert not any(item.startswith(("-m", "--multirun")) for item in tail)


def test_overrides_merge_by_key_later_layers_win() -> None:
    assert override_key("+trainer.limit_train_batches=2") == "trainer.limit_train_batches"
    assert override_key("~callbacks.pause") == "callbacks.pause"
    assert override_key("hydra/launcher=basic") == "hydra/launcher"
    merged = merge_overrides(
        ["model=vit_t16", "optimizer=adamw"], ["model=resnet_v1_18", "optimizer.lr=0.1"], ["optimizer.lr=0.2", "seed=1"]
    )
    assert merged == ["optimizer=adamw", "model=resnet_v1_18", "optimizer.lr=0.2", "seed=1"]


def test_config_diffs_name_each_leaf() -> None:
    recorded = {"optimizer": {"lr": 0.001, "betas": [0.9, 0.999]}, "seed": 3, "tags": []}
    rebuilt = {"optimizer": {"lr": 0.002, "betas": [0.9, 0.999]}, "seed": 3, "tags": [], "ckpt_path": "x"}
    assert diff_configs(recorded, rebuilt) == [("ckpt_path", "<absent>", "x"), ("optimizer.lr", 0.001, 0.002)]
    assert diff_configs(recorded, recorded) == []


def _job(
    sweep: Path, num: int, status: str, overrides: list[str], metrics: dict[str, float], error: Any = None
) -> None:
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    record.write_record(
        folder,
        {"status": status, "error": error, "hydra": {"overrides": overrides}, "result": {"metrics": metrics}},
    )


def test_the_sweep_summary_shows_swept_values_status_metric_and_directory(tmp_path: Path) -> None:
    from rich.console import Console

    sweep = tmp_path / "sweep"
    _job(sweep, 0, "completed", ["model=a", "optimizer.lr=0.001", "seed=1"], {"val/acc": 0.5, "test/acc": 0.75})
    _job(sweep, 1, "completed", ["model=a", "optimizer.lr=0.0003", "seed=1"], {"val/acc": 0.25})
    _job(sweep, 2, "failed", ["model=b", "optimizer.lr=0.001", "seed=1"], {}, "ConfigError: cannot be built\nmore")
    _job(sweep, 10, "running", ["model=b", "optimizer.lr=0.0003", "seed=1"], {})  # Killed: no outcome
    (sweep / "not_a_job").mkdir()

    rows = collect(sweep)
    assert [row.num for row in rows] == [0, 1, 2, 10]  # Numeric order, not 0, 1, 10, 2
    assert [row.choice for row in rows] == [
        "model=a optimizer.lr=0.001",
        "model=a optimizer.lr=0.0003",
        "model=b optimizer.lr=0.001",
        "model=b optimizer.lr=0.0003",
    ]
    assert [(row.status, row.metric_name, row.metric) for row in rows] == [
        ("completed", "test/acc", 0.75),
        ("completed", "val/acc", 0.25),
        ("failed", None, None),
        ("interrupted", None, None),
    ]
    assert rows[2].error == "ConfigError: cannot be built"

    console = Console(record=True, width=200)
    summarize_sweep(sweep, console=console)
    text = console.export_text()
    assert "2/4 jobs completed" in text
    assert "failed: ConfigError: cannot be built" in text
    assert "test/acc 0.7500" in text
    data = json.loads((sweep / SUMMARY_FILE).read_text(encoding="utf-8"))
    assert data["failed"] == [2, 10]
    assert [job["run_dir"] for job in data["jobs"]] == [str(sweep / n) for n in ("0", "1", "2", "10")]


def test_run_directory_suffixes_are_fresh_per_run_and_never_reuse_a_directory(tmp_path: Path) -> None:
    from hydra import compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from birder_exp.configs import register_configs
    from birder_exp.runs.hydra_callback import _resolve_dir
    from birder_exp.runs.hydra_callback import fresh_directory_suffix

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="birder_exp.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.log_dir={tmp_path}"], return_hydra_config=True)
        pinned = compose("train", overrides=[f"hydra.run.dir={tmp_path / 'fixed'}"], return_hydra_config=True)
    GlobalHydra.instance().clear()

    seen = set()
    for _ in range(5):  # The timestamp is cached on the config: all five start "in the same second"
        fresh_directory_suffix(cfg, "hydra.run.dir")
        path = _resolve_dir(cfg, "hydra.run.dir")
        assert path is not None and path not in seen and not Path(path).exists()
        Path(path).mkdir(parents=True)
        seen.add(path)
    assert len({Path(p).parent for p in seen}) == 1  # Same date folder, same time prefix, different suffixes

    (tmp_path / "fixed").mkdir()
    fresh_directory_suffix(pinned, "hydra.run.dir")  # An explicit directory is kept (Lightning's DDP processes)
    assert _resolve_dir(pinned, "hydra.run.dir") == str(tmp_path / "fixed")


class _Items:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[int, float]:
        return (index, float(torch.rand(())))  # A "random augmentation" drawn from the global generator


def test_the_train_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch() -> None:
    samples = SeededSamples(_Items(10))
    sampler = ResumableSampler(samples, seed=7, batch_size=2)
    epoch0 = list(sampler)
    assert sorted(index for index, _ in epoch0) == list(range(10))
    assert list(sampler) == epoch0  # No global generator involved
    torch.manual_seed(123)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert [i for i, _ in epoch1] != [i for i, _ in epoch0]

    resumed = ResumableSampler(samples, seed=7, batch_size=2)
    resumed.resume_at(1, batches=3)
    assert list(resumed) == epoch1[6:]
    assert list(resumed) == epoch1  # Only the first iteration after resuming skips

    # A sample's random draws depend on its key, not on the global generator's state
    torch.manual_seed(0)
    first = [samples[key] for key in epoch1]
    torch.manual_seed(99)
    torch.rand(17)
    assert [samples[key] for key in reversed(epoch1)] == list(reversed(first))
    assert samples[4][0] == 4  # Plain indices (a sampler Lightning put in place) pass through


def test_train_order_state_rolls_over_to_the_next_epoch_when_saved_at_its_end() -> None:
    order = TrainOrder()
    order.load_state_dict({"seed": 5, "epoch": 2, "batches": 9, "epoch_batches": 9})
    loader = order.loader(_Items(18), batch_size=2)
    assert order.seed == 5
    assert loader.sampler is order.sampler and order.sampler is not None
    assert order.sampler.epoch == 3
    assert len(list(iter(order.sampler))) == 18

    mid = TrainOrder()
    mid.load_state_dict({"seed": 5, "epoch": 2, "batches": 4, "epoch_batches": 9})
    mid.loader(_Items(18), batch_size=2)
    assert mid.sampler is not None and len(list(iter(mid.sampler))) == 10
    assert TrainOrder().state_dict(None) == {}


def test_checkpoints_carry_the_generators_and_restore_them_before_the_next_batch() -> None:
    import random

    import numpy

    callback = ResumeRandomState()
    torch.manual_seed(11)
    random.seed(11)
    numpy.random.seed(11)
    state = callback.state_dict()
    expected = (torch.rand(3), random.random(), float(numpy.random.rand()))
    path_state = torch.load(_roundtrip(state), weights_only=True)  # Plain values: loads with weights_only

    torch.manual_seed(0)
    other = ResumeRandomState()
    other.load_state_dict(path_state)
    other.on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert float(numpy.random.rand()) == expected[2]


def _roundtrip(state: dict[str, Any]) -> Any:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_weights_digest_follows_every_tensor() -> None:
    from torch import nn

    from birder_exp.runs.callbacks import weights_digest

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    first = weights_digest(net)
    assert weights_digest(net) == first
    with torch.no_grad():
        net[1].running_mean[0] += 1e-6  # type: ignore[index]
    assert weights_digest(net) != first
