"""What the extras of a default run cost: per-epoch sample quality, the TensorBoard image grids
with their cheap ex-post fit, and the result picture with its ex-post prior.

Times ``python src/train.py`` as a user runs it (a new process each, real MNIST) for
``--epochs`` epochs with every extra on, and with ``callbacks.sample_quality=null
callbacks.result_figure.expost_components=0 callbacks.image_grids.expost_components=0``,
alternated ``--rounds`` times after one untimed run that builds the data cache and the judge
(both cached once per machine, as a user's second run finds them). Prints each time, where each
run's log says its seconds went, and the ratio of the means (target: ≤ 1.15); writes the
numbers as JSON.

    python benchmarks/extras_cost.py                      # 3 epochs, 2 rounds
    python benchmarks/extras_cost.py --epochs 1 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_data import find_real

ROOT = Path(__file__).resolve().parents[1]
# the issue's "off" (sample quality and the result picture's ex-post prior), and the image grids'
# per-epoch ex-post fit too: every extra this run pays for beyond Lightning's loop and the grids
OFF = (
    "callbacks.sample_quality=null",
    "callbacks.result_figure.expost_components=0",
    "callbacks.image_grids.expost_components=0",
)
# log lines whose timestamps split a run: (label, pattern of the line that starts the part)
MARKS = (
    ("judge", r"sample quality: judged by"),
    ("fit", r"Trainer.fit. stopped"),
    ("test", r"Loaded model weights from the checkpoint"),
    ("result picture", r"ex-post prior: .* fitted"),
    ("end", r"metrics \(val and test on"),
)


def run_once(data_dir: str, out: Path, cache: Path, epochs: int, extra: tuple[str, ...]) -> dict:
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), f"paths.data_dir={data_dir}"]
    cmd += [f"paths.cache_dir={cache}", f"hydra.run.dir={out}", f"trainer.max_epochs={epochs}"]
    cmd += ["callbacks.progress_bar.refresh_rate=0", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "parts": parts((out / "train.log").read_text())}


def parts(log: str) -> dict[str, str]:
    """The log lines' clock times of each mark, to say where a run's seconds went."""
    found = {}
    for label, pattern in MARKS:
        for line in log.splitlines():
            if re.search(pattern, line):
                found[label] = line[12:24]  # [YYYY-MM-DD HH:MM:SS,mmm]
                break
    return found


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data-dir", default=None, help="folder with MNIST/raw/ (default: $VAELAB_DATA_DIR)")
    p.add_argument("--out", default=None, help="JSON results (default outputs/bench/extras-<time>.json)")
    args = p.parse_args(argv)
    real = Path(args.data_dir) if args.data_dir else find_real("mnist")
    if real is None:
        sys.exit("extras_cost: no MNIST found: pass --data-dir or set VAELAB_DATA_DIR")
    work = Path(tempfile.mkdtemp(prefix="vaelab-extras-"))
    cache = work / "cache"
    print(f"warm-up (data cache and judge, untimed) in {work}", flush=True)
    run_once(str(real), work / "warmup", cache, 1, ())
    times: dict[str, list] = {"on": [], "off": []}
    for r in range(args.rounds):
        for name, extra in (("on", ()), ("off", OFF)):
            result = run_once(str(real), work / f"{name}-{r}", cache, args.epochs, extra)
            times[name].append(result)
            print(f"round {r + 1}, extras {name}: {result['seconds']:.1f} s  {result['parts']}", flush=True)
    on, off = (statistics.mean(t["seconds"] for t in times[k]) for k in ("on", "off"))
    report = {
        "epochs": args.epochs,
        "runs": times,
        "mean_on": on,
        "mean_off": off,
        "ratio": on / off,
        "load_average": os.getloadavg(),
    }
    print(f"extras on {on:.1f} s, off {off:.1f} s: ratio {on / off:.3f} (target ≤ 1.15)")
    out = (
        Path(args.out)
        if args.out
        else ROOT / "outputs" / "bench" / f"extras-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
