"""hydra/sweeper=birder_exp: every job composed once (in forked workers for a large batch), each job run with the
config Hydra would compose for it, and a bad override still stops the sweep before its first job."""

import pickle
import sys
import threading
from pathlib import Path

import pytest
import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from omegaconf import OmegaConf
from runs_kit import explain
from runs_kit import sweep_dirs
from runs_kit import train

from birder_exp.runs import sweeper
from birder_exp.runs.summary import job_dirs
from birder_exp.train import main

MODELS = "model=runs_tiny_a,runs_tiny_b"


def _job_configs(sweep: Path) -> list[dict]:
    return [yaml.safe_load((path / ".hydra" / "config.yaml").read_text("utf-8")) for _, path in job_dirs(sweep)]


def _job_overrides(sweep: Path) -> list[list[str]]:
    return [yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text("utf-8")) for _, path in job_dirs(sweep)]


def test_each_job_is_composed_once_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    composed: list[list[str]] = []
    original = ConfigLoaderImpl.load_sweep_config

    def counting(self: ConfigLoaderImpl, master_config: object, sweep_overrides: list[str]) -> object:
        composed.append(list(sweep_overrides))
        return original(self, master_config, sweep_overrides)  # type: ignore[arg-type]

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counting)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["birder_exp.train"])
    main(["-m", "model=resnet_v1_18,resnet_v1_34", "optimizer.lr=0.1,0.2", "dry_run=true"])

    [sweep] = sweep_dirs(tmp_path)
    jobs = [[o for o in job if not o.startswith("hydra.")] for job in composed]
    assert jobs == [
        ["model=resnet_v1_18", "optimizer.lr=0.1", "dry_run=True"],
        ["model=resnet_v1_18", "optimizer.lr=0.2", "dry_run=True"],
        ["model=resnet_v1_34", "optimizer.lr=0.1", "dry_run=True"],
        ["model=resnet_v1_34", "optimizer.lr=0.2", "dry_run=True"],
    ]  # Once each: Hydra's basic sweeper composes every job twice
    configs = _job_configs(sweep)
    assert [(c["model"]["name"], c["optimizer"]["lr"]) for c in configs] == [
        ("resnet_v1_18", 0.1),
        ("resnet_v1_18", 0.2),
        ("resnet_v1_34", 0.1),
        ("resnet_v1_34", 0.2),
    ]
    hydra_files = [yaml.safe_load((p / ".hydra" / "hydra.yaml").read_text("utf-8")) for _, p in job_dirs(sweep)]
    assert [h["hydra"]["job"]["num"] for h in hydra_files] == [0, 1, 2, 3]
    assert capsys.readouterr().out.count("built on the meta device") == 4


def test_forked_workers_compose_what_this_process_would(tmp_path: Path, runs_plugin: Path) -> None:
    """Eight jobs composed by two forked workers and then by this process alone: the same configs, job by job."""

    args = ["-m", MODELS, "optimizer.lr=0.1,0.2,0.3,0.4", "dry_run=true", "hydra.verbose=birder_exp.runs.sweeper"]
    sweeps = []
    for workers in (2, 1):
        cwd = tmp_path / f"workers_{workers}"
        cwd.mkdir()
        done = train([*args, f"hydra.sweeper.compose_workers={workers}"], cwd, runs_plugin)
        assert done.returncode == 0, explain(done)
        assert "Composed 8 jobs in " in done.stdout + done.stderr
        assert f"with {workers} process(es)" in done.stdout + done.stderr
        [sweep] = sweep_dirs(cwd)
        sweeps.append(sweep)

    (forked, serial) = sweeps
    assert _job_overrides(forked) == _job_overrides(serial)
    assert _job_configs(forked) == _job_configs(serial)
    assert [(c["model"]["name"], c["optimizer"]["lr"]) for c in _job_configs(forked)] == [
        (name, lr) for name in ("runs_tiny_a", "runs_tiny_b") for lr in (0.1, 0.2, 0.3, 0.4)
    ]


@pytest.mark.parametrize("workers", [2, 1])
def test_a_bad_value_stops_the_sweep_before_its_first_job(tmp_path: Path, runs_plugin: Path, workers: int) -> None:
    done = train(
        [
            "-m",
            MODELS,
            "module.label_smoothing=0,0.1,0.2,lots",
            "dry_run=true",
            f"hydra.sweeper.compose_workers={workers}",
        ],
        tmp_path,
        runs_plugin,
    )
    assert done.returncode != 0
    assert "module.label_smoothing" in done.stderr and "lots" in done.stderr, explain(done)
    [sweep] = sweep_dirs(tmp_path)
    assert job_dirs(sweep) == []  # Nothing ran
    assert "built on the meta device" not in done.stdout


def test_workers_are_forked_only_while_this_process_runs_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = threading.active_count()  # pytest-xdist runs a thread of its own in each worker
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    assert sweeper.compose_workers(4, 50) == 4
    assert sweeper.compose_workers(4, 3) == 3
    assert sweeper.compose_workers(1, 50) == 1
    assert sweeper.compose_workers(None, sweeper.PARALLEL_MIN_JOBS - 1) == 1
    assert sweeper.compose_workers(None, 50) >= 1
    monkeypatch.setattr(threading, "active_count", lambda: threads + 1)
    assert sweeper.compose_workers(4, 50) == 1  # A fork now could copy a lock another thread holds


def test_composed_jobs_are_handed_out_once_and_only_for_their_sweep() -> None:
    master = OmegaConf.create({"sweep": 1})
    other = OmegaConf.create({"sweep": 2})
    jobs = sweeper.ComposedJobs()
    jobs.master_id = id(master)
    jobs.put(["model=a"], pickle.dumps(OmegaConf.create({"model": "a"})))
    assert jobs.take(other, ["model=a"]) is None  # Another sweep's master config
    config = jobs.take(master, ["model=a"])
    assert config is not None and config.model == "a"
    assert jobs.take(master, ["model=a"]) is None and len(jobs) == 0
