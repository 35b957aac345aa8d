"""The user's commands, as subprocesses: multirun, DDP on CPU, and clean errors."""

import json

import pytest
import torch
from conftest import cli_overrides, run_train_cli


def test_multirun_over_latent_dim_makes_one_run_dir_per_job(tmp_path, mnist_root):
    proc = run_train_cli(["-m", "latent_dim=2,4", *cli_overrides(tmp_path, mnist_root)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/checkpoints/last.ckpt"))
    assert len(jobs) == 2
    dims = sorted(torch.load(j, weights_only=False)["hyper_parameters"]["latent_dims"][-1] for j in jobs)
    assert dims == [2, 4]
    assert {j.parent.parent.name for j in jobs} == {"0_latent_dim-2", "1_latent_dim-4"}


def test_ddp_cpu_two_processes_share_one_run_dir(tmp_path, mnist_root):
    run_dir = tmp_path / "ddp"
    proc = run_train_cli(
        ["trainer=ddp_cpu", f"hydra.run.dir={run_dir}", *cli_overrides(tmp_path, mnist_root)]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("CONFIG") == 1  # the config tree is printed by rank 0 only
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/loss"] is not None
    assert not (tmp_path / "outputs").exists()  # no stray per-rank run dirs


def test_unknown_dataset_lists_the_options_without_traceback(tmp_path):
    proc = run_train_cli(["dataset=nope", f"paths.log_dir={tmp_path}"])
    assert proc.returncode != 0
    assert "Could not find 'dataset/nope'" in proc.stderr
    assert "celeba" in proc.stderr and "mnist" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("dataset", ["mnist", "celeba"])
def test_missing_data_dir_says_where_to_put_the_data(tmp_path, dataset):
    proc = run_train_cli([f"dataset={dataset}", "paths.data_dir=/nonexistent", f"paths.log_dir={tmp_path}"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "vaelab error:" in proc.stderr and "/nonexistent" in proc.stderr
    assert "paths.data_dir" in proc.stderr
    assert not __import__("os").path.exists("/nonexistent")  # a failed download leaves nothing behind
    assert list(tmp_path.iterdir()) == []  # nor a run folder (tmp_path is the log dir)


def test_invalid_value_is_named_with_what_is_valid(tmp_path):
    proc = run_train_cli(["latent_dim=-3", f"paths.log_dir={tmp_path}"])
    assert proc.returncode == 2
    assert "latent_dim=-3 is invalid: it must be a whole number > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # a command that failed before training leaves no run folder
