"""Stop training at the first non-finite loss, before it reaches the weights.

The check runs on each training step's loss before the backward pass, so the step that went
wrong never updates the model and no checkpoint is written after it: the last one on disk is
the last good one. The message names the step, the term that broke and what to try.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from vaelab.errors import UserError


class NonFiniteLossError(UserError):
    """The training loss became NaN or ±inf."""


def check_finite_loss(loss: Tensor, terms: dict[str, Tensor], module) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN/inf (costs one sync per step)."""
    if bool(torch.isfinite(loss)):
        return
    trainer = module.trainer
    bad = [name for name, t in terms.items() if not bool(torch.isfinite(t).all())]
    culprit = f"the {' and '.join(bad)} term" if bad else "the β-weighted sum of finite terms"
    value = float(loss.detach())
    raise NonFiniteLossError(
        f"The training loss became {'NaN' if math.isnan(value) else value} at step "
        f"{trainer.global_step} (epoch {trainer.current_epoch}): {culprit} is not finite. The run "
        f"stopped before this step changed the weights; {_last_checkpoint(trainer)} "
        f"Try: {_suggestions(module.hparams)}."
    )


def _last_checkpoint(trainer) -> str:
    dirs = {Path(cb.dirpath) for cb in trainer.callbacks if getattr(cb, "dirpath", None)}
    saved = sorted((p for d in dirs for p in d.glob("*.ckpt")), key=lambda p: p.stat().st_mtime_ns)
    if not saved:
        return "no checkpoint had been written yet."
    return f"the last good checkpoint, {saved[-1]}, was kept (resume from it with ckpt_path=…)."


def _suggestions(hp) -> str:
    tips = [f"a lower model.lr (now {hp.lr:g})", "gradient clipping (trainer.gradient_clip_val=1.0)"]
    if hp.likelihood == "gaussian":
        tips.append(
            f"a larger model.sigma (now {hp.sigma:g})"
            + (" or model.learn_sigma=false" if hp.learn_sigma else "")
        )
    if hp.kl_warmup_steps == 0:
        tips.append("a KL warm-up (model.kl_warmup_steps=1000)")
    tips.append("full precision (trainer.precision=32-true) if you use 16-bit")
    return ", ".join(tips)
