"""Read intermediate features by forward hooks at module paths, so users never edit model code."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..models.core import model_forward


def module_names(model: nn.Module) -> list[str]:
    """Every tappable module path of ``model`` (``""``, the root, excluded)."""
    return [name for name, _ in model.named_modules() if name]


def check_paths(model: nn.Module, paths: Iterable[str], key: str) -> None:
    """Reject module paths that do not exist, listing the valid ones."""
    valid = dict(model.named_modules())
    for p in paths:
        if p not in valid or not p:
            names = module_names(model)
            shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
            raise ConfigError(f"{key}: module path {p!r} does not exist in the model; valid paths are: {shown}.")


class Taps:
    """Forward hooks that store the outputs of the named modules on every forward.

    Use as a context manager so hooks are always removed::

        with Taps(model, ["features.3"]) as taps:
            logits = model(x)
            feats = taps.outputs  # {"features.3": tensor}
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]) -> None:
        self.model = model
        self.paths = list(dict.fromkeys(paths))
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "Taps":
        if not self.paths:  # the training loop enters it every step, mostly with nothing to tap
            return self
        modules = dict(self.model.named_modules())
        for p in self.paths:
            self._handles.append(modules[p].register_forward_hook(self._hook(p)))
        return self

    def _hook(self, path: str):
        def hook(_module, _inputs, output):
            self.outputs[path] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def collect(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tap dict a loss receives: ``logits`` plus every tapped feature, then cleared."""
        out = {"logits": logits, **self.outputs}
        self.outputs = {}
        return out


def dry_run_shapes(model: nn.Module, paths: Iterable[str], example) -> dict[str, torch.Size]:
    """One forward on a real input to read the feature shapes (for projection heads).

    The input goes to the model's device, so a model already on a GPU (a teacher shared between runs) works."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    if param is not None and isinstance(example, torch.Tensor):
        example = example.to(param.device)
    with torch.no_grad(), Taps(model, paths) as taps:
        logits = model_forward(model, example)
        shapes = {k: v.shape for k, v in taps.collect(logits).items()}
    model.train(was_training)
    return shapes
