"""Fashion-MNIST IDX loading and the npz / image-folder / factory adapters, on tiny data."""

import gzip
import re
import struct
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedistill.data import DATASETS, load_data
from edgedistill.data import fashion_mnist as fm
from edgedistill.data.core import stratified_split
from edgedistill.errors import ConfigError, DataError
from edgedistill.recipe import DataConfig, PreprocessConfig, recipe_from_dict

RAW = PreprocessConfig(mean="none", std="none")  # no standardisation: read() gives the scaled raw values


def _read_all(split) -> np.ndarray:
    return split.read(np.arange(len(split)))

FM_INSTALLED = any(Path(d, "train-images-idx3-ubyte.gz").is_file() for d in fm.DEFAULT_DIRS)
needs_fm = pytest.mark.skipif(not FM_INSTALLED, reason="Debian package dataset-fashion-mnist is not installed "
                              "(apt-get install dataset-fashion-mnist)")


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    data = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(str(path) + (".gz" if gz else ""), "wb").write(data)


def _fake_fashion(folder, n_train=60, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    xs = {k: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for k, n in (("train", n_train), ("t10k", n_test))}
    ys = {k: (np.arange(n) % 10).astype(np.uint8) for k, n in (("train", n_train), ("t10k", n_test))}
    for k in ("train", "t10k"):
        _write_idx(folder / f"{k}-images-idx3-ubyte", xs[k], gz)
        _write_idx(folder / f"{k}-labels-idx1-ubyte", ys[k], gz)
    return xs, ys


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_from_a_folder(tmp_path, gz):
    xs, ys = _fake_fashion(tmp_path, gz=gz)
    s = load_data(DataConfig(dataset="fashion-mnist", path=str(tmp_path), val_fraction=0.2), seed=0)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and len(s.labels) == 10
    assert (len(s.train), len(s.val), len(s.test)) == (48, 12, 20)
    # The images stay raw uint8; the official test split is kept in order and read normalised with the
    # recorded constants.
    assert s.test.x.dtype == np.uint8
    np.testing.assert_array_equal(s.test.x[:, 0], xs["t10k"])
    expected = (xs["t10k"].astype(np.float32) / 255.0 - fm.MEAN) / fm.STD
    np.testing.assert_allclose(_read_all(s.test)[:, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s.test.y, ys["t10k"])
    # Train and val are disjoint parts of the official training set.
    assert sorted(np.concatenate([s.train.indices, s.val.indices]).tolist()) == list(range(60))
    assert s.normalization == {"scale": 1 / 255.0, "mean": [fm.MEAN], "std": [fm.STD]}


@pytest.mark.parametrize("limit", [10, 30, 60])
def test_fashion_mnist_small_limit_still_holds_out_a_validation_split(tmp_path, limit):
    """Too few images per class to stratify the validation split: a seeded shuffle instead of sklearn's ValueError."""
    _fake_fashion(tmp_path, n_train=60, n_test=20)
    cfg = DataConfig(dataset="fashion-mnist", path=str(tmp_path), val_fraction=0.1, options={"limit": limit})
    s = load_data(cfg, seed=3)
    n_val = max(1, round(limit * 0.1))
    assert (len(s.train), len(s.val)) == (limit - n_val, n_val)
    assert sorted(np.concatenate([s.train.indices, s.val.indices]).tolist()) == list(range(limit))
    assert np.array_equal(load_data(cfg, seed=3).val.indices, s.val.indices)  # deterministic in the seed


def test_fashion_mnist_missing_files_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"data\.path: .* lacks the Fashion-MNIST IDX files train-images-idx3-ubyte"):
        load_data(DataConfig(dataset="fashion-mnist", path=str(tmp_path)), seed=0)
    monkeypatch.setattr(fm, "DEFAULT_DIRS", (str(tmp_path / "nowhere"),))
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*data\.path"):
        load_data(DataConfig(dataset="fashion-mnist"), seed=0)


def test_bad_idx_files_are_refused(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match=r"not an IDX file \(bad magic number\)"):
        fm.read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "ok", np.zeros((5, 28, 28), np.uint8), gz=False)
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-10])
    with pytest.raises(DataError, match=r"the file is truncated"):
        fm.read_idx(tmp_path / "short")


def test_fashion_mnist_rejects_unknown_options(tmp_path):
    _fake_fashion(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.options: unknown option\(s\) \['limt'\] for 'fashion-mnist'"):
        load_data(DataConfig(dataset="fashion-mnist", path=str(tmp_path), options={"limt": 5}), seed=0)


@needs_fm
def test_real_fashion_mnist_sample():
    s = load_data(DataConfig(dataset="fashion-mnist", options={"limit": 600}), seed=0)
    assert (len(s.train) + len(s.val), len(s.test)) == (600, 100)
    assert s.labels[0] == "T-shirt/top" and s.labels[9] == "Ankle boot"
    # Official statistics: the normalised training images have mean ~0 and std ~1.
    x = _read_all(s.train)
    assert x.dtype == np.float32 and abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1
    assert set(np.unique(s.train.y)) == set(range(10))


# ---- npz ---------------------------------------------------------------------------------

def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def test_npz_x_y_is_split_and_standardised(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, (90, 2, 4, 4)).astype(np.float32)
    y = np.arange(90) % 3
    s = load_data(DataConfig(dataset="npz", path=_npz(tmp_path, x=x, y=y), test_fraction=0.2, val_fraction=0.1), 0)
    assert (len(s.train), len(s.val), len(s.test)) == (63, 9, 18)
    assert s.input_shape == (2, 4, 4) and s.num_classes == 3
    assert len(s.normalization["mean"]) == 2 and abs(s.normalization["mean"][0] - 5.0) < 0.5
    # The mean/std were measured on the training split: read through them it is standardised per channel.
    x_train = _read_all(s.train)
    np.testing.assert_allclose(x_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_train.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    # The samples are the file's, untouched in memory, at the split's positions.
    np.testing.assert_array_equal(s.test.base.x[s.test.indices], x[s.test.indices])


def test_npz_predefined_splits_and_labels(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    path = _npz(tmp_path, x_train=x[:12], y_train=np.arange(12) % 2, x_test=x[12:], y_test=np.arange(8) % 2)
    cfg = DataConfig(dataset="npz", path=path, options={"labels": ["cat", "dog"]},
                     preprocess=PreprocessConfig(scale=0.5, mean="none", std="none"))
    s = load_data(cfg, 0)
    assert s.labels == ["cat", "dog"] and len(s.val) == 0
    np.testing.assert_array_equal(s.test.x, x[12:])  # raw
    np.testing.assert_allclose(_read_all(s.test), x[12:] * 0.5)
    assert s.normalization == {"scale": 0.5}


def test_old_preprocessing_options_are_refused(tmp_path):
    """normalize / scale / size / mode moved to [data.preprocess]: data.options refuses them."""
    path = _npz(tmp_path, x=np.zeros((30, 2)), y=np.arange(30) % 2)
    for key in ("normalize", "scale", "size", "mode"):
        with pytest.raises(ConfigError, match=rf"data\.options: unknown option\(s\) \['{key}'\] for 'npz'; valid: labels, unlabelled\."):
            load_data(DataConfig(dataset="npz", path=path, options={key: 1}), 0)


def test_preprocess_mean_std_errors(tmp_path):
    path = _npz(tmp_path, x=np.zeros((30, 2, 3, 3)), y=np.arange(30) % 2)
    with pytest.raises(ConfigError, match=r"data\.preprocess\.mean: 3 values for 2 channels; give 1 or 2\."):
        load_data(DataConfig(dataset="npz", path=path, preprocess=PreprocessConfig(mean=[0, 0, 0], std=[1, 1, 1])), 0)
    with pytest.raises(ConfigError, match=r"give both mean and std as lists"):
        load_data(DataConfig(dataset="npz", path=path, preprocess=PreprocessConfig(mean=[0.5], std="auto")), 0)
    with pytest.raises(ConfigError, match=r"data\.preprocess\.std: every value must be > 0\."):
        load_data(DataConfig(dataset="npz", path=path, preprocess=PreprocessConfig(mean=[0.5], std=[0.0])), 0)
    with pytest.raises(ConfigError, match=r"data\.preprocess\.std: given without a mean"):
        load_data(DataConfig(dataset="npz", path=path, preprocess=PreprocessConfig(mean="none", std=[1.0])), 0)
    # One value applies to every channel.
    s = load_data(DataConfig(dataset="npz", path=path, preprocess=PreprocessConfig(mean=[0.5], std=[2.0])), 0)
    np.testing.assert_allclose(_read_all(s.train), -0.25)


@pytest.mark.parametrize("arrays, match", [
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((2, 3)), "y_test": np.zeros(2)},
     r"dataset 'npz': test inputs have shape \(3,\), expected \(2,\)"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((0, 2)), "y_test": np.zeros(0)},
     r"the test split is empty"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, -3, 1]), "x_test": np.zeros((2, 2)), "y_test": np.zeros(2)},
     r"d\.npz \(x_train\) sample 2: has label -3, outside 0\.\.1"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((2, 2), dtype="U1"), "y_test": np.zeros(2)},
     r"d\.npz \(x_test\): inputs have dtype <U1; provide numeric arrays"),
    ({"x_train": np.zeros(4), "y_train": np.zeros(4), "x_test": np.zeros((2, 2)), "y_test": np.zeros(2)},
     r"d\.npz \(x_train\): inputs have shape \(4,\); expected N x features"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.array([0.5, 1, 0, 1]), "x_test": np.zeros((2, 2)), "y_test": np.zeros(2)},
     r"labels must be a 1-D array of integers"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3), "x_test": np.zeros((2, 2)), "y_test": np.zeros(2)},
     r"4 inputs but 3 labels"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4)}, r"has x_train but lacks x_test, y_test"),
    ({"a": np.zeros(3)}, r"holds arrays \['a'\]; expected x and y"),
])
def test_npz_bad_data_is_refused_at_load(tmp_path, arrays, match):
    with pytest.raises(DataError, match=match):
        load_data(DataConfig(dataset="npz", path=_npz(tmp_path, **arrays), preprocess=RAW), 0)


def test_npz_nan_is_found_when_its_batch_is_read(tmp_path):
    x_train = np.zeros((6, 2), np.float32)
    x_train[4, 1] = np.nan
    path = _npz(tmp_path, x_train=x_train, y_train=np.arange(6) % 2, x_test=np.zeros((2, 2)), y_test=np.zeros(2))
    s = load_data(DataConfig(dataset="npz", path=path, preprocess=RAW), 0)  # nothing read yet: loads
    np.testing.assert_array_equal(s.train.read([0, 1, 2, 3, 5]), 0.0)  # batches without it read fine
    with pytest.raises(DataError, match=rf"^{re.escape(path)} \(x_train\) sample 4: contains NaN or inf; clean or drop "
                                        r"that sample\.$"):
        s.train.read([5, 4, 0])
    # Measuring the mean/std ("auto", the default) reads the training split: it is found there.
    with pytest.raises(DataError, match=r"\(x_train\) sample 4: contains NaN or inf"):
        load_data(DataConfig(dataset="npz", path=path), 0)


def test_npz_labels_beyond_the_named_classes_are_refused(tmp_path):
    path = _npz(tmp_path, x_train=np.zeros((4, 2)), y_train=np.array([0, 1, 2, 1]), x_test=np.zeros((2, 2)),
                y_test=np.zeros(2))
    with pytest.raises(DataError, match=r"d\.npz \(x_train\) sample 2: has label 2, outside 0\.\.1"):
        load_data(DataConfig(dataset="npz", path=path, options={"labels": ["a", "b"]}), 0)


def test_npz_path_and_option_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path: dataset 'npz' needs a path to an \.npz file"):
        load_data(DataConfig(dataset="npz"), 0)
    with pytest.raises(DataError, match=r"data\.path: .*missing\.npz does not exist"):
        load_data(DataConfig(dataset="npz", path=str(tmp_path / "missing.npz")), 0)
    with pytest.raises(ConfigError, match=r"data\.preprocess\.mean: .*'minmax'"):
        recipe_from_dict({"data": {"dataset": "npz", "preprocess": {"mean": "minmax"}}})
    (tmp_path / "obj.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"is not a readable \.npz"):
        load_data(DataConfig(dataset="npz", path=str(tmp_path / "obj.npz")), 0)


# ---- image folder ------------------------------------------------------------------------

def _image_tree(root, per_class=6, size=(10, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.full((*size, 3), 60 + 120 * c, np.uint8) + rng.integers(0, 10, (*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    (root / "dogs" / "notes.txt").write_text("ignored")


def test_image_folder_reads_classes_and_resizes(tmp_path):
    pytest.importorskip("PIL")
    _image_tree(tmp_path)
    cfg = DataConfig(dataset="image-folder", path=str(tmp_path), test_fraction=0.25, val_fraction=0.0,
                     preprocess=PreprocessConfig(size=[8, 7], channels="L"))
    s = load_data(cfg, 0)
    assert s.labels == ["cats", "dogs"] and s.input_shape == (1, 8, 7)
    assert len(s.train) + len(s.test) == 12
    assert s.normalization["scale"] == pytest.approx(1 / 255.0) and len(s.normalization["mean"]) == 1
    assert s.normalization["size"] == [8, 7] and s.normalization["channels"] == "L"
    # Dogs are brighter than cats in the raw pixels, and still after standardisation.
    x = _read_all(s.train)
    assert x.shape == (len(s.train), 1, 8, 7)
    assert x[s.train.y == 1].mean() > x[s.train.y == 0].mean()
    # The mean/std were measured on the training images: through them they are standardised.
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3


def test_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(DataError, match=r"has no sub-folders; put each class's images in its own sub-folder"):
        load_data(DataConfig(dataset="image-folder", path=str(tmp_path)), 0)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"x\.png: cannot be read as an image"):  # its header gives the size
        load_data(DataConfig(dataset="image-folder", path=str(tmp_path)), 0)
    with pytest.raises(ConfigError, match=r"data\.preprocess\.channels: 'CMYK' is not valid; choose one of: L, RGB, BGR\."):
        recipe_from_dict({"data": {"dataset": "image-folder", "preprocess": {"channels": "CMYK"}}})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['mode'\] for 'image-folder'"):
        load_data(DataConfig(dataset="image-folder", path=str(tmp_path), options={"mode": "L"}), 0)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['sise'\] for 'image-folder'"):
        load_data(DataConfig(dataset="image-folder", path=str(tmp_path), options={"sise": 3}), 0)


# ---- Python factory ----------------------------------------------------------------------

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(textwrap.dedent("""
        import numpy as np
        from edgedistill.data import ArraySplit, Splits

        def pairs(n=40, seed=0):
            rng = np.random.default_rng(seed)
            return rng.normal(size=(n, 3)).astype(np.float32), np.arange(n) % 2

        def four(cfg, seed):
            x, y = pairs(30)
            return x[:20], y[:20], x[20:], y[20:]

        def splits(cfg, seed):
            x, y = pairs(10)
            part = ArraySplit(x, y)
            return Splits(train=part, val=ArraySplit(x[:0], y[:0]), test=part, num_classes=2, input_shape=(3,))

        def nan_splits():
            x, y = pairs(10)
            x[0, 0] = np.nan
            return x, y

        def wrong():
            return [1, 2, 3]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_data"
    sys.modules.pop("my_data", None)


def test_factory_returning_arrays_or_splits(user_module):
    s = load_data(DataConfig(dataset="factory", options={"factory": "my_data:pairs", "n": 50}), 0)
    assert len(s.train) + len(s.val) + len(s.test) == 50 and s.input_shape == (3,) and s.num_classes == 2
    s = load_data(DataConfig(dataset="factory", options={"factory": "my_data:four"}), 0)
    assert (len(s.train), len(s.test)) == (20, 10)
    s = load_data(DataConfig(dataset="factory", options={"factory": "my_data:splits"}), 0)
    assert len(s.test) == 10


@pytest.mark.parametrize("options, error, match", [
    ({}, ConfigError, r"data\.options\.factory: missing"),
    ({"factory": "my_data.pairs"}, ConfigError, r"must look like 'package\.module:function'"),
    ({"factory": "no_such_mod:fn"}, ConfigError, r"cannot import 'no_such_mod'"),
    ({"factory": "my_data:nope"}, ConfigError, r"'my_data' has no callable 'nope'"),
    ({"factory": "my_data:pairs", "colour": 1}, ConfigError, r"cannot be called with \['colour'\]"),
    ({"factory": "my_data:wrong"}, DataError, r"returned list; return Splits"),
    # The mean/std ("auto") are measured on the training split, which reads the sample with NaN.
    ({"factory": "my_data:nan_splits"}, DataError,
     r"^data\.options\.factory my_data:nan_splits \(x\) sample 0: contains NaN or inf; clean or drop that sample\.$"),
])
def test_factory_errors(user_module, options, error, match):
    with pytest.raises(error, match=match):
        load_data(DataConfig(dataset="factory", options=options), 0)


def test_adapters_are_registered():
    assert {"digits", "fashion-mnist", "npz", "image-folder", "factory"} <= set(DATASETS.names())


@settings(max_examples=150, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=12), fraction=st.floats(0.01, 0.95),
       seed=st.integers(0, 2**31), shuffle=st.booleans(), negative=st.booleans())
def test_stratified_split_gives_scikit_learns_positions(counts, fraction, seed, shuffle, negative):
    """The numpy split (no scikit-learn in the light install) is scikit-learn's train_test_split(stratify=y), position
    for position, and refuses exactly where it raises ValueError (there the caller falls back to a seeded shuffle)."""
    train_test_split = pytest.importorskip("sklearn.model_selection").train_test_split
    y = np.repeat(np.arange(len(counts)) - (1 if negative else 0), counts)  # -1: the unlabelled marker is a class too
    if shuffle:
        y = np.random.default_rng(seed).permutation(y)
    try:
        want = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y)
    except ValueError:
        with pytest.raises(ValueError):
            stratified_split(y, fraction, seed)
        return
    got = stratified_split(y, fraction, seed)
    assert [g.tolist() for g in got] == [w.tolist() for w in want]
