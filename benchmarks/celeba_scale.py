"""CelebA at full scale: is the decoded data held once in memory, summed over all processes?

Not part of the test suite (minutes of CPU, ~2 GB of JPEGs, ~2.5 GB of cache). Three steps:

1. ``tree``: a synthetic CelebA of 202,599 JPEGs in the official layout (178×218,
   ``list_eval_partition.txt`` with the official 162,770 / 19,867 / 19,962 split,
   ``list_attr_celeba.txt``), made once from the real 89×109 sample faces upscaled, shifted,
   flipped and recoloured, so the JPEGs have realistic sizes and decode times.
2. ``build``: a cold cache build (one process + its decode workers).
3. ``ddp``: the first 2-process CPU DDP run on a cold cache (rank 0 builds it, both train).

Memory is the proportional set size (PSS, /proc/<pid>/smaps_rollup) summed over the whole
process tree, sampled every 0.2 s: a page shared by n processes counts 1/n in each, so the sum
is the real footprint, and two private copies of the data show up as two.

    .venv/bin/python benchmarks/celeba_scale.py tree build ddp --root /work/scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "celeba_sample" / "celeba"
SPLIT_COUNTS = (162_770, 19_867, 19_962)  # the official train / valid / test partition
N_IMAGES = sum(SPLIT_COUNTS)
SIZE = (178, 218)
IMAGE_SIZE = 64


# -- 1. the synthetic tree ----------------------------------------------------------------
def _sample_faces() -> list[Path]:
    faces = sorted((SAMPLE / "img_align_celeba").glob("*.jpg"))
    if not faces:
        sys.exit(f"no sample faces in {SAMPLE / 'img_align_celeba'}: needed as the tree's seed images")
    return faces


def _write_images(args) -> int:
    """Images ``start..stop`` (1-based): a sample face, upscaled to 178×218 and varied."""
    img_dir, start, stop, faces = args
    rng = np.random.default_rng(start)
    grain = rng.normal(0, 2, (8, SIZE[1] + 16, SIZE[0] + 16, 3)).astype(np.float32)
    for i in range(start, stop):
        with Image.open(faces[(i - 1) % len(faces)]) as im:
            im.draft("RGB", im.size)
            face = im.convert("RGB").resize(SIZE, Image.BILINEAR)
        arr = np.asarray(face, dtype=np.float32)
        if (i // len(faces)) % 2:
            arr = arr[:, ::-1]
        dx, dy = rng.integers(0, 16, 2)
        arr = arr * rng.uniform(0.85, 1.15, 3).astype(np.float32)  # recoloured
        arr += grain[i % 8, dy : dy + SIZE[1], dx : dx + SIZE[0]]  # and grain, so sizes vary
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(img_dir / f"{i:06d}.jpg", quality=90)
    return stop - start


def _write_lists(base: Path) -> None:
    bounds = np.cumsum(SPLIT_COUNTS)
    part = [f"{i:06d}.jpg {int(np.searchsorted(bounds, i, side='left'))}" for i in range(1, N_IMAGES + 1)]
    (base / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    with open(SAMPLE / "list_attr_celeba.txt") as f:
        f.readline()
        header = f.readline().rstrip("\r\n")
        rows = [line.rstrip("\r\n").split(" ", 1)[1] for line in f if line.strip()]
    attrs = [f"{i:06d}.jpg {rows[(i - 1) % len(rows)]}" for i in range(1, N_IMAGES + 1)]
    (base / "list_attr_celeba.txt").write_text(f"{N_IMAGES}\n{header}\n" + "\n".join(attrs) + "\n")


def make_tree(root: Path, workers: int) -> dict:
    """``root/celeba`` with all 202,599 images, unless a finished tree is already there."""
    base = root / "celeba"
    done = base / ".complete"
    img_dir = base / "img_align_celeba"
    if done.is_file():
        return json.loads(done.read_text())
    img_dir.mkdir(parents=True, exist_ok=True)
    faces, t0, chunk = _sample_faces(), time.perf_counter(), 2000
    jobs = [(img_dir, s, min(s + chunk, N_IMAGES + 1), faces) for s in range(1, N_IMAGES + 1, chunk)]
    written = 0
    with ProcessPoolExecutor(workers) as pool:
        for n in pool.map(_write_images, jobs):
            written += n
            if written % 20_000 < chunk:
                print(f"tree: {written}/{N_IMAGES} images, {time.perf_counter() - t0:.0f} s", flush=True)
    _write_lists(base)
    nbytes = sum(e.stat().st_size for e in os.scandir(img_dir))
    info = {"images": N_IMAGES, "jpeg_bytes": nbytes, "seconds": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(info))
    return info


# -- memory of a process tree -------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree_pss(root_pid: int) -> tuple[int, int]:
    """(summed PSS in bytes, number of processes) of ``root_pid`` and all its descendants."""
    kids, todo, total, count = _children(), [root_pid], 0, 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
                count += 1
        except (OSError, StopIteration):
            continue
    return total, count


def mapped_cache_pss(root_pid: int, marker: str = "/celeba-") -> int:
    """Summed PSS of the cache file's mappings in the tree: at most one copy if they share."""
    kids, todo, total = _children(), [root_pid], 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps") as f:
                inside = False
                for line in f:
                    if not line[0].isupper():  # a mapping's header: address range, ..., path
                        inside = marker in line
                    elif inside and line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class PeakSampler(threading.Thread):
    """Samples :func:`tree_pss` every ``interval`` s until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.peak_procs = pid, interval, 0, 0
        self.samples: list[tuple[float, int]] = []
        self.cache_peak = 0  # peak of the cache file's mapped pages, every 10th sample
        self.halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.halt.is_set():
            pss, procs = tree_pss(self.pid)
            self.samples.append((round(time.monotonic() - t0, 1), pss))
            if pss > self.peak:
                self.peak, self.peak_procs = pss, procs
            if len(self.samples) % 10 == 0:
                self.cache_peak = max(self.cache_peak, mapped_cache_pss(self.pid))
            self.halt.wait(self.interval)


def measure(cmd: list[str], log_path: Path, env_extra: dict | None = None) -> dict:
    """Run ``cmd`` (output to ``log_path``) while sampling its tree's PSS; exit code, wall, peak."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    t0 = time.monotonic()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = PeakSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.halt.set()
        sampler.join()
    return {
        "rc": rc,
        "seconds": round(time.monotonic() - t0, 1),
        "peak_pss_bytes": sampler.peak,
        "processes_at_peak": sampler.peak_procs,
        "peak_mapped_cache_pss_bytes": sampler.cache_peak,
        "peak_at_s": next(t for t, pss in sampler.samples if pss == sampler.peak),
        "pss_every_5s_mb": [round(pss / 1e6) for t, pss in sampler.samples[::25]],
        "log": str(log_path),
    }


# -- 2. and 3. the cold build, and the first DDP run -----------------------------------------
BUILD = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
from vaelab.data import CelebADataModule
dm = CelebADataModule(sys.argv[1], sys.argv[2], decode_workers=int(sys.argv[3]))
t0 = time.monotonic()
dm.prepare_data()
n = sum(len(s["images"]) for s in dm.splits.values())
print("BUILD", json.dumps({"seconds": time.monotonic() - t0, "images": n}))
"""


def cold_build(root: Path, cache_dir: Path, workers: int, log_path: Path, src: str | None) -> dict:
    """One process building the cache from nothing (``src``: another vaelab source tree)."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    env = {"PYTHONPATH": src} if src else {}
    cmd = [sys.executable, "-c", BUILD, str(root), str(cache_dir), str(workers)]
    result = measure(cmd, log_path, env)
    inner = [json.loads(line[6:]) for line in log_path.read_text().splitlines() if line.startswith("BUILD ")]
    if inner:
        result["build_seconds"] = round(inner[0]["seconds"], 1)
        result["images_per_s"] = round(inner[0]["images"] / inner[0]["seconds"])
    result["cache_bytes"] = sum(p.stat().st_size for p in cache_dir.glob("celeba-*.pt"))
    return result


def first_ddp_run(root: Path, cache_dir: Path, runs: Path, log_path: Path, script: str) -> dict:
    """A 2-process CPU DDP run on a cold cache: one epoch of a small MLP with large batches,
    so every page of every split is read (the worst case for a mapped cache)."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    args = [
        "dataset=celeba",
        "trainer=ddp_cpu",
        f"paths.data_dir={root}",
        f"paths.cache_dir={cache_dir}",
        f"paths.log_dir={runs}",
        "net=mlp",
        "net.hidden=[64]",
        "latent_dim=8",
        "dataset.batch_size=1024",
        "trainer.max_epochs=1",
        "callbacks.progress_bar.refresh_rate=0",
        "callbacks.sample_quality=null",  # its judge trains 4 epochs on rank 0 alone: minutes here
    ]
    return measure([sys.executable, script, *args], log_path, {"OMP_NUM_THREADS": "1"})


def decoded_bytes(n: int = N_IMAGES) -> int:
    """One copy of the decoded data: every image as uint8 3×64×64, plus 40 attribute bytes."""
    return n * (3 * IMAGE_SIZE * IMAGE_SIZE + 40)


SMALL = 2_000  # images of the baseline tree: the same processes, next to no data


def small_tree(root: Path, small_root: Path) -> Path:
    """The first ``SMALL`` images of the full tree (symlinks) with their list lines: the same
    run on it measures what the processes cost without the data (Python, torch, Lightning)."""
    base, small = root / "celeba", small_root / "celeba"
    (small / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    for i in range(1, SMALL + 1):
        link = small / "img_align_celeba" / f"{i:06d}.jpg"
        if not link.exists():
            link.symlink_to(base / "img_align_celeba" / f"{i:06d}.jpg")
    for name, skip in (("list_eval_partition.txt", 0), ("list_attr_celeba.txt", 2)):
        lines = (base / name).read_text().splitlines()
        head = [str(SMALL), *lines[1:2]] if skip else []
        (small / name).write_text("\n".join(head + lines[skip : skip + SMALL]) + "\n")
    return small_root


def _step(step: str, root: Path, work: Path, args) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    if step == "build":
        return cold_build(root, work / "cache", args.workers, work / "build.log", args.src)
    return first_ddp_run(root, work / "cache", work / "runs", work / "ddp.log", args.script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("steps", nargs="+", choices=["tree", "build", "ddp"])
    parser.add_argument(
        "--baseline",
        action="store_true",
        help=f"also run each step on the first {SMALL} images: the processes' own footprint, so the "
        "report can say how much of the peak the data takes",
    )
    parser.add_argument("--root", type=Path, default=Path("/work/scale"), help="where the tree goes")
    parser.add_argument("--workers", type=int, default=2, help="processes making the tree / decoding")
    parser.add_argument("--src", help="build: PYTHONPATH of another vaelab source tree (a 'before' copy)")
    parser.add_argument(
        "--script",
        default="src/train.py",
        help="ddp: the train.py to run (it puts its own src/ first on sys.path: a copy next to "
        "a 'before' vaelab runs that one)",
    )
    parser.add_argument("--label", default="after", help="name of this measurement in the JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="celeba_scale_"))
    one_copy = decoded_bytes()
    report: dict = {"label": args.label, "one_copy_bytes": one_copy, "work": str(work)}
    if "tree" in args.steps:
        report["tree"] = make_tree(args.root, args.workers)
        print("tree:", report["tree"], flush=True)
    for step in ("build", "ddp"):
        if step not in args.steps:
            continue
        result = _step(step, args.root, work / step, args)
        result["ratio_to_one_copy"] = round(result["peak_pss_bytes"] / one_copy, 3)
        if args.baseline:
            small = _step(step, small_tree(args.root, work / "small"), work / f"{step}_small", args)
            data = result["peak_pss_bytes"] - small["peak_pss_bytes"]
            result["baseline_peak_pss_bytes"] = small["peak_pss_bytes"]
            result["baseline_images"] = SMALL
            result["data_ratio_to_one_copy"] = round(data / (one_copy - decoded_bytes(SMALL)), 3)
        report[step] = result
        print(f"{step}: {json.dumps(result)}", flush=True)
    out = ROOT / "outputs" / "bench" / f"celeba_scale_{args.label}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for cache in work.glob("*/cache"):  # 2.5 GB: the logs stay
        shutil.rmtree(cache, ignore_errors=True)
    print(f"one decoded copy {one_copy / 1e9:.2f} GB; report: {out}")


if __name__ == "__main__":
    main()
