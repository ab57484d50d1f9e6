"""Users' own code named in a recipe or on the command line, as ``"package.module:function"`` (a data factory,
a model factory, a callable teacher): imported here, once, with one error sentence naming the key."""

from __future__ import annotations

import importlib

from .errors import ConfigError, missing_pipeline


def import_object(spec: str, key: str):
    """Import ``"pkg.module:attr"``; a bad spec is a ConfigError naming ``key``."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"{key}: {spec!r} must look like 'package.module:function'.")
    mod_name, attr = spec.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        missing = missing_pipeline(e, f"{key}: {mod_name!r}")  # a user's module that imports torch, on the light install
        if missing is not None:
            raise missing from None
        raise ConfigError(f"{key}: cannot import {mod_name!r} ({e}); check the module name and PYTHONPATH.") from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise ConfigError(f"{key}: {mod_name!r} has no callable {attr!r}.")
    return obj
