"""Interrupted runs lose (almost) nothing and resume exactly where they stopped.

:class:`ResumeCheckpoints` rewrites ``last.ckpt`` every ``every_n_steps`` training steps and,
when SIGTERM or Ctrl-C (SIGINT) arrives, at the end of the step in progress (under DDP, where
the ranks agree on it by an all-reduce, at the end of the next step that is a multiple of
``DDP_CHECK_EVERY``, or of the epoch); the run then
stops with exit code 128 + signal number. Each checkpoint also carries the RNG state, and the
train loader its position in the epoch (see :mod:`vaelab.data.loader`), so a resumed run draws
the same batches and the same noise as an uninterrupted one. A second signal stops at once.

``ckpt_path=last`` (or a checkpoint's path) resumes a run in its own folder, with its own config
(see :mod:`vaelab.rundir`, which tells Hydra both before it composes and makes a new one).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig

from vaelab.atomic import remove_stale_temps
from vaelab.checkpoints import check_fits, load_checkpoint
from vaelab.errors import UserError
from vaelab.rundir import LAST, resume_command

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
DDP_CHECK_EVERY = 10  # steps between the ranks' all-reduce of "was a signal caught?" (a device sync)


class RunInterrupted(SystemExit):
    """Raised once the interrupt checkpoint is on disk; ends the process with 128 + signal."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeCheckpoints(Checkpoint):
    """A :class:`Checkpoint` callback, so Lightning runs its hooks after ModelCheckpoint's: an
    interrupt noticed at an epoch's end stops only once that epoch's checkpoints are written."""

    def __init__(self, dirpath: str, every_n_steps: int = 500):
        self.dirpath, self.every_n_steps = Path(dirpath), every_n_steps
        self._signum: int | None = None
        self._previous: dict = {}
        self._saved_step, self._due = -1, False
        self._rng_to_restore: dict | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    # -- signals ---------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self._signum is not None:  # asked twice: stop now, like a plain Ctrl-C
            self._restore_handlers()
            raise KeyboardInterrupt
        self._signum = signum
        log.warning(
            "%s received: saving a checkpoint at the end of this training step (under DDP: of the next "
            "step all ranks check, at most %d steps on), then stopping "
            "(send it again to stop at once, without saving).",
            signal.Signals(signum).name,
            DDP_CHECK_EVERY,
        )

    def _install_handlers(self) -> None:
        if not self._previous and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}

    def _restore_handlers(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _stop_requested(self, trainer: L.Trainer, epoch_end: bool = False) -> bool:
        asked = self._signum is not None
        if trainer.world_size > 1:  # a signal may reach one rank only; all must save together,
            if not epoch_end and trainer.global_step % DDP_CHECK_EVERY:  # on the same steps
                return False
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        return asked

    # -- saving ----------------------------------------------------------------------
    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.last_path, weights_only=False)  # said: no "not set" notice
        self._saved_step, self._due = trainer.global_step, False

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        self._save(trainer)
        self._restore_handlers()
        signum = self._signum or signal.SIGTERM
        log.warning(
            "stopped by %s at step %d (epoch %d); saved %s. Resume with: %s",
            signal.Signals(signum).name,
            trainer.global_step,
            trainer.current_epoch,
            self.last_path,
            resume_command(self.last_path),
        )
        raise RunInterrupted(128 + signum)

    # -- Lightning hooks -------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            _leave_last_to(self, trainer)
        if stage == "fit" and trainer.is_global_zero and self.dirpath.is_dir():
            for tmp in remove_stale_temps(self.dirpath):
                log.info("removed %s, left by a save that was killed", tmp)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._install_handlers()

    def on_train_start(self, trainer, pl_module) -> None:
        self._install_handlers()
        self._restore_rng()  # after the sanity check, which draws noise too

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore_rng()  # resumed after the last step: no training, but the test draws noise

    def _restore_rng(self) -> None:
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # > 0: accumulating micro-batches end batches at step 0 too
        self._due |= (
            bool(self.every_n_steps)
            and step > 0
            and step % self.every_n_steps == 0
            and step != self._saved_step
        )
        if _epoch_ends_here(trainer):
            return  # validation follows: saving now would make a resumed run skip it
        if self._stop_requested(trainer):
            self._save_and_stop(trainer)
        if self._due or _out_of_steps(trainer):  # the run's last step: last.ckpt holds it
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # the signal came late in the epoch or in validation
        if self._stop_requested(trainer, epoch_end=True):
            self._save_and_stop(trainer)
        # last.ckpt is this callback's alone (ModelCheckpoint keeps the best): rewritten after each
        # epoch's validation, except when max_steps cut the epoch short. That step was saved at its
        # batch's end, with Lightning's counters still inside the epoch; a save now, with the epoch
        # counted as done, would make a resumed run skip the rest of it.
        if not (_out_of_steps(trainer) and self._saved_step == trainer.global_step):
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._stop_requested(trainer, epoch_end=True):  # after the last epoch's look: no test
            self._save_and_stop(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore_handlers()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_handlers()

    def state_dict(self) -> dict:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict.get("rng")


def _leave_last_to(owner: ResumeCheckpoints, trainer: L.Trainer) -> None:
    """Turn off ``save_last`` of the other checkpoint callbacks (runs recorded before
    ResumeCheckpoints owned last.ckpt ask for it): their epoch-end save after a max_steps cut
    would overwrite last.ckpt with the epoch counted as done."""
    for other in trainer.checkpoint_callbacks:
        if other is not owner and getattr(other, "save_last", None):
            log.info(
                "last.ckpt is written by resume_checkpoints: %s's save_last is turned off",
                type(other).__name__,
            )
            other.save_last = False


def _epoch_ends_here(trainer: L.Trainer) -> bool:
    """Whether the batch just trained is the last of its epoch: validation follows it. A step
    that ``max_steps`` stops inside an epoch is saved like any other (no validation follows)."""
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def _out_of_steps(trainer: L.Trainer) -> bool:
    return 0 < trainer.max_steps <= trainer.global_step


# -- which checkpoint, which folder ----------------------------------------------------
def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint file ``cfg.ckpt_path`` names (``last``: this run folder's last.ckpt)."""
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    path = Path(cfg.paths.output_dir) / "checkpoints" / LAST if value == "last" else Path(value)
    if not path.is_file():
        raise UserError(
            f"ckpt_path={value}: {path} does not exist, so there is nothing to resume. Pass the path "
            "of a checkpoint (<run>/checkpoints/last.ckpt), or ckpt_path=null to start afresh."
        )
    return str(path)


def checkpoint_to_resume(cfg: DictConfig, model: L.LightningModule) -> str | None:
    """The checkpoint to resume from, loaded safely and checked to fit ``model``; None: fresh."""
    path = resolve_ckpt_path(cfg)
    if path is not None:
        ckpt = load_checkpoint(path)
        check_fits(ckpt, model, path)
        log.info("resuming from %s: step %s, epoch %s", path, ckpt.get("global_step"), ckpt.get("epoch"))
    return path
