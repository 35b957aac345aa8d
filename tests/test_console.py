"""What a run prints and refuses at start: the config tree (once), numbers a reader can read,
and one paragraph for a GPU config on a machine without one."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, tiny_overrides, write_mnist

from vaelab.errors import UserError
from vaelab.numbers import significant
from vaelab.rundir import first_process
from vaelab.train import run


@pytest.mark.parametrize(
    "value, text",
    [
        (12345.6, "12350"),
        (4527.3, "4527"),
        (-675.33, "-675.3"),
        (0.012345, "0.01235"),
        (9.99995, "10.00"),
        (6.8745, "6.875"),
        (2.5e-5, "2.500e-05"),
        (0.0, "0"),
        (None, "n/a"),
        (float("inf"), "inf"),
    ],
)
def test_metrics_print_with_four_significant_digits_and_no_exponent_in_everyday_ranges(value, text):
    assert significant(value) == text


@pytest.mark.parametrize(
    "env, first",
    [
        ({}, True),
        ({"RANK": "0"}, True),
        ({"RANK": "3"}, False),
        ({"NODE_RANK": "1"}, False),  # node 1 started by hand: Lightning has not set RANK yet
        ({"NODE_RANK": "0"}, True),
        ({"GROUP_RANK": "1"}, False),
    ],
)
def test_only_the_first_process_of_a_run_counts_as_first(monkeypatch, env, first):
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_NODEID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert first_process() is first


def test_the_config_tree_can_be_turned_off(tmp_path, capsys):
    root = write_mnist(tmp_path / "data", n_train=120, n_test=40)
    base = tiny_overrides(root, tmp_path / "run", tmp_path / "cache") + ["dataset.val_size=40", "test=false"]
    run(compose_config([*base, "print_config=false"]))
    assert "CONFIG" not in capsys.readouterr().out
    run(compose_config([*base, f"paths.output_dir={tmp_path / 'run2'}"]))
    out = capsys.readouterr().out
    assert out.count("CONFIG") == 1 and "latent_dim: 32" in out
    # each part once, in its own group: the model points at it instead of repeating it
    assert out.count("_target_: vaelab.model.nets.mlp.MLP") == 1 and "  net: ${net}" in out
    assert out.count("_target_: vaelab.model.priors.normal.StandardNormal") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_a_gpu_trainer_without_a_gpu_is_one_paragraph(tmp_path, trainer):
    cfg = compose_config([f"trainer={trainer}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(UserError) as err:
        run(cfg)
    message = " ".join(str(err.value).split())
    assert "trainer.accelerator=gpu" in message and "no CUDA GPU" in message
    assert (
        f"torch {torch.__version__}" in message and "trainer=cpu" in message and "trainer=ddp_cpu" in message
    )
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides, synced",
    [
        (["trainer=multinode", "trainer.accelerator=cpu"], False),
        (["trainer=ddp", "trainer.accelerator=cpu"], False),
        (["trainer=ddp"], True),
        (["trainer=multinode"], True),
    ],
)
def test_sync_batchnorm_follows_the_accelerator(overrides, synced):
    assert compose_config(overrides).trainer.sync_batchnorm is synced
