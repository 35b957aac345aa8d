"""What TensorBoard shows of a run: the train curves' steps, the HPARAMS view (swept keys
first, metrics read from the curve tags, no final/* charts) and the sweep jobs' folder names."""

from __future__ import annotations

import os

import pytest
from conftest import tiny_overrides
from events import read_events, read_hparams, scalar_steps, trial_name
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from vaelab import swept
from vaelab.hparams import KEY_HPARAMS, hyperparameters, metric_tags, one_point_columns, write_hparams
from vaelab.train import run


def test_train_curves_keep_first_step_every_nth_and_each_epochs_last(tmp_path, mnist_root, compose_train):
    """7 batches per epoch, log_every_n_steps=3, 2 epochs: Lightning alone writes steps 2, 5,
    8, 11; the first step (0) and the epochs' last (6, 13) are added, each exactly once."""
    over = tiny_overrides(mnist_root, tmp_path / "run", tmp_path / "cache") + ["dataset.val_size=40"]
    over += ["trainer.limit_train_batches=7", "trainer.log_every_n_steps=3", "trainer.max_epochs=2"]
    metrics = run(compose_train(over + ["objective.warmup_steps=4"]))
    tb = tmp_path / "run" / "tensorboard"
    for tag in ("train/loss", "train/elbo", "train/recon", "train/kl", "train/beta"):
        assert scalar_steps(tb, tag) == [0, 2, 5, 6, 8, 11, 13], tag
    scalars, _ = read_events(tb)
    assert scalars["train/beta"] == pytest.approx([0, 0.5, 1, 1, 1, 1, 1])  # warm-up over 4 steps
    assert scalars["train/loss"][-1] == pytest.approx(metrics["train/loss"], rel=1e-6)
    # final metrics are the curves' last points, not single-dot charts of their own
    assert not [tag for tag in scalars if tag.startswith("final/")]
    assert len(scalars["val/elbo"]) == 2
    # the dashboard opens on train/ and val/: no epoch staircase, no one-point test charts
    assert "epoch" not in scalars and not [tag for tag in scalars if tag.startswith("test/")]
    infos, values, metric_names = read_hparams(tb)
    assert metric_names[0] == "val/elbo" and "val/loss" in metric_names
    assert not [m for m in metric_names if not m.startswith("val/")]
    test_columns = ["test/elbo", "test/kl", "test/loss", "test/recon"]
    assert [name for name, _ in infos] == [*hyperparameters(compose_train(over), {}), *test_columns]
    # a single run: nothing swept; the test values lead, so the view ticks and shows them
    assert [name for name, differs in infos if differs] == test_columns
    assert values["latent_dim"] == 32 and values["dataset"] == "mnist" and values["max_epochs"] == 2
    assert len(values) == len(KEY_HPARAMS) + 4  # the short list and the test values, not every leaf
    assert values["test/elbo"] == pytest.approx(metrics["test/elbo"], rel=1e-6)
    assert trial_name(tb) == f"run ({tmp_path.name})"  # the run's own folder name first


def test_hparams_lead_with_the_swept_keys_and_add_no_scalar(tmp_path, compose_train):
    cfg = compose_train(["net=conv", "latent_dim=2", "optimizer.lr=0.01"])
    params = hyperparameters(cfg, {"optimizer.lr": "0.01", "net": "conv", "latent_dim": "2"})
    assert list(params)[:3] == ["optimizer.lr", "net", "latent_dim"]
    assert params["optimizer.lr"] == 0.01 and params["net"] == "conv" and params["latent_dim"] == 2
    assert "lr" not in params  # named by its swept key already
    final = {"val/loss": 1.0, "test/elbo": -2.0, "val/elbo": -1.0, "train/loss": 3.0, "val/kl": None}
    tags = metric_tags(final)
    assert tags == ["val/elbo", "val/loss"]
    assert one_point_columns({**final, "test/kl": 0.5, "test/recon": None}) == {
        "test/elbo": -2.0,
        "test/kl": 0.5,
    }
    write_hparams(str(tmp_path), params, {"optimizer.lr", "net", "latent_dim"}, tags)
    infos, values, metric_names = read_hparams(tmp_path)
    assert infos[:4] == [("optimizer.lr", True), ("net", True), ("latent_dim", True), ("likelihood", False)]
    assert metric_names == tags and values["net"] == "conv"
    scalars, _ = read_events(tmp_path)
    assert scalars == {}  # the metric columns read the run's curves: no point added to them


def test_job_folder_names_hold_the_swept_overrides_and_parse_as_a_ckpt_path(monkeypatch):
    task = [
        "latent_dim=2",
        "trainer.max_epochs=1",
        "net=conv",
        "paths.data_dir=/data",
        "net.channels=[4,4]",
    ]
    monkeypatch.setenv(swept.ENV, "latent_dim,net")
    assert swept.job_dirname(0, task) == "0_latent_dim-2+net-conv"
    monkeypatch.delenv(swept.ENV)  # a launcher that drops the environment: all but places
    name = swept.job_dirname(12, task)
    assert name == "12_latent_dim-2+trainer.max_epochs-1+net-conv+net.channels-_4_4_"
    (override,) = OverridesParser.create().parse_overrides([f"ckpt_path=/out/{name}/checkpoints/last.ckpt"])
    assert override.value() == f"/out/{name}/checkpoints/last.ckpt"  # no quotes needed
    assert swept.job_dirname(3, ["paths.data_dir=/data"]) == "3"
    assert len(swept.job_dirname(1, [f"+k{i}=value{i}" for i in range(40)])) == 2 + swept.NAME_LIMIT
    monkeypatch.setenv(swept.ENV, "")  # a multirun without a sweep: the number alone
    assert swept.job_dirname(0, task) == "0"


def test_swept_keys_callback_reads_the_command_lines_sweeps_and_a_search(monkeypatch):
    monkeypatch.delenv(swept.ENV, raising=False)
    cfg = OmegaConf.create(
        {
            "hydra": {
                "overrides": {
                    "task": ["latent_dim=2,16", "trainer.max_epochs=1", "net=mlp,conv", "+x=[1,2]"]
                },
                "sweeper": {"params": {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))"}},
            }
        }
    )
    callback = swept.SweptKeys()
    callback.on_multirun_start(cfg)
    assert os.environ[swept.ENV] == "latent_dim,net,optimizer.lr"
    assert swept.swept_overrides(
        ["latent_dim=2", "trainer.max_epochs=1", "net=conv", "optimizer.lr=0.001"]
    ) == [
        "latent_dim=2",
        "net=conv",
        "optimizer.lr=0.001",
    ]
    callback.on_multirun_end(cfg)
    assert swept.ENV not in os.environ


def test_a_resumed_run_continues_the_curves_without_a_double_point(tmp_path, mnist_root, compose_train):
    """Resuming counts steps on (Lightning's logger step and vaelab's agree): the second epoch
    adds 8, 11 (every 3rd) and 13 (its last), not its own first step."""
    over = tiny_overrides(mnist_root, tmp_path / "run", tmp_path / "cache") + ["dataset.val_size=40"]
    over += ["trainer.limit_train_batches=7", "trainer.log_every_n_steps=3"]
    run(compose_train(over))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run(compose_train(over + ["trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert scalar_steps(tmp_path / "run" / "tensorboard", "train/loss") == [0, 2, 5, 6, 8, 11, 13]
