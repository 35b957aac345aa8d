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

from vaelab.errors import UserError, report_now


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

    ``watch`` (training step) keeps the loss and whether each term is finite, on the device;
    ``before_optimizer_step`` checks the gradients, sets the optimiser's ``found_inf`` (from the
    gradients alone under DDP, where they are identical on all ranks after the all-reduce, so
    all ranks skip together) and writes a row [loss, one "ok" per term of the objective (their
    names found at the first watch), gradient ok, skipped] of a small device buffer.
    ``raise_if_found`` reads the buffer: the module calls it where the host syncs anyway, and it
    runs by itself when the buffer is full.
    """

    def __init__(self, rows: int, across_ranks: bool = False):
        self.rows, self.across_ranks = max(1, rows), across_ranks
        self._pending: list[Tensor] | None = None
        self._buffer: Tensor | None = None
        self._one: Tensor | None = None  # the unit "scale" GradScaler's kernel wants
        self._first_step, self._filled = 0, 0
        self._names: list[str] = []  # the objective's terms, then "gradient": one column each

    def watch(self, loss: Tensor, terms: dict[str, Tensor]) -> None:
        if not self._names:
            self._names = [*terms, "gradient"]
        finite = [torch.isfinite(terms[name].detach()).all().float() for name in self._names[:-1]]
        step = [loss.detach().float(), *finite]
        if self._pending is not None:  # accumulated micro-batches: a non-finite one taints the sum
            step = [
                self._pending[0] + step[0],
                *(a * b for a, b in zip(self._pending[1:], step[1:], strict=True)),
            ]
        self._pending = step

    def before_optimizer_step(self, optimizer, step: int, module) -> None:
        if self._pending is None:
            return
        loss = self._pending[0]
        if self._one is None:
            self._one = loss.new_ones(())
        grads_bad = _non_finite_gradients(optimizer, loss.new_zeros(()), self._one)
        skip = (
            grads_bad
            if self.across_ranks
            else torch.maximum(grads_bad, loss.isfinite().logical_not().float())
        )
        optimizer.found_inf = skip
        if self._buffer is None:
            self._buffer = loss.new_zeros(self.rows, len(self._names) + 2)
        if self._filled == 0:
            self._first_step = step
        torch.stack([*self._pending, 1 - grads_bad, skip], out=self._buffer[self._filled])
        self._filled, self._pending = self._filled + 1, None
        if self._filled == self.rows:
            self.raise_if_found(module)

    def raise_if_found(self, module) -> None:
        """Raise for the first bad step recorded since the last look. Under DDP every rank looks
        at the same steps, and all stop if one found something: a rank whose loss broke while
        the all-reduced gradients stayed finite would otherwise stop alone, and the others wait
        in their next collective until it times out."""
        rows, self._filled = self._buffer[: self._filled].tolist() if self._filled else [], 0
        error = next(
            (e for offset, row in enumerate(rows) if (e := self._row_error(module, offset, row))), None
        )
        if self.across_ranks and module.trainer.strategy.reduce_boolean_decision(
            error is not None, all=False
        ):
            error = error or NonFiniteLossError(
                "Another DDP rank's training loss became non-finite (its message names the step and "
                f"the term); this rank stopped with it at step {module.trainer.global_step}."
            )
        if error is not None:
            if self.across_ranks:  # every rank is here: they agreed above
                if module.trainer.global_rank != 0:
                    report_now(error)  # rank 0 stops the others at once, so say it before it can
                # and rank 0 waits until they have: on a loaded machine a rank can be descheduled
                # between the vote and its message, and rank 0's exit would kill it unheard
                module.trainer.strategy.barrier("vaelab-nan-guard-reported")
            raise error

    def _row_error(self, module, offset: int, row: list[float]) -> NonFiniteLossError | None:
        loss, *ok, skipped = row
        if math.isfinite(loss) and all(ok):
            return None
        bad = [name for name, fine in zip(self._names, ok, strict=True) if not fine]
        return _error(module, self._first_step + offset, loss, bad, skipped=bool(skipped))


def _non_finite_gradients(optimizer, found: Tensor, one: Tensor) -> Tensor:
    """1.0 if any gradient holds a NaN/inf, else 0.0, on the device; GradScaler's kernel, which
    cannot overflow the way a norm of large finite gradients would."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
    return found


def _error(
    module, step: int, value: float, bad: list[str], skipped: bool | None = None
) -> NonFiniteLossError:
    trainer = module.trainer
    if math.isfinite(value):  # a finite loss whose gradient is not
        what, culprit = "The gradient became non-finite", "the gradient is"
    else:
        what = f"The training loss became {'NaN' if math.isnan(value) else value}"
        terms = [name for name in bad if name != "gradient"]
        culprit = _terms_phrase(terms)
    if skipped is not None:  # found by a deferred look, which can come a few steps later
        done = (
            "was skipped on the device, so the weights are finite"
            if skipped
            else "ran (its gradient was finite)"
        )
        where = f"at step {step}: {culprit} not finite. Its update {done}; "
        kept = f"the run stopped at step {trainer.global_step}"
    else:
        where = f"at step {step} (epoch {trainer.current_epoch}): {culprit} not finite. "
        kept = "The run stopped before this step changed the weights"
    world = getattr(trainer, "world_size", 1)
    rank = f"[rank {trainer.global_rank} of {world}] " if world > 1 else ""
    return NonFiniteLossError(
        f"{rank}{what} {where}{kept}; {_last_checkpoint(trainer)} Try: {_suggestions(module.hparams)}."
    )


def _terms_phrase(terms: list[str]) -> str:
    if not terms:
        return "the β-weighted sum of finite terms is"
    if len(terms) == 1:
        return f"the {terms[0]} term is"
    return f"the {', '.join(terms[:-1])} and {terms[-1]} terms are"


def _last_checkpoint(trainer) -> str:
    dirs = {Path(cb.dirpath) for cb in trainer.callbacks if getattr(cb, "dirpath", None)}
    saved = sorted((p for d in dirs for p in d.glob("*.ckpt")), key=lambda p: p.stat().st_mtime_ns)
    if not saved:
        return "no checkpoint had been written yet."
    return f"the last good checkpoint, {saved[-1]}, was kept (resume from it with ckpt_path=…)."


def _suggestions(hp) -> str:
    """What to try, in the spellings of the run's own config groups."""
    lr = (hp.get("optimizer") or {}).get("lr")
    tips = [f"a lower optimizer.lr{f' (now {lr:g})' if lr is not None else ''}"]
    tips.append("gradient clipping (trainer.gradient_clip_val=1.0)")
    likelihood = hp.get("likelihood") or {}
    if "sigma" in likelihood:
        tips.append(f"a larger likelihood.sigma (now {likelihood['sigma']:g})")
    if (hp.get("objective") or {}).get("warmup_steps") == 0:
        tips.append("a KL warm-up (objective.warmup_steps=1000)")
    tips.append("full precision (trainer.precision=32-true) if you use 16-bit")
    return ", ".join(tips)
