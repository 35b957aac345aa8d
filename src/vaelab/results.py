"""The results table: this project's runs beside the literature (``make results``, docs/results.md).

``python -m vaelab.results [--mnist-epochs E] [--celeba-epochs E] [--k K] [--n N] [--only NAME ...]``
trains and evaluates every row of the table that is not finished yet, one subprocess at a time
(``src/train.py experiment=<row>`` into ``<runs-dir>/<row>``, then ``src/eval.py`` on its
``last.ckpt``, which writes ``<row>/eval/metrics.json``), then writes the markdown table.
``--table-only`` runs nothing: it records the evaluated runs there and rebuilds the table.

A row is finished when its training ``metrics.json`` has the requested epochs and its
evaluation's ``metrics.json`` the requested k (and n); a finished row is skipped. A training that
stopped before the end (a ``last.ckpt``, no ``metrics.json``, the same epochs asked for) is
resumed; a run folder of another budget is moved aside to ``<row>.old-<n>``, never deleted.

The table reads nothing but the runs' own files: ``<run>/metrics.json`` (training: fit_seconds,
epochs), ``<run>/eval/metrics.json`` (the evaluation) and ``<run>/.hydra/config.yaml`` (the row's
model, prior and objective). Run folders are large and stay outside the repository, so those
files of every evaluated row are copied into the records folder beside the table
(``docs/results/<row>/`` for ``docs/results.md``), and the table is written from the records: a
row measured in an earlier session keeps its numbers on a machine that no longer has its run.
The records are committed, so they name no machine's folders: a copy keeps every byte of its
file but the absolute paths, which :func:`portable_path` rewrites (``checkpoints/last.ckpt``
inside the run, ``<data-dir>/...``, ``<runs-dir>/...``, ``<repo>/...``, else ``<outside>``), and
the table names the runs folder relative to the repository, or ``<runs-dir>`` outside it.
The only numbers typed in here are the published ones, in :data:`PUBLISHED`, each with its
citation and budget. A row without a record is listed as "not run yet", never filled in.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from vaelab.sweep_summary import read_json

ROOT = Path(__file__).resolve().parents[2]  # the checkout: src/vaelab/results.py -> .

# rows of the tables, in order (each an experiment config in conf/experiment/)
MNIST_ROWS = (
    "mnist_vae",
    "mnist_vae_long",
    "mnist_iwae",
    "mnist_vae_2layer",
    "mnist_iwae_2layer",
    "mnist_vae_relu",
    "mnist_vae_relu_stl",
    "mnist_vae_2layer_relu",
    "mnist_vamp",
    "mnist_free_bits",
)
CELEBA_ROWS = (
    "celeba_conv_gaussian",
    "celeba_conv_logistic",
    "celeba_resnet_gaussian",
    "celeba_resnet_logistic",
)
ROWS = MNIST_ROWS + CELEBA_ROWS
CELEBA_MAX_DECODES = 250  # (sample, face) pairs per importance-sampling chunk: a few GB at most
# a row that trains another row's experiment for longer (--long-epochs), starting from that row's
# finished run: mnist_vae_long is mnist_vae resumed from its last checkpoint up to 200 epochs
CONTINUES = {"mnist_vae_long": "mnist_vae"}


def experiment_of(name: str) -> str:
    return CONTINUES.get(name, name)


def epochs_of(name: str, args) -> int:
    if name in CONTINUES:
        return args.long_epochs
    return args.celeba_epochs if name.startswith("celeba") else args.mnist_epochs


# The published numbers: test NLL in nats on dynamically binarised MNIST, with where they come
# from and what they cost. The only numbers in this file that no run of ours measured.
BURDA_2016 = {  # what the three rows of Burda et al.'s Table 1 share: budget and evaluation
    "k": 5000,
    "n": 10000,
    "epochs": 3280,
    "short": "Burda et al. 2016",
    "wall": "—",
    "citation": "Burda, Grosse & Salakhutdinov 2016, Table 1",
    "budget": "3,280 epochs, k = 5000 evaluation",
}
PUBLISHED = {
    "vae": {
        **BURDA_2016,
        "row": "VAE, 1 stochastic layer (784-200-200-50)",
        "objective": "ELBO",
        "nll": 86.76,
        "citation": "Burda, Grosse & Salakhutdinov 2016, Importance Weighted Autoencoders, Table 1",
        "budget": "3,280 epochs (3^i passes at learning rate 1e-3 * 10^(-i/7), i = 0..7), "
        "k = 5000 evaluation",
    },
    "iwae_k50": {
        **BURDA_2016,
        "row": "IWAE, 1 stochastic layer (784-200-200-50)",
        "objective": "IWAE (k = 50)",
        "nll": 84.78,
    },
    "iwae_2layer_k50": {
        **BURDA_2016,
        "row": "IWAE, 2 stochastic layers (784-200-200-100-100-100-50)",
        "objective": "IWAE (k = 50)",
        "nll": 82.90,
    },
    "nvae": {
        "row": "NVAE (deep hierarchical conv VAE, 2 scales x 10 groups)",
        "objective": "ELBO",
        "nll": 78.01,
        "k": 1000,
        "n": 10000,
        "epochs": 400,
        "short": "Vahdat & Kautz 2020",
        "wall": "≈ 21 h on 2 V100 GPUs",
        "citation": "Vahdat & Kautz 2020, NVAE: A Deep Hierarchical Variational Autoencoder, Table 2",
        "budget": "400 epochs on 2 V100 GPUs (≈ 21 h, the authors' README), k = 1000 evaluation",
    },
}
# the one-layer VAE's target: a test NLL below this many nats
VAE_TARGET_NATS = 90.0
NOT_RUN = "not run yet"
NOT_MEASURED = "not measured"


# -- reading a run -------------------------------------------------------------------------------
def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _yaml(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


# what a row's record keeps of its run folder: the files the table reads, copied with their
# absolute paths made portable (portable_text), every other byte unchanged
RECORD_FILES = ("metrics.json", "eval/metrics.json", ".hydra/config.yaml", "eval/.hydra/config.yaml")
RECORD_SOURCE = "recorded_from.json"  # where and when the record was copied (written by record())


def record_files(folder: Path) -> list[Path]:
    """What a record keeps of ``folder`` (a run or a record), relative to it: :data:`RECORD_FILES`
    and the resume records' overrides (which say that fit_seconds covers the last attempt only)."""
    folder = Path(folder)
    resumes = sorted(p.relative_to(folder) for p in folder.glob(".hydra/resume-*/overrides.yaml"))
    return [rel for rel in [*map(Path, RECORD_FILES), *resumes] if (folder / rel).is_file()]


# -- portable records: no machine's absolute path in a committed file ----------------------------
RUNS_DIR_MARK = "<runs-dir>"  # the folder of the row folders (--runs-dir), outside the repository
DATA_DIR_MARK = "<data-dir>"  # the run's paths.data_dir
REPO_MARK = "<repo>"  # the checkout
OUTSIDE_MARK = "<outside>"  # any other folder of the machine: not named at all
RECORDS_DIR_MARK = "<records-dir>"  # a records folder outside the repository
# an absolute path where a value starts: at a line's start, after blanks, a quote, "=", "[" or
# "("; up to a blank, a quote or a closing bracket. "${oc.env:HOME,/tmp}" (after a comma) and
# URLs (after ":" or "/") are left alone
ABSOLUTE_PATH = re.compile(r"""(?<![^\s"'=\[(])/[\w.~-][^\s"'\]),}]*""")


def portable_path(path: str, bases: list[tuple[PurePosixPath, str]]) -> str:
    """``path`` (absolute) relative to the deepest of ``bases`` (folder, mark) holding it, behind
    that base's mark: the run's own files have the mark "" (``checkpoints/last.ckpt``, ``.`` for
    the run itself); a path under no base is :data:`OUTSIDE_MARK`."""
    p = PurePosixPath(os.path.normpath(path))
    held = [(base, mark) for base, mark in bases if base == p or base in p.parents]
    if not held:
        return OUTSIDE_MARK
    base, mark = max(held, key=lambda held: len(held[0].parts))
    rest = str(p.relative_to(base))
    if not mark:
        return rest
    return mark if rest == "." else f"{mark}/{rest}"


def portable_text(text: str, bases: list[tuple[PurePosixPath, str]]) -> str:
    """``text`` with each absolute path rewritten by :func:`portable_path`; every other character
    (the numbers above all) as it was."""
    return ABSOLUTE_PATH.sub(lambda m: portable_path(m.group(), bases), text)


def _data_dirs(folder: Path) -> list[str]:
    """The absolute data folders a run's files name: its configs' paths.data_dir and those of its
    resumes' overrides."""
    found = []
    for rel in (".hydra/config.yaml", "eval/.hydra/config.yaml"):
        paths = (_yaml(Path(folder) / rel) or {}).get("paths")
        found.append(paths.get("data_dir") if isinstance(paths, dict) else None)
    for overrides in Path(folder).glob(".hydra/resume-*/overrides.yaml"):
        found += re.findall(r"^- paths\.data_dir=(\S+)$", overrides.read_text(), flags=re.M)
    return sorted({d for d in found if isinstance(d, str) and d.startswith("/")})


def portable_bases(run: Path, folder: Path | None = None) -> list[tuple[PurePosixPath, str]]:
    """The folders :func:`portable_path` names a run's paths by: the run (mark ""), the runs
    folder around it, its data folders (read from ``folder``: the run, or a copy of its files)
    and the checkout."""
    run = Path(run)
    bases = [(ROOT, REPO_MARK), *((Path(d), DATA_DIR_MARK) for d in _data_dirs(folder or run))]
    for form in {run.absolute(), run.resolve()}:
        bases += [(form.parent, RUNS_DIR_MARK), (form, "")]
    return [(PurePosixPath(os.path.normpath(base)), mark) for base, mark in bases]


def portable_bytes(path: Path, bases: list[tuple[PurePosixPath, str]]) -> bytes:
    """A record file's bytes with its absolute paths made portable (a file that is not UTF-8
    text as it is)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    return portable_text(text, bases).encode("utf-8")


def make_portable(folder: Path, run: Path) -> None:
    """Rewrite the record files in ``folder``, copied from the run folder ``run``, so that they
    name no absolute path (:func:`portable_text`), and its :data:`RECORD_SOURCE` likewise. The
    records written before this existed were made portable by this function once."""
    folder = Path(folder)
    bases = portable_bases(run, folder)
    for rel in record_files(folder):
        (folder / rel).write_bytes(portable_bytes(folder / rel, bases))
    source = read_json(folder / RECORD_SOURCE)
    if isinstance(source.get("run"), str) and PurePosixPath(source["run"]).is_absolute():
        source["run"] = run_display(Path(source["run"]))
        (folder / RECORD_SOURCE).write_text(json.dumps(source, indent=1) + "\n")


@dataclass
class Run:
    """One row's run folder, as its own files describe it."""

    name: str
    path: Path
    train: dict | None  # <run>/metrics.json
    eval: dict | None  # <run>/eval/metrics.json
    config: dict | None  # <run>/.hydra/config.yaml (unresolved, as Hydra saved it)
    eval_config: dict | None  # <run>/eval/.hydra/config.yaml

    @classmethod
    def load(cls, runs_dir: Path, name: str) -> Run:
        path = Path(runs_dir) / name
        return cls(
            name=name,
            path=path,
            train=_json(path / "metrics.json"),
            eval=_json(path / "eval" / "metrics.json"),
            config=_yaml(path / ".hydra" / "config.yaml"),
            eval_config=_yaml(path / "eval" / ".hydra" / "config.yaml"),
        )

    @property
    def done(self) -> bool:
        return self.train is not None and self.eval is not None

    @property
    def epochs(self) -> int | None:
        return None if self.train is None else self.train.get("epochs")

    @property
    def k(self) -> int | None:
        return None if self.eval is None else self.eval.get("k")

    @property
    def n(self) -> int | None:
        return None if self.eval is None else self.eval.get("n_examples")

    @property
    def requested_n(self) -> int | None | str:
        """The evaluation's eval.n setting (None: the whole split); "unknown" without its record."""
        if self.eval_config is None or not isinstance(self.eval_config.get("eval"), dict):
            return "unknown"
        return self.eval_config["eval"].get("n")

    @property
    def resumed(self) -> bool:
        """Whether training was resumed (a .hydra/resume-<n> record): fit_seconds then counts
        only the last attempt."""
        return any((self.path / ".hydra").glob("resume-*"))

    def record_files(self) -> list[Path]:
        """What a record keeps of this folder (:func:`record_files`)."""
        return record_files(self.path)

    def same_files(self, record: Run) -> bool:
        """Whether ``record`` already holds exactly this run's files, made portable."""
        mine, theirs = self.record_files(), record.record_files()
        bases = portable_bases(self.path)
        return mine == theirs and all(
            portable_bytes(self.path / rel, bases) == (record.path / rel).read_bytes() for rel in mine
        )

    def record(self, records_dir: Path) -> Path:
        """Copy this run's :meth:`record_files` to ``records_dir/<name>/`` with their absolute
        paths made portable (:func:`make_portable`), with a :data:`RECORD_SOURCE` saying where
        from. An older record is swapped out only once the new one is complete, so an
        interruption leaves one of the two, never neither."""
        target = Path(records_dir) / self.name
        staging = target.with_name(f".{self.name}.recording-{os.getpid()}")
        old = target.with_name(f".{self.name}.replaced-{os.getpid()}")
        for rel in self.record_files():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.path / rel, staging / rel)
        make_portable(staging, self.path)
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        source = {"run": run_display(self.path), "recorded": now}
        (staging / RECORD_SOURCE).write_text(json.dumps(source, indent=1) + "\n")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return target

    def trained_for(self, epochs: int) -> bool:
        return self.train is not None and self.epochs == epochs

    def finished(self, epochs: int, k: int, n: int | None) -> bool:
        """Trained for ``epochs`` and evaluated with ``k`` samples on the first ``n`` examples."""
        if not (self.trained_for(epochs) and self.eval is not None and self.k == k):
            return False
        wanted = self.requested_n
        if wanted == "unknown":  # no record of the setting: judge by the examples evaluated
            return n is None or self.n == n
        return wanted == n


# -- describing a run from its config ------------------------------------------------------------
def _cls(spec) -> str:
    return str(spec.get("_target_", "?")).rsplit(".", 1)[-1] if isinstance(spec, dict) else "?"


def _latent_dims(cfg: dict) -> list:
    dims = (cfg.get("model") or {}).get("latent_dims") or [cfg.get("latent_dim")]
    return [cfg.get("latent_dim") if str(d) == "${latent_dim}" else d for d in dims]


def describe_prior(spec) -> str:
    name = _cls(spec)
    if name == "StandardNormal":
        return "N(0, I)"
    if name == "VampPrior":
        return f"VampPrior ({spec.get('components')} pseudo-inputs)"
    if name == "GaussianMixture":
        return f"mixture of {spec.get('components')} Gaussians"
    return name


def closed_form_kl(cfg: dict | None) -> bool:
    """Whether the ELBO of this config uses a closed-form KL: one layer, N(0, I), not turned off."""
    cfg = cfg or {}
    objective = cfg.get("objective") or {}
    one_layer = len(_latent_dims(cfg)) == 1
    return one_layer and _cls(cfg.get("prior")) == "StandardNormal" and objective.get("analytic_kl", True)


def describe_objective(spec, closed_form: bool = False) -> str:
    """The objective in a few words; ``closed_form``: the KL has a closed form, so its
    Monte-Carlo gradient options do not apply."""
    name = _cls(spec)
    if name == "ELBO":
        beta, warmup = spec.get("beta", 1.0), spec.get("warmup_steps", 0)
        text = "ELBO" if beta in (1, 1.0) else f"β-ELBO (β = {beta})"
        if not closed_form:
            text += ", Monte-Carlo KL" + (", STL gradient" if spec.get("stl") else "")
        return text + (f", KL warm-up {warmup} steps" if warmup else "")
    if name == "IWAE":
        return f"IWAE (k = {spec.get('k')})"
    if name == "FreeBits":
        per = "per dim" if spec.get("per_dim", True) else "in all"
        return f"ELBO, free bits ({spec.get('floor')} nats {per})"
    return name


def describe_likelihood(spec) -> str:
    name = _cls(spec)
    if name == "Gaussian":
        learn = spec.get("learn", "none")
        return (
            f"Gaussian, σ = {spec.get('sigma')}"
            if learn in (None, "none")
            else f"Gaussian, learned σ ({learn})"
        )
    if name == "DiscretizedLogistic":
        n = spec.get("components", 1)
        return "discretized logistic" if n == 1 else f"discretized logistic mixture ({n})"
    return name


def describe_net(spec) -> str:
    name = _cls(spec)
    if name == "MLP":
        hidden = "-".join(str(h) for h in spec.get("hidden") or [])
        return f"MLP {hidden} {spec.get('activation', '')}".strip()
    return {"Conv": "conv", "ResNet": "ResNet"}.get(name, name)


def describe_model(cfg: dict | None) -> str:
    """The row's model in a few words: net, stochastic layers, prior, decoder."""
    if cfg is None:
        return ""
    dims = _latent_dims(cfg)
    layers = f"{len(dims)} stochastic layer{'s' if len(dims) > 1 else ''} ({'-'.join(map(str, dims))})"
    parts = [describe_net(cfg.get("net")), layers, f"prior {describe_prior(cfg.get('prior'))}"]
    parts.append(describe_likelihood(cfg.get("likelihood")))
    if (cfg.get("model") or {}).get("conditional"):
        parts.append("conditional")
    return ", ".join(parts)


# -- formatting ------------------------------------------------------------------------------------
def _num(value, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def wall(seconds) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _n_text(n) -> str:
    return "all" if n is None else f"{n:,}"


def _ep(n) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _epochs_text(run: Run) -> str:
    return _num(run.epochs, "{}")


def _wall_text(run: Run) -> str:
    text = wall(run.train.get("fit_seconds"))
    return text + " (since last resume)" if run.resumed else text


def _label(run: Run) -> str:
    described = describe_model(run.config)
    return f"`{run.name}`" + (f": {described}" if described else "")


def _objective_text(run: Run) -> str:
    return describe_objective(run.config.get("objective"), closed_form_kl(run.config)) if run.config else ""


def _table(runs: list[Run], header: list[str], lead, cells) -> list[str]:
    """A markdown table: ``lead(run)`` cells, then ``cells(run)`` for an evaluated run (else "not
    run yet" and how far it trained), then its epochs and training wall time."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        first = lead(run)
        if run.done:
            body = [*first, *cells(run), _epochs_text(run), _wall_text(run)]
        else:
            trained = f"trained {_ep(run.epochs)}, not evaluated" if run.train else ""
            body = [*first, NOT_RUN, *[""] * (len(header) - len(first) - 3), trained, ""]
        lines.append("| " + " | ".join(body) + " |")
    return lines


def mnist_table(runs: list[Run]) -> list[str]:
    header = ["row", "objective", "test NLL, nats (k)", "−ELBO, nats", "active units / latent dim"]
    header += ["test images", "epochs", "training wall time"]

    def cells(run: Run) -> list[str]:
        ev = run.eval
        return [
            f"{_num(ev.get('nll_iwae'))} (k = {run.k})",
            _num(ev.get("neg_elbo")),
            f"{ev.get('active_units')} / {ev.get('latent_dim')}",
            _n_text(run.n),
        ]

    lines = _table(runs, header, lambda run: [_label(run), _objective_text(run)], cells)
    for pub in PUBLISHED.values():
        lines.append(
            f"| **published**: {pub['row']} ({pub['short']}) | {pub['objective']} | {pub['nll']:.2f} "
            f"(k = {pub['k']}) | — | — | {pub['n']:,} | {pub['epochs']:,} | {pub['wall']} |"
        )
    return lines


def celeba_table(runs: list[Run]) -> list[str]:
    header = ["row", "bits/dim (NLL, k)", "bits/dim (ELBO)", "−ELBO, nats", "test images", "epochs"]
    header.append("training wall time")

    def cells(run: Run) -> list[str]:
        ev = run.eval
        return [
            f"{_num(ev.get('bits_per_dim'), '{:.4f}')} (k = {run.k})",
            _num(ev.get("bits_per_dim_elbo"), "{:.4f}"),
            _num(ev.get("neg_elbo"), "{:.1f}"),
            _n_text(run.n),
        ]

    lines = _table(runs, header, lambda run: [_label(run)], cells)
    formulas = [f"- `{r.name}`: {r.eval.get('bits_per_dim_formula', 'n/a')}" for r in runs if r.done]
    if formulas:
        lines += ["", "Bits/dim formula of each row (as its evaluation wrote it):", "", *formulas]
    return lines


# -- what the targets say --------------------------------------------------------------------------
def _comparable(a: Run, b: Run) -> str | None:
    """Why rows a and b cannot be compared, or None when they can (both evaluated, equal epochs,
    k and number of test examples)."""
    missing = [r.name for r in (a, b) if not r.done]
    if missing:
        return f"{' and '.join(missing)} {NOT_RUN}"
    if a.epochs != b.epochs:
        return f"epochs differ: {a.epochs} vs {b.epochs}"
    if a.k != b.k or a.n != b.n:
        return f"evaluations differ: k = {a.k}, n = {a.n} vs k = {b.k}, n = {b.n}"
    if a.eval.get("nll_iwae") is None or b.eval.get("nll_iwae") is None:
        return "a test NLL is n/a"
    return None


def difference(a: Run, b: Run) -> float | None:
    """Test NLL of ``a`` minus that of ``b`` in nats, or None when they are not comparable."""
    return None if _comparable(a, b) else a.eval["nll_iwae"] - b.eval["nll_iwae"]


def _target_line(title: str, a: Run, b: Run, meaning: str) -> str:
    why = _comparable(a, b)
    if why:
        return f"- {title}: {NOT_MEASURED} ({why})."
    d = difference(a, b)
    return (
        f"- {title}: **{d:+.2f} nats** (`{a.name}` {a.eval['nll_iwae']:.2f} − `{b.name}` "
        f"{b.eval['nll_iwae']:.2f}; {_ep(a.epochs)}, k = {a.k}, n = {_n_text(a.n)}). "
        f"{meaning if d < 0 else 'Not lower: the expected gain did not show at this budget.'}"
    )


def targets(runs: dict[str, Run]) -> list[str]:
    lines = [
        "Differences of test NLL (lower is better), each only between rows trained for the same number "
        "of epochs and evaluated with the same k and n.",
        "",
        _target_line(
            "IWAE (k = 5) − VAE",
            runs["mnist_iwae"],
            runs["mnist_vae"],
            "Negative: training on the k = 5 bound gives the better model, as in Burda et al.",
        ),
        _target_line(
            "2 layers − 1 layer (VAE)",
            runs["mnist_vae_2layer"],
            runs["mnist_vae"],
            "Negative: the second stochastic layer helps.",
        ),
        _target_line(
            "2 layers − 1 layer (IWAE, k = 5)",
            runs["mnist_iwae_2layer"],
            runs["mnist_iwae"],
            "Negative: the second stochastic layer helps.",
        ),
        _target_line(
            "2 layers (STL gradient) − 1 layer (closed-form KL), VAE, ReLU",
            runs["mnist_vae_2layer_relu"],
            runs["mnist_vae_relu"],
            "Negative: the two-layer model, trained with the STL gradient, beats the one-layer model "
            "trained the textbook way; the next line separates the estimator from the layer.",
        ),
        _target_line(
            "2 layers − 1 layer (VAE, ReLU, both with the STL gradient)",
            runs["mnist_vae_2layer_relu"],
            runs["mnist_vae_relu_stl"],
            "Negative: the second stochastic layer helps, with the same gradient estimator.",
        ),
        _target_line(
            "VampPrior − N(0, I)",
            runs["mnist_vamp"],
            runs["mnist_vae_relu"],
            "Negative: the learned prior helps.",
        ),
    ]
    vae = runs["mnist_vae_long"]
    title = f"VAE test NLL vs {VAE_TARGET_NATS:.1f} nats"
    if not vae.done or vae.eval.get("nll_iwae") is None:
        lines.append(f"- {title}: {NOT_MEASURED} (`mnist_vae_long` {NOT_RUN}).")
    else:
        nll = vae.eval["nll_iwae"]
        verdict = "below: met" if nll < VAE_TARGET_NATS else "not below: not met"
        lines.append(
            f"- {title}: **{nll:.2f} nats**, {verdict} ({_ep(vae.epochs)}, k = {vae.k}, "
            f"n = {_n_text(vae.n)}; published {PUBLISHED['vae']['nll']:.2f} after "
            f"{PUBLISHED['vae']['epochs']:,} epochs)."
        )
    return lines


# -- the whole page --------------------------------------------------------------------------------
def _machine() -> str:
    try:
        import torch

        version = torch.__version__
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # the table can be written without torch
        version, gpu = "not installed", "GPU unknown"
    return f"{os.cpu_count()} CPUs, {gpu}, torch {version}, Python {platform.python_version()}"


def _budget_found(runs: list[Run]) -> str:
    done = [r for r in runs if r.done]
    if not done:
        return "none"

    def values(get, text=str) -> str:
        found = sorted({get(r) for r in done}, key=lambda v: (v is None, v))
        return ", ".join(text(v) for v in found)

    epochs, k, n = values(lambda r: r.epochs), values(lambda r: r.k), values(lambda r: r.n, _n_text)
    return f"epochs {epochs}; k = {k}; test images n = {n}"


def records_dir_of(out: Path) -> Path:
    """The records folder beside a table: docs/results/ for docs/results.md."""
    return Path(out).with_suffix("")


def _smaller_budget(run: Run, record: Run) -> bool:
    """Whether ``run`` trained or evaluated less than ``record``: fewer epochs, fewer importance
    samples or fewer test examples (None: all of them)."""
    examples = (run.n or float("inf")) < (record.n or float("inf"))
    return (run.epochs or 0) < (record.epochs or 0) or (run.k or 0) < (record.k or 0) or examples


def record_finished(runs_dir: Path, records_dir: Path, replace_larger: bool = False) -> list[str]:
    """Record every evaluated row under ``runs_dir`` whose files differ from its record. A run of
    a smaller budget than its record (a smoke test, an old folder) leaves the record alone unless
    ``replace_larger``; a row with no evaluated run keeps the record it has. Returns one line per
    row looked at, saying what happened."""
    said = []
    for name in ROWS:
        run, record = Run.load(runs_dir, name), Run.load(records_dir, name)
        if not run.done or run.path.resolve() == record.path.resolve():
            continue
        if record.done and run.same_files(record):
            said.append(f"{name}: record up to date")
        elif record.done and _smaller_budget(run, record) and not replace_larger:
            said.append(
                f"{name}: record kept ({_ep(record.epochs)}, k = {record.k}, n = {_n_text(record.n)}); "
                f"the run's budget is smaller ({_ep(run.epochs)}, k = {run.k}, n = {_n_text(run.n)}): "
                "--replace-larger-records to replace it"
            )
        else:
            run.record(records_dir)
            said.append(f"{name}: recorded")
    return said


def _recorded_from(runs: list[Run]) -> str:
    """The runs folders the records were copied from: relative to the checkout, or
    :data:`RUNS_DIR_MARK` (a record of an older version names its run's absolute path)."""
    sources = [read_json(run.path / RECORD_SOURCE) for run in runs if run.done]
    folders = set()
    for run in (s["run"] for s in sources if isinstance(s.get("run"), str)):
        is_absolute = PurePosixPath(run).is_absolute()
        folders.add(
            _display(Path(run).parent, RUNS_DIR_MARK) if is_absolute else str(PurePosixPath(run).parent)
        )
    shown = [f"`{f}`" + (", outside the repository" if f == RUNS_DIR_MARK else "") for f in sorted(folders)]
    return ", ".join(shown) or "no run folder: no row is recorded yet"


def row_runs(records_dir: Path, runs_dir: Path) -> dict[str, Run]:
    """Each row's record, or (none yet) its run folder, which may say how far it trained."""
    runs = {name: Run.load(records_dir, name) for name in ROWS}
    return {name: run if run.done else Run.load(runs_dir, name) for name, run in runs.items()}


def render(records_dir: Path, runs_dir: Path, command: str, budget: str) -> str:
    runs = row_runs(records_dir, runs_dir)
    mnist, celeba = [runs[n] for n in MNIST_ROWS], [runs[n] for n in CELEBA_ROWS]
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = [
        "# Results",
        "",
        "<!-- generated by vaelab.results: rerun the command below instead of editing -->",
        "",
        f"Produced by `{command}` on {now}; this machine: {_machine()}.",
        f"Budget asked for: {budget}. Budget of the runs found: MNIST {_budget_found(mnist)}; "
        f"CelebA {_budget_found(celeba)}.",
        f"Every number below is read from the runs' own files (`metrics.json`, `eval/metrics.json`, "
        f"`.hydra/config.yaml`), kept for each row under `{_display(records_dir, RECORDS_DIR_MARK)}/<row>/` "
        "as copied from "
        f"its run folder (under {_recorded_from(list(runs.values()))}; see each "
        f"`{RECORD_SOURCE}`), except the rows marked published. Test NLL is "
        "the IWAE estimate of −log p(x) with k importance samples (an upper bound on the true NLL "
        "that tightens as k grows); −ELBO is the k = 1 bound.",
        "",
        "## MNIST (dynamically binarised, test NLL in nats)",
        "",
        *mnist_table(mnist),
        "",
        "Published rows:",
        "",
        *[
            f"- {p['row']}: {p['nll']:.2f} nats. {p['citation']}; budget: {p['budget']}."
            for p in PUBLISHED.values()
        ],
        "",
        "## CelebA 64x64 (the 10,000-face sample, bits/dim)",
        "",
        *celeba_table(celeba),
        "",
        "## What the targets say",
        "",
        *targets(runs),
        "",
    ]
    return "\n".join(out)


def _display(path: Path, outside: str = OUTSIDE_MARK) -> str:
    """A path relative to the checkout when inside it (the table and the records are committed),
    else ``outside``: never a machine's absolute path."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return outside


def run_display(run: Path) -> str:
    """A run folder as a record names it: relative to the checkout, else ``<runs-dir>/<row>``."""
    return _display(run, f"{RUNS_DIR_MARK}/{Path(run).name}")


# the command line's path options, and how each is named outside the checkout
PATH_OPTIONS = {
    "--runs-dir": RUNS_DIR_MARK,
    "--data-dir": DATA_DIR_MARK,
    "--celeba-root": "<celeba-root>",
    "--out": OUTSIDE_MARK,
    "--records-dir": RECORDS_DIR_MARK,
    "--readme": OUTSIDE_MARK,
}


def portable_argv(argv: list[str]) -> list[str]:
    """The command line as the table quotes it: each path option's value (and any other absolute
    path) relative to the checkout, or its mark (:data:`PATH_OPTIONS`) outside it."""
    out, mark = [], None
    for arg in argv:
        option, eq, value = arg.partition("=")
        if mark is not None:
            out.append(_display(Path(arg), mark))
            mark = None
        elif option in PATH_OPTIONS and eq:
            out.append(f"{option}={_display(Path(value), PATH_OPTIONS[option])}")
        elif arg in PATH_OPTIONS:
            out.append(arg)
            mark = PATH_OPTIONS[arg]
        else:
            out.append(_display(Path(arg)) if PurePosixPath(arg).is_absolute() else arg)
    return out


# -- running the rows ------------------------------------------------------------------------------
def _value(v) -> str:
    """A path or value as one Hydra override value."""
    text = str(v)
    return (
        text
        if re.fullmatch(r"[\w./@:+-]+", text)
        else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    )


def _data_args(name: str, args) -> list[str]:
    out = [f"paths.data_dir={_value(args.data_dir)}"]
    if name.startswith("celeba") and args.celeba_root:
        out.append(f"dataset.root={_value(args.celeba_root)}")
    return out


def train_command(name: str, args, resume: bool = False) -> list[str]:
    run = Path(args.runs_dir) / name
    cmd = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        f"experiment={experiment_of(name)}",
        f"trainer.max_epochs={epochs_of(name, args)}",
    ]
    cmd += [f"hydra.run.dir={_value(run)}", *_data_args(name, args), "callbacks.sample_quality=null"]
    if resume:
        cmd.append(f"ckpt_path={_value(run / 'checkpoints' / 'last.ckpt')}")
    return cmd


def eval_command(name: str, args) -> list[str]:
    run = Path(args.runs_dir) / name
    cmd = [
        sys.executable,
        str(ROOT / "src" / "eval.py"),
        f"ckpt_path={_value(run / 'checkpoints' / 'last.ckpt')}",
    ]
    k, n = budget_of(name, args)
    cmd.append(f"eval.k={k}")
    if n is not None:
        cmd.append(f"eval.n={n}")
    if name.startswith("celeba"):  # a 64×64×3 decode with a 10-logistic mixture holds ~30× an MNIST one
        cmd.append(f"eval.max_decodes={CELEBA_MAX_DECODES}")
    return [*cmd, "eval.quality=false", *_data_args(name, args)]


def _recorded_epochs(run: Run) -> int | None:
    trainer = (run.config or {}).get("trainer")
    return trainer.get("max_epochs") if isinstance(trainer, dict) else None


def _move_aside(path: Path) -> Path:
    i = 1
    while path.with_name(f"{path.name}.old-{i}").exists():
        i += 1
    target = path.with_name(f"{path.name}.old-{i}")
    path.rename(target)
    return target


def _subprocess(cmd: list[str], log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # append: Hydra's own file handler writes the job's log lines into the same file
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        return subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def budget_of(name: str, args) -> tuple[int, int | None]:
    """(k, n) of a row's evaluation: CelebA rows have their own (a conv decoder costs ~100× an MLP's)."""
    return (args.celeba_k, args.celeba_n) if name.startswith("celeba") else (args.k, args.n)


def start_from_shorter_run(name: str, args) -> None:
    """A longer row (:data:`CONTINUES`) not started yet begins as a copy of its source row's
    trained run (checkpoints and config; no metrics, no evaluation), which the runner then
    resumes up to the longer budget instead of training the first epochs again."""
    source = Run.load(args.runs_dir, CONTINUES.get(name, ""))
    target = Path(args.runs_dir) / name
    if name not in CONTINUES or target.exists() or source.train is None:
        return
    if not (source.path / "checkpoints" / "last.ckpt").is_file() or source.epochs >= epochs_of(name, args):
        return
    skip = shutil.ignore_patterns("metrics.json", "eval", "*.log")
    shutil.copytree(source.path, target, ignore=skip)
    record = target / ".hydra" / "config.yaml"  # the copy's own budget, so the runner resumes it
    budget = rf"\g<1>{epochs_of(name, args)}"
    record.write_text(re.sub(rf"^(\s*max_epochs: ){source.epochs}$", budget, record.read_text(), flags=re.M))


def run_row(name: str, args, index: str) -> bool:
    """Train (or resume) and evaluate one row unless finished; one line on stdout. False: it failed."""
    epochs = epochs_of(name, args)
    k, n = budget_of(name, args)
    start_from_shorter_run(name, args)
    run = Run.load(args.runs_dir, name)
    if run.finished(epochs, k, n):
        print(f"[{index}] {name}: finished ({_ep(epochs)}, k = {k}), skipped", flush=True)
        return True
    start = time.perf_counter()
    if not run.trained_for(epochs):
        resume = (
            run.train is None
            and (run.path / "checkpoints" / "last.ckpt").is_file()
            and _recorded_epochs(run) == epochs
        )
        moved = (
            f"(old folder moved to {_move_aside(run.path).name}) " if run.path.exists() and not resume else ""
        )
        doing = "resuming the interrupted training of" if resume else "training"
        print(f"[{index}] {name}: {moved}{doing} {_ep(epochs)} ...", end=" ", flush=True)
        if _subprocess(train_command(name, args, resume), run.path / "train.log"):
            print(f"training FAILED, see {run.path / 'train.log'}", flush=True)
            return False
        print("evaluating ...", end=" ", flush=True)
    else:
        print(f"[{index}] {name}: trained, evaluating with k = {k} ...", end=" ", flush=True)
    if _subprocess(eval_command(name, args), run.path / "eval" / "eval.log"):
        print(f"evaluation FAILED, see {run.path / 'eval' / 'eval.log'}", flush=True)
        return False
    done = Run.load(args.runs_dir, name)
    nll = None if done.eval is None else done.eval.get("nll_iwae")
    print(f"done in {wall(time.perf_counter() - start)}: test NLL {_num(nll)} nats (k = {k})", flush=True)
    return done.eval is not None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vaelab.results",
        description="Train and evaluate the results table's rows (those not finished yet), one at a "
        "time, then write the table (docs/results.md) from the runs' own files.",
    )
    p.add_argument("--runs-dir", type=Path, default=Path("outputs/results"), help="one folder per row")
    p.add_argument("--mnist-epochs", type=int, default=100, help="training epochs of the MNIST rows")
    p.add_argument("--celeba-epochs", type=int, default=30, help="training epochs of the CelebA rows")
    p.add_argument(
        "--long-epochs", type=int, default=200, help="epochs of mnist_vae_long (mnist_vae, continued)"
    )
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image for log p(x)")
    p.add_argument("--n", type=int, default=None, help="evaluate the first n test examples (default: all)")
    p.add_argument("--celeba-k", type=int, default=500, help="importance samples per CelebA test face")
    p.add_argument("--celeba-n", type=int, default=None, help="the first n CelebA test faces (default: all)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("VAELAB_DATA_DIR") or "data"),
        help="paths.data_dir, where MNIST/ lies (default: $VAELAB_DATA_DIR, else data)",
    )
    p.add_argument(
        "--celeba-root",
        type=Path,
        default=None,
        help="dataset.root of the CelebA rows, holding celeba/ (default: <data-dir>/celeba_sample, if there)",
    )
    p.add_argument(
        "--only", nargs="+", choices=ROWS, metavar="NAME", help=f"these rows only: {', '.join(ROWS)}"
    )
    p.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: record the evaluated runs there and rebuild the table",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("docs/results.md"),
        help="the markdown file written; the rows' records go to the folder of that name (docs/results/)",
    )
    p.add_argument(
        "--records-dir",
        type=Path,
        default=None,
        help="where each row's record (its run's metrics and config files) is kept (default: --out "
        "without its suffix, docs/results/)",
    )
    p.add_argument(
        "--replace-larger-records",
        action="store_true",
        help="let a run of a smaller budget (epochs, k, n) replace a row's record",
    )
    p.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="a README whose results block to rewrite (make results: README.md)",
    )
    args = p.parse_args(argv)
    args.runs_dir, args.data_dir = args.runs_dir.resolve(), args.data_dir.resolve()
    if args.records_dir is None:
        if not args.out.suffix:
            p.error(
                f"--out {args.out} has no suffix (e.g. .md), so the records folder beside it would "
                "be the same path; name the table with a suffix or give --records-dir"
            )
        args.records_dir = records_dir_of(args.out)
    if args.celeba_root is None and (args.data_dir / "celeba_sample").is_dir():
        args.celeba_root = args.data_dir / "celeba_sample"
    if args.celeba_root is not None:
        args.celeba_root = args.celeba_root.resolve()
    return args


def _budget(args) -> str:
    return (
        f"MNIST {_ep(args.mnist_epochs)}, k = {args.k}, test images n = {_n_text(args.n)}; CelebA "
        f"{_ep(args.celeba_epochs)}, k = {args.celeba_k}, test faces n = {_n_text(args.celeba_n)}"
    )


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def embed(readme: Path, table: str, source: Path) -> None:
    """Rewrite the README's block between the results markers with the table's sections (one
    level down), so the README shows the same numbers as docs/results.md and nothing typed."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    body = [("#" + line if line.startswith("## ") else line) for line in table.splitlines()[1:]]
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    block = "\n".join([README_START, f"<!-- copied from {source.name} by vaelab.results -->", *body])
    readme.write_text(f"{head}{block}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    failed = []
    if not args.table_only:
        names = [n for n in ROWS if not args.only or n in args.only]
        for i, name in enumerate(names, 1):
            if not run_row(name, args, f"{i}/{len(names)}"):
                failed.append(name)
    command = shlex.join(["python", "-m", "vaelab.results", *portable_argv(argv)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    said = record_finished(args.runs_dir, args.records_dir, args.replace_larger_records)
    print(f"records under {args.records_dir}:", *(said or ["no evaluated run found"]), sep="\n  ", flush=True)
    budget = "none (--table-only: see the runs' own budgets)" if args.table_only else _budget(args)
    table = render(args.records_dir, args.runs_dir, command, budget)
    args.out.write_text(table)
    if args.readme is not None and args.readme.is_file():
        embed(args.readme, table, args.out)
    print(f"table written to {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
