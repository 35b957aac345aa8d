"""OmegaConf resolvers that vaelab's YAML files use; registered on ``import vaelab``, which
every entry point does before Hydra composes a config.

``${vaelab.gpu:${.accelerator}}``: whether a trainer's accelerator is a GPU, so settings that
only work there (``sync_batchnorm``: SyncBatchNorm rejects CPU tensors) follow the accelerator
when a GPU config such as ``trainer=multinode`` is run with ``trainer.accelerator=cpu``.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from vaelab.swept import job_dirname


def is_gpu(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    if accelerator != "auto":
        return False
    import torch  # only when the value is read: `--help` stays fast

    return torch.cuda.is_available()


OmegaConf.register_new_resolver("vaelab.gpu", is_gpu, replace=True)
# ${vaelab.job_dirname:${hydra.job.num},${hydra.overrides.task}}: a sweep job's folder name
OmegaConf.register_new_resolver("vaelab.job_dirname", job_dirname, replace=True)
