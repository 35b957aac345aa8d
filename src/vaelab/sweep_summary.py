"""Sweep summary: every job's swept overrides and final metrics in one table, plus a plot.

``python -m vaelab.sweep_summary <multirun dir> [--metric val/elbo]`` (and, through the
:class:`SweepSummary` Hydra callback, the end of every multirun) writes ``summary.csv``,
``summary.md`` and ``summary.png`` into the multirun dir and prints the table. A job is a
sub-folder with ``.hydra/overrides.yaml`` (named ``<number>_<overrides>``, or just the number
in sweeps made before that); its metrics are ``metrics.json`` (what training wrote) and, when
an evaluation saved a ``metrics.json`` somewhere below the job, its metrics too under ``eval/``
(text fields, such as which bits/dim rule applied, and settings stay in that JSON). The plot shows the
metric against each swept numeric parameter, one line per combination of the other swept values.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vaelab.errors import UserError, exit_on_user_error

log = logging.getLogger(__name__)

# metric families shown, in this order (train/* is one noisy step, so it stays out)
STAGES = ("val/", "test/", "eval/")
MAX_LINES = 8  # more combinations than this: plot points, not one line per combination
# numbers of an evaluation's metrics.json that describe the run, not the model: left in the JSON
EVAL_SETTINGS = ("active_threshold", "global_step", "latent_dim", "n_examples", "seconds", "seed")
EVAL_SETTINGS += ("quality_n", "judge_accuracy", "quality/real/", "quality/reconstructions/")  # floors


@dataclass
class Job:
    name: str
    overrides: dict[str, str]
    metrics: dict[str, object]


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _is_number(value: object) -> bool:
    """A metric value: a number (bools and text are descriptions, not metrics)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _job_number(name: str) -> int | None:
    """The job number a folder name starts with: 3 for ``3`` and ``3_latent_dim-2``."""
    digits = re.match(r"\d+", name)
    return int(digits.group()) if digits else None


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _eval_metrics(job_dir: Path) -> dict[str, object]:
    """The metrics of the newest ``metrics.json`` below the job dir (not its own), under
    ``eval/``: its numbers (``k`` included, it qualifies the NLL), less :data:`EVAL_SETTINGS`."""
    found = [p for p in job_dir.rglob("metrics.json") if p.parent != job_dir]
    if not found:
        return {}
    newest = max(found, key=lambda p: p.stat().st_mtime)
    flat = {k: v for k, v in read_json(newest).items() if _is_number(v) and not k.startswith(EVAL_SETTINGS)}
    return {k if k.startswith("eval/") else f"eval/{k}": v for k, v in flat.items()}


def read_job(job_dir: Path) -> Job:
    overrides = {}
    for item in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    metrics = read_json(job_dir / "metrics.json")
    metrics.update(_eval_metrics(job_dir))
    return Job(job_dir.name, overrides, metrics)


def read_jobs(sweep_dir: Path) -> list[Job]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(
            f"Sweep dir {sweep_dir} does not exist. Pass the folder of a multirun, "
            "e.g. outputs/multirun/2024-01-31_12-00-00."
        )
    dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    if not dirs:
        raise UserError(
            f"{sweep_dir} holds no jobs (no <job>/.hydra/overrides.yaml): pass the folder of a "
            "multirun, the one that contains the job folders (0_latent_dim=2, …)."
        )
    dirs.sort(key=lambda d: (_job_number(d.name) is None, _job_number(d.name) or 0, d.name))
    return [read_job(d) for d in dirs]


def swept_keys(jobs: list[Job]) -> list[str]:
    """Overrides whose value differs between jobs (or is missing from some), in first-seen order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def metric_keys(jobs: list[Job]) -> list[str]:
    present = {k for job in jobs for k in job.metrics}
    return [k for stage in STAGES for k in sorted(present) if k.startswith(stage)]


def table(jobs: list[Job]) -> tuple[list[str], list[list[object]]]:
    """Header and rows: job, its swept values, its metrics (None where a job has none)."""
    swept, metrics = swept_keys(jobs), metric_keys(jobs)
    rows = [
        [job.name, *(job.overrides.get(k) for k in swept), *(job.metrics.get(k) for k in metrics)]
        for job in jobs
    ]
    return ["job", *swept, *metrics], rows


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.5g}"
    number = _number(value) if isinstance(value, str) and "." in value else None
    return str(value) if number is None else f"{number:.5g}"  # Optuna's 0.00190303683817358


def to_markdown(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


def numeric_keys(jobs: list[Job]) -> list[str]:
    """Swept overrides whose every value is a number (latent_dim, optimizer.lr, …)."""
    return [k for k in swept_keys(jobs) if all(_number(job.overrides.get(k)) is not None for job in jobs)]


def _series(jobs: list[Job], key: str, metric: str) -> dict[str, list[tuple[float, float]]]:
    """(x, metric) points per combination of the other swept values, sorted by x."""
    others = [k for k in swept_keys(jobs) if k != key]
    series: dict[str, list[tuple[float, float]]] = {}
    for job in jobs:
        y = job.metrics.get(metric)
        if isinstance(y, int | float) and math.isfinite(y):
            label = ", ".join(f"{k}={job.overrides.get(k)}" for k in others) or metric
            series.setdefault(label, []).append((_number(job.overrides[key]), y))
    return {label: sorted(points) for label, points in series.items()}


def _x_axis(ax, xs: list[float], grid: bool) -> None:
    """Log scale over a decade or more; ticks at the swept values of a grid sweep."""
    import matplotlib.ticker as ticker

    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # labels at 2×10⁰, 3×10⁰ … overlap
    values = sorted(set(xs))
    if grid and len(values) <= MAX_LINES:  # latent_dim=2,16,64 reads 2 16 64, not 2×10⁰ … or 2.0 2.2 …
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.xaxis.set_minor_locator(ticker.NullLocator())


def plot(jobs: list[Job], metric: str, path: Path) -> bool:
    """One panel per swept numeric parameter; False (and no file) when there is none to plot."""
    keys = [k for k in numeric_keys(jobs) if _series(jobs, k, metric)]
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        series = _series(jobs, key, metric)
        # one line per combination of the other swept values, if those repeat (a grid);
        # a random search (Optuna) gets plain points
        lines = len(series) <= MAX_LINES and any(len(points) > 1 for points in series.values())
        for label, points in series.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "o-" if lines else "o", label=label, color=None if lines else "C0")
        _x_axis(ax, [x for points in series.values() for x, _ in points], grid=lines)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if lines and len(series) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(f"{metric} per swept parameter ({len(jobs)} jobs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def summarize(sweep_dir: Path | str, metric: str = "val/elbo") -> str:
    """Write summary.csv, summary.md (and summary.png) into ``sweep_dir``; return the Markdown."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    header, rows = table(jobs)
    markdown = to_markdown(header, rows)
    write_csv(sweep_dir / "summary.csv", header, rows)
    (sweep_dir / "summary.md").write_text(f"# Sweep {sweep_dir.name}\n\n{markdown}")
    plotted = plot(jobs, metric, sweep_dir / "summary.png")
    files = "summary.csv, summary.md" + (", summary.png" if plotted else " (no numeric parameter to plot)")
    return f"{markdown}\n{len(jobs)} jobs; written to {sweep_dir}: {files}"


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep dir when a multirun ends (registered in conf/hydra)."""

    def __init__(self, metric: str = "val/elbo"):
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        try:
            print(summarize(config.hydra.sweep.dir, self.metric), flush=True)
        except UserError as err:  # a sweep whose jobs all failed must not hide their errors
            log.warning("no sweep summary: %s", err)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vaelab.sweep_summary", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder (outputs/multirun/<date>_<time>)")
    parser.add_argument("--metric", default="val/elbo", help="metric to plot (default: val/elbo)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        print(summarize(args.sweep_dir, args.metric))


if __name__ == "__main__":
    main(sys.argv[1:])
