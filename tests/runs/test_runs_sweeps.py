"""Multirun through the real CLI: glob sweeps of architectures and weight entries, a failing job, job isolation,
rerunning one job of a sweep, and a DDP sweep (each job its own launch, pretrained weights fetched once)."""

import hashlib
import json
from pathlib import Path

import pytest
from runs_kit import URL_VARIABLE
from runs_kit import WEIGHTS_VARIABLE
from runs_kit import CountingServer
from runs_kit import birder_exp_cli
from runs_kit import explain
from runs_kit import final_digest
from runs_kit import metric_rows
from runs_kit import record
from runs_kit import run_dirs
from runs_kit import sweep_dirs
from runs_kit import tiny_args
from runs_kit import train
from runs_kit import write_entry

from birder_exp.runs.record import read_rank_records
from birder_exp.runs.summary import job_dirs


def _summary(sweep: Path) -> dict:
    return json.loads((sweep / "summary.json").read_text(encoding="utf-8"))


def test_a_glob_sweep_runs_every_architecture_and_a_failing_job_stops_nothing(
    tmp_path: Path, runs_plugin: Path, runs_images: Path
) -> None:
    done = train(
        ["-m", "model=glob(runs_tiny_*)", *tiny_args(runs_images, "trainer.fast_dev_run=true")], tmp_path, runs_plugin
    )
    assert done.returncode == 1, explain(done)  # One job failed: the sweep says so in its exit status
    [sweep] = sweep_dirs(tmp_path)
    summary = _summary(sweep)
    jobs = {job["choice"]: job for job in summary["jobs"]}
    assert set(jobs) == {"model=runs_tiny_a", "model=runs_tiny_b", "model=runs_tiny_broken"}
    assert jobs["model=runs_tiny_a"]["status"] == "completed"
    assert jobs["model=runs_tiny_b"]["status"] == "completed"
    assert jobs["model=runs_tiny_a"]["metric_name"] == "test/acc"
    broken = jobs["model=runs_tiny_broken"]
    assert broken["status"] == "failed"
    assert broken["error"] == (
        "ConfigError: model 'runs_tiny_broken' cannot be built at 16x16: width must be positive, got 0"
    )
    assert summary["failed"] == [broken["num"]]
    # The table is printed at the end, one row per job, and each job has its own directory and record
    table = done.stdout[done.stdout.index("Sweep ") :]
    assert "2/3 jobs completed" in table
    assert all(f"model=runs_tiny_{n}" in table for n in ("a", "b", "broken"))
    assert [num for num, _ in job_dirs(sweep)] == [0, 1, 2]
    assert "birder_exp.train: model 'runs_tiny_broken' cannot be built" in done.stderr

    # Rerunning the whole sweep: every job, each into the same job number of one new sweep directory
    again = birder_exp_cli(["rerun", str(sweep), "--print"], tmp_path, runs_plugin)
    assert again.returncode == 0, explain(again)
    commands = [line for line in again.stdout.splitlines() if line.startswith("cd ")]
    assert len(commands) == 3
    targets = [line.rsplit("hydra.run.dir=", 1)[1].strip("'") for line in commands]
    assert [Path(t).name for t in targets] == ["0", "1", "2"]
    assert len({Path(t).parent for t in targets}) == 1
    assert Path(targets[0]).parent.name.endswith("_rerun") and Path(targets[0]).parent != sweep
    assert all(f" model=runs_tiny_{n} " in line for n, line in zip(("a", "b", "broken"), commands))


def test_sweep_jobs_start_clean_and_one_job_reruns_identically(
    tmp_path: Path, runs_plugin: Path, runs_images: Path
) -> None:
    """Job 0 seeds and turns on deterministic algorithms; job 1 (no seed) must not inherit any of it. Rerunning
    job 0 alone gives the same metrics file, byte for byte, and the same final weights."""

    cases = tmp_path / "cases" / "case"
    cases.mkdir(parents=True)
    (cases / "seeded.yaml").write_text("# @package _global_\nseed: 3\ntrainer:\n  deterministic: true\n", "utf-8")
    (cases / "unseeded.yaml").write_text("# @package _global_\nseed: null\ntrainer:\n  deterministic: false\n", "utf-8")
    args = [
        "-m",
        "model=runs_tiny_a",
        "+case=seeded,unseeded",
        f"hydra.searchpath=[file://{cases.parent}]",
        *tiny_args(runs_images, "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "run_test=false"),
    ]
    done = train(args, tmp_path, runs_plugin)
    assert done.returncode == 0, explain(done)
    [sweep] = sweep_dirs(tmp_path)
    (seeded, unseeded) = [record(path) for _, path in job_dirs(sweep)]
    assert seeded["config"]["seed"] == 3 and seeded["config"]["trainer"]["deterministic"] is True
    assert unseeded["config"]["seed"] is None

    # Job 1 started as job 0 did: no seed variable, no deterministic switch, no launcher variables
    assert seeded["start_state"]["environment"] == {}
    assert unseeded["start_state"]["environment"] == {}
    assert unseeded["start_state"]["torch"]["deterministic_algorithms"] is False
    assert unseeded["hydra"]["job_num"] == 1 and unseeded["hydra"]["sweep_dir"] == str(sweep)

    rerun = birder_exp_cli(["rerun", str(sweep), "--job", "0"], tmp_path, runs_plugin)
    assert rerun.returncode == 0, explain(rerun)
    assert "config: the rebuilt config equals the recorded one" in rerun.stdout
    [again] = run_dirs(tmp_path)  # A new single-run directory, not the sweep's
    assert record(again)["status"] == "completed"
    # On a mismatch, say what each run started from (a flaky failure here must explain itself)
    states = {p.name: (record(p)["start_state"], record(p)["command"]["argv"]) for p in (again, sweep / "0")}
    assert metric_rows(again) == metric_rows(sweep / "0"), states
    assert final_digest(again) == final_digest(sweep / "0") is not None, states


def test_a_sweep_over_weight_entries_records_each_file_sha256(
    tmp_path: Path, runs_plugin: Path, runs_images: Path
) -> None:
    weights = tmp_path / "weights"
    files = [write_entry(weights, "runs_tiny_a-dino1", seed=1), write_entry(weights, "runs_tiny_a-dino2", seed=2)]
    write_entry(weights, "runs_tiny_b-clip", width=6)
    done = train(
        ["-m", "pretrained=glob(runs_tiny_*dino*)", *tiny_args(runs_images, "trainer.fast_dev_run=true")],
        tmp_path,
        runs_plugin,
        **{WEIGHTS_VARIABLE: str(weights), "BIRDER_EXP_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, explain(done)
    [sweep] = sweep_dirs(tmp_path)
    recorded = {r["pretrained"]["entry"]: r for r in (record(path) for _, path in job_dirs(sweep))}
    assert set(recorded) == {"runs_tiny_a-dino1", "runs_tiny_a-dino2"}
    for path in files:
        entry = recorded[path.stem]["pretrained"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert Path(entry["path"]).read_bytes() == path.read_bytes()  # The cached copy that was loaded
        assert recorded[path.stem]["config"]["model"]["name"] == "runs_tiny_a"
    assert {job["choice"] for job in _summary(sweep)["jobs"]} == {f"pretrained={p.stem}" for p in files}


@pytest.mark.slow
def test_a_ddp_sweep_gives_each_job_its_own_launch_and_no_second_sweep(
    tmp_path: Path, runs_plugin: Path, runs_images: Path
) -> None:
    """Each job is a plain DDP run on CPU (Lightning starts rank 1, gloo) from a pretrained entry served over HTTP:
    local rank 0 of the first job fetches it, every other process reads the verified cache."""

    weights = tmp_path / "published"
    entry = write_entry(weights, "runs_tiny_a-dino1", seed=1)
    server = CountingServer(weights)
    args = [
        "-m",
        "pretrained=runs_tiny_a-dino1",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "optimizer.lr=0.001,0.002",
        *tiny_args(runs_images, "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "run_test=false"),
    ]
    args.remove("trainer=cpu")
    env = {WEIGHTS_VARIABLE: str(weights), URL_VARIABLE: server.url, "BIRDER_EXP_CACHE": str(tmp_path / "cache")}
    try:
        done = train(args, tmp_path, runs_plugin, **env)
    finally:
        server.close()
    assert done.returncode == 0, explain(done)
    [sweep] = sweep_dirs(tmp_path)  # Exactly one sweep: the DDP ranks did not start another
    assert list((tmp_path / "outputs").iterdir()) == [tmp_path / "outputs" / "multirun"]
    jobs = job_dirs(sweep)
    assert [num for num, _ in jobs] == [0, 1]
    digests = set()
    for num, path in jobs:
        job = record(path)
        assert job["status"] == "completed"
        assert job["hydra"]["mode"] == "MULTIRUN" and job["hydra"]["job_num"] == num
        assert "launched" in job  # The job ran as its own single-run launch ...
        assert f"hydra.run.dir='{path}'" in job["launched"]["argv"]
        assert "-m" not in job["launched"]["argv"][1:] and "--multirun" not in job["launched"]["argv"]
        ranks = read_rank_records(path)  # ... with two ranks that trained the same model
        assert sorted(ranks) == [0, 1] and ranks[1]["world_size"] == 2
        assert ranks[0]["final_weights_sha256"] == ranks[1]["final_weights_sha256"]
        digests.add(ranks[0]["final_weights_sha256"])
        assert job["pretrained"]["sha256"] == hashlib.sha256(entry.read_bytes()).hexdigest()
    assert len(digests) == 2  # Two learning rates, two models
    assert server.counts == {"/runs_tiny_a-dino1.pt": 1}  # Four processes, one download
    assert "2/2 jobs completed" in done.stdout
