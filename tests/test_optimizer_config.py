"""The optimiser and the LR scheduler are `_partial_` specs the module calls on its parameters."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, tiny_overrides

from vaelab.checkpoints import load_checkpoint
from vaelab.errors import UserError
from vaelab.train import run


def _fit(tmp_path, mnist_root, *extra: str) -> dict:
    out = tmp_path / "run"
    base = [*tiny_overrides(mnist_root, out, tmp_path / "cache"), "dataset.val_size=40"]
    cfg = compose_config([*base, *extra])
    run(cfg)
    return load_checkpoint(out / "checkpoints" / "last.ckpt")


def test_a_cosine_schedule_decays_the_lr_per_epoch(tmp_path, mnist_root):
    ckpt = _fit(tmp_path, mnist_root, "scheduler=cosine", "trainer.max_epochs=2", "trainer.max_steps=-1")
    (sched,) = ckpt["lr_schedulers"]
    assert sched["last_epoch"] == 2 and sched["T_max"] == 2 and sched["base_lrs"] == [1e-3]
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_the_optimizer_spec_sets_lr_and_an_sgd_runs_without_a_fused_flag(tmp_path, mnist_root):
    ckpt = _fit(
        tmp_path,
        mnist_root,
        "optimizer._target_=torch.optim.SGD",
        "optimizer.lr=0.01",
        "~optimizer.weight_decay",
        "+optimizer.momentum=0.5",
    )
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == 0.01 and group["momentum"] == 0.5 and "betas" not in group
    assert ckpt["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.SGD"
    assert "lr_schedulers" not in ckpt or ckpt["lr_schedulers"] == []


def test_adam_is_fused_on_the_cpu(tmp_path, mnist_root):
    ckpt = _fit(tmp_path, mnist_root)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["fused"] is True
    assert torch.is_tensor(ckpt["optimizer_states"][0]["state"][0]["step"])


def test_a_misspelt_optimizer_target_fails_before_training(tmp_path, mnist_root):
    with pytest.raises(UserError, match="optimizer._target_='torch.optim.Adamm' cannot be imported"):
        _fit(tmp_path, mnist_root, "optimizer._target_=torch.optim.Adamm")
