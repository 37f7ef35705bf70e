"""What the Slurm executor asks of sbatch and reads back from Slurm, and its settings (no cluster needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torchbearer.context import task_rank
from torchbearer.daemon.executors.local import LocalExecutor
from torchbearer.daemon.executors.slurm import (
    SlurmExecutor,
    SlurmJobState,
    SlurmWorker,
    parallel,
    parse_exit_code,
    parse_scontrol,
)
from torchbearer.settings import Settings, SettingsError
from torchbearer.worker import EXIT_INTERRUPTED


@pytest.mark.parametrize(("field", "code"), [("0:0", 0), ("75:0", 75), ("0:15", -15), ("0:9", -9), ("1:0", 1)])
def test_exit_code_is_negative_for_a_signal(field, code):
    assert parse_exit_code(field) == code


def test_scontrol_line_is_read_as_pairs():
    line = "JobId=7 JobName=tb-7-fcn JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15 StdOut=/p/runs/7-fcn/log.txt\n"
    fields = parse_scontrol(line)
    assert fields["JobState"] == "TIMEOUT" and fields["ExitCode"] == "0:15" and fields["JobName"] == "tb-7-fcn"


def test_sbatch_options_name_the_job_log_signal_partition_gres_and_extras():
    executor = SlurmExecutor(partition="gpu", extra_args=("--time=12:00:00", "--mem=32G"), gres="gpu:a100",
                             signal_lead_s=90)  # fmt: skip
    options = executor.sbatch_options(job_name="tb-3-unet", log_path=Path("/p/runs/3-unet/100%/log.txt"),
                                      cwd=Path("/p"), devices=2)  # fmt: skip
    assert options[:3] == ["sbatch", "--parsable", "--no-requeue"]
    for option in ("--job-name=tb-3-unet", "--chdir=/p", "--output=/p/runs/3-unet/100%%/log.txt", "--open-mode=append",
                   "--signal=B:TERM@90", "--partition=gpu", "--gres=gpu:a100:2"):  # fmt: skip
        assert option in options
    assert options[-2:] == ["--time=12:00:00", "--mem=32G"]
    assert not any(o.startswith("--gres") for o in SlurmExecutor().sbatch_options(
        job_name="x", log_path=Path("/l"), cwd=Path("/"), devices=1))  # fmt: skip


def test_slurm_endings_give_the_reason_and_a_withdrawn_pending_job_runs_again():
    worker = SlurmWorker(SlurmExecutor(), "12")
    worker.settle(SlurmJobState("OUT_OF_MEMORY", 0))
    assert "--mem in TORCHBEARER_SLURM_ARGS" in worker.end_reason
    pending = SlurmWorker(SlurmExecutor(), "13")
    pending.withdrawn = True
    pending.settle(SlurmJobState("CANCELLED", 0))
    assert pending.exit_code == EXIT_INTERRUPTED and pending.end_reason is None
    gone = SlurmWorker(SlurmExecutor(), "14")
    gone.settle(None)
    assert gone.exit_code == 1 and "no record of job 14" in gone.end_reason


def test_settings_choose_the_slurm_executor_and_its_slots(tmp_path):
    env = {"TORCHBEARER_EXECUTOR": "slurm", "TORCHBEARER_SLURM_ARGS": "--time=1:00:00 --constraint='a100|h100'",
           "TORCHBEARER_SLURM_SLOTS": "2", "TORCHBEARER_SLURM_GRES": "gpu"}  # fmt: skip
    settings = Settings.load(tmp_path, environ=env)
    assert settings.slots == ("slurm1", "slurm2")
    assert settings.slurm_args == ("--time=1:00:00", "--constraint=a100|h100")
    assert Settings.load(tmp_path, environ={}).executor == "local"


def test_executor_from_settings_needs_sbatch_on_path(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("COPERNICUS_PASSWORD=hunter2\nTORCHBEARER_SLURM_GRES=gpu\n")
    settings = Settings.load(tmp_path, environ={"TORCHBEARER_EXECUTOR": "slurm"})
    if shutil.which("sbatch") is None:
        with pytest.raises(SettingsError, match="sbatch is not on PATH"):
            SlurmExecutor.from_settings(settings)
        return
    executor = SlurmExecutor.from_settings(settings)
    assert executor.gres == "gpu" and executor.signal_lead_s == 60
    # the worker reads the password from the env file: it is not copied into Slurm's job records
    assert executor.secrets_in_env_file == {"COPERNICUS_PASSWORD"}
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SettingsError, match="sbatch is not on PATH"):
        SlurmExecutor.from_settings(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TORCHBEARER_EXECUTOR": "pbs"}, "must be 'local' or 'slurm'"),
        ({"TORCHBEARER_SLURM_ARGS": "--comment='open"}, "TORCHBEARER_SLURM_ARGS: No closing quotation"),
        ({"TORCHBEARER_SLURM_SLOTS": "0"}, "TORCHBEARER_SLURM_SLOTS must be at least 1"),
    ],
)
def test_bad_slurm_settings_say_which_variable(tmp_path, env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.load(tmp_path, environ=env)


def test_a_parallel_job_asks_for_a_task_per_device_on_each_node_and_warns_every_task():
    executor = SlurmExecutor(gres="gpu")
    options = executor.sbatch_options(job_name="tb-4-ddp", log_path=Path("/p/runs/4-ddp/log.txt"), cwd=Path("/p"),
                                      devices=2, nodes=3)  # fmt: skip
    assert {"--nodes=3", "--ntasks-per-node=2", "--gres=gpu:2", "--signal=TERM@60"} <= set(options)
    assert parallel(2, 3) == 6 and parallel(1, 1) == 0  # one process: the batch step is the worker
    alone = executor.sbatch_options(job_name="x", log_path=Path("/l"), cwd=Path("/"), devices=2, nodes=None)
    assert "--signal=B:TERM@60" in alone and not any(o.startswith(("--nodes", "--ntasks")) for o in alone)


def test_the_local_executor_refuses_a_job_spread_over_nodes(tmp_path):
    with pytest.raises(OSError, match="num_nodes: 2 needs the Slurm executor"):
        LocalExecutor().start(["true"], env={}, log_path=tmp_path / "log.txt", cwd=tmp_path, devices=1, nodes=2)


def test_a_worker_is_rank_0_unless_it_is_a_later_task_of_a_parallel_job(monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.delenv("TORCHBEARER_TASKS", raising=False)
    assert task_rank() == 0  # a Slurm job of one process (SLURM_PROCID is set in every Slurm job)
    monkeypatch.setenv("TORCHBEARER_TASKS", "2")
    assert task_rank() == 1
