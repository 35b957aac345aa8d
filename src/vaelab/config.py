"""Checking and showing a composed run config, before anything heavy starts.

All value rules live in :data:`RULES`, one line per field, so a mistyped value is caught in
one place with one kind of message: the field, the bad value, what would be valid. Keys a
group's ``_target_`` does not accept, and combinations that cannot work together, are
checked here too, so no bad input reaches a constructor and comes back as a traceback.
"""

from __future__ import annotations

import difflib
import logging
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from vaelab.data.base import SPLITS
from vaelab.errors import UserError, renamed
from vaelab.expost import COVARIANCES, SAMPLERS
from vaelab.model.parts import accepted_keys


def _num(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class Rule:
    path: str
    ok: Callable[[object], bool]
    valid: str  # what a valid value looks like, for the message
    example: str


def positive_int(path, example="1"):
    return Rule(path, lambda v: _int(v) and v > 0, "a whole number > 0", example)


def whole(path, low: int, example: str, nullable: bool = False) -> Rule:
    """A whole number ≥ ``low`` (or null)."""
    valid = f"a whole number ≥ {low}" + (" or null" if nullable else "")
    return Rule(path, lambda v: (nullable and v is None) or (_int(v) and v >= low), valid, example)


def number(path, example, low=0.0, high=None, include_low=False, nullable=False) -> Rule:
    """A real number above ``low`` (or at least ``low``), at most ``high`` (or null)."""

    def ok(v):
        if nullable and v is None:
            return True
        return _num(v) and (v >= low if include_low else v > low) and (high is None or v <= high)

    bounds = (
        f"{'≥' if include_low else '>'} {low:g}"
        if high is None
        else f"in {'[' if include_low else '('}{low:g}, {high:g}]"
    )
    return Rule(path, ok, f"a number {bounds}" + (" or null" if nullable else ""), example)


def one_of(path, options, example=None):
    shown = ", ".join(str(o) for o in options)
    return Rule(path, lambda v: v in options, "one of " + shown, str(example or options[0]))


def boolean(path, example="false"):
    return Rule(path, lambda v: isinstance(v, bool), "true or false", example)


def text(path, example, nullable=False):
    valid = "a non-empty string" + (" or null" if nullable else "")
    return Rule(path, lambda v: (nullable and v is None) or (isinstance(v, str) and v != ""), valid, example)


def int_list(path, example):
    return Rule(
        path,
        lambda v: isinstance(v, list | tuple) and len(v) > 0 and all(_int(h) and h > 0 for h in v),
        "a non-empty list of whole numbers > 0",
        example,
    )


def batch_limit(path, example="1.0"):
    """Lightning's limit_*_batches / overfit_batches: a fraction in [0, 1] or a batch count ≥ 0."""
    return Rule(
        path,
        lambda v: (_int(v) and v >= 0) or (_num(v) and 0 <= v <= 1),
        "a fraction in [0.0, 1.0] or a whole number of batches ≥ 0",
        example,
    )


def _devices_ok(v) -> bool:
    if v == "auto" or (_int(v) and (v > 0 or v == -1)):
        return True
    if isinstance(v, list | tuple):
        return len(v) > 0 and all(_int(d) and d >= 0 for d in v)
    parts = [p.strip() for p in v.split(",")] if isinstance(v, str) else []
    return bool(parts) and all(p.isdigit() or p == "-1" for p in parts)


def _strategy_ok(v) -> bool:
    from lightning.pytorch.strategies import StrategyRegistry

    return v == "auto" or v in StrategyRegistry.available_strategies()


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
PRECISION_ALIASES = (32, 16, 64, "32", "16", "64", "bf16", "transformer-engine", "transformer-engine-float16")

RULES: tuple[Rule, ...] = (
    positive_int("latent_dim", "32"),
    Rule("seed", lambda v: v is None or _int(v), "a whole number or null", "42"),
    boolean("test", "true"),
    boolean("print_config", "false"),
    text("ckpt_path", "last", nullable=True),
    Rule("threads", lambda v: v == "auto" or (_int(v) and v > 0), "auto or a whole number > 0", "auto"),
    # -- model (each part's own options are checked by the part itself) ------------
    boolean("model.conditional"),
    boolean("model.compile"),
    boolean("model.channels_last"),
    # the parts' most-set options, named as typed on the command line (each part also checks
    # its own options when it is built; these catch a bad value before anything is built)
    number("optimizer.lr", "1e-3"),
    number("optimizer.weight_decay", "0.0", include_low=True),
    number("likelihood.sigma", "0.1"),
    number("objective.beta", "1.0", include_low=True),
    whole("objective.warmup_steps", 0, "1000"),
    Rule(
        "net.hidden",
        lambda v: isinstance(v, list | tuple) and all(_int(h) and h > 0 for h in v),
        "a list of whole numbers > 0 (the hidden layers' widths)",
        "[400]",
    ),
    int_list("net.channels", "[32,64,128,256]"),
    # -- dataset ------------------------------------------------------------------
    text("dataset.root", "/path/to/data"),
    text("dataset.cache_dir", "~/.cache/vaelab"),
    positive_int("dataset.batch_size", "128"),
    positive_int("dataset.eval_batch_size", "500"),
    positive_int("dataset.val_size", "5000"),
    boolean("dataset.binarize"),
    boolean("dataset.dequantize", "true"),
    boolean("dataset.download", "true"),
    Rule("dataset.seed", lambda v: v is None or _int(v), "a whole number or null", "42"),
    Rule(
        "dataset.image_size",
        lambda v: _int(v) and v >= 8 and v % 2 == 0,
        "an even whole number ≥ 8",
        "64",
    ),
    number("dataset.crop_fraction", "0.83", high=1),
    Rule("dataset.carve_fraction", lambda v: _num(v) and 0 < v < 0.5, "a number in (0, 0.5)", "0.05"),
    whole("dataset.decode_workers", 1, "4", nullable=True),
    Rule("dataset.on_device", lambda v: v == "auto" or isinstance(v, bool), "auto, true or false", "auto"),
    number("dataset.device_memory_fraction", "0.5", high=1),
    # -- trainer ------------------------------------------------------------------
    one_of("trainer.accelerator", ACCELERATORS),
    Rule("trainer.devices", _devices_ok, "auto, -1 (all), a whole number > 0 or a list of device ids", "1"),
    positive_int("trainer.num_nodes", "1"),
    Rule(
        "trainer.strategy",
        _strategy_ok,
        "auto, ddp, ddp_spawn, fsdp, deepspeed or another Lightning strategy",
        "auto",
    ),
    Rule(
        "trainer.precision",
        lambda v: v in PRECISIONS + PRECISION_ALIASES,
        "one of " + ", ".join(PRECISIONS),
        "32-true",
    ),
    whole("trainer.min_epochs", 0, "1", nullable=True),
    whole("trainer.max_epochs", -1, "10", nullable=True),  # -1 only with max_steps: see below
    whole("trainer.max_steps", -1, "-1"),
    whole("trainer.min_steps", 0, "0", nullable=True),
    whole("trainer.check_val_every_n_epoch", 1, "1", nullable=True),
    Rule(
        "trainer.val_check_interval",
        lambda v: v is None or (_int(v) and v > 0) or (_num(v) and 0 < v <= 1),
        "a fraction in (0.0, 1.0], a whole number of batches > 0 or null",
        "1.0",
    ),
    positive_int("trainer.log_every_n_steps", "50"),
    Rule(
        "trainer.deterministic",
        lambda v: v is None or isinstance(v, bool) or v == "warn",
        "true, false or warn",
        "true",
    ),
    batch_limit("trainer.limit_train_batches"),
    batch_limit("trainer.limit_val_batches"),
    batch_limit("trainer.limit_test_batches"),
    batch_limit("trainer.overfit_batches", "0"),
    number("trainer.gradient_clip_val", "1.0", include_low=True, nullable=True),
    one_of("trainer.gradient_clip_algorithm", ("norm", "value")),
    positive_int("trainer.accumulate_grad_batches", "1"),
    whole("trainer.num_sanity_val_steps", -1, "2", nullable=True),
    boolean("trainer.sync_batchnorm"),
    Rule("trainer.benchmark", lambda v: v is None or isinstance(v, bool), "true, false or null", "false"),
    boolean("trainer.detect_anomaly"),
    # -- callbacks ----------------------------------------------------------------
    whole("callbacks.model_checkpoint.save_top_k", -1, "1"),
    one_of("callbacks.model_checkpoint.mode", ("min", "max")),
    Rule(
        "callbacks.model_checkpoint.save_last",
        lambda v: v in (True, False, None, "link"),
        "true, false or link (runs ignore it: last.ckpt is written by callbacks.resume_checkpoints)",
        "false",
    ),
    positive_int("callbacks.image_grids.every_n_epochs", "1"),
    positive_int("callbacks.image_grids.n_reconstructions", "32"),
    positive_int("callbacks.image_grids.n_samples", "64"),
    whole("callbacks.image_grids.n_interpolations", 0, "4"),
    whole("callbacks.image_grids.interpolation_steps", 2, "10"),
    whole("callbacks.image_grids.seed", 0, "0"),
    positive_int("callbacks.sample_quality.every_n_epochs", "1"),
    whole("callbacks.sample_quality.n", 4, "1000"),  # precision/recall: 3 neighbours + itself
    whole("callbacks.sample_quality.seed", 0, "0"),
    positive_int("callbacks.sample_quality.judge_epochs", "4"),
    whole("callbacks.progress_bar.refresh_rate", 0, "10"),
    whole("callbacks.model_summary.max_depth", -1, "2"),
    whole("callbacks.resume_checkpoints.every_n_steps", 0, "500"),
    number("callbacks.thread_policy.every_n_seconds", "5"),
    positive_int("callbacks.result_figure.n_images", "16"),
    positive_int("callbacks.result_figure.n_samples", "16"),
    positive_int("callbacks.result_figure.per_row", "8"),
    number("callbacks.result_figure.sample_temperature", "1.0"),
    whole("callbacks.result_figure.expost_components", 0, "50"),
    one_of("callbacks.result_figure.expost_covariance", COVARIANCES),
    positive_int("callbacks.result_figure.expost_codes", "10000"),
    whole("callbacks.image_grids.expost_components", 0, "10"),
    positive_int("callbacks.image_grids.expost_codes", "2000"),
    # -- evaluation (conf/eval.yaml; absent from training configs, so skipped there) ---
    one_of("eval.split", SPLITS),
    positive_int("eval.k", "100"),
    whole("eval.n", 1, "1000", nullable=True),
    positive_int("eval.batch_size", "100"),
    positive_int("eval.max_decodes", "2000"),
    number("eval.active_threshold", "0.01", include_low=True),
    boolean("eval.quality", "true"),
    whole("eval.quality_n", 4, "5000"),
    whole("eval.judge_seed", 0, "0"),
    positive_int("eval.judge_epochs", "4"),
    whole("eval.export_samples", 0, "10000"),
    whole("eval.expost_components", 0, "10"),
    one_of("eval.expost_covariance", COVARIANCES),
    positive_int("eval.expost_codes", "10000"),
    boolean("eval.expost_refit", "false"),
    one_of("eval.sampler", SAMPLERS),
    number("figures.sample_temperature", "1.0"),
    number("figures.traversal_quantile", "0.05", include_low=True, high=0.49),
    positive_int("figures.n_images", "16"),
    positive_int("figures.n_samples", "16"),
    positive_int("figures.per_row", "8"),
    # -- paths --------------------------------------------------------------------
    text("paths.data_dir", "/path/to/data"),
    text("paths.cache_dir", "~/.cache/vaelab"),
    text("paths.log_dir", "outputs"),
)

_MISSING = object()
HYDRA_KEYS = {"_target_", "_convert_", "_recursive_", "_partial_", "_args_"}
LIST_ALL_KEYS_UP_TO = 16  # longer key lists (the Trainer's ~45) get a "did you mean" instead


def _get(cfg: DictConfig, path: str):
    try:
        return OmegaConf.select(cfg, path, default=_MISSING, throw_on_missing=True)
    except InterpolationResolutionError as err:
        raise UserError(f"Config field {path} cannot be resolved: {err}") from err
    except MissingMandatoryValue as err:
        raise UserError(f"Config field {path} is required but not set: pass {path}=<value>.") from err


def validate(cfg: DictConfig, hardware: bool = True) -> None:
    """Raise :class:`UserError` naming every bad field, its value and what is valid.
    ``hardware=False``: skip whether this machine has the trainer's GPUs (an evaluation reads a
    run's config, trained elsewhere, but uses ``eval.device``, not the trainer)."""
    problems = []
    for rule in RULES:
        value = _get(cfg, rule.path)
        if value is _MISSING:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_object(value)
        if not rule.ok(value):
            problems.append(
                f"{rule.path}={value!r} is invalid: it must be {rule.valid} "
                f"(e.g. {rule.path}={rule.example})."
            )
    problems += _unknown_key_problems(cfg)
    problems += _combination_problems(cfg)
    problems += _hardware_problems(cfg) if hardware else []
    if problems:
        raise UserError("Invalid config. " + " ".join(problems))


# -- keys the target does not take ---------------------------------------------------
def _instantiated_nodes(cfg: DictConfig) -> Iterator[tuple[str, DictConfig]]:
    """(path, node) of every config node that becomes an object through its ``_target_``."""
    candidates = [(g, cfg.get(g)) for g in ("dataset", "model", "trainer", "logger", *PART_GROUPS)]
    callbacks = cfg.get("callbacks")
    if isinstance(callbacks, DictConfig):
        candidates += [(f"callbacks.{name}", node) for name, node in callbacks.items_ex(resolve=False)]
    for path, node in candidates:
        if isinstance(node, DictConfig) and "_target_" in node:
            yield path, node


def _unknown_key_problems(cfg: DictConfig) -> list[str]:
    out = []
    for path, node in _instantiated_nodes(cfg):
        target_name = node.get("_target_")
        try:
            target = _import_quietly(target_name)
        except Exception as err:  # any import failure is the same user-facing problem
            out.append(f"{path}._target_={target_name!r} cannot be imported ({_root_cause(err)}).")
            continue
        valid = accepted_keys(target)
        if valid is None:
            continue
        valid |= set(SCHEDULER_KEYS) if path == "scheduler" else set()
        for key in sorted(set(node.keys()) - valid - HYDRA_KEYS):
            moved = renamed(f"{path}.{key}", _get(cfg, f"{path}.{key}"))
            out.append(
                moved or f"{path}.{key} is not a setting of {target_name}: {_valid_keys_hint(key, valid)}"
            )
    return out


def _import_quietly(dotted: str):
    """``hydra.utils.get_object`` without its error log line: the message here says it all."""
    hydra_log = logging.getLogger("hydra.utils")
    was, hydra_log.disabled = hydra_log.disabled, True
    try:
        return get_object(dotted)
    finally:
        hydra_log.disabled = was


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ or err.__context__:
        err = err.__cause__ or err.__context__
    return err


def _valid_keys_hint(key: str, valid: set[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(valid), n=3)
    if len(valid) <= LIST_ALL_KEYS_UP_TO:
        hint = "valid keys are " + ", ".join(sorted(valid)) + "."
        return (f"did you mean {' or '.join(close)}? " if close else "") + hint
    if close:
        return f"did you mean {' or '.join(close)}?"
    return "check the spelling (`--cfg job` prints every key of the composed config)."


# -- the model's parts ----------------------------------------------------------------
PART_GROUPS = ("net", "likelihood", "prior", "objective", "optimizer", "scheduler")
SCHEDULER_KEYS = ("interval", "frequency", "monitor")  # how Lightning steps it, not the scheduler's own


def _part_spec_problems(cfg: DictConfig) -> list[str]:
    """model.<part> must stay a spec (a mapping with _target_): ``model.likelihood=bernoulli``
    (the spelling before parts were groups) would replace it by a string."""
    out = []
    for key in (*PART_GROUPS, "top_net"):
        value = _get(cfg, f"model.{key}")
        if value is _MISSING or value is None and key in ("scheduler", "top_net"):
            continue
        if not (OmegaConf.is_dict(value) and "_target_" in value):
            group = "net" if key == "top_net" else key
            shown = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
            moved = renamed(f"model.{key}", shown) if isinstance(shown, str) else None
            out.append(
                moved
                or f"model.{key}={value!r} is not a {group} spec: parts are chosen with their own config "
                f"group now, {group}=<option> (the files in conf/{group}), and set with {group}.<option>=…"
            )
    return out


# -- values that are fine alone but not together ---------------------------------------
def _combination_problems(cfg: DictConfig) -> list[str]:
    out = []
    out += _part_spec_problems(cfg)
    likelihood = str(_get(cfg, "likelihood._target_"))
    celeba = "CelebA" in str(_get(cfg, "dataset._target_"))
    if likelihood.endswith(".Bernoulli") and celeba and _get(cfg, "dataset.binarize") is not True:
        out.append(
            "likelihood=bernoulli needs binary pixels, but CelebA is colour in [0, 1]: use likelihood="
            "gaussian (or gaussian_learned, logistic_mixture), or binarise with dataset.binarize=true."
        )
    max_epochs, max_steps = _get(cfg, "trainer.max_epochs"), _get(cfg, "trainer.max_steps")
    if max_epochs == -1 and not (_int(max_steps) and max_steps > 0):
        out.append(
            f"trainer.max_epochs=-1 (no epoch limit) needs a step limit, but trainer.max_steps={max_steps}: "
            "set trainer.max_steps to a whole number > 0, or trainer.max_epochs to a whole number ≥ 0."
        )
    callbacks = [
        n
        for n in ("model_checkpoint", "resume_checkpoints")
        if _get(cfg, f"callbacks.{n}") not in (None, _MISSING)
    ]
    if _get(cfg, "trainer.enable_checkpointing") is False and callbacks:
        out.append(
            "trainer.enable_checkpointing=false conflicts with the checkpoint callbacks: to train "
            "without checkpoints, also set " + " and ".join(f"callbacks.{n}=null" for n in callbacks) + "."
        )
    min_epochs = _get(cfg, "trainer.min_epochs")
    if _int(min_epochs) and _int(max_epochs) and 0 <= max_epochs < min_epochs:
        out.append(
            f"trainer.min_epochs={min_epochs} is more than trainer.max_epochs={max_epochs}: "
            "lower trainer.min_epochs or raise trainer.max_epochs."
        )
    return out


# -- what the machine cannot do -----------------------------------------------------------
GPU_ACCELERATORS = ("gpu", "cuda")


def _gpus_asked(devices) -> int:
    """GPUs a ``trainer.devices`` value needs at least: 3 → 3, [0, 2] or "0,2" → 2, -1/auto → 1."""
    if _int(devices):
        return max(devices, 1)
    if isinstance(devices, list | tuple):
        return len(devices)
    parts = [p for p in str(devices).split(",") if p.strip() not in ("", "-1", "auto")]
    return max(len(parts), 1)


def _hardware_problems(cfg: DictConfig) -> list[str]:
    """A GPU trainer on a machine whose torch sees no CUDA device, or fewer than it asks for:
    Lightning would stop with a bare MisconfigurationException further down."""
    accelerator = _get(cfg, "trainer.accelerator")
    if accelerator not in GPU_ACCELERATORS:
        return []
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = _gpus_asked(_get(cfg, "trainer.devices"))
    if found >= wanted:
        return []
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    have = f"only {found} CUDA GPU(s)" if found else "no CUDA GPU"
    return [
        f"trainer.accelerator={accelerator} (trainer=gpu, ddp or multinode) asks for {wanted} GPU(s), but "
        f"this machine has {have} that torch {torch.__version__} ({build} build) can use. Train on the "
        "CPU with trainer=cpu (or trainer=default, which picks a GPU when there is one), use "
        "trainer=ddp_cpu for the multi-process path without GPUs, or lower trainer.devices."
    ]


def _with_group_links(cfg: DictConfig, value: DictConfig):
    """``value`` resolved, except entries that are a whole top-level group (the model's
    ``net: ${net}``, ...): those stay ``${net}``, so the tree shows each part once, in its group."""
    shown = OmegaConf.to_container(value, resolve=True)
    if isinstance(shown, dict):
        for key, raw in OmegaConf.to_container(value, resolve=False).items():
            group = raw[2:-1] if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") else None
            if group in cfg and OmegaConf.is_config(cfg[group]):
                shown[key] = raw
    return shown


def config_tree(
    cfg: DictConfig, first=("dataset", "model", "trainer", "callbacks", "logger", "paths")
) -> str:
    """The composed config as an indented tree, the main groups first."""
    keys = [k for k in first if k in cfg] + [k for k in cfg if k not in first]
    lines = ["CONFIG"]
    for i, key in enumerate(keys):
        branch = "└──" if i == len(keys) - 1 else "├──"
        value = cfg[key]
        if OmegaConf.is_config(value):
            body = OmegaConf.to_yaml(_with_group_links(cfg, value)).rstrip("\n").splitlines()
            pad = "    " if i == len(keys) - 1 else "│   "
            lines.append(f"{branch} {key}")
            lines += [pad + line for line in body]
        else:
            lines.append(f"{branch} {key}: {value}")
    return "\n".join(lines)
