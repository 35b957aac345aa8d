"""Resuming composes the run's own saved config, keeps the run's record, and a command that fails
before training leaves nothing behind (the CLI, as a user types it)."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    cli_env,
    cli_overrides,
    compose_config,
    run_train_cli,
    tiny_overrides,
    train_command,
    write_celeba,
    write_mnist,
)
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vaelab.checkpoints import check_fits
from vaelab.errors import UserError
from vaelab.rundir import config_drift, discard_failed_attempt, resume_args, resume_command
from vaelab.train import run

EVAL_SCRIPT = ROOT / "src" / "eval.py"


def _run_dirs(log_dir: Path) -> list[Path]:
    return sorted(p.parent for p in log_dir.glob("*/*/.hydra"))


def _record_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / ".hydra").glob("*.yaml"))}


def _step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


@pytest.fixture(scope="module")
def celeba_run(tmp_path_factory):
    """A CelebA run with overrides (a latent size and a data folder of its own), 2 steps."""
    tmp = tmp_path_factory.mktemp("resume")
    data = write_celeba(tmp / "faces")
    args = [a for a in cli_overrides(tmp, data) if not a.startswith("dataset.val_size")]
    proc = run_train_cli(["dataset=celeba", "latent_dim=6", *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _run_dirs(tmp / "outputs")
    return run, data, tmp / "outputs"


def test_resume_alone_composes_the_runs_config_and_keeps_its_record(celeba_run):
    run, data, log_dir = celeba_run
    record = _record_bytes(run)
    assert set(record) == {"config.yaml", "hydra.yaml", "overrides.yaml"}

    first = run_train_cli([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert _step(run) == 4  # 2 epochs of 2 batches: went on from step 2, in the run's own folder
    assert _run_dirs(log_dir) == [run]
    assert _record_bytes(run) == record  # the run's record, byte for byte
    resumed = OmegaConf.load(run / ".hydra" / "resume-1" / "config.yaml")
    assert resumed.dataset._target_ == "vaelab.data.CelebADataModule"
    assert resumed.latent_dim == 6 and resumed.paths.data_dir == str(data)
    assert resumed.trainer.max_epochs == 2
    hparams = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
    assert hparams["latent_dims"] == [6]
    assert "differs from the run's record" not in first.stdout + first.stderr

    # ckpt_path=last finds the newest run under the log folder; the command line's key wins
    second = run_train_cli(["ckpt_path=last", f"paths.log_dir={log_dir}", "trainer.max_epochs=3"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert _step(run) == 6
    assert _record_bytes(run) == record
    records = sorted(p.name for p in (run / ".hydra").glob("resume-*"))
    assert records == ["resume-1", "resume-2"]
    overrides = [str(o) for o in OmegaConf.load(run / ".hydra" / "resume-2" / "overrides.yaml")]
    assert "trainer.max_epochs=3" in overrides and "trainer.max_epochs=2" not in overrides
    assert "dataset=celeba" in overrides and "latent_dim=6" in overrides


def test_eval_takes_dataset_and_data_folder_from_the_resumed_run(celeba_run):
    run, data, _ = celeba_run
    proc = subprocess.run(
        [sys.executable, str(EVAL_SCRIPT), f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "eval.k=2"],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    # the 8 test faces of the run's own data folder (the default folder has no CelebA), at k = 2
    assert (metrics["n_examples"], metrics["latent_dim"], metrics["k"]) == (8, 6, 2)


def test_a_resume_that_fails_before_training_removes_only_its_own_record(celeba_run):
    run, _, log_dir = celeba_run
    record, step = _record_bytes(run), _step(run)
    before = sorted(p.name for p in (run / ".hydra").glob("resume-*"))
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = run_train_cli([f"ckpt_path={ckpt}", "paths.data_dir=/nonexistent"])
    assert proc.returncode == 2 and "/nonexistent" in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in (run / ".hydra").glob("resume-*")) == before
    assert _record_bytes(run) == record and _step(run) == step
    assert (run / "metrics.json").is_file() and _run_dirs(log_dir) == [run]


def test_a_bad_ckpt_path_leaves_no_run_folder(tmp_path, mnist_root):
    """(test_cli checks the same after a config error and after missing data.)"""
    log_dir = tmp_path / "outputs"
    log_dir.mkdir()
    proc = run_train_cli([*cli_overrides(tmp_path, mnist_root), "ckpt_path=/nonexistent/last.ckpt"])
    assert proc.returncode == 2 and "does not exist" in proc.stderr, proc.stderr[-3000:]
    assert list(log_dir.iterdir()) == []  # neither outputs/<date>/<time> nor outputs/<date>


@pytest.mark.parametrize(
    "args, extra",
    [(["+hparams_search=optuna"], "optuna"), (["-m", "hydra/launcher=slurm"], "slurm")],
)
def test_a_missing_plugin_names_its_pip_install(tmp_path, args, extra):
    proc = run_train_cli([*args, f"paths.log_dir={tmp_path / 'outputs'}"])
    assert proc.returncode == 2
    assert f'pip install -e ".[{extra}]"' in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_the_printed_resume_command_works_as_printed(tmp_path):
    """SIGTERM, then the 'Resume with:' line run as printed (no other override) finishes the run."""
    data = write_mnist(tmp_path / "digits", n_train=840, n_test=40)
    args = [*cli_overrides(tmp_path, data), "callbacks.resume_checkpoints.every_n_steps=1"]
    args = [a for a in args if not a.startswith("trainer.limit_train_batches")] + ["net.hidden=[32]"]
    proc = subprocess.Popen(
        train_command(args),
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not list((tmp_path / "outputs").glob("*/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    (run,) = _run_dirs(tmp_path / "outputs")
    assert _step(run) < 50  # 800 images / 16: stopped inside the epoch
    printed = out.split("Resume with: ")[1].splitlines()[0]
    command = shlex.split(printed)
    assert command[2] == f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    resumed = subprocess.run(command, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _step(run) == 50 and _run_dirs(tmp_path / "outputs") == [run]
    assert json.loads((run / "metrics.json").read_text())["test/loss"] is not None


# -- the pieces, without a subprocess ------------------------------------------------------------
def _fake_run(tmp_path: Path, overrides: list[str], config: dict | None = None) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create(config or {}), run / ".hydra" / "config.yaml")
    return run


def test_resume_args_add_the_record_let_the_command_line_win_and_are_idempotent(tmp_path, monkeypatch):
    for var in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    run = _fake_run(tmp_path, ["dataset=celeba", "latent_dim=6", "+extra.key=1", "ckpt_path=old.ckpt"])
    ckpt = f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    args = resume_args(["--cfg", "job", ckpt, "latent_dim=8", "extra.key=2"], ROOT / "conf")
    assert args[:2] == ["--cfg", "job"]  # overrides stay one block after the flags
    assert args[2:] == [
        "dataset=celeba",
        f"hydra.run.dir='{run}'",
        "hydra.output_subdir=.hydra/resume-1",
        ckpt,
        "latent_dim=8",
        "+extra.key=2",  # the run added the key: changing it must add it again
    ]
    assert resume_args(args, ROOT / "conf") == args  # what a DDP rank re-runs stays as it is
    assert resume_args(["-m", ckpt], ROOT / "conf") == ["-m", ckpt]  # a sweep starts afresh


def test_config_drift_names_keys_the_command_line_did_not_set(tmp_path):
    saved = {"latent_dim": 6, "optimizer": {"lr": 0.001}, "objective": {"beta": 1.0}}
    run = _fake_run(tmp_path, ["latent_dim=6"], saved)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    now = OmegaConf.create(
        {"latent_dim": 6, "optimizer": {"lr": 0.01}, "objective": {"beta": 2.0}, "ckpt_path": ckpt}
    )
    own = run / ".hydra" / "resume-1"
    warning = config_drift(now, run, own, ["latent_dim=6", f"ckpt_path={ckpt}", "optimizer.lr=0.01"])
    assert "objective.beta: 1.0 -> 2.0" in warning
    assert "optimizer.lr" not in warning and "latent_dim" not in warning and "ckpt_path" not in warning
    same = OmegaConf.create({**saved, "ckpt_path": ckpt})
    assert config_drift(same, run, own, [f"ckpt_path={ckpt}"]) is None


def test_discard_keeps_a_folder_that_holds_a_checkpoint(tmp_path):
    run = tmp_path / "outputs" / "day" / "time"
    (run / ".hydra").mkdir(parents=True)
    with pytest.raises(RuntimeError), discard_failed_attempt(run, run / ".hydra", tmp_path / "outputs"):
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        raise RuntimeError("failed during training")
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / ".hydra").is_dir()
    (run / "checkpoints" / "last.ckpt").unlink()
    (run / "checkpoints").rmdir()
    with pytest.raises(RuntimeError), discard_failed_attempt(run, run / ".hydra", tmp_path / "outputs"):
        (run / "train.log").write_text("error\n")
        raise RuntimeError("failed before training")
    assert list((tmp_path / "outputs").iterdir()) == []


def test_resume_command_quotes_what_hydra_or_the_shell_would_read():
    plain = resume_command(Path("/runs/a/checkpoints/last.ckpt"))
    assert plain.endswith(" ckpt_path=/runs/a/checkpoints/last.ckpt")
    odd = resume_command(Path("/my runs/a,b/last.ckpt"))
    assert shlex.split(odd)[-1] == "ckpt_path='/my runs/a,b/last.ckpt'"


def test_a_failed_start_keeps_a_named_folder_that_existed_before(tmp_path, monkeypatch):
    from vaelab import rundir

    mine = tmp_path / "my-run"
    (mine / "notes.log").parent.mkdir()
    (mine / "notes.log").write_text("my own notes\n")
    monkeypatch.setattr(rundir, "EXISTING", set())
    resume_args([f"hydra.run.dir={mine}", "latent_dim=3"], ROOT / "conf")  # before Hydra makes .hydra/
    (mine / ".hydra").mkdir()
    with pytest.raises(RuntimeError), discard_failed_attempt(mine, mine / ".hydra", tmp_path):
        raise RuntimeError("failed before training")
    assert (mine / "notes.log").read_text() == "my own notes\n"


# -- a checkpoint of the vaelab before models were composed from parts ---------------------------
# the hyper-parameters such a checkpoint holds (one run's, as written), and a few of its tensors
OLD_HPARAMS = {
    "image_shape": [1, 28, 28],
    "latent_dim": 2,
    "net": "mlp",
    "hidden_dims": [400],
    "channels": [32, 64, 128, 256],
    "likelihood": "gaussian",
    "sigma": 0.1,
    "learn_sigma": False,
    "beta": 1.0,
    "kl_warmup_steps": 0,
    "lr": 0.001,
    "weight_decay": 0.0,
    "compile": False,
    "channels_last": False,
}


def _old_checkpoint() -> dict:
    state = {
        "vae.encoder.net.0.weight": torch.zeros(400, 784),
        "vae.decoder.net.0.weight": torch.zeros(400, 2),
    }
    return {"hyper_parameters": dict(OLD_HPARAMS), "state_dict": state, "global_step": 430, "epoch": 0}


def _says_older_vaelab(message: str, path) -> None:
    assert "\n" not in message  # one paragraph
    assert message.startswith(f"Checkpoint {path} was written by an older vaelab")
    assert "this version cannot rebuild" in message and "latent_dim=2" in message and "net='mlp'" in message
    assert "Retrain" in message and "with the vaelab version that wrote it" in message
    assert "tensors missing" not in message  # not mistaken for a network of another shape


def test_a_checkpoint_of_an_older_vaelab_is_named_as_such():
    model = instantiate(compose_config(["latent_dim=2"]).model, image_shape=(1, 28, 28), n_conditions=10)
    with pytest.raises(UserError) as err:
        check_fits(_old_checkpoint(), model, "old/last.ckpt")
    _says_older_vaelab(str(err.value), "old/last.ckpt")
    # parts given as strings tell an older checkpoint apart even beside a latent_dims key
    ckpt = _old_checkpoint()
    ckpt["hyper_parameters"]["latent_dims"] = [2]
    with pytest.raises(UserError, match="written by an older vaelab"):
        check_fits(ckpt, model, "old/last.ckpt")


def test_resuming_from_a_checkpoint_of_an_older_vaelab_stops_before_training(tmp_path, mnist_root):
    path = tmp_path / "old" / "last.ckpt"
    path.parent.mkdir()
    torch.save(_old_checkpoint(), path)
    over = tiny_overrides(mnist_root, tmp_path / "run", tmp_path / "cache") + ["dataset.val_size=40"]
    with pytest.raises(UserError) as err:
        run(compose_config([*over, "latent_dim=2", f"ckpt_path={path}"]))
    _says_older_vaelab(str(err.value), path)
    assert not (tmp_path / "run" / "checkpoints").exists()
