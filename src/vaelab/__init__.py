"""vaelab: variational autoencoders on PyTorch Lightning + Hydra."""

import os
import sys

# as src/train.py does, before torch loads: waiting OpenMP threads spin briefly, then sleep
# (vaelab/threads.py); too late once torch is imported, and never against the user's own setting
if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from vaelab import resolvers  # noqa: E402, F401  (the ${vaelab.…} resolvers of conf/)

__version__ = "0.1.0"


def __getattr__(name: str):
    """``vaelab.load`` and ``vaelab.load_data`` (:mod:`vaelab.trained`), imported on first use:
    ``import vaelab`` stays light (no torch, no Lightning) for the entry points."""
    if name in ("load", "load_data"):
        from vaelab import trained

        return getattr(trained, name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")


def use_thread_policy(threads="auto") -> str:
    """Set torch's CPU threads as src/train.py and src/eval.py do (:mod:`vaelab.threads`): with
    ``auto``, the cores this process may use less those other jobs keep busy, so a notebook on a
    shared machine does not run 10-40× slower on threads that wait for each other; a number
    fixes the count. Returns the line it logs. Call it once, before heavy work."""
    from vaelab.threads import fixed_threads, set_threads

    message = set_threads(fixed_threads(threads))[0]
    print(message)
    return message
