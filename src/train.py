"""Train a VAE: ``python src/train.py [group=option ...] [key=value ...]`` (Hydra CLI)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VAELAB_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from vaelab.errors import exit_on_user_error, reword_hydra_errors  # noqa: E402
from vaelab.rundir import run_dir_override  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from vaelab.train import run, sweep_objective

    with exit_on_user_error():
        return sweep_objective(run(cfg))


if __name__ == "__main__":
    reword_hydra_errors()
    with exit_on_user_error():  # resuming: continue in the run's own folder, not a new one
        sys.argv += run_dir_override(sys.argv[1:], ROOT / "conf")
    main()
