"""Interrupted runs: SIGTERM and Ctrl-C save the exact step, a SIGKILL loses at most N steps,
and a resumed run ends exactly where an uninterrupted one with the same seed does (CPU,
deterministic mode)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import (
    cli_env,
    compose_config,
    run_train_cli,
    tiny_overrides,
    train_command,
    write_mnist,
)
from events import scalar_steps
from lightning.pytorch.callbacks import ModelCheckpoint

from vaelab.atomic import atomic_torch_save, remove_stale_temps
from vaelab.checkpoints import check_fits, load_checkpoint
from vaelab.module import VAEModule
from vaelab.resume import DDP_CHECK_EVERY, ResumeCheckpoints, RunInterrupted
from vaelab.train import run

BATCHES_PER_EPOCH = 100  # 1600 training images in batches of 16
EPOCHS = 2


def _overrides(data: Path, cache: Path, *extra: str) -> list[str]:
    """A 2-epoch run, deterministic, with last.ckpt rewritten every 4 steps."""
    over = tiny_overrides(data, Path("unused"), cache)
    return [o for o in over if not o.startswith(("paths.output_dir", "trainer.limit_train_batches"))] + [
        "dataset.val_size=40",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.deterministic=true",
        "callbacks.resume_checkpoints.every_n_steps=4",
        "net.hidden=[64]",
        "latent_dim=8",
        "likelihood=bernoulli",
        "dataset.binarize=true",  # draws noise from the same RNG as the model: resume must restore it
        *extra,
    ]


def _results(metrics: dict) -> dict:
    """metrics.json less the wall-clock times of the fit and the judge, which no two runs share."""
    assert metrics["fit_seconds"] >= 0 and metrics.get("judge_seconds", 0) >= 0
    return {k: v for k, v in metrics.items() if k not in ("fit_seconds", "judge_seconds")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("interrupt") / "data", n_train=1640, n_test=40)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(args), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, data):
    run_dir, log_dir = tmp_path / "run", tmp_path / "outputs"
    common = _overrides(data, tmp_path / "cache", f"paths.log_dir={log_dir}")
    proc = _start([*common, f"hydra.run.dir={run_dir}"])
    last = run_dir / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)  # the first periodic save, at step 4: training is under way
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    stopped = load_checkpoint(last)
    step = stopped["global_step"]
    assert f"stopped by SIGTERM at step {step}" in out
    assert 4 <= step < BATCHES_PER_EPOCH * EPOCHS and step % BATCHES_PER_EPOCH != 0  # mid-epoch
    (loader_state,) = stopped["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state["batches_served"] == step % BATCHES_PER_EPOCH
    assert not (run_dir / "metrics.json").exists()

    resumed = run_train_cli([*common, f"ckpt_path={last}"])  # no hydra.run.dir
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not log_dir.exists()  # resumed into run_dir, not a new dated folder
    metrics = json.loads((run_dir / "metrics.json").read_text())
    final = load_checkpoint(last)

    reference = run(compose_config(common + [f"paths.output_dir={tmp_path / 'ref'}"]))
    ref_final = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == ref_final["global_step"] == BATCHES_PER_EPOCH * EPOCHS
    assert final["epoch"] == ref_final["epoch"]
    assert _results(metrics) == _results(reference)  # every train/val/test metric, to the last bit
    for name, tensor in ref_final["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name
    print(f"stopped at step {step}; resumed vs uninterrupted: {metrics} vs {reference}")


def test_sigkill_leaves_a_last_checkpoint_that_loads_and_resumes(tmp_path, data):
    run_dir = tmp_path / "run"
    common = _overrides(data, tmp_path / "cache", "trainer.max_epochs=50")
    proc = _start([*common, f"hydra.run.dir={run_dir}", "callbacks.resume_checkpoints.every_n_steps=2"])
    last = run_dir / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    time.sleep(0.5)  # rewrites every 2 steps: the kill may well land inside one
    proc.kill()
    proc.communicate(timeout=60)
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] >= 2 and ckpt["global_step"] % 2 == 0
    model = VAEModule(**ckpt["hyper_parameters"])
    check_fits(ckpt, model, last)
    model.load_state_dict(ckpt["state_dict"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    remove_stale_temps(last.parent)  # what a resumed run does first
    # what is left: last.ckpt, and the best checkpoint if a fast machine finished an epoch first
    left = sorted(p.name for p in last.parent.iterdir())
    assert left[-1] == "last.ckpt" and all(
        re.fullmatch(r"epoch\d{3}-step\d{6}\.ckpt", n) for n in left[:-1]
    ), left


def test_a_save_cut_short_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # a Ctrl-C (or a kill) mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class _SendSignal(L.Callback):
    """Sends ``signum`` to this process at the end of training step ``step``, like a user would."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize(
    "limit,same_order",
    [(["trainer.max_epochs=2"], True), (["trainer.max_epochs=3", "trainer.max_steps=36"], False)],
    ids=["max_epochs", "max_steps"],
)
def test_ctrl_c_on_an_epochs_last_step_stops_after_its_validation(
    tmp_path, mnist_root, monkeypatch, limit, same_order
):
    """Ctrl-C (SIGINT) on the last step of epoch 0: the run finishes that epoch's validation and
    checkpoints, exits 130, and the resumed run ends as an uninterrupted one does."""
    over = tiny_overrides(mnist_root, tmp_path / "run", tmp_path / "cache") + [
        "dataset.val_size=40",
        "trainer.limit_train_batches=1.0",  # 280 images: 18 batches of 16
        *limit,
        "trainer.deterministic=true",
    ]
    reference = run(compose_config([*over, f"paths.output_dir={tmp_path / 'ref'}"]))
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a job started in the background
    saves = []
    real_save = ResumeCheckpoints._save
    monkeypatch.setattr(
        ResumeCheckpoints, "_save", lambda self, t: saves.append(t.global_step) or real_save(self, t)
    )
    import vaelab.train

    real_build = vaelab.train.build

    def build_with_signal(cfg):
        datamodule, model, trainer = real_build(cfg)
        trainer.callbacks.insert(0, _SendSignal(signal.SIGINT, 18))
        return datamodule, model, trainer

    monkeypatch.setattr(vaelab.train, "build", build_with_signal)
    with pytest.raises(SystemExit) as stop:
        run(compose_config(over))
    assert stop.value.code == 128 + signal.SIGINT
    assert saves == [18]  # once, at the epoch's end, not at the batch the signal came in
    monkeypatch.setattr(vaelab.train, "build", real_build)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    metrics = run(compose_config([*over, "ckpt_path=last"]))
    # A step-limited (iteration-based) fit loop resumed from an epoch-end checkpoint numbers the
    # next epoch one higher than an uninterrupted run (Lightning's restart logic), so its data
    # order differs; what must hold is that no step is lost (the loader once served none).
    for key in ("train/loss", "val/loss", "test/loss") if same_order else ():
        assert metrics[key] == reference[key], key
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 36  # both epochs trained in full


def test_ddp_ranks_agree_on_a_signal_every_tenth_step_and_at_epoch_end(tmp_path):
    """The all-reduce that makes every rank save together is a device sync, so it runs on the
    steps all ranks share (multiples of DDP_CHECK_EVERY) and at each epoch's end, not every step."""
    votes = []

    def reduce_boolean_decision(decision, all=True):
        votes.append(decision)
        return True  # another rank caught a signal

    trainer = SimpleNamespace(world_size=2, global_step=0, strategy=SimpleNamespace())
    trainer.strategy.reduce_boolean_decision = reduce_boolean_decision
    callback = ResumeCheckpoints(str(tmp_path))
    asked = {}
    for step in range(1, 21):
        trainer.global_step = step
        asked[step] = callback._stop_requested(trainer)
    assert [s for s, a in asked.items() if a] == [DDP_CHECK_EVERY, 2 * DDP_CHECK_EVERY] and votes == [
        False
    ] * 2
    trainer.global_step = 13
    assert callback._stop_requested(trainer, epoch_end=True) and len(votes) == 3


@pytest.mark.parametrize("first_stop", [2, 4], ids=["in-epoch-0", "in-epoch-1"])
def test_a_max_steps_stop_inside_an_epoch_resumes_exactly(tmp_path, data, first_stop):
    """max_steps cuts an epoch of 3 batches short; raising it and resuming must give the run that
    never stopped: the rest of the same epoch (its data order, its validation), not the next one.
    Lightning counts the cut epoch as done before the run ends; last.ckpt must keep the step as
    it stood inside the epoch (no checkpoint counters are rewritten to get there)."""
    common = _overrides(data, tmp_path / "cache", "trainer.limit_train_batches=3", "trainer.max_epochs=9")

    def fit(out: str, max_steps: int, *extra: str) -> dict:
        metrics = run(
            compose_config(
                [*common, f"paths.output_dir={tmp_path / out}", f"trainer.max_steps={max_steps}", *extra]
            )
        )
        return metrics, load_checkpoint(tmp_path / out / "checkpoints" / "last.ckpt")

    _, stopped = fit("run", first_stop)
    assert stopped["global_step"] == first_stop and stopped["epoch"] == first_stop // 3  # still in it
    metrics, final = fit("run", 5, f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}")
    reference, ref_final = fit("ref", 5)
    assert final["global_step"] == ref_final["global_step"] == 5 and final["epoch"] == ref_final["epoch"] == 1
    for name, tensor in ref_final["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name
    assert metrics["test/loss"] == reference["test/loss"]
    for tag in ("train/loss", "val/loss"):  # and the logger's steps run on as if it never stopped
        assert scalar_steps(tmp_path / "run" / "tensorboard", tag) == scalar_steps(
            tmp_path / "ref" / "tensorboard", tag
        )


def test_a_signal_caught_after_the_last_epochs_check_still_saves_and_stops_before_the_test(tmp_path):
    saved = []
    save = lambda path, weights_only: saved.append(path)  # noqa: E731
    trainer = SimpleNamespace(world_size=1, global_step=12, current_epoch=3, save_checkpoint=save)
    callback = ResumeCheckpoints(str(tmp_path))
    callback.on_train_end(trainer, None)  # no signal: nothing to do
    assert saved == []
    callback._signum = signal.SIGTERM
    with pytest.raises(RunInterrupted) as stop:
        callback.on_train_end(trainer, None)
    assert stop.value.code == 128 + signal.SIGTERM and saved == [tmp_path / "last.ckpt"]


def test_no_periodic_save_is_due_at_step_zero(tmp_path):
    """With accumulate_grad_batches > 1 the first micro-batches end at global step 0, which is a
    multiple of every_n_steps; nothing has been trained yet, so nothing is due."""
    callback = ResumeCheckpoints(str(tmp_path), every_n_steps=4)
    batches = SimpleNamespace(is_last_batch=False)
    fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=batches))
    trainer = SimpleNamespace(
        world_size=1, global_step=0, max_steps=-1, fit_loop=fit_loop, save_checkpoint=pytest.fail
    )
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert not callback._due
    trainer.global_step, saved = 4, []
    trainer.save_checkpoint = lambda path, weights_only: saved.append(path)
    callback.on_train_batch_end(trainer, None, None, None, 7)
    assert saved == [tmp_path / "last.ckpt"]


def test_another_callbacks_save_last_is_turned_off_so_last_ckpt_has_one_writer(tmp_path):
    """A run recorded with ModelCheckpoint(save_last=True) still resumes: its epoch-end save
    would overwrite the step saved inside a cut epoch."""
    best = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    owner = ResumeCheckpoints(str(tmp_path))
    trainer = SimpleNamespace(checkpoint_callbacks=[best, owner], is_global_zero=True)
    owner.setup(trainer, None, "fit")
    assert best.save_last is False
