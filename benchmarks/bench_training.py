"""How fast vaelab trains, against the floor and the classic pipeline, on this machine, in one run.

For the MLP VAE on MNIST (784-400-20, batch 128, Adam 1e-3) and the conv VAE on 64×64×3 faces
(the real CelebA sample when present, else synthetic JPEGs), it times

  (a) bare:    a hand-written PyTorch loop over a float32 tensor in memory (the floor),
  (b) classic: torchvision dataset + per-sample ToTensor + DataLoader (what most VAE repos do),
  (c) vaelab:  vaelab's Trainer.fit with the same model, init, batch size and optimiser,

each for --epochs epochs after --warmup, in its own process; then a whole --run-epochs MNIST
run (train + validation each epoch, logging on) classic vs vaelab, and vaelab's cache build.
Prints seconds/epoch, images/s, peak memory and the ratios c/a, c/b; writes them as JSON.

The threads section trains --thread-batches MNIST batches through vaelab's Trainer.fit with
vaelab's default thread policy and with OMP_NUM_THREADS=1 (and torch's own default with
--thread-variants default,one,torch), on the CPU as it is and with one core kept busy by a
spinning process, and prints batches/s and the ratio default/one for both.

    python benchmarks/bench_training.py                       # CPU (make bench)
    python benchmarks/bench_training.py --device cuda --precision bf16-mixed --compile
    python benchmarks/bench_training.py --quick               # seconds-long smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import bench_data

HERE = Path(__file__).resolve().parent
PIPELINES = ("bare", "classic", "vaelab")
SECTIONS = ("mnist", "run", "celeba", "threads")
# environment and `threads=` of each thread-policy variant (OMP_* of the calling shell dropped)
THREAD_VARIANTS = {
    "default": ({"GOMP_SPINCOUNT": "10000"}, "auto"),  # vaelab as src/train.py starts it
    "one": ({"OMP_NUM_THREADS": "1"}, "auto"),  # the user's OMP_NUM_THREADS=1 wins
    "torch": ({}, os.cpu_count()),  # torch's own default: a thread per core, spinning waits
}
MODELS = {  # the issue's two models
    "mnist": {"net": "mlp", "latent_dim": 20, "lr": 1e-3, "channels": [32, 64, 128, 256]},
    "celeba": {"net": "conv", "latent_dim": 128, "lr": 5e-4, "channels": [32, 64, 128, 256]},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true")
    p.add_argument("--compile", action="store_true", help="torch.compile the VAE in every pipeline")
    p.add_argument("--channels-last", action="store_true", help="NHWC conv net in every pipeline")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per pipeline and round")
    p.add_argument("--rounds", type=int, default=2, help="processes per pipeline, interleaved a, b, c")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    p.add_argument("--run-epochs", type=int, default=10, help="epochs of the whole-run comparison")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (all pipelines)")
    p.add_argument(
        "--run-threads",
        default="own",
        help="threads of the whole-run comparison: own (each as its user gets it: torch's default for "
        "the classic loop, vaelab's thread policy and OpenMP spin as src/train.py sets them) or a number",
    )
    p.add_argument("--celeba-images", type=int, default=None, help="train images per CelebA epoch")
    p.add_argument("--classic-workers", type=int, default=None, help="DataLoader workers of (b)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--pipelines", default=",".join(PIPELINES), help="comma list of bare, classic, vaelab")
    p.add_argument("--thread-batches", type=int, default=300, help="MNIST batches per thread-policy process")
    p.add_argument(
        "--thread-variants", default="default,one", help=f"comma list of {', '.join(THREAD_VARIANTS)}"
    )
    p.add_argument("--quick", action="store_true", help="tiny synthetic data, one epoch: a smoke test")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process, not one process per step (faster start; memory figures "
        "then cover everything run before)",
    )
    p.add_argument("--out", default=None, help="JSON results (default outputs/bench/<time>.json)")
    p.add_argument("--work-dir", default=None, help="scratch folder (default: a new temp folder)")
    p.add_argument("--synthetic-dir", default=None, help="keep synthetic data here, for later runs")
    p.add_argument(
        "--on-device", choices=("auto", "true", "false"), default="auto", help="vaelab's dataset.on_device"
    )
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if args.celeba_images is None and not cuda:  # a conv step takes ~1 s on one CPU core
        args.celeba_images = 1024
    if args.classic_workers is None:  # pytorch/examples' vae: 1 worker + pinned memory with CUDA
        args.classic_workers = 1 if cuda else 0
    if args.quick:
        args.epochs, args.warmup, args.run_epochs, args.celeba_images, args.rounds = 1, 1, 2, 32, 1
        args.thread_batches = 12
    return args


# -- data ---------------------------------------------------------------------------
def prepare_data(args, work: Path) -> dict:
    """Data roots for both benchmarks (real when found, else synthetic) + the classic MNIST copy."""
    synthetic = Path(args.synthetic_dir) if args.synthetic_dir else work / "synthetic"
    roots, real = {}, {}
    for kind in ("mnist", "celeba"):
        found = None if args.quick else bench_data.find_real(kind)
        real[kind] = found is not None
        roots[kind] = found or write_synthetic(kind, synthetic / kind, args.quick)
    return {
        **{k: str(v) for k, v in roots.items()},
        "classic_mnist": str(bench_data.unpacked_mnist(roots["mnist"], work / "classic")),
        "real": real,
    }


def write_synthetic(kind: str, root: Path, quick: bool) -> Path:
    """Synthetic data of the real formats and sizes, written once per ``root``."""
    done = root / "complete"
    if not done.exists():
        if kind == "mnist":
            bench_data.write_synthetic_mnist(root, *((600, 100) if quick else (60_000, 10_000)))
        else:
            bench_data.write_synthetic_celeba(root, *((48, (89, 109)) if quick else (10_000, (178, 218))))
        done.touch()
    return root


def base_spec(args, work: Path, data: dict, bench: str) -> dict:
    spec = {
        "bench": bench,
        **MODELS[bench],
        "data_root": data[bench],
        "classic_root": data["classic_mnist"],
        "cache_dir": str(work / "cache"),
        "work_dir": str(work),
        "device": args.device,
        "precision": args.precision,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "threads": args.threads,
        "batch_size": 128,
        "eval_batch_size": 500,
        "val_size": 100 if args.quick else 5000,
        "crop_fraction": 148 / 178,
        "n_images": None,
        "warmup": args.warmup,
        "epochs": args.epochs,
        "run_epochs": args.run_epochs,
        "seed": 0,
        "classic_workers": args.classic_workers,
        "in_process": args.in_process,
        "on_device": args.on_device,
    }
    if args.quick and bench == "celeba":
        spec.update(batch_size=16, channels=[8, 8, 8, 8], latent_dim=8)
    return spec


# -- running one measurement ----------------------------------------------------------
def measure(spec: dict, task: str, work: Path, tag: str = "") -> dict:
    """Run ``pipelines.py`` for one task in a fresh process; its result dict."""
    name = f"{spec['bench']}-{task}{tag}"
    spec_path, result_path, log_path = (work / "specs" / f"{name}.{ext}" for ext in ("json", "out", "log"))
    spec_path.parent.mkdir(exist_ok=True)
    spec_path.write_text(json.dumps({**spec, "task": task}))
    if spec["in_process"]:
        import pipelines  # torch: imported only where it runs

        return report_done(name, pipelines.run({**spec, "task": task}))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(spec["threads"])}
    if "env" in spec:  # the thread-policy section: exactly the variant's OpenMP settings
        env = {k: v for k, v in env.items() if not k.startswith("OMP_")} | spec["env"]
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [sys.executable, str(HERE / "pipelines.py"), str(spec_path), str(result_path)],
            cwd=HERE,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"benchmark step {name} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return report_done(name, json.loads(result_path.read_text()))


def report_done(name: str, result: dict) -> dict:
    print(f"  {name:<24} done: {short(result)}", file=sys.stderr, flush=True)
    return result


def short(result: dict) -> str:
    if "epoch_seconds" in result:
        return f"{statistics.median(result['epoch_seconds']):.3f} s/epoch"
    if "it_per_sec" in result:
        return f"{result['it_per_sec']:.1f} it/s on {result['threads']} thread(s)"
    if "images_per_sec" in result:
        return f"{result['images_per_sec']:.0f} images/s"
    return f"{result['seconds']:.1f} s"


EPOCH_RATIOS = {"": "sec_per_epoch", " best": "best_sec_per_epoch", " cpu": "cpu_sec_per_epoch"}


def epoch_section(args, spec: dict, work: Path) -> dict:
    """Each pipeline ``--rounds`` times, alternating a, b, c, so all see the machine's load swings."""
    names = [n for n in PIPELINES if n in args.pipelines.split(",")]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            runs[n].append(measure(spec, n, work, tag=f"-{r + 1}"))
    out: dict = {n: summarize(rs) for n, rs in runs.items()}
    out["ratios"] = ratios(out, EPOCH_RATIOS)
    return out


def summarize(runs: list[dict]) -> dict:
    """One pipeline's epochs over all rounds: median and best wall time, median CPU time, peaks."""
    wall = [t for r in runs for t in r["epoch_seconds"]]
    cpu = [t for r in runs for t in r["epoch_cpu_seconds"]]
    out = {
        "epoch_seconds": wall,
        "epoch_cpu_seconds": cpu,
        "sec_per_epoch": statistics.median(wall),
        "best_sec_per_epoch": min(wall),
        "cpu_sec_per_epoch": statistics.median(cpu),
        "images_per_sec": runs[0]["images"] / statistics.median(wall),
        "images": runs[0]["images"],
        "init_checksum": runs[0]["init_checksum"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }
    if "peak_gpu_mb" in runs[0]:
        out.update(peak_gpu_mb=max(r["peak_gpu_mb"] for r in runs), gpu_name=runs[0]["gpu_name"])
    return out


def ratios(results: dict, keys: dict[str, str]) -> dict:
    """c/a and c/b for each figure in ``keys`` (suffix → result key)."""
    c = results.get("vaelab")
    out = {}
    for letter, name in (("a", "bare"), ("b", "classic")):
        for suffix, key in keys.items():
            if c is not None and name in results:
                out[f"c/{letter}{suffix}"] = c[key] / results[name][key]
    return out


@contextlib.contextmanager
def busy_core(busy: bool):
    """Another process spinning on one core while the block runs (``busy``), as a neighbour's job would."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def thread_section(args, spec: dict, work: Path) -> dict:
    """Batches/s of each thread variant, quiet and with one core busy, ``--rounds`` processes each,
    interleaved; the ratio of vaelab's default to OMP_NUM_THREADS=1 for both."""
    names = [n for n in THREAD_VARIANTS if n in args.thread_variants.split(",")]
    spec = {
        **spec,
        "threads": None,
        "batches": args.thread_batches,
        "warm_batches": min(20, args.thread_batches // 4),
    }
    out: dict = {}
    for load in ("quiet", "busy"):
        runs: dict[str, list[dict]] = {n: [] for n in names}
        with busy_core(load == "busy"):
            for r in range(args.rounds):
                for n in names:
                    env, setting = THREAD_VARIANTS[n]
                    variant = {**spec, "env": env, "thread_setting": setting}
                    runs[n].append(measure(variant, "threads", work, tag=f"-{load}-{n}-{r + 1}"))
        out[load] = {n: summarize_rates(rs) for n, rs in runs.items()}
        if {"default", "one"} <= set(names):
            out[load]["default/one"] = out[load]["default"]["it_per_sec"] / out[load]["one"]["it_per_sec"]
    return out


def summarize_rates(runs: list[dict]) -> dict:
    rates = [r["it_per_sec"] for r in runs]
    return {
        "it_per_sec": statistics.median(rates),
        "range": [min(rates), max(rates)],
        "threads": sorted({r["threads"] for r in runs}),
        "load_average": [r["load_average"] for r in runs],
        "runs": runs,
    }


# the whole run as each pipeline's user starts it: a pytorch/examples user gets torch's defaults
# (a thread per core, OpenMP's long spin); src/train.py sets a short spin and its thread policy
OWN_THREADS = {"classic": {}, "vaelab": THREAD_VARIANTS["default"][0]}


def run_spec(args, spec: dict, name: str) -> dict:
    """The whole-run comparison's spec for ``name``: ``--run-threads`` threads, or its own defaults."""
    if args.run_threads != "own":
        return {**spec, "threads": int(args.run_threads)}
    return {**spec, "threads": None, "env": OWN_THREADS[name]}


def run_benchmarks(args, work: Path) -> dict:
    data = prepare_data(args, work)
    only = args.only.split(",")
    report: dict = {"machine": machine(args), "data": data["real"], "sections": {}}
    sections = report["sections"]
    if "mnist" in only or "run" in only:
        spec = base_spec(args, work, data, "mnist")
        report["cache_build"] = {"mnist": measure(spec, "cache", work)}
        if "mnist" in only:
            sections["mnist"] = epoch_section(args, spec, work)
        if "run" in only:
            run = {
                name: measure(run_spec(args, spec, name), f"run_{name}", work)
                for name in ("classic", "vaelab")
            }
            run["ratios"] = ratios(run, {"": "seconds", " cpu": "cpu_seconds"})
            sections["run"] = run
    if "threads" in only:
        spec = base_spec(args, work, data, "mnist")
        report.setdefault("cache_build", {}).setdefault("mnist", measure(spec, "cache", work))
        sections["threads"] = thread_section(args, spec, work)
    if "celeba" in only:
        spec = base_spec(args, work, data, "celeba")
        built = measure(spec, "cache", work)
        report.setdefault("cache_build", {})["celeba"] = built
        train = built["splits"]["train"]
        wanted = min(args.celeba_images or train, train)
        spec["n_images"] = max(1, wanted // spec["batch_size"]) * spec["batch_size"]
        sections["celeba"] = epoch_section(args, spec, work)
    gpus = {r.get("gpu_name") for s in sections.values() for r in s.values()} - {None}
    if gpus:  # named by the measuring processes: this one never initialises CUDA
        report["machine"]["gpu"] = ", ".join(sorted(gpus))
    return report


def machine(args) -> dict:
    info = {
        "device": args.device,
        "precision": args.precision,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "on_device": args.on_device,
        "threads": args.threads,
        "run_threads": args.run_threads,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "lightning": metadata.version("lightning"),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "run_epochs": args.run_epochs,
        "thread_batches": args.thread_batches,
        "quick": args.quick,
    }
    return info


# -- report -------------------------------------------------------------------------
TITLES = {
    "mnist": "MNIST, MLP VAE 784-400-20, batch 128, Adam 1e-3",
    "celeba": "64x64x3 faces, conv VAE 32-64-128-256, latent 128, batch 128, Adam 5e-4",
}


def table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"vaelab benchmark: {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, {m['precision']}, "
        f"compile {'on' if m['compile'] else 'off'}, {m['threads']} torch thread(s); {m['cpus']} CPUs, "
        f"load average {m['load_average']:.1f} at start; torch {m['torch']}, lightning {m['lightning']}",
    ]
    for bench in ("mnist", "celeba"):
        if bench in report["sections"]:
            lines += epoch_table(report, bench)
    if "run" in report["sections"]:
        own = "each pipeline's own defaults (torch's for classic, vaelab's thread policy)"
        threads = own if m.get("run_threads", "own") == "own" else f"{m['run_threads']} per process"
        lines += run_table(report["sections"]["run"], m["run_epochs"], threads)
    if "threads" in report["sections"]:
        lines += thread_table(report["sections"]["threads"], m)
    for bench, r in report.get("cache_build", {}).items():
        lines.append(
            f"Cache build {bench}: {r['images']} images in {r['seconds']:.1f} s = {r['images_per_sec']:.0f} "
            f"images/s; decoded data {r['data_mb']:.0f} MB, process grew {r['rss_growth_mb']:.0f} MB"
        )
    return "\n".join(lines)


def ratio_line(ratios: dict) -> str:
    return "  " + "   ".join(f"{k} = {v:.3f}" for k, v in ratios.items())


def epoch_table(report: dict, bench: str) -> list[str]:
    m, section = report["machine"], report["sections"][bench]
    kind = "real" if report["data"][bench] else "synthetic"
    n = next(r["images"] for k, r in section.items() if k != "ratios")
    lines = [
        "",
        f"{TITLES[bench]} ({kind} data, {n} train images/epoch, "
        f"{m['rounds']} process(es) x {m['epochs']} timed epoch(s) after {m['warmup']} warm-up; "
        "medians, best = fastest epoch)",
        f"  {'pipeline':<12}{'s/epoch':>10}{'best':>8}{'CPU s/epoch':>13}{'images/s':>10}{'peak RSS MB':>13}"
        f"{'peak GPU MB':>13}",
    ]
    for name, letter in zip(PIPELINES, "abc", strict=True):
        if name in section:
            r = section[name]
            gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
            lines.append(
                f"  ({letter}) {name:<8}{r['sec_per_epoch']:>10.3f}{r['best_sec_per_epoch']:>8.3f}"
                f"{r['cpu_sec_per_epoch']:>13.3f}{r['images_per_sec']:>10.0f}{r['peak_rss_mb']:>13.0f}{gpu:>13}"
            )
    return lines + [ratio_line(section["ratios"])]


def run_table(run: dict, epochs: int, threads: str) -> list[str]:
    lines = ["", f"Whole MNIST run, {epochs} epochs of train + validation, logging on (vaelab: every"]
    lines += ["default extra on: test, sample quality with its cached judge, ex-post grids, result picture;"]
    lines += [f"threads: {threads}):"]
    for name in ("classic", "vaelab"):
        r = run[name]
        lines.append(
            f"  {name:<8} {r['seconds']:8.1f} s ({r['cpu_seconds']:.1f} s CPU)   final val loss "
            f"{r['val_loss']:.2f}   peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    return lines + [ratio_line(run["ratios"])]


THREAD_LABELS = {"default": "vaelab default", "one": "OMP_NUM_THREADS=1", "torch": "torch default"}


def thread_table(section: dict, m: dict) -> list[str]:
    lines = [
        "",
        f"Thread policy: MNIST MLP batches/s through vaelab's Trainer.fit ({m['thread_batches']} batches "
        f"per process, timed after a warm-up; median [range] over {m['rounds']} process(es); torch threads "
        "at the end; load average after each)",
    ]
    for load, title in (("quiet", "CPU as found"), ("busy", "one core spun by another process")):
        lines.append(f"  {load} ({title}):")
        for name, r in section[load].items():
            if name in THREAD_LABELS:
                low, high = r["range"]
                loads = ", ".join(f"{x:.1f}" for x in r["load_average"])
                lines.append(
                    f"    {THREAD_LABELS[name]:<18}{r['it_per_sec']:8.1f} it/s [{low:.1f}-{high:.1f}]   "
                    f"threads {'/'.join(map(str, r['threads']))}   load {loads}"
                )
        if "default/one" in section[load]:
            lines.append(f"    default/one = {section[load]['default/one']:.3f}")
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vaelab-bench-", dir=args.work_dir) as tmp:
        start = time.perf_counter()
        report = run_benchmarks(args, Path(tmp))
        report["machine"]["wall_seconds"] = time.perf_counter() - start
    print(table(report), flush=True)
    out = Path(args.out or HERE.parent / "outputs" / "bench" / f"{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out}", flush=True)
    return report


if __name__ == "__main__":
    main()
