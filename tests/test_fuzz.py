"""Property-based tests of the recipe and target loaders (issue 9): any input either loads into a valid
object or raises ConfigError with a one-line message, never another exception. Inputs are dict
structures (valid sections with mutated keys and values) and raw files (bytes, text, valid TOML with
random edits). A recipe or target that loads must also survive what the pipeline does next: writing
it back as TOML (the run folder's recipe.toml) and reading that again gives the same object.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedistill._schema import dump_toml, from_dict, tomllib
from edgedistill.errors import ConfigError
from edgedistill.recipe import Recipe, dump_recipe, load_recipe, recipe_from_dict
from edgedistill.targets import Target, load_target
from tests.conftest import TINY_RECIPE

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What TOML can hold (and None, which a caller of recipe_from_dict may pass): scalars, lists, tables.
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=12), st.datetimes(), st.dates(), st.times())
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                       max_leaves=8)

_RECIPE_KEYS = {
    "": ["name", "seed", "target"],
    "data": ["dataset", "path", "options", "val_fraction", "test_fraction", "batch_size", "max_train_samples"],
    "teacher": ["arch", "params", "checkpoint", "epochs", "lr", "optimizer", "scheduler"],
    "student": ["arch", "params"],
    "distill": ["epochs", "lr", "alpha", "temperature", "losses", "checkpoint_every", "device", "amp"],
    "export": ["opset", "parity_atol"],
    "qat": ["enabled", "epochs", "lr"],
    "ptq": ["enabled", "calibration", "percentile", "samples", "max_drop"],
    "bench": ["runs", "warmup", "min_seconds"],
    "report": ["tolerance", "favour"],
}
_TARGET_KEYS = ["name", "description", "architecture", "cores", "threads", "ram_mb", "execution_provider",
                "quant_format", "activation_type", "budgets"]
_BUDGET_KEYS = ["size_mb", "p90_ms", "peak_ram_mb", "min_metric"]


def _key(known: list[str]):
    return st.one_of(st.sampled_from(known), st.text(max_size=8))  # mostly real keys, sometimes unknown ones


def _loss_terms():
    term = st.dictionaries(_key(["name", "weight", "params", "warmup_epochs"]),
                           st.one_of(st.sampled_from(["kd", "ce", "nope"]), _values), max_size=4)
    return st.one_of(st.lists(term, max_size=3), _values)


@st.composite
def recipe_dicts(draw):
    out = {}
    for section, keys in _RECIPE_KEYS.items():
        if not draw(st.booleans()):
            continue
        table = draw(st.dictionaries(_key(keys), _values, max_size=4))
        if section == "distill" and draw(st.booleans()):
            table["losses"] = draw(_loss_terms())
        if section:
            out[section] = table if draw(st.integers(0, 9)) else draw(_values)  # sometimes not a table at all
        else:
            out.update(table)
    return out


@st.composite
def target_dicts(draw):
    out = draw(st.dictionaries(_key(_TARGET_KEYS), _values, max_size=5))
    if draw(st.booleans()):
        out["name"] = draw(st.text(max_size=8))
    if draw(st.booleans()):
        out["budgets"] = draw(st.one_of(st.dictionaries(_key(_BUDGET_KEYS), _values, max_size=3), _values))
    return out


def _refused_well(e: ConfigError) -> None:
    message = str(e)
    assert message.strip() and "\n" not in message, repr(message)


def _check_recipe(recipe: Recipe) -> None:
    assert isinstance(recipe, Recipe) and recipe.distill.losses
    for f in (recipe.distill.lr, recipe.distill.alpha, recipe.distill.temperature, recipe.ptq.percentile):
        assert f == "auto" or math.isfinite(f)  # alpha and temperature: a number or "auto"
    assert recipe_from_dict(tomllib.loads(dump_recipe(recipe))) == recipe  # recipe.toml in the run folder


def _check_target(target: Target) -> None:
    assert isinstance(target, Target) and target.threads <= target.cores
    assert from_dict(Target, tomllib.loads(dump_toml(target.to_dict()))) == target


@FUZZ
@given(recipe_dicts())
def test_recipe_dicts_load_or_raise_config_error(data):
    try:
        recipe = recipe_from_dict(data, "fuzz.toml")
    except ConfigError as e:
        _refused_well(e)
        assert str(e).startswith("fuzz.toml: ")
    else:
        _check_recipe(recipe)


@FUZZ
@given(target_dicts())
def test_target_dicts_load_or_raise_config_error(data):
    try:
        target = from_dict(Target, data, "")
    except ConfigError as e:
        _refused_well(e)
    else:
        _check_target(target)


def _edits():
    """Random edits of a valid file: replace a slice with arbitrary text."""
    return st.lists(st.tuples(st.floats(0, 1), st.integers(0, 6), st.text(max_size=6)), min_size=1, max_size=3)


def _apply(text: str, edits) -> str:
    for where, length, new in edits:
        i = int(where * len(text))
        text = text[:i] + new + text[i + length:]
    return text


_TARGET_TOML = 'name = "t"\ncores = 2\nthreads = 1\n[budgets]\nsize_mb = 5.0\np90_ms = 3.5\n'


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


_FILES = {"recipe": (TINY_RECIPE, lambda p: load_recipe(p), _check_recipe),
          "target": (_TARGET_TOML, lambda p: load_target(p), _check_target)}


@pytest.mark.parametrize("kind", list(_FILES))
@FUZZ
@given(data=st.data())
def test_files_load_or_raise_config_error(fuzz_dir, kind, data):
    template, load, check = _FILES[kind]
    content = data.draw(st.one_of(st.binary(max_size=200), st.text(max_size=200), _edits().map(lambda e: _apply(template, e))))
    path = fuzz_dir / f"{kind}.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    try:
        loaded = load(str(path))
    except ConfigError as e:
        _refused_well(e)
        assert str(path) in str(e)  # it names the file
    else:
        check(loaded)


@FUZZ
@given(st.text(max_size=20))
def test_target_names_load_or_raise_config_error(name):
    try:
        target = load_target(name)
    except ConfigError as e:
        _refused_well(e)
    else:
        _check_target(target)


@FUZZ
@given(recipe_dicts())
def test_generated_toml_files_load_or_raise_config_error(fuzz_dir, data):
    """Structured input through the file path too: the dicts above written as TOML."""
    try:
        text = dump_toml({k: v for k, v in data.items()})
        tomllib.loads(text)
    except (TypeError, tomllib.TOMLDecodeError):  # None, or a shape TOML cannot hold: not a file anyone can write
        return
    path = fuzz_dir / "generated.toml"
    path.write_text(text)
    try:
        recipe = load_recipe(str(path))
    except ConfigError as e:
        _refused_well(e)
    else:
        _check_recipe(recipe)
