"""Train a VAE: ``python src/train.py [group=option ...] [key=value ...]`` (Hydra CLI)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VAELAB_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from vaelab.errors import exit_on_user_error  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from vaelab.train import run

    with exit_on_user_error():
        return run(cfg).get("val/loss")


if __name__ == "__main__":
    main()
