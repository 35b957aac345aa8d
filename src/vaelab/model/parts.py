"""Build a part from its ``_target_`` spec plus what only the model knows (shapes, sizes).

A spec says *which* part and its own options (``{"_target_": "...MLP", "hidden": [400]}``); the
model adds the context a part may need, such as ``image_shape`` or ``latent_dim``. A part's
constructor names the context it wants as parameters, and :func:`build` passes only those, so
a new part declares its needs in its own signature, with no registry or rule table elsewhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import ListConfig

from vaelab.errors import UserError


def target_of(spec: Mapping) -> type:
    """The class a spec names, or a :class:`UserError` saying what a spec must look like."""
    name = spec.get("_target_") if isinstance(spec, Mapping) else None
    if not name:
        raise UserError(
            f"{spec!r} is not a part spec: a network, likelihood, prior or objective is a mapping "
            "with a _target_ naming its class, e.g. {_target_: vaelab.model.nets.mlp.MLP, hidden: [400]} "
            "(see conf/net, conf/likelihood, conf/prior and conf/objective)."
        )
    try:
        return get_class(name)
    except Exception as err:  # ImportError, AttributeError, "not a class"
        why = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(
            f"_target_: {name} cannot be imported ({why}). Name a class by its full module path, "
            "as the YAML files under conf/net, conf/likelihood, conf/prior and conf/objective do."
        ) from err


def accepted_keys(target) -> set[str] | None:
    """Keyword names ``target`` takes; None when it takes any (``**kwargs`` passed elsewhere).

    vaelab's own classes pass ``**kw`` up to their base class, so those are followed up the MRO.
    """
    if not isinstance(target, type):
        chain = [target]
    else:
        chain = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
    names: set[str] = set()
    for fn in chain:
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names - {"self"}
        if not getattr(target, "__module__", "").startswith("vaelab."):
            return None
    return None


def build(spec: Mapping, **context: Any) -> Any:
    """Instantiate ``spec``, adding the ``context`` values its class's constructor takes.

    A spec may repeat a context value but not contradict it (a prior's ``latent_dim`` is the
    model's top layer, whatever the YAML says). Errors
    raised by the part's own checks (:class:`UserError`) pass through unchanged; an unknown
    option gets a message that lists the valid ones.
    """
    cls = target_of(spec)
    wanted = accepted_keys(cls)
    options = {k: v for k, v in spec.items() if not k.startswith("_")}
    unknown = [] if wanted is None else sorted(set(options) - wanted)
    if unknown:
        valid = sorted(wanted - set(context))
        raise UserError(
            f"{spec['_target_']} has no option {', '.join(unknown)}; its options are "
            f"{', '.join(valid) or 'none'}. Fix the spelling in its YAML or on the command line."
        )
    clash = [k for k in context if k in options and as_tuples(options[k]) != as_tuples(context[k])]
    if clash:
        given = ", ".join(f"{k}={options[k]!r} (the model's is {context[k]!r})" for k in clash)
        raise UserError(
            f"{spec['_target_']}: {given}. The model decides this value; drop it from the part's spec."
        )
    extra = {k: v for k, v in context.items() if (wanted is None or k in wanted) and k not in options}
    try:
        return instantiate(dict(spec), **extra, _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def as_tuples(value):
    """Lists, tuples and OmegaConf lists as tuples, nested too: a YAML list, a model's tuple and a
    checkpoint's stored list compare equal when they hold the same values."""
    if isinstance(value, ListConfig):
        value = list(value)
    return tuple(as_tuples(v) for v in value) if isinstance(value, list | tuple) else value
