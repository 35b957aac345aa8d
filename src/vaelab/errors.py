"""User-facing errors: one clear paragraph instead of a traceback.

Code raises :class:`UserError` for anything a user can fix (a config value, a missing
file). The entry points turn it into a message on stderr and exit code 2;
``HYDRA_FULL_ERROR=1`` re-raises it for a full traceback when debugging.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import textwrap


class UserError(Exception):
    """A problem in the user's input, with the message that explains how to fix it."""


def format_error(message: str) -> str:
    # never break inside a word: paths and file names must stay copyable
    body = "\n".join(
        textwrap.fill(p, 100, break_long_words=False, break_on_hyphens=False)
        for p in str(message).split("\n")
    )
    return f"vaelab error: {body}"


@contextlib.contextmanager
def exit_on_user_error():
    try:
        yield
    except UserError as err:
        _report_and_exit(err, str(err))


def report_now(err: UserError) -> None:
    """Print ``err``'s paragraph at once and mark it said. For a process that may be killed
    before its error reaches the entry point: a DDP rank other than 0 that found a bad step is
    stopped by rank 0, which ends its ranks as soon as it stops itself."""
    print(format_error(str(err)), file=sys.stderr, flush=True)
    err.reported = True


def _report_and_exit(err: Exception, message: str) -> None:
    """Print the one-paragraph message (unless :func:`report_now` did) and exit 2; re-raise
    instead under HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    if not getattr(err, "reported", False):
        print(format_error(message), file=sys.stderr, flush=True)
    sys.exit(2)


# -- spellings from before the model was composed from parts ------------------------------
# old override (a key, or group=option) -> its new spelling; "{value}" stands for the value given
RENAMED = {
    "model=mlp": "net=mlp",
    "model=conv": "net=conv",
    "model.net": "net={value}",
    "model.hidden_dims": "net.hidden={value}",
    "model.channels": "net.channels={value}",
    "model.likelihood": "likelihood={value}",
    "model.sigma": "likelihood.sigma={value}",
    "model.learn_sigma": "likelihood=gaussian_learned",
    "model.beta": "objective.beta={value}",
    "model.kl_warmup_steps": "objective.warmup_steps={value}",
    "model.lr": "optimizer.lr={value}",
    "model.weight_decay": "optimizer.weight_decay={value}",
    "model.latent_dim": "latent_dim={value}",
}


def renamed(old: str, value: object = None) -> str | None:
    """One sentence naming the new spelling of an old override (``old``: a key such as
    ``model.lr``, or ``group=option`` such as ``model=conv``), or None when it was not renamed."""
    new = RENAMED.get(old)
    if new is None:
        return None
    if "=" in old:  # a group option: the whole override was renamed
        return f"{old} is the spelling from before the model was composed from parts; it is now {new}."
    given = f"{old}={value}" if value is not None else old
    spelled = new.format(value=value if value is not None else "…")
    new_key = new.split("=", 1)[0]
    if old == "model.learn_sigma" and str(value).lower() == "false":  # the fixed-σ default
        new = "likelihood=gaussian"
    if "{value}" not in new:
        return f"{given} is the old spelling: {old} is now {new}."
    return f"{given} is the old spelling: {old} is now {new_key}, so pass {spelled}."


# -- Hydra's own errors ------------------------------------------------------------------
# optional Hydra plugins: the config each one provides -> (what needs it, package, pyproject extra)
PLUGINS = {
    "hydra/sweeper/optuna": ("+hparams_search=optuna", "hydra-optuna-sweeper", "optuna"),
    "hydra/launcher/submitit_slurm": ("hydra/launcher=slurm", "hydra-submitit-launcher", "slurm"),
    "hydra/launcher/submitit_local": ("hydra/launcher=submitit_local", "hydra-submitit-launcher", "slurm"),
}


def missing_plugin(err: Exception) -> str | None:
    """The install hint when ``err`` is Hydra not finding the config of an optional plugin."""
    for config, (used_by, package, extra) in PLUGINS.items():
        if f"'{config}'" in str(err):
            return (
                f"{used_by} needs the Hydra plugin {package}, which is not installed. Install it into "
                f'the project\'s environment with pip install -e ".[{extra}]" (from the repository '
                "root), then run the command again."
            )
    return None


def describe_hydra_error(err: Exception) -> str:
    """One paragraph for a Hydra composition error: the bad override and what is valid."""
    from hydra.errors import MissingConfigException, OverrideParseException

    first_line = str(err).strip().splitlines()[0]
    plugin = missing_plugin(err)
    if plugin:
        return plugin
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, option = err.missing_cfg_file.rsplit("/", 1)
        moved = renamed(f"{group}={option}")
        if moved:
            now = f" ({group}= now chooses among {', '.join(err.options)})" if err.options else ""
            return moved[:-1] + now + "."
        valid = ", ".join(err.options) if err.options else "the files in conf/" + group
        return f"{first_line}: {group}={option} is not an option; valid options for {group} are {valid}."
    if isinstance(err, OverrideParseException):
        return (
            f"Cannot parse the override {err.override!r} ({first_line}). Overrides are key=value or "
            "group=option; quote a value that contains spaces or brackets, e.g. 'paths.data_dir=\"my data\"'."
        )
    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    if full_key and "not in struct" in str(cause) and renamed(full_key):
        given = re.search(rf"\+{re.escape(full_key)}=(.*)$", str(err), re.MULTILINE)
        return renamed(full_key, given.group(1).strip() if given else None)
    if full_key and "not in struct" in str(cause):
        parent = getattr(cause, "parent_node", None)
        keys = parent.keys() if hasattr(parent, "keys") else []
        known = ", ".join(sorted(str(k) for k in keys if not str(k).startswith("_")))
        where = full_key.rsplit(".", 1)[0] if "." in full_key else "the top level"
        return (
            f"{full_key} is not a key of the config, so it cannot be set. "
            + (f"Keys under {where}: {known}. " if known else "")
            + "Check the spelling; `--cfg job` prints the whole config."
        )
    return " ".join(f"{first_line} {cause or ''}".split())


def reword_hydra_errors() -> None:
    """Make Hydra's composition errors (unknown group option, unknown key, unparsable
    override) read like every other vaelab error: one paragraph, exit code 2, no traceback.

    Hydra reports these itself, before any vaelab code runs, from ``run_and_report``; wrapping
    that function is the one hook it offers. ``HYDRA_FULL_ERROR=1`` keeps Hydra's own report.
    """
    from hydra._internal import utils as hydra_utils

    original = hydra_utils.run_and_report
    if getattr(original, "vaelab_wrapped", False):
        return

    def run_and_report(func):
        return original(lambda: _composition_errors_exit(func))

    run_and_report.vaelab_wrapped = True
    hydra_utils.run_and_report = run_and_report


def _composition_errors_exit(func):
    from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException

    try:
        return func()
    except (ConfigCompositionException, OverrideParseException, SearchPathException) as err:
        _report_and_exit(err, describe_hydra_error(err))
