"""Checking and showing a composed run config, before anything heavy starts.

All value rules live in :data:`RULES`, one line per field, so a mistyped value is caught in
one place with one kind of message: the field, the bad value, what would be valid.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from vaelab.errors import UserError
from vaelab.likelihoods import LIKELIHOODS
from vaelab.nets import NETS


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


def one_of(path, options):
    return Rule(path, lambda v: v in options, "one of " + ", ".join(options), options[0])


RULES: tuple[Rule, ...] = (
    positive_int("latent_dim", "32"),
    Rule("seed", lambda v: v is None or _int(v), "a whole number or null", "42"),
    Rule("model.lr", lambda v: _num(v) and v > 0, "a number > 0", "1e-3"),
    Rule("model.weight_decay", lambda v: _num(v) and v >= 0, "a number ≥ 0", "0"),
    Rule("model.beta", lambda v: _num(v) and v >= 0, "a number ≥ 0", "1.0"),
    Rule("model.sigma", lambda v: _num(v) and v > 0, "a number > 0", "0.1"),
    Rule("model.kl_warmup_steps", lambda v: _int(v) and v >= 0, "a whole number ≥ 0", "0"),
    Rule("model.learn_sigma", lambda v: isinstance(v, bool), "true or false", "false"),
    one_of("model.likelihood", LIKELIHOODS),
    one_of("model.net", NETS),
    Rule(
        "model.hidden_dims",
        lambda v: isinstance(v, list | tuple) and len(v) > 0 and all(_int(h) and h > 0 for h in v),
        "a non-empty list of whole numbers > 0",
        "[400]",
    ),
    Rule(
        "model.channels",
        lambda v: isinstance(v, list | tuple) and len(v) > 0 and all(_int(h) and h > 0 for h in v),
        "a non-empty list of whole numbers > 0",
        "[32,64,128,256]",
    ),
    positive_int("dataset.batch_size", "128"),
    positive_int("dataset.eval_batch_size", "500"),
    positive_int("dataset.val_size", "5000"),
    Rule(
        "dataset.image_size",
        lambda v: _int(v) and v >= 8 and v % 2 == 0,
        "an even whole number ≥ 8",
        "64",
    ),
    Rule("dataset.crop_fraction", lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]", "0.83"),
    Rule("dataset.carve_fraction", lambda v: _num(v) and 0 < v < 0.5, "a number in (0, 0.5)", "0.05"),
    Rule(
        "trainer.max_epochs",
        lambda v: v is None or (_int(v) and v >= -1),
        "a whole number ≥ -1",
        "10",
    ),
    Rule("trainer.max_steps", lambda v: _int(v) and v >= -1, "a whole number ≥ -1", "-1"),
    positive_int("callbacks.image_grids.every_n_epochs", "1"),
)

_MISSING = object()


def _get(cfg: DictConfig, path: str):
    try:
        return OmegaConf.select(cfg, path, default=_MISSING, throw_on_missing=True)
    except InterpolationResolutionError as err:
        raise UserError(f"Config field {path} cannot be resolved: {err}") from err


def validate(cfg: DictConfig) -> None:
    """Raise :class:`UserError` naming the first bad field, its value and what is valid."""
    problems = []
    for rule in RULES:
        value = _get(cfg, rule.path)
        if value is _MISSING:
            continue
        if isinstance(value, DictConfig | list) or OmegaConf.is_list(value):
            value = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
        if not rule.ok(value):
            problems.append(
                f"{rule.path}={value!r} is invalid: it must be {rule.valid} "
                f"(e.g. {rule.path}={rule.example})."
            )
    problems += _combination_problems(cfg)
    if problems:
        raise UserError("Invalid config. " + " ".join(problems))


def _combination_problems(cfg: DictConfig) -> list[str]:
    out = []
    target = str(_get(cfg, "dataset._target_"))
    binarize = _get(cfg, "dataset.binarize")
    if _get(cfg, "model.likelihood") == "bernoulli" and "CelebA" in target and not binarize:
        out.append(
            "model.likelihood=bernoulli needs binary pixels, but CelebA is colour in [0, 1]: "
            "use model.likelihood=gaussian, or binarise with dataset.binarize=true."
        )
    return out


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
            body = OmegaConf.to_yaml(value, resolve=True).rstrip("\n").splitlines()
            pad = "    " if i == len(keys) - 1 else "│   "
            lines.append(f"{branch} {key}")
            lines += [pad + line for line in body]
        else:
            lines.append(f"{branch} {key}: {value}")
    return "\n".join(lines)
