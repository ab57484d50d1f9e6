"""What a pipeline stage is: ``Stage``, the ``@stage`` decorator that registers one, and the ``RunContext`` it
reads. A leaf of the pipeline package: the runner and the built-in stages import it, it imports neither.

A stage declares, once, in its decorator: its folder, the recipe sections it reads (``"target"`` is the
resolved device target), the stages whose outputs it reads, and the ONNX models it writes. Its outputs are
every file in its folder (its resume checkpoints aside), so they are never listed twice. While a stage runs,
``ctx.recipe`` lets it read only the sections it declared: reading another one is an error on every run,
so a declaration cannot fall behind the code and leave a stale stage skipped as unchanged.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import StageError
from ..recipe import Recipe
from ..registry import Registry
from ..targets import Target

ALWAYS_READ = ("seed", "task")  # in every stage's inputs hash, so any stage may read them


@dataclass(frozen=True)
class ModelFile:
    """A model file (.onnx or .tflite) a stage writes: the name the verify, bench and report stages give it, its file in the
    stage's folder, and what it is."""

    name: str
    file: str
    role: str        # "teacher" or "student"
    precision: str   # "fp32" or "int8"

    @property
    def runtime(self) -> str:
        """The runtime its file is for (:func:`edgedistill.litert.runtime_of`)."""
        from ..litert import runtime_of

        return runtime_of(self.file)


@dataclass
class Stage:
    name: str
    dir: str
    sections: tuple[str, ...]          # recipe sections (or "section.key") it reads; "target": the resolved target
    deps: tuple[str, ...]              # stages whose outputs it reads
    fn: Callable[["RunContext"], None]
    models: tuple[ModelFile, ...] = ()
    trains: bool = False               # under torchrun every rank runs it (rank 0 alone runs the others)
    # what the later stages read instead of the recipe once this stage has run: resolves(recipe, its folder)
    resolves: Optional[Callable[[Recipe, Path], Recipe]] = None


STAGES: Registry[Stage] = Registry("stage")


def stage(name: str, dir: str, sections=(), deps=(), models=(), trains: bool = False, resolves=None):
    """Register a pipeline stage; stages run in the order they are registered. ``resolves(recipe, stage folder)``
    gives the recipe the later stages read once this one has run (the size stage fills in the student's params):
    their inputs hashes see it, so a different choice re-runs them."""
    def deco(fn):
        STAGES.register(name, help=(fn.__doc__ or "").strip().split("\n")[0])(
            Stage(name, dir, tuple(sections), tuple(deps), fn, tuple(models), trains, resolves))
        return fn
    return deco


def model_files() -> dict[str, tuple[Stage, ModelFile]]:
    """Every ONNX model the stages write, by name: the teacher, the FP32 student, then the compressed students
    in the order of the stages that write them (the bench compares each with the first)."""
    found = [(s, m) for s in STAGES.in_order() for m in s.models]
    return {m.name: (s, m) for s, m in sorted(found, key=lambda sm: (sm[1].role != "teacher", sm[1].precision != "fp32"))}


def resolved_recipe(recipe: Recipe, run_dir: Path, upto: Stage) -> Recipe:
    """The recipe ``upto`` reads: the user's, as the stages before it resolve it (:func:`stage`'s ``resolves``)
    from their folders in ``run_dir``."""
    for s in STAGES.in_order():
        if s is upto:
            break
        if s.resolves is not None:
            recipe = s.resolves(recipe, Path(run_dir) / s.dir)
    return recipe


class _RecipeView:
    """The recipe (or one of its sections, ``where``) as the running stage may read it: the sections it declares
    (a dotted name such as ``distill.device`` declares one key of a section), the seed and the task."""

    def __init__(self, obj, stage: Stage, where: str = "") -> None:
        self._obj, self._stage, self._where = obj, stage, where

    def __getattr__(self, key: str):
        dotted = f"{self._where}{key}"
        if (not self._where and key in ALWAYS_READ) or dotted in self._stage.sections:
            return getattr(self._obj, key)
        if any(s.startswith(dotted + ".") for s in self._stage.sections):
            return _RecipeView(getattr(self._obj, key), self._stage, dotted + ".")
        if key in {f.name for f in dataclasses.fields(self._obj)} or key == "to_dict":
            raise StageError(f"the {self._stage.name} stage reads recipe.{dotted} but does not declare it in its "
                             f"sections ({', '.join(self._stage.sections) or 'none'}); add it to its @stage(...).")
        return getattr(self._obj, key)


class RunContext:
    """What a running stage reads: the recipe (its declared sections), the target, the run folder, the data."""

    def __init__(self, recipe: Recipe, target: Target, run_dir: Path, trust_checkpoint: bool = False,
                 log: Optional[Callable[[str], None]] = None) -> None:
        self._recipe, self._target, self.run_dir = recipe, target, Path(run_dir)
        self._given = recipe  # the user's recipe, before any stage resolves it (see resolve)
        self.trust_checkpoint = trust_checkpoint  # full unpickling of the user's teacher checkpoint (--trust-checkpoint)
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.data_cache: Optional[Path] = None  # where decoded samples are kept (data.cache_decoded), once the folder is ours
        self.stage: Optional[Stage] = None      # the stage running now: what it may read
        self.scratch: Optional[Path] = None     # a rank other than 0 writes its own stage's files here, not in run_dir
        self._splits, self._cached, self._task = None, False, None

    @property
    def recipe(self):
        """The recipe, limited to the running stage's declared sections (the whole recipe between stages)."""
        return self._recipe if self.stage is None else _RecipeView(self._recipe, self.stage)

    def resolve(self, upto: Stage) -> Recipe:
        """Make the recipe the one ``upto`` reads (:func:`resolved_recipe` of the user's); returns it."""
        self._recipe = resolved_recipe(self._given, self.run_dir, upto)
        return self._recipe

    @property
    def target(self) -> Target:
        self._require("target")
        return self._target

    @property
    def task(self):
        """The recipe's task (see :mod:`edgedistill.tasks`): every stage asks it how, never "which kind"."""
        if self._task is None:
            from ..tasks import get_task

            self._task = get_task(self._recipe.task, self.run_dir)
        return self._task

    @property
    def splits(self):
        """The recipe's data: file listings and labels only; samples are read a batch at a time by the stages.
        Once the run folder is held (``data_cache`` set), the first stage to ask decodes what
        ``data.cache_decoded`` keeps; preflight and skipped stages decode nothing."""
        self._require("data")
        if self._splits is None:
            self._splits = self.task.load_data(self._recipe.data, self._recipe.seed)
        if self.data_cache is not None and not self._cached:
            from ..data.decoded_cache import cache_splits

            self._splits, self._cached = cache_splits(self._splits, self._recipe.data, self.data_cache, self.log), True
        return self._splits

    def path(self, stage: str, *parts: str) -> Path:
        """A path in a stage's folder (the running stage's own folder is a scratch folder on ranks other than 0)."""
        mine = self.scratch is not None and self.stage is not None and stage == self.stage.name
        return (self.scratch if mine else self.run_dir) / STAGES.get(stage).dir / Path(*parts)

    def model_path(self, name: str) -> Path:
        """Where the ONNX model ``name`` (a :class:`ModelFile` some stage declares) is written."""
        s, m = model_files()[name]
        return self.path(s.name, m.file)

    def written_models(self) -> dict[str, Path]:
        """The declared ONNX models that exist in the run folder, by name (a disabled stage writes none)."""
        paths = {name: self.path(s.name, m.file) for name, (s, m) in model_files().items()}
        return {name: p for name, p in paths.items() if p.exists()}

    def _require(self, section: str) -> None:
        if self.stage is not None and section not in self.stage.sections:
            raise StageError(f"the {self.stage.name} stage reads the {section} but does not declare "
                             f"{section!r} in its sections; add it to its @stage(...).")
