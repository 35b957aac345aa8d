"""(c): vaelab's own path, from the config: datamodule + ``VAEModule`` + Lightning ``Trainer``.

Separate from :mod:`pipelines` so that the other pipelines' processes never import Lightning
(their peak memory is theirs alone).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from pipelines import Stopwatch, checksum, epoch_result

from vaelab.config import validate
from vaelab.train import build, run

CONF = Path(__file__).resolve().parents[1] / "conf"


def overrides(spec: dict, out_dir: str, epochs: int, extras: bool = False) -> list[str]:
    """The vaelab config of this benchmark: the same model, batch size and optimiser as (a), (b);
    ``extras``: also the test, the per-epoch sample quality and the result picture of a default run."""
    over = [
        f"dataset={spec['bench']}",
        f"paths.data_dir={spec['data_root']}",
        f"paths.cache_dir={spec['cache_dir']}",
        f"paths.output_dir={out_dir}",
        f"seed={spec['seed']}",
        f"latent_dim={spec['latent_dim']}",
        f"net={spec['net']}",
        f"optimizer.lr={spec['lr']}",
        f"model.compile={str(spec['compile']).lower()}",
        f"model.channels_last={str(spec['channels_last']).lower()}",
        f"dataset.batch_size={spec['batch_size']}",
        f"dataset.eval_batch_size={spec['eval_batch_size']}",
        f"dataset.on_device={spec['on_device']}",
        f"trainer.accelerator={'gpu' if spec['device'] == 'cuda' else 'cpu'}",
        f"trainer.precision={spec['precision']}",
        f"trainer.max_epochs={epochs}",
    ]
    if not extras:  # the per-epoch timings compare the training loops alone
        over += ["test=false", "callbacks.sample_quality=null", "callbacks.result_figure.expost_components=0"]
    if spec["net"] == "conv":
        over.append(f"net.channels=[{','.join(map(str, spec['channels']))}]")
    if spec["bench"] == "mnist":
        over += [f"dataset.val_size={spec['val_size']}", "dataset.download=false"]
    if spec["n_images"] is not None:  # a subset: the same whole batches as (a) and (b) see
        over.append(f"trainer.limit_train_batches={spec['n_images'] // spec['batch_size']}")
    return over


def config(spec: dict, out_dir: str, epochs: int, extra: tuple[str, ...] = (), extras: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides(spec, out_dir, epochs, extras) + list(extra))


class EpochTimer(L.Callback):
    """A :class:`Stopwatch` around each training epoch, less the validation Lightning runs inside it."""

    def __init__(self, device: torch.device):
        self.watch = Stopwatch(device)

    def on_train_epoch_start(self, trainer, pl_module):
        self.watch.start()

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.watch.pause()

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.watch.resume()

    def on_train_epoch_end(self, trainer, pl_module):
        self.watch.stop()


def epochs(spec: dict, device: torch.device) -> dict:
    """(c) per epoch: ``Trainer.fit`` exactly as ``vaelab.train.run`` builds it, plus a timer."""
    cfg = config(spec, f"{spec['work_dir']}/vaelab-{spec['bench']}", spec["warmup"] + spec["epochs"])
    validate(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, model, trainer = build(cfg)
    timer = EpochTimer(device)
    trainer.callbacks.insert(0, timer)
    init = checksum(model.vae)
    trainer.fit(model, datamodule=datamodule)
    n = min(len(datamodule.splits["train"]["images"]), trainer.num_training_batches * spec["batch_size"])
    return epoch_result(timer.watch, spec, n, init)


def whole_run(spec: dict, device: torch.device) -> dict:
    """``vaelab.train.run`` as a user runs it, every default on: checkpoints, TensorBoard, image
    grids with their ex-post samples, per-epoch sample quality (its judge already cached by the
    cache task, as a user's second run finds it), the test and the result picture."""
    cfg = config(spec, f"{spec['work_dir']}/run-vaelab", spec["run_epochs"], extras=True)
    watch = Stopwatch(device)
    watch.start()
    metrics = run(cfg)
    watch.stop()
    return {"seconds": watch.wall[0], "cpu_seconds": watch.cpu[0], "val_loss": metrics["val/loss"]}


class BatchTimer(L.Callback):
    """Wall and CPU seconds from the start of batch ``start_at`` to the end of the last batch."""

    def __init__(self, start_at: int):
        self.start_at, self.start, self.end = start_at, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.start_at:
            self.start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = (time.perf_counter(), time.process_time())


def batches(spec: dict, device: torch.device) -> dict:
    """The thread-policy measurement: training batches per second through ``Trainer.fit`` after
    ``warm_batches``, with the threads this process's environment and ``threads=`` give."""
    n, warm = spec["batches"], spec["warm_batches"]
    extra = (
        f"trainer.limit_train_batches={n}",
        "trainer.limit_val_batches=0",
        f"threads={spec['thread_setting']}",
    )
    cfg = config(spec, f"{spec['work_dir']}/threads-{os.getpid()}", 1, extra)
    validate(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, model, trainer = build(cfg)
    timer = BatchTimer(warm)
    trainer.callbacks.insert(0, timer)
    trainer.fit(model, datamodule=datamodule)
    wall, cpu = (timer.end[i] - timer.start[i] for i in (0, 1))
    return {
        "it_per_sec": (n - warm) / wall,
        "cpu_per_wall": cpu / wall,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
