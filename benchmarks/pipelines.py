"""One timed measurement per process: ``python pipelines.py SPEC.json RESULT.json``.

Each pipeline runs in a fresh process so its peak RSS is its own and no pipeline inherits a
warm allocator or compiled kernels from another. Tasks (``spec["task"]``):

- ``bare``:    hand-written loop over a float32 tensor already in memory (the floor);
- ``classic``: torchvision dataset + per-sample ``ToTensor`` + ``DataLoader``;
- ``vaelab``:  vaelab's own ``Trainer.fit`` (in :mod:`vaelab_runs`);
- ``run_classic`` / ``run_vaelab``: a whole N-epoch run (train + validation, logging on);
- ``cache``:   vaelab's first-run decode of the sources into its uint8 cache;
- ``threads``: training batches per second through vaelab's ``Trainer.fit``, threads as the
  process environment and vaelab's thread policy choose them.

The model of every pipeline is vaelab's :class:`VAE`, built right after seeding with the
same seed, so all start from the same weights (``init_checksum`` shows it) and a ratio
measures the pipeline, not the model; all train with vaelab's optimiser (:func:`adam`).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

IMAGE_SHAPES = {"mnist": (1, 28, 28), "celeba": (3, 64, 64)}


# -- shared pieces ------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def proc_status_mb(field: str) -> float:
    """A memory figure of this process from /proc (VmHWM: peak RSS since exec; VmRSS: now).

    Not ``ru_maxrss``, which Linux carries over from the parent across fork + exec.
    """
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def memory() -> dict:
    """Peak resident memory of this process (DataLoader workers not included), and of the GPU."""
    out = {"peak_rss_mb": proc_status_mb("VmHWM")}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu_name"] = torch.cuda.get_device_name()
    return out


def checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def build_vae(spec: dict) -> torch.nn.Module:
    """vaelab's VAE exactly as ``VAEModule`` builds it, right after seeding."""
    from vaelab.model.nets.conv import use_channels_last
    from vaelab.model.vae import VAE

    torch.manual_seed(spec["seed"])
    net = {"_target_": "vaelab.model.nets.mlp.MLP", "hidden": [400]}  # conf/net/mlp.yaml
    if spec["net"] == "conv":
        net = {"_target_": "vaelab.model.nets.conv.Conv", "channels": spec["channels"]}
    vae = VAE(
        IMAGE_SHAPES[spec["bench"]],
        [spec["latent_dim"]],
        net=net,
        likelihood={"_target_": "vaelab.model.likelihoods.gaussian.Gaussian", "sigma": 0.1},
        prior={"_target_": "vaelab.model.priors.normal.StandardNormal"},
    )
    if spec["channels_last"] and spec["net"] == "conv":
        use_channels_last(vae)
    return vae


def elbo_objective():
    """vaelab's ELBO objective (imported late, like the VAE: the bare pipelines load no vaelab)."""
    from vaelab.model.objectives.elbo import ELBO

    return ELBO()


def adam(vae: torch.nn.Module, spec: dict) -> torch.optim.Optimizer:
    """The optimiser vaelab trains with (torch's Adam, fused where possible), in every pipeline:
    a ratio then measures the pipeline around the step, not the optimiser's kernels."""
    from vaelab.optim import Adam

    return Adam(vae.parameters(), lr=spec["lr"])


def autocast(spec: dict, device: torch.device):
    if spec["precision"] == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(vae, opt, x, spec, device) -> torch.Tensor:
    with autocast(spec, device):
        loss = elbo_objective()(vae, x).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


class Stopwatch:
    """Wall and CPU seconds of this process per interval, queued device work included.

    On a machine shared with other jobs, wall time swings with their load; the process's
    CPU time (all its threads) swings less, so both are reported. ``pause``/``resume``
    leave a stretch (validation inside a Lightning epoch) out of the interval.
    """

    def __init__(self, device: torch.device):
        self.device, self.wall, self.cpu = device, [], []

    def _now(self) -> tuple[float, float]:
        sync(self.device)
        return time.perf_counter(), time.process_time()

    def start(self) -> None:
        self._t0, self._left_out = self._now(), (0.0, 0.0)

    def pause(self) -> None:
        self._paused_at = self._now()

    def resume(self) -> None:
        now, left = self._now(), self._left_out
        self._left_out = (left[0] + now[0] - self._paused_at[0], left[1] + now[1] - self._paused_at[1])

    def stop(self) -> None:
        now, t0, left = self._now(), self._t0, self._left_out
        self.wall.append(now[0] - t0[0] - left[0])
        self.cpu.append(now[1] - t0[1] - left[1])


def timed_epochs(spec: dict, batches, device: torch.device) -> tuple[Stopwatch, float]:
    """Train for warm-up + timed epochs on ``batches(epoch)``; (epoch times, init checksum)."""
    vae = build_vae(spec).to(device)
    init = checksum(vae)
    if spec["compile"]:
        vae.compile()
    opt = adam(vae, spec)
    watch = Stopwatch(device)
    for epoch in range(spec["warmup"] + spec["epochs"]):
        watch.start()
        for x in batches(epoch):
            train_step(vae, opt, x.to(device, non_blocking=True), spec, device)
        watch.stop()
    return watch, init


def cached_train_images(spec: dict) -> torch.Tensor:
    """The uint8 train split from vaelab's cache file (read directly: the floor needs no framework)."""
    (path,) = Path(spec["cache_dir"]).glob(f"{spec['bench']}-*.pt")
    images = torch.load(path, map_location="cpu", weights_only=True)["train/images"]
    return images[: spec["n_images"]]


def epoch_result(watch: Stopwatch, spec: dict, n_images: int, init: float) -> dict:
    """The timed epochs (warm-up dropped); the caller pools them over rounds."""
    return {
        "epoch_seconds": watch.wall[spec["warmup"] :],
        "epoch_cpu_seconds": watch.cpu[spec["warmup"] :],
        "images": n_images,
        "init_checksum": init,
    }


# -- (a) the floor ------------------------------------------------------------------
def bare(spec: dict, device: torch.device) -> dict:
    data = cached_train_images(spec).to(device).float().div_(255)
    n, bs = len(data), spec["batch_size"]

    def batches(epoch):
        perm = torch.randperm(n, device=device)
        for i in range(0, n, bs):
            yield torch.index_select(data, 0, perm[i : i + bs])

    watch, init = timed_epochs(spec, batches, device)
    return epoch_result(watch, spec, n, init)


# -- (b) the classic pipeline -------------------------------------------------------
def classic_dataset(spec: dict, split: str = "train"):
    """torchvision's dataset class with per-sample PIL → ``ToTensor`` (as most VAE repos do)."""
    import torchvision
    from torchvision import transforms as T

    if spec["bench"] == "mnist":
        full = torchvision.datasets.MNIST(
            spec["classic_root"], train=True, download=False, transform=T.ToTensor()
        )
        n_train = len(full) - spec["val_size"]
        indices = range(n_train) if split == "train" else range(n_train, len(full))
    else:
        folder = Path(spec["data_root"]) / "celeba"
        full = torchvision.datasets.ImageFolder(str(folder))
        side = round(full.loader(full.samples[0][0]).size[0] * spec["crop_fraction"])
        full.transform = T.Compose([T.CenterCrop(side), T.Resize(64), T.ToTensor()])
        indices = range(len(full))
    if split == "train" and spec["n_images"] is not None:
        indices = indices[: spec["n_images"]]
    return torch.utils.data.Subset(full, indices)


def classic_loader(spec: dict, device: torch.device, split: str = "train"):
    train = split == "train"
    return torch.utils.data.DataLoader(
        classic_dataset(spec, split),
        batch_size=spec["batch_size"] if train else spec["eval_batch_size"],
        shuffle=train,
        num_workers=spec["classic_workers"],
        pin_memory=device.type == "cuda",
    )


def classic(spec: dict, device: torch.device) -> dict:
    loader = classic_loader(spec, device)
    watch, init = timed_epochs(spec, lambda epoch: (x for x, _ in loader), device)
    return epoch_result(watch, spec, len(loader.dataset), init)


# -- whole runs ---------------------------------------------------------------------
def run_classic(spec: dict, device: torch.device) -> dict:
    """pytorch/examples' vae/main.py loop: print every 10 batches, validate, save samples each epoch."""
    from torchvision.utils import save_image

    out = Path(spec["work_dir"]) / "run-classic"
    out.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch(device)
    watch.start()
    train, val = classic_loader(spec, device), classic_loader(spec, device, "val")
    vae = build_vae(spec).to(device)
    opt = adam(vae, spec)
    for epoch in range(1, spec["run_epochs"] + 1):
        vae.train()
        for i, (x, _) in enumerate(train):
            loss = train_step(vae, opt, x.to(device), spec, device).item()
            if i % 10 == 0:
                print(f"epoch {epoch} [{i * len(x)}/{len(train.dataset)}] loss {loss:.2f}")
        val_loss = classic_validate(vae, val, spec, device)
        print(f"epoch {epoch} val loss {val_loss:.2f}")
        save_image(vae.sample(64).cpu(), out / f"sample_{epoch}.png")
    watch.stop()
    return {"seconds": watch.wall[0], "cpu_seconds": watch.cpu[0], "val_loss": val_loss}


@torch.no_grad()
def classic_validate(vae, loader, spec, device) -> float:
    vae.eval()
    total = 0.0
    for x, _ in loader:
        with autocast(spec, device):
            total += -elbo_objective()(vae, x.to(device)).terms["elbo"].sum().item()
    return total / len(loader.dataset)


# -- the cache build ----------------------------------------------------------------
def cache(spec: dict, device: torch.device) -> dict:
    """Decode the sources into vaelab's cache (first run); images/s and memory held."""
    from vaelab.data import CelebADataModule, MNISTDataModule

    if spec["bench"] == "mnist":
        dm = MNISTDataModule(spec["data_root"], spec["cache_dir"], val_size=spec["val_size"], download=False)
    else:
        dm = CelebADataModule(spec["data_root"], spec["cache_dir"])
    before = proc_status_mb("VmRSS")
    start = time.perf_counter()
    splits = dm.load_splits()
    seconds = time.perf_counter() - start
    sizes = {name: len(s["images"]) for name, s in splits.items()}
    data_mb = sum(t.numel() * t.element_size() for s in splits.values() for t in s.values()) / 2**20
    peak = proc_status_mb("VmHWM")
    judge_seconds = None
    if spec["bench"] == "mnist":  # the whole run finds its judge cached, as a user's second run does
        from vaelab.judges import load_or_train_judge

        dm.splits = splits
        judge_start = time.perf_counter()
        load_or_train_judge(dm)
        judge_seconds = time.perf_counter() - judge_start
    return {
        "images": sum(sizes.values()),
        "splits": sizes,
        "seconds": seconds,
        "images_per_sec": sum(sizes.values()) / seconds,
        "data_mb": data_mb,
        "rss_growth_mb": peak - before,  # ≈ data_mb when the decoded data is held once
        "judge_seconds": judge_seconds,
    }


def task(name: str):
    """The function measuring ``name``; vaelab's (Lightning) module is imported only for its tasks."""
    if name in ("vaelab", "run_vaelab", "threads"):
        import vaelab_runs

        return {
            "vaelab": vaelab_runs.epochs,
            "run_vaelab": vaelab_runs.whole_run,
            "threads": vaelab_runs.batches,
        }[name]
    return {"bare": bare, "classic": classic, "run_classic": run_classic, "cache": cache}[name]


def run(spec: dict) -> dict:
    """Measure ``spec["task"]`` in this process (threads set as the spec says, then restored;
    ``threads: None`` leaves them to vaelab's thread policy)."""
    threads = torch.get_num_threads()
    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    try:
        result = task(spec["task"])(spec, torch.device(spec["device"]))
    finally:
        torch.set_num_threads(threads)
    return {**result, **memory()}


def main(spec_path: str, result_path: str) -> None:
    result = run(json.loads(Path(spec_path).read_text()))
    Path(result_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:3])
