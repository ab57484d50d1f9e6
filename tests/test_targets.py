import pytest

from edgedistill.errors import ConfigError
from edgedistill.targets import list_targets, load_target


def test_builtin_targets_include_the_required_ones():
    names = {t.name for t in list_targets()}
    assert {"laptop-x86", "raspberry-pi-4", "android-midrange"} <= names
    for t in list_targets():
        assert t.budgets.size_mb > 0 and 1 <= t.threads <= t.cores


def test_laptop_budget_defaults_to_20_mb():
    assert load_target("laptop-x86").budgets.size_mb == 20.0


def test_user_target_file(tmp_path):
    p = tmp_path / "board.toml"
    p.write_text('name = "board"\narchitecture = "aarch64"\ncores = 4\nthreads = 2\n[budgets]\nsize_mb = 5\np90_ms = 1\n')
    t = load_target(str(p))
    assert (t.name, t.threads, t.budgets.size_mb, t.budgets.p90_ms) == ("board", 2, 5.0, 1.0)


def test_unknown_target_lists_choices():
    with pytest.raises(ConfigError, match=r"target 'moon' is unknown; choose one of: .*laptop-x86"):
        load_target("moon")


@pytest.mark.parametrize("text, match", [
    ('name = "x"\nthreads = 8\ncores = 4\n', r"threads: 8 is more than the target's 4 cores"),
    ('name = "x"\n[budgets]\nsize_mb = -1\n', r"budgets\.size_mb: -1\.0 is out of range"),
    ('name = "x"\nfoo = 1\n', r"foo: unknown key"),
    ('description = "no name"\n', r"name: required key is missing"),
])
def test_bad_target_files(tmp_path, text, match):
    p = tmp_path / "t.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_target(str(p))


def test_missing_target_file(tmp_path):
    with pytest.raises(ConfigError, match=r"target file not found"):
        load_target(str(tmp_path / "none.toml"))
