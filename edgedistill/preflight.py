"""What a run checks before it touches the run folder, so a typo fails in seconds with its key (not after the
teacher has trained for an hour): registry names and parameters (:func:`check_names`, before any data is
read), then shapes and layer paths through the task (:func:`preflight`)."""

from __future__ import annotations


def check_names(recipe) -> None:
    """Architectures and their parameters, loss names and their parameters, against what each accepts: before
    any data is read (a typo fails in a second, not after the data set is listed)."""
    from .distill.losses.base import check_loss
    from .models.core import check_params
    from .student import student_spec

    check_params(recipe.teacher.arch, recipe.teacher.params, "teacher")
    arch, params, key = student_spec(recipe)
    check_params(arch, params, key)
    if recipe.student.size == "fit":  # a family with no search space cannot be sized: say so before any data is read
        from .sizing import search_space

        search_space(arch, params)
    for i, term in enumerate(recipe.distill.losses):
        check_loss(term.name, term.params, f"distill.losses[{i}]")


def check_runtime(task, target) -> None:
    """A target whose runtime names LiteRT needs a task the litert stage converts and the converter installed:
    said before any training, not when the litert stage is reached."""
    if "litert" not in target.runtimes:
        return
    from importlib.util import find_spec

    from .errors import ConfigError
    from .litert import INSTALL

    if not task.supports_litert:
        raise ConfigError(f"runtime: the target {target.name} asks for LiteRT, which the {task.name} task's models "
                          "(token inputs) do not convert to here; set runtime = \"onnxruntime\" in the target.")
    if find_spec("litert_torch") is None:
        raise ConfigError(f"runtime: the target {target.name} asks for LiteRT, whose converter is not installed; "
                          f"{INSTALL}, or set runtime = \"onnxruntime\" in the target.")


def preflight(recipe, task, splits) -> None:
    """Let the task build the recipe's models, teachers and losses once (without training) so a bad name,
    parameter or layer path fails in seconds with its key; the global RNG is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        task.preflight(recipe, splits)
