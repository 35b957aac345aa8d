"""Training runs through the real Hydra config, in-process (fast) on tiny data."""

import json
import re

import pytest
import torch
from conftest import tiny_overrides
from events import read_events

from vaelab.train import run

SCALARS = {
    "train/loss",
    "train/elbo",
    "train/recon",
    "train/kl",
    "val/loss",
    "val/elbo",
    "val/recon",
    "val/kl",
}
GRIDS = {"images/reconstructions", "images/samples", "images/samples_expost", "images/interpolations"}


def _overrides(tmp_path, data_root, out="run"):
    return tiny_overrides(data_root, tmp_path / out, tmp_path / "cache")


def test_mnist_two_steps_writes_checkpoint_metrics_and_tensorboard(tmp_path, mnist_root, compose_train):
    cfg = compose_train(_overrides(tmp_path, mnist_root) + ["dataset.val_size=40"])
    metrics = run(cfg)
    out = tmp_path / "run"
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert ckpt["hyper_parameters"]["net"] == {
        "_target_": "vaelab.model.nets.mlp.MLP",
        "hidden": [400],
        "activation": "relu",
    }
    assert list(ckpt["hyper_parameters"]["image_shape"]) == [1, 28, 28]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["val/loss"] == pytest.approx(metrics["val/loss"])
    assert saved["test/elbo"] == pytest.approx(-saved["test/loss"])  # β = 1
    assert saved["val/elbo"] == pytest.approx(saved["val/recon"] - saved["val/kl"], rel=1e-5)
    scalars, images = read_events(out / "tensorboard")
    assert set(scalars) >= SCALARS
    assert len(scalars["train/loss"]) == 2
    assert set(images) >= GRIDS
    recon = images["images/reconstructions"][-1]
    assert (recon.width, recon.height) == (
        8 * 30 + 2,
        2 * 30 + 2,
    )  # 8 originals + 8 recons, 28px + 2px pad
    expost = images["images/samples_expost"][-1]  # a cheap ex-post fit's draws beside N(0, I)'s
    assert (expost.width, expost.height) == (8 * 30 + 2, 30 + 2)
    # the result picture's ex-post prior is kept with the run, named by its weights and settings
    (saved,) = (out / "expost").glob("*.pt")
    assert re.fullmatch(r"[0-9a-f]{16}-50full-seed0-codes10000-v1\.pt", saved.name)
    mixture = torch.load(saved, weights_only=True)
    assert mixture["means"].shape == (50, 32) and mixture["codes"] == 280  # every training image


def test_celeba_conv_logs_64px_colour_grids_and_latent_dim(tmp_path, celeba_root, compose_train):
    cfg = compose_train(
        _overrides(tmp_path, celeba_root)
        + ["dataset=celeba", "latent_dim=6", "dataset.decode_workers=1", "net.channels=[8,8,8,8]"]
    )
    assert cfg.model.net._target_ == "vaelab.model.nets.conv.Conv"  # celeba selects the conv net
    run(cfg)
    out = tmp_path / "run"
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["latent_dims"] == [6]
    assert ckpt["hyper_parameters"]["net"]["channels"] == [8, 8, 8, 8]
    assert list(ckpt["hyper_parameters"]["image_shape"]) == [3, 64, 64]
    _, images = read_events(out / "tensorboard")
    samples = images["images/samples"][-1]
    assert (samples.width, samples.height) == (8 * 66 + 2, 66 + 2)
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(samples.encoded_image_string)).mode == "RGB"


def test_resume_from_last_checkpoint_continues_the_step_count(tmp_path, mnist_root, compose_train):
    first = compose_train(_overrides(tmp_path, mnist_root, "a") + ["dataset.val_size=40"])
    run(first)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    resumed = compose_train(
        _overrides(tmp_path, mnist_root, "b")
        + ["dataset.val_size=40", "trainer.max_epochs=2", f"ckpt_path={last}"]
    )
    run(resumed)
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    scalars, _ = read_events(tmp_path / "b" / "tensorboard")
    assert len(scalars["train/loss"]) == 2  # only the two new steps were trained


def test_a_run_stopped_by_max_steps_mid_epoch_leaves_last_ckpt_at_its_final_step(
    tmp_path, mnist_root, compose_train
):
    over = _overrides(tmp_path, mnist_root) + ["dataset.val_size=40", "trainer.max_epochs=9"]
    run(compose_train(over + ["trainer.limit_train_batches=3", "trainer.max_steps=4"]))  # epoch 1, batch 1
    checkpoints = tmp_path / "run" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4 and last["epoch"] == 1  # inside epoch 1, which resuming finishes
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch000-step000003.ckpt", "last.ckpt"]


def test_a_max_steps_stop_at_an_epochs_end_without_validation_is_saved(tmp_path, mnist_root, compose_train):
    over = _overrides(tmp_path, mnist_root) + ["dataset.val_size=40", "trainer.max_epochs=9"]
    over += ["trainer.limit_train_batches=3", "trainer.max_steps=9", "trainer.check_val_every_n_epoch=2"]
    run(compose_train(over))  # validation after epoch 1 (step 6) only; epoch 2 ends the run at step 9
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 9


def test_bernoulli_decoder_with_binarised_mnist_trains(tmp_path, mnist_root, compose_train):
    cfg = compose_train(
        _overrides(tmp_path, mnist_root)
        + [
            "dataset.val_size=40",
            "likelihood=bernoulli",
            "dataset.binarize=true",
            "latent_dim=2",
        ]
    )
    metrics = run(cfg)
    # a Bernoulli log-likelihood of 784 binary pixels is negative, so the loss is positive
    assert metrics["val/recon"] < 0 < metrics["val/loss"]


def test_learned_sigma_is_logged_and_trained(tmp_path, mnist_root, compose_train):
    cfg = compose_train(
        _overrides(tmp_path, mnist_root) + ["dataset.val_size=40", "likelihood=gaussian_learned"]
    )
    run(cfg)
    scalars, _ = read_events(tmp_path / "run" / "tensorboard")
    assert len(scalars["train/sigma"]) == 2 and scalars["train/sigma"][-1] != pytest.approx(0.1, abs=1e-7)


@pytest.mark.parametrize("debug", ["fast", "overfit"])
def test_debug_configs_turn_the_extras_off(compose_train, debug):
    cfg = compose_train([f"debug={debug}"])
    assert cfg.callbacks.sample_quality is None  # no judge to train, no per-epoch numbers
    assert (
        cfg.callbacks.image_grids.expost_components == 0
        and cfg.callbacks.result_figure.expost_components == 0
    )
    assert cfg.callbacks.image_grids.every_n_epochs == 1  # the cheap grids stay: a check looks at them


def test_validation_draws_the_same_noise_every_epoch_and_leaves_trainings_streams_alone(compose_train):
    from hydra.utils import instantiate

    model = instantiate(compose_train([]).model, image_shape=(1, 28, 28), n_conditions=0)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    model.on_validation_epoch_start()
    first = torch.rand(3)
    model.on_validation_epoch_end()
    assert torch.equal(torch.get_rng_state(), before)  # training goes on as if nothing was drawn
    model.on_test_epoch_start()
    again = torch.rand(3)
    model.teardown("test")  # an epoch that raised never reaches its end hook: teardown closes it
    assert torch.equal(first, again) and torch.equal(torch.get_rng_state(), before)
