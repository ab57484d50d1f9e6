"""A user's own ``nn.Module`` as a registered architecture: ``arch = "factory"``.

``params = { factory = "pkg.mod:build", kwargs = { ... }, checkpoint = "weights.pt" }``:
``build(**kwargs)`` returns the module (``input_shape`` and ``num_classes`` are passed too when
the function takes them); ``checkpoint``, if given, is a state dict loaded safely
(``weights_only=True``) and checked against the module's keys.
"""

from __future__ import annotations

import inspect

from torch import nn

from ..user_code import import_object
from ..errors import ConfigError
from .core import MODELS, load_checkpoint, mark_trained


def _factory_space(params: dict) -> dict | None:
    """Sizing knobs of a user's factory: its function's ``space`` attribute (keyword -> values to try), set as
    ``kwargs.<keyword>``; None when it has none."""
    fn = import_object(params["factory"], "student.params.factory") if params.get("factory") else None
    space = getattr(fn, "space", None)
    return None if space is None else {f"kwargs.{k}": v for k, v in dict(space).items()}


@MODELS.register("factory", help="your own nn.Module from a 'module:function' factory, plus an optional checkpoint",
                 space=_factory_space)
def user_factory(input_shape, num_classes: int, factory: str = "", kwargs: dict | None = None,
                 checkpoint: str | None = None) -> nn.Module:
    if not factory:
        raise ConfigError("params.factory: missing; set it to 'package.module:function' returning an nn.Module.")
    fn = import_object(factory, "params.factory")
    call = dict(kwargs or {})
    accepted = inspect.signature(fn).parameters
    if "input_shape" in accepted:
        call.setdefault("input_shape", tuple(input_shape))
    if "num_classes" in accepted:
        call.setdefault("num_classes", num_classes)
    try:
        model = fn(**call)
    except TypeError as e:
        raise ConfigError(f"params.kwargs: {factory} cannot be called with {sorted(call)} ({e}).") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"params.factory: {factory} returned {type(model).__name__}, not a torch.nn.Module.")
    if checkpoint:
        load_checkpoint(checkpoint, model, key="params.checkpoint")
        mark_trained(model, f"params.checkpoint {checkpoint}")
    return model
