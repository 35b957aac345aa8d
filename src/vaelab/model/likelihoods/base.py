"""What a likelihood is to the model and to eval.py.

The decoder emits ``params_per_value`` unconstrained numbers for each image value (channel ×
pixel), laid out as (B, C·P, H, W): channel c's parameters are rows c·P … c·P + P − 1. The
likelihood turns them into a log-probability per example (nats, summed over values), a mean
image in [0, 1] and a sample. ``data`` tells training and evaluation what the scores mean:

- ``"continuous"``: a density on [0, 1]; trained and scored on dequantised 8-bit data,
  (k + u)/256, so bits/dim = NLL/(D ln 2) + 8 bounds the 8-bit data's;
- ``"binary"``: a probability mass on {0, 1}; exact on binarised data;
- ``"discrete"``: a probability mass on the 256 values k/255; exact on 8-bit data as it is.
"""

from __future__ import annotations

from torch import Tensor, nn

DATA_KINDS = ("continuous", "binary", "discrete")


class Likelihood(nn.Module):
    params_per_value: int = 1
    data: str = "continuous"

    def __init__(self) -> None:  # a subclass without options still declares that it takes none
        super().__init__()

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|params) per example, (B,), in nats; ``x`` in [0, 1], shape (B, C, H, W)."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The image the figures show for these parameters, (B, C, H, W) in [0, 1]."""
        raise NotImplementedError

    def sample(self, params: Tensor) -> Tensor:
        """x ~ p(x|params), (B, C, H, W) in [0, 1]."""
        raise NotImplementedError

    def extra_terms(self) -> dict[str, float]:
        """Scalars worth logging during training (a learned σ, say); none by default."""
        return {}
