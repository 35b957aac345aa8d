"""Shared fixtures: tiny real-format datasets and composed Hydra configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from vaelab.data.idx import write_idx

# One intra-op thread, here and (through the environment) in every subprocess: tiny models run
# fastest on one thread, DDP ranks and CLI runs don't oversubscribe a 2-core CI machine, and the
# float arithmetic is the same in every process, so resume comparisons can be exact.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TRAIN_SCRIPT = ROOT / "src" / "train.py"


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28×28 uint8 'digits': a class-dependent bar on noise, so a VAE has something to learn."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 4 + 2 * y : 7 + 2 * y, 4:24] = 255
    return images, labels


def write_mnist(root: Path, n_train: int = 320, n_test: int = 120, gz: bool = True) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_digits(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte{ext}", labels)
    return root


def write_celeba(root: Path, partition: dict[int, int] | None = None, size=(89, 109), n: int = 48) -> Path:
    """A CelebA tree of n real JPEGs (coloured gradients + a 'face' disc) and its txt files."""
    base = root / "celeba"
    img_dir = base / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    partition = partition or {i: (0 if i <= n - 16 else 1 if i <= n - 8 else 2) for i in range(1, n + 1)}
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in partition:
        rgb = rng.integers(0, 255, 3)
        disc = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (w / 3) ** 2
        arr = np.zeros((h, w, 3), np.uint8)
        arr[:] = rgb
        arr[disc] = 255 - rgb
        Image.fromarray(arr).save(img_dir / f"{i:06d}.jpg", quality=90)
    lines = [f"{i:06d}.jpg {p}" for i, p in partition.items()]
    (base / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    names = " ".join(f"Attr{j}" for j in range(40))
    rows = [
        f"{i:06d}.jpg " + " ".join("1" if (i + j) % 3 == 0 else "-1" for j in range(40)) for i in partition
    ]
    (base / "list_attr_celeba.txt").write_text(f"{len(rows)}\n{names} \n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    return write_mnist(tmp_path / "data")


@pytest.fixture
def celeba_root(tmp_path) -> Path:
    return write_celeba(tmp_path / "data")


def tiny_overrides(data_dir: Path, out_dir: Path, cache_dir: Path) -> list[str]:
    """Overrides for a seconds-long run: tiny batches, two steps, small grids."""
    return [
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out_dir}",
        f"paths.cache_dir={cache_dir}",
        "dataset.batch_size=16",
        "dataset.eval_batch_size=32",
        "trainer.limit_train_batches=2",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu",
        "callbacks.image_grids.n_reconstructions=8",
        "callbacks.image_grids.n_samples=8",
        "callbacks.image_grids.n_interpolations=2",
        "callbacks.image_grids.interpolation_steps=4",
        "callbacks.progress_bar.refresh_rate=0",
    ]


def cli_overrides(tmp_path: Path, data_root: Path) -> list[str]:
    """:func:`tiny_overrides` for a CLI run: Hydra picks the run dir, under ``tmp_path/outputs``."""
    over = tiny_overrides(data_root, tmp_path / "unused", tmp_path / "cache")
    over = [o for o in over if not o.startswith("paths.output_dir")]
    return over + ["dataset.val_size=40", f"paths.log_dir={tmp_path / 'outputs'}"]


def compose_config(overrides: list[str], config_name: str = "train", with_hydra: bool = False):
    """conf/<config_name>.yaml + ``overrides``, as the entry point composes it (``with_hydra``:
    the ``hydra`` node too: launcher, sweeper, overrides)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)


@pytest.fixture
def compose_train():
    return compose_config


def train_command(args: list[str]) -> list[str]:
    return [sys.executable, str(TRAIN_SCRIPT), *args]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: quiet warnings, vaelab's own error messages."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_train_cli(args: list[str], cwd: Path = ROOT, timeout: int = 300, env_extra=None):
    """``python src/train.py ARGS`` in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        train_command(args),
        cwd=cwd,
        env=cli_env(**(env_extra or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def saved_tiny_run(tmp: Path, extra: list[str] = ()) -> Path:
    """A two-step MNIST run in ``tmp/run``, its composed config and overrides saved where Hydra
    saves them (what src/eval.py, src/generate.py and vaelab.load read)."""
    from omegaconf import OmegaConf

    from vaelab.train import run

    out = tmp / "run"
    over = [*tiny_overrides(write_mnist(tmp / "data"), out, tmp / "cache"), "dataset.val_size=40", *extra]
    cfg = compose_config(over)
    run(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    (out / ".hydra" / "overrides.yaml").write_text("[]\n")
    return out
