"""vaelab: variational autoencoders on PyTorch Lightning + Hydra."""

from vaelab import resolvers  # noqa: F401  (the ${vaelab.…} resolvers of conf/)

__version__ = "0.1.0"
