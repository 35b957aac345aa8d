"""Train a VAE: ``python src/train.py [group=option ...] [key=value ...]`` (Hydra CLI)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VAELAB_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing
# importing vaelab (before torch) sets the short OpenMP spin of vaelab/threads.py

from vaelab.errors import exit_on_user_error, reword_hydra_errors  # noqa: E402
from vaelab.rundir import attempt, resume_args  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from vaelab.train import run, sweep_objective

    with exit_on_user_error(), attempt(cfg):  # a failure before training leaves no folder
        return sweep_objective(run(cfg))


if __name__ == "__main__":
    reword_hydra_errors()
    with exit_on_user_error():  # resuming: the run's own config and folder, a record of its own
        sys.argv[1:] = resume_args(sys.argv[1:], ROOT / "conf")
    main()
