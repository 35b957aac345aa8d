"""Stop training at the first non-finite loss or gradient, before it reaches the weights.

On the CPU the loss is checked on the host before each backward pass (a sync costs nothing
there), so the step that went wrong never runs its update. On an accelerator that sync would
stall the device once per step, so :class:`DeferredCheck` keeps the verdict on the device:
fused Adam's ``found_inf`` skips a bad step's update there, the first bad step is recorded
there, and the host reads the record only when it reads anything else (logging steps, epoch
ends) and before every checkpoint save. Either way no bad step changes the weights, no
checkpoint is written after one, and the message names the step, the term that broke and
what to try.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from vaelab.errors import UserError

TERMS = ("loss", "recon", "kl", "gradient")


class NonFiniteLossError(UserError):
    """The training loss (or its gradient) became NaN or ±inf."""


def check_finite_loss(loss: Tensor, terms: dict[str, Tensor], module) -> None:
    """Raise :class:`NonFiniteLossError` now if ``loss`` is NaN/inf (one host sync)."""
    if bool(torch.isfinite(loss)):
        return
    bad = [name for name, t in terms.items() if not bool(torch.isfinite(t).all())]
    raise _error(module, module.trainer.global_step, float(loss.detach()), bad)


class DeferredCheck:
    """The non-finite check without a host sync per step (see the module docstring).

    ``watch`` (training step) keeps the loss and the term sums on the device;
    ``before_optimizer_step`` adds the gradient norm, writes the four into a row of a small device
    buffer and sets the optimiser's ``found_inf`` from the gradient alone (identical on all DDP
    ranks after the all-reduce, so all ranks skip together). ``raise_if_found`` reads the buffer:
    the module calls it where the host syncs anyway, and it runs by itself when the buffer is full.
    """

    def __init__(self, rows: int):
        self.rows = max(1, rows)
        self._pending: list[Tensor] | None = None
        self._buffer: Tensor | None = None
        self._first_step, self._filled = 0, 0

    def watch(self, loss: Tensor, terms: dict[str, Tensor]) -> None:
        self._pending = [loss.detach().float(), *(terms[name].detach().float().sum() for name in TERMS[1:3])]

    def before_optimizer_step(self, optimizer, step: int, module) -> None:
        if self._pending is None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.stack(torch._foreach_norm(grads)).sum().float() if grads else self._pending[0] * 0
        # 0·norm is 0 for a finite norm and NaN for a NaN/inf one: found_inf is then 1.0 (skip)
        optimizer.found_inf = (grad_norm * 0).nan_to_num(nan=1.0)
        if self._buffer is None:
            self._buffer = grad_norm.new_zeros(self.rows, len(TERMS))
        if self._filled == 0:
            self._first_step = step
        torch.stack([*self._pending, grad_norm], out=self._buffer[self._filled])
        self._filled, self._pending = self._filled + 1, None
        if self._filled == self.rows:
            self.raise_if_found(module)

    def raise_if_found(self, module) -> None:
        rows, self._filled = self._buffer[: self._filled].tolist() if self._filled else [], 0
        for offset, values in enumerate(rows):
            if not all(map(math.isfinite, values)):
                bad = [name for name, v in zip(TERMS[1:], values[1:], strict=True) if not math.isfinite(v)]
                raise _error(module, self._first_step + offset, values[0], bad, skipped=True)


def _error(module, step: int, value: float, bad: list[str], skipped: bool = False) -> NonFiniteLossError:
    trainer = module.trainer
    if math.isfinite(value):  # a finite loss whose gradient is not
        what, culprit = "The gradient became non-finite", "the gradient"
    else:
        what = f"The training loss became {'NaN' if math.isnan(value) else value}"
        terms = [name for name in bad if name != "gradient"]
        culprit = f"the {' and '.join(terms)} term" if terms else "the β-weighted sum of finite terms"
    if skipped:  # found by a deferred look, which can come a few steps later
        where = f"at step {step}: {culprit} is not finite. Its update was skipped on the device, so the "
        kept = f"weights are finite; the run stopped at step {trainer.global_step}"
    else:
        where = f"at step {step} (epoch {trainer.current_epoch}): {culprit} is not finite. "
        kept = "The run stopped before this step changed the weights"
    return NonFiniteLossError(
        f"{what} {where}{kept}; {_last_checkpoint(trainer)} Try: {_suggestions(module.hparams)}."
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
