"""Fully connected encoder/decoder: the pytorch/examples VAE (784-400-latent) and the IWAE paper's nets.

Works on any shape, image or vector: the encoder flattens its input and the decoder reshapes its
output, so the same part also serves between the latent layers of a hierarchical VAE.
Also home to the option checks and activation table the conv nets share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from vaelab.errors import UserError
from vaelab.model.nets.base import Net

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def one_of(owner: str, option: str, value: object, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``, else a :class:`UserError` listing the valid ones."""
    if value not in valid:
        raise UserError(
            f"{owner}: {option}={value!r} is not one of {', '.join(valid)}; "
            f"set {option} in the net's YAML (conf/net) or on the command line to one of these."
        )
    return str(value)


def positive_ints(owner: str, option: str, value: object, allow_empty: bool = False) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints (layer widths), else a :class:`UserError` saying why."""
    ok = isinstance(value, Sequence) and not isinstance(value, str)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok or (not allow_empty and len(value) == 0):
        raise UserError(
            f"{owner}: {option}={value!r} is not a {'' if allow_empty else 'non-empty '}list of positive "
            f"integers (layer widths), e.g. {option}=[64,128]; fix it in the net's YAML (conf/net) or "
            "on the command line."
        )
    return tuple(value)


def shape_of(shape: int | Sequence[int]) -> tuple[int, ...]:
    """A shape as a tuple; an int ``n`` means the vector shape (n,)."""
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


def stack(sizes: Sequence[int], activation: type[nn.Module]) -> list[nn.Module]:
    """Linear layers through ``sizes`` with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
    return layers[:-1]


class MLP(Net):
    """Linear layers of widths ``hidden`` (input side first); the decoder mirrors them."""

    def __init__(self, hidden: Sequence[int] = (400,), activation: str = "relu"):
        self.hidden = positive_ints("MLP", "hidden", hidden, allow_empty=True)
        self.activation = one_of("MLP", "activation", activation, list(ACTIVATIONS))

    def encoder(self, in_shape: Sequence[int], out_features: int) -> nn.Module:
        sizes = [math.prod(shape_of(in_shape)), *self.hidden, out_features]
        return nn.Sequential(nn.Flatten(), *stack(sizes, ACTIVATIONS[self.activation]))

    def decoder(self, in_features: int, out_shape: Sequence[int]) -> nn.Module:
        out_shape = shape_of(out_shape)
        sizes = [in_features, *reversed(self.hidden), math.prod(out_shape)]
        return nn.Sequential(*stack(sizes, ACTIVATIONS[self.activation]), nn.Unflatten(1, out_shape))
