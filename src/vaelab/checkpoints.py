"""Checkpoint files: loaded without running code, written atomically, checked against the model.

Loading uses ``torch.load(weights_only=True)``: the unpickler builds tensors, plain containers
and the few types in :data:`SAFE_GLOBALS` (OmegaConf configs and paths, which Lightning
checkpoints may hold as hyper-parameters), nothing else, so a crafted file cannot run code.
Every failure becomes a :class:`UserError` that says what the file is and what to use instead.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import re
import typing
import warnings
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

from vaelab.atomic import atomic_torch_save
from vaelab.errors import UserError
from vaelab.model.parts import as_tuples

SAFE_GLOBALS = [
    DictConfig,
    ListConfig,
    ContainerMetadata,
    Metadata,
    AnyNode,
    StringNode,
    IntegerNode,
    FloatNode,
    BooleanNode,
    typing.Any,
    collections.defaultdict,
    dict,
    list,
    tuple,
    int,
    float,
    str,
    bool,
    pathlib.PosixPath,
    pathlib.WindowsPath,
]

# Hyper-parameters that build the VAE, each part whole: a checkpoint only fits a model built with
# the same values (the objective, optimiser and schedule may change between runs).
STRUCTURE = ("image_shape", "latent_dims", "net", "top_net", "likelihood", "prior", "conditional")
ZIP_MAGIC, PICKLE_MAGIC = b"PK", b"\x80"  # torch.save's zip format; a legacy pickle (protocol ≥ 2)
USE_INSTEAD = "Use a .ckpt from a vaelab run's checkpoints/ folder (last.ckpt or the best one)."


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint dict at ``path``, loaded safely; :class:`UserError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist (or is not a file). {USE_INSTEAD}")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(SAFE_GLOBALS):
            warnings.simplefilter("ignore")  # torch's note on old pickle protocols
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # refused pickles; zip, EOF, key and decode errors: "not a checkpoint"
        refused = isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err)
        if refused and _head(path).startswith((ZIP_MAGIC, PICKLE_MAGIC)):
            raise UserError(_refused_message(path, str(err))) from err
        raise UserError(_not_a_checkpoint(path, err)) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(
            f"{path} is a PyTorch file but not a training checkpoint: it holds a "
            f"{type(ckpt).__name__}{_keys(ckpt)}, not a dict with a state_dict. {USE_INSTEAD}"
        )
    return ckpt


def _keys(obj) -> str:
    return f" with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else ""


def _refused_message(path: Path, detail: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", detail)
    refused = re.search(r"WeightsUnpickler error:\s*([^\n]+)", detail)
    if found:
        what = (
            f"it asks to build the Python object {found.group(1)}, which a checkpoint never needs and which"
        )
    else:
        reason = refused.group(1).strip() if refused else "an instruction it does not allow"
        what = f"it is a pickle that torch's safe loader refuses ({reason}); loading it unrestricted"
    return (
        f"{path} was not loaded: {what} could run arbitrary code. vaelab loads checkpoints with "
        "torch.load(weights_only=True), which accepts tensors, plain containers and OmegaConf "
        f"configs only. {USE_INSTEAD}"
    )


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _not_a_checkpoint(path: Path, err: Exception) -> str:
    head, size = _head(path), path.stat().st_size
    if not head:
        kind = "empty"
    elif head.startswith(ZIP_MAGIC):
        kind = "a zip archive torch cannot read, truncated or damaged: " + str(err).split(". ")[0].strip()
    elif head.startswith(PICKLE_MAGIC):
        kind = f"a pickle torch cannot read, truncated or damaged ({type(err).__name__})"
    else:
        kind = "neither a zip archive nor a pickle: another kind of file"
    return f"{path} is not a readable checkpoint ({size} bytes, {kind}). {USE_INSTEAD}"


def written_by_older_vaelab(hparams: dict) -> bool:
    """Whether checkpoint hyper-parameters come from the vaelab before models were composed from
    parts: one ``latent_dim`` (no ``latent_dims``) and parts named by strings (``net: mlp``)."""
    old_size = "latent_dim" in hparams and "latent_dims" not in hparams
    return old_size or any(isinstance(hparams.get(k), str) for k in ("net", "likelihood", "prior"))


def check_current_format(ckpt: dict, path: str | Path) -> None:
    """Raise :class:`UserError` for a checkpoint whose hyper-parameters this vaelab cannot rebuild
    into a model (call it before ``VAEModule(**ckpt["hyper_parameters"])``)."""
    saved = ckpt.get("hyper_parameters") or {}
    if not written_by_older_vaelab(saved):
        return
    shown = ", ".join(f"{k}={saved[k]!r}" for k in ("latent_dim", "net", "likelihood") if k in saved)
    raise UserError(
        f"Checkpoint {path} was written by an older vaelab, whose model hyper-parameters"
        f"{f' ({shown})' if shown else ''} this version cannot rebuild: a model is now composed "
        "from net, likelihood, prior and objective specs with latent_dims per stochastic layer. "
        "Retrain the model with this version (a fresh run, without ckpt_path), or resume or "
        "evaluate this checkpoint with the vaelab version that wrote it."
    )


def check_fits(ckpt: dict, model: torch.nn.Module, path: str | Path) -> None:
    """Raise :class:`UserError` unless ``ckpt`` was trained with ``model``'s structure."""
    check_current_format(ckpt, path)
    saved, wanted = ckpt.get("hyper_parameters") or {}, dict(getattr(model, "hparams", {}))
    keys = STRUCTURE
    diffs = [
        f"{k}={as_tuples(saved[k])} in the checkpoint but {as_tuples(wanted[k])} here"
        for k in keys
        if k in saved and k in wanted and as_tuples(saved[k]) != as_tuples(wanted[k])
    ]
    if diffs:
        raise UserError(
            f"Checkpoint {path} comes from an incompatible config: {'; '.join(diffs)}. Resume or "
            "evaluate it with the config of the run that wrote it (drop the overrides that change "
            "these), or start a fresh run without ckpt_path."
        )
    problems = _state_dict_mismatch(ckpt["state_dict"], model.state_dict())
    if problems:
        raise UserError(
            f"Checkpoint {path} does not fit this model ({problems}): it was written for a network "
            "of another shape. Resume or evaluate it with the config of the run that wrote it, or "
            "start a fresh run without ckpt_path."
        )


def _state_dict_mismatch(saved: dict, own: dict) -> str:
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    shapes = [
        f"{k} is {tuple(saved[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
        for k in own.keys() & saved.keys()
        if hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[0]}")
    if shapes:
        parts.append(f"{len(shapes)} of another shape, e.g. {sorted(shapes)[0]}")
    return "; ".join(parts)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic writes and safe loads (resume and test use it).

    Lightning's own save goes through a temp file in the system temp folder and a move, which
    is a copy when that folder is on another disk; this one renames within the target folder.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            raise UserError(
                f"Cannot write checkpoint {path} ({err.strerror or err}). The previous checkpoint "
                "there is intact. Free some space or make the folder writable (or point "
                "paths.log_dir elsewhere), then resume with ckpt_path=<that checkpoint>."
            ) from err

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")
