"""What an objective is to the module: (model, batch, step) → loss and named per-example terms.

The loss is minimised (a batch mean); the terms, each (B,) in nats, are what gets logged under
``train/``, ``val/`` and ``test/`` and what the NaN guard names when one breaks. Every objective
reports ``recon`` (E_q log p(x|z)), ``kl`` and ``elbo`` (the true, β = 1 bound), so curves of
different objectives share a scale; ``scalars`` adds step-dependent numbers (β during warm-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from vaelab.errors import UserError


@dataclass
class Terms:
    loss: Tensor  # scalar, minimised
    terms: dict[str, Tensor]  # per example (B,)
    scalars: dict[str, float] = field(default_factory=dict)


class Objective:
    def __call__(self, vae, x: Tensor, y: Tensor | None = None, step: int | None = 0) -> Terms:
        """``step``: the training step (None outside training: validation and test)."""
        raise NotImplementedError


def check_number(owner: str, name: str, value, low: float = 0.0, include_low: bool = True, whole=False):
    """Raise a :class:`UserError` unless ``value`` is a number ≥ ``low`` (> when not include_low)."""
    kind = int if whole else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and (value >= low if include_low else value > low)
    if not ok:
        bound = f"{'≥' if include_low else '>'} {low:g}"
        noun = "a whole number" if whole else "a number"
        raise UserError(f"{owner}: {name}={value!r} is not valid; it must be {noun} {bound}.")
    return value
