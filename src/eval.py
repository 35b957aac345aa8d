"""Evaluate a trained VAE: ``python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [key=value ...]``."""

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

from vaelab.allocator import keep_freed_memory  # noqa: E402
from vaelab.errors import exit_on_user_error, reword_hydra_errors  # noqa: E402
from vaelab.evaluate import run  # noqa: E402  (registers the config's vaelab.run_dir resolver)
from vaelab.threads import set_threads_once  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        set_threads_once(cfg.get("threads", "auto"))
        keep_freed_memory()  # importance sampling reuses its pages instead of faulting them in
        return run(cfg, HydraConfig.get().overrides.task).get("nll_iwae")


if __name__ == "__main__":
    reword_hydra_errors()
    main()
