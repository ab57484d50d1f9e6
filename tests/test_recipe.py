import pytest

from edgedistill._schema import tomllib
from edgedistill.errors import ConfigError
from edgedistill.recipe import Recipe, dump_recipe, load_recipe, recipe_from_dict


def test_default_recipe_loads_with_every_default_filled():
    r = load_recipe()
    assert r.data.dataset == "digits"
    assert r.distill.losses[0].name == "kd"
    assert r.ptq.calibration == "mse" and r.ptq.equalize and r.ptq.bias_correction and r.ptq.speed_rules


def test_resolved_recipe_round_trips_through_toml():
    r = load_recipe()
    again = recipe_from_dict(tomllib.loads(dump_recipe(r)))
    assert again == r


@pytest.mark.parametrize("data, match", [
    ({"bogus": 1}, r"bogus: unknown key; valid keys here are: name, seed"),
    ({"distill": {"epoch": 3}}, r"distill\.epoch: unknown key; valid keys here are: epochs"),
    ({"distill": {"epochs": "ten"}}, r"distill\.epochs: expected an integer, got 'ten'"),
    ({"distill": {"alpha": 1.5}}, r"distill\.alpha: 1\.5 is out of range; it must be <= 1\.0"),
    ({"distill": {"temperature": 0}}, r"distill\.temperature: 0\.0 is out of range; it must be > 0\.0"),
    ({"ptq": {"calibration": "kl"}}, r"ptq\.calibration: 'kl' is not valid; choose one of: minmax, mse, entropy, percentile"),
    ({"ptq": {"per_channel": "yes"}}, r"ptq\.per_channel: expected true or false"),
    ({"data": "digits"}, r"data: expected a table"),
    ({"distill": {"losses": [{"name": "kd", "wieght": 1}]}}, r"distill\.losses\[0\]\.wieght: unknown key"),
    ({"distill": {"losses": []}}, r"distill\.losses: the list is empty"),
    ({"name": "a/b"}, r"name: must be a non-empty string without slashes"),
    ({"distill": {"teacher_mix": "mean"}}, r"distill\.teacher_mix: 'mean' is not valid; choose one of: logits, losses"),
])
def test_bad_values_are_rejected_with_the_key_and_the_fix(data, match):
    with pytest.raises(ConfigError, match=match):
        recipe_from_dict(data, "r.toml")


def test_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[distill]\nepochs = -1\n")
    with pytest.raises(ConfigError, match=rf"{p}: distill\.epochs: -1 is out of range; it must be >= 0"):
        load_recipe(str(p))


@pytest.mark.parametrize("content, match", [
    ("", r"the recipe is empty"),
    ("name = [unclosed", r"not valid TOML"),
    (b"\xff\xfe\x00", r"not UTF-8"),
])
def test_unreadable_recipes(tmp_path, content, match):
    p = tmp_path / "r.toml"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=match):
        load_recipe(str(p))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe not found; check the path"):
        load_recipe(str(tmp_path / "nope.toml"))


def test_defaults_are_independent_objects():
    a, b = Recipe(), Recipe()
    a.teacher.params["width"] = 3
    assert b.teacher.params["width"] != 3


def test_qat_and_report_sections_are_validated(tmp_path):
    rec = load_recipe(None)
    assert rec.qat.enabled is True and rec.report.tolerance == 1.0
    p = tmp_path / "r.toml"
    p.write_text('[qat]\nteacher = "oracle"\n')
    with pytest.raises(ConfigError, match=r"qat.teacher: 'oracle' is not valid; choose one of: fp32_student, teacher"):
        load_recipe(str(p))
    p.write_text('[report]\ntolerance = -1\n')
    with pytest.raises(ConfigError, match=r"report.tolerance"):
        load_recipe(str(p))


def test_report_favour_is_latency_or_size(tmp_path):
    assert load_recipe(None).report.favour == "latency"
    p = tmp_path / "r.toml"
    p.write_text('[report]\nfavour = "size"\n')
    assert load_recipe(str(p)).report.favour == "size"
    p.write_text('[report]\nfavour = "speed"\n')
    with pytest.raises(ConfigError, match=r"report\.favour: 'speed' is not valid; choose one of: latency, size"):
        load_recipe(str(p))
