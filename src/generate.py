"""Write samples of a trained VAE: ``python src/generate.py ckpt_path=<run>/checkpoints/last.ckpt n=1000``."""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VAELAB_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing
# importing vaelab (before torch) sets the short OpenMP spin of vaelab/threads.py

from vaelab.errors import exit_on_user_error, reword_hydra_errors  # noqa: E402
from vaelab.evaluate import run_dir_of  # noqa: E402, F401  (registers the config's vaelab.run_dir resolver)
from vaelab.generate import run  # noqa: E402
from vaelab.threads import set_threads_once  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        set_threads_once(cfg.get("threads", "auto"))
        run(cfg, HydraConfig.get().overrides.task)


if __name__ == "__main__":
    reword_hydra_errors()
    main()
