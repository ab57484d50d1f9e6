"""Sources read a batch at a time (the ``npy`` folder, image folders with train/ val/ test/, map-style
datasets from a factory), ``max_train_samples`` never reading what it drops, the loader's order and
resume, and the streaming channel statistics: on tiny data in tmp_path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
import sys
import textwrap

import numpy as np
import pytest

from edgedistill.data.npy_rows import NpyRows
from edgedistill.data import cache_splits, load_data
from edgedistill.data.core import ArraySplit, Preprocess, channel_stats
from edgedistill.data.loader import batches
from edgedistill.errors import DataError
from edgedistill.recipe import DataConfig, PreprocessConfig

RAW = PreprocessConfig(mean="none", std="none")


def _read_all(split) -> np.ndarray:
    return split.read(np.arange(len(split)))


def _one_sentence(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg and msg.endswith("."), msg
    return msg


# ---- npy: a folder of memory-mapped arrays ------------------------------------------------

def _npy(folder, **arrays):
    folder.mkdir(exist_ok=True)
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a)
    return str(folder)


def _uint8_images(n, channels=2, seed=0):
    """uint8 N x C x 4 x 4 whose channels have different levels (so per-channel statistics differ)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 100, (n, channels, 4, 4), dtype=np.uint8)
    x[:, 1:] += 120
    return x


def test_npy_x_y_is_split_memory_mapped_and_scaled(tmp_path):
    x, y = _uint8_images(60), np.arange(60) % 3
    mean, std = [0.2, 0.6], [0.5, 0.25]
    cfg = DataConfig(dataset="npy", path=_npy(tmp_path / "d", x=x, y=y), test_fraction=0.2, val_fraction=0.1,
                     preprocess=PreprocessConfig(scale=1 / 255, mean=mean, std=std))
    s = load_data(cfg, 0)
    assert (len(s.train), len(s.val), len(s.test)) == (42, 6, 12) and s.input_shape == (2, 4, 4) and s.num_classes == 3
    positions = np.concatenate([s.train.indices, s.val.indices, s.test.indices])
    assert sorted(positions.tolist()) == list(range(60))  # disjoint, every sample used
    for part in (s.train, s.val, s.test):
        assert isinstance(part.base.x, NpyRows) and part.base.x.dtype == np.uint8  # on disk, raw
        np.testing.assert_array_equal(part.y, y[part.indices])
        want = (x[part.indices] / 255.0 - np.reshape(mean, (1, 2, 1, 1))) / np.reshape(std, (1, 2, 1, 1))
        np.testing.assert_allclose(_read_all(part), want, rtol=1e-5, atol=1e-5)
    assert s.normalization == {"scale": pytest.approx(1 / 255), "mean": mean, "std": std}


def test_npy_auto_mean_std_is_measured_on_the_training_split(tmp_path):
    x, y = _uint8_images(60), np.arange(60) % 3
    cfg = DataConfig(dataset="npy", path=_npy(tmp_path / "d", x=x, y=y), preprocess=PreprocessConfig(scale=0.5))
    s = load_data(cfg, 0)
    train = x[s.train.indices] * 0.5
    np.testing.assert_allclose(s.normalization["mean"], train.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(s.normalization["std"], train.std(axis=(0, 2, 3)), rtol=1e-5)
    assert s.normalization["mean"][1] > s.normalization["mean"][0] + 50  # per channel, not one number
    read = _read_all(s.train)
    np.testing.assert_allclose(read.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(read.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    # The test split goes through the training statistics, not its own.
    np.testing.assert_allclose(_read_all(s.test), (x[s.test.indices] * 0.5 - np.reshape(s.normalization["mean"], (1, 2, 1, 1)))
                               / np.reshape(s.normalization["std"], (1, 2, 1, 1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_val", [False, True])
def test_npy_predefined_splits(tmp_path, with_val):
    x = _uint8_images(30)
    arrays = {"x_train": x[:20], "y_train": np.arange(20) % 2, "x_test": x[20:26], "y_test": np.arange(6) % 2}
    if with_val:
        arrays.update(x_val=x[26:], y_val=np.array([1, 0, 1, 0]))
    s = load_data(DataConfig(dataset="npy", path=_npy(tmp_path / "d", **arrays), preprocess=RAW,
                             options={"labels": ["a", "b"]}), 0)
    assert (len(s.train), len(s.val), len(s.test)) == (20, 4 if with_val else 0, 6) and s.labels == ["a", "b"]
    assert isinstance(s.train.x, NpyRows) and isinstance(s.test.x, NpyRows)
    np.testing.assert_array_equal(_read_all(s.test), x[20:26])  # in file order, scale 1 for arrays
    np.testing.assert_array_equal(s.test.y, np.arange(6) % 2)
    if with_val:
        np.testing.assert_array_equal(_read_all(s.val), x[26:])
        np.testing.assert_array_equal(s.val.y, [1, 0, 1, 0])


def test_npy_bad_files_are_one_sentence_naming_them(tmp_path):
    d = tmp_path / "d"
    _npy(d, x=np.zeros((10, 2), np.float32), y=np.arange(10) % 2)
    (d / "x.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=rf"^{re.escape(str(d / 'x.npy'))}: not a readable \.npy array .*; save it with "
                                        r"np\.save\.$") as e:
        load_data(DataConfig(dataset="npy", path=str(d)), 0)
    _one_sentence(e)
    np.save(d / "x.npy", np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)  # pickled objects are refused
    with pytest.raises(DataError, match=rf"^{re.escape(str(d / 'x.npy'))}: not a readable \.npy array"):
        load_data(DataConfig(dataset="npy", path=str(d)), 0)


def test_npy_layout_errors(tmp_path):
    x = np.zeros((10, 2), np.float32)
    d = _npy(tmp_path / "a", x_train=x, y_train=np.zeros(10), x_test=x)
    with pytest.raises(DataError, match=r"has x_train but lacks y_test; save all four arrays\."):
        load_data(DataConfig(dataset="npy", path=d), 0)
    d = _npy(tmp_path / "b", x_train=x, y_train=np.zeros(10), x_test=x, y_test=np.zeros(10), x_val=x)
    with pytest.raises(DataError, match=r"has x_val but lacks y_val; save the labels beside the inputs\."):
        load_data(DataConfig(dataset="npy", path=d), 0)
    d = _npy(tmp_path / "c", x=x, y=np.zeros(9))
    with pytest.raises(DataError, match=r"x\.npy: 10 inputs but 9 labels; they must match\."):
        load_data(DataConfig(dataset="npy", path=d), 0)
    with pytest.raises(DataError, match=r"is a file; pass the folder that holds x\.npy and y\.npy"):
        load_data(DataConfig(dataset="npy", path=str(tmp_path / "c" / "x.npy")), 0)


def _nan_at(k: int, n: int = 40) -> np.ndarray:
    x = np.ones((n, 2, 2, 2), np.float32)
    x[k, 1, 0, 1] = np.nan
    return x


def test_npy_nan_names_the_sample_when_its_batch_is_read(tmp_path):
    k = 17
    d = _npy(tmp_path / "d", x=_nan_at(k), y=np.arange(40) % 2)
    s = load_data(DataConfig(dataset="npy", path=d, preprocess=RAW), 0)  # not read yet: loads
    holder = next(p for p in (s.train, s.val, s.test) if k in p.indices)
    at = int(np.flatnonzero(holder.indices == k)[0])
    others = np.delete(np.arange(len(holder)), at)
    np.testing.assert_array_equal(holder.read(others), 1.0)
    with pytest.raises(DataError, match=rf"^{re.escape(str(Path(d) / 'x.npy'))} sample {k}: contains NaN or inf; clean or drop that "
                                        r"sample\.$") as e:
        holder.read(np.arange(len(holder)))  # named by its position in the file, not in the split
    _one_sentence(e)


def test_npy_nan_in_the_test_file_is_found_when_the_test_split_is_read(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 2, 2, 2)).astype(np.float32)
    d = _npy(tmp_path / "d", x_train=x, y_train=np.arange(20) % 2, x_test=_nan_at(3, 8), y_test=np.arange(8) % 2)
    s = load_data(DataConfig(dataset="npy", path=d), 0)  # "auto" statistics read the training file only
    with pytest.raises(DataError, match=r"x_test\.npy sample 3: contains NaN or inf"):
        for _ in batches(s.test, 2, workers=0):
            pass


def test_npy_nan_error_names_the_npy_file(tmp_path):
    d = tmp_path / "d"
    _npy(d, x=_nan_at(5), y=np.arange(40) % 2)
    with pytest.raises(DataError, match=rf"{re.escape(str(d / 'x.npy'))}\b.* sample 5: contains NaN or inf"):
        load_data(DataConfig(dataset="npy", path=str(d)), 0)  # the "auto" statistics read the training samples


# ---- image folders -----------------------------------------------------------------------

COLOURS = {"cats": (200, 100, 10), "dogs": (30, 60, 250)}


def _images(root, splits={"train": 3, "test": 2}, size=(6, 5)):
    """root/<split>/<class>/<i>.png, each image one colour (its class's), size H x W."""
    from PIL import Image

    for split, n in splits.items():
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((*size, 3), rgb, np.uint8)).save(root / split / name / f"{i}.png")


@pytest.mark.parametrize("with_val", [False, True])
def test_image_folder_with_split_folders(tmp_path, with_val):
    pytest.importorskip("PIL")
    _images(tmp_path, {"train": 3, "test": 2, **({"val": 1} if with_val else {})})
    cfg = DataConfig(dataset="image-folder", path=str(tmp_path),
                     preprocess=PreprocessConfig(size=[4, 3], scale=1.0, mean="none", std="none"))
    s = load_data(cfg, 0)
    assert s.labels == ["cats", "dogs"] and s.input_shape == (3, 4, 3)
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2 if with_val else 0, 4)  # the folders, not the fractions
    np.testing.assert_array_equal(s.test.y, [0, 0, 1, 1])
    for part in (s.train, s.val, s.test):
        x = _read_all(part)
        assert x.shape == (len(part), 3, 4, 3)  # resized to [data.preprocess] size
        for xi, yi in zip(x, part.y):
            np.testing.assert_array_equal(xi[:, 0, 0], COLOURS[s.labels[yi]])  # RGB order, the class's colour
    assert s.normalization["size"] == [4, 3] and s.normalization["channels"] == "RGB"


def test_image_folder_channels_L_and_BGR(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    _images(tmp_path)
    def load(channels):
        return load_data(DataConfig(dataset="image-folder", path=str(tmp_path), preprocess=PreprocessConfig(
            channels=channels, scale=1.0, mean="none", std="none")), 0)

    rgb, bgr, grey = load("RGB"), load("BGR"), load("L")
    assert rgb.input_shape == bgr.input_shape == (3, 6, 5) and grey.input_shape == (1, 6, 5)
    x_rgb, x_bgr, x_l = _read_all(rgb.train), _read_all(bgr.train), _read_all(grey.train)
    np.testing.assert_array_equal(x_bgr, x_rgb[:, ::-1])  # the channel order really is reversed
    assert not np.array_equal(x_bgr, x_rgb)
    np.testing.assert_array_equal(x_bgr[0, :, 0, 0], COLOURS["cats"][::-1])
    for xi, yi in zip(x_l, grey.train.y):  # Pillow's own RGB -> L conversion
        want = np.asarray(Image.fromarray(np.full((1, 1, 3), COLOURS[grey.labels[yi]], np.uint8)).convert("L"))[0, 0]
        np.testing.assert_array_equal(xi, want)
    assert bgr.normalization["channels"] == "BGR" and grey.normalization["channels"] == "L"


def test_undecodable_image_fails_only_when_its_batch_is_read(tmp_path):
    pytest.importorskip("PIL")
    _images(tmp_path, {"train": 4, "test": 2})
    bad = tmp_path / "train" / "dogs" / "2.png"
    bad.write_bytes(b"not a png")
    # Given statistics: nothing is decoded at load.
    s = load_data(DataConfig(dataset="image-folder", path=str(tmp_path),
                             preprocess=PreprocessConfig(mean=[0.5], std=[0.25])), 0)
    at = list(s.train.files).index(str(bad))
    assert _read_all(s.test).shape == (4, 3, 6, 5)
    assert s.train.read(np.delete(np.arange(len(s.train)), at)).shape == (7, 3, 6, 5)
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: cannot be read as an image .*; remove or replace it\.$"):
        s.train.read([0, at])
    # Through the loader's worker processes it is still the one sentence naming the file, not a worker traceback.
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}: cannot be read as an image") as e:
        for _ in batches(s.train, 3, workers=2):
            pass
    _one_sentence(e)


def test_image_class_folders_must_match_train(tmp_path):
    pytest.importorskip("PIL")
    _images(tmp_path)
    (tmp_path / "test" / "owls").mkdir()
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'test'))}: class folder\(s\) \['owls'\] are not in "
                                        r"train/; every split must use the training classes\.$"):
        load_data(DataConfig(dataset="image-folder", path=str(tmp_path)), 0)
    (tmp_path / "test" / "owls").rmdir()
    for name in ("cats", "dogs"):  # a split lacking a class is fine: the labels stay the training ones
        for f in (tmp_path / "test" / name).iterdir():
            f.unlink()
        (tmp_path / "test" / name).rmdir()
        break
    s = load_data(DataConfig(dataset="image-folder", path=str(tmp_path), preprocess=RAW), 0)
    assert s.labels == ["cats", "dogs"] and s.test.y.tolist() == [1, 1]


def test_image_folder_needs_train_and_test(tmp_path):
    pytest.importorskip("PIL")
    _images(tmp_path, {"train": 2})
    with pytest.raises(DataError, match=r"has train/ but not both train/ and test/"):
        load_data(DataConfig(dataset="image-folder", path=str(tmp_path)), 0)


# ---- map-style datasets from a factory; max_train_samples ----------------------------------

@pytest.fixture
def datasets_module(tmp_path, monkeypatch):
    """A user module whose map-style datasets record every index they are asked for (in this process)."""
    (tmp_path / "my_datasets.py").write_text(textwrap.dedent("""
        import numpy as np
        import torch

        READS = []

        class Counting:
            '''dataset[i] -> (x, y): x is 3 values equal to base + i; labels known up front in `targets`.'''

            def __init__(self, n, base=0, targets=True):
                self.n, self.base = n, base
                if targets:
                    self.targets = [i % 2 for i in range(n)]

            def __len__(self):
                return self.n

            def __getitem__(self, i):
                READS.append(self.base + i)
                return np.full(3, self.base + i, np.float32), i % 2

        def one(n=30, targets=True):
            return Counting(n, targets=targets)

        def pair():
            return Counting(50), Counting(12, base=1000)

        def tensors():
            return Counting(20), torch.utils.data.TensorDataset(torch.arange(8.0)[:, None].repeat(1, 3),
                                                                torch.arange(8) % 2)

        def ragged():
            class Ragged(Counting):
                def __getitem__(self, i):
                    return np.zeros(4 if i == 7 else 3, np.float32), i % 2
            return Ragged(12)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_datasets

    yield my_datasets
    sys.modules.pop("my_datasets", None)


@pytest.mark.parametrize("targets", [True, False])
def test_factory_map_style_dataset_is_split_and_read_lazily(datasets_module, targets):
    cfg = DataConfig(dataset="factory", options={"factory": "my_datasets:one", "targets": targets}, preprocess=RAW)
    s = load_data(cfg, 0)
    assert s.input_shape == (3,) and s.num_classes == 2 and len(s.train) + len(s.val) + len(s.test) == 30
    for part in (s.train, s.val, s.test):
        np.testing.assert_array_equal(part.y, part.indices % 2)
    datasets_module.READS.clear()
    x = s.test.read([2, 0])
    np.testing.assert_array_equal(x[:, 0], s.test.indices[[2, 0]])  # the dataset's own samples, in the asked order
    assert sorted(datasets_module.READS) == sorted(s.test.indices[[0, 2]].tolist())  # only those were read


def test_factory_pair_of_datasets(datasets_module):
    s = load_data(DataConfig(dataset="factory", options={"factory": "my_datasets:tensors"}, preprocess=RAW), 0)
    assert (len(s.train), len(s.val), len(s.test)) == (20, 0, 8)
    np.testing.assert_array_equal(_read_all(s.test)[:, 0], np.arange(8))  # torch tensors are read too
    np.testing.assert_array_equal(s.test.y, np.arange(8) % 2)
    np.testing.assert_array_equal(_read_all(s.train)[:, 1], np.arange(20))


def test_factory_dataset_item_of_another_shape_is_named(datasets_module):
    s = load_data(DataConfig(dataset="factory", options={"factory": "my_datasets:ragged"}, preprocess=RAW), 0)
    with pytest.raises(DataError, match=r"my_datasets:ragged.* item 7"):
        for part in (s.train, s.val, s.test):
            part.read(np.arange(len(part)))


def _capped_read(datasets_module, preprocess):
    cfg = DataConfig(dataset="factory", options={"factory": "my_datasets:pair"}, max_train_samples=10,
                     preprocess=preprocess)
    datasets_module.READS.clear()
    s = load_data(cfg, 0)
    assert len(s.train) == 10 and len(s.test) == 12
    for _ in batches(s.train, 4, workers=0):  # one pass over the kept samples
        pass
    kept = np.sort(np.random.default_rng(0).permutation(50)[:10])  # a seeded sample, in file order
    np.testing.assert_array_equal(s.train.indices, kept)
    # the training dataset's reads: the kept samples, and item 0 once, which tells the input shape
    assert {i for i in datasets_module.READS if i < 1000} == set(kept.tolist()) | {0}
    return True


def test_max_train_samples_never_reads_the_dropped_samples(datasets_module):
    assert _capped_read(datasets_module, PreprocessConfig(mean=[0.0], std=[1.0]))


def test_max_train_samples_auto_statistics_never_read_the_dropped_samples(datasets_module):
    assert _capped_read(datasets_module, PreprocessConfig())


# ---- the loader --------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_batches_follow_the_order_and_resume_exactly(workers):
    x = np.arange(23 * 2, dtype=np.uint8).reshape(23, 2)
    split = ArraySplit(x, np.arange(23) % 3, Preprocess(scale=0.5))
    order = np.random.default_rng(1).permutation(23)
    full = list(batches(split, 5, order, workers=workers))
    assert [len(b[2]) for b in full] == [5, 5, 5, 5, 3]
    for b, (xb, yb, pos) in enumerate(full):
        want = order[b * 5:(b + 1) * 5]
        np.testing.assert_array_equal(pos.numpy(), want)
        np.testing.assert_array_equal(xb.numpy(), x[want] * 0.5)
        np.testing.assert_array_equal(yb.numpy(), want % 3)
    for start in (1, 3, 5):
        resumed = list(batches(split, 5, order, start=start, workers=workers))
        assert len(resumed) == 5 - start
        for (xa, ya, pa), (xb, yb, pb) in zip(resumed, full[start:]):
            assert xa.equal(xb) and ya.equal(yb) and pa.equal(pb)
    in_order = list(batches(split, 10, workers=workers))  # no order: the split's own
    np.testing.assert_array_equal(np.concatenate([p.numpy() for _, _, p in in_order]), np.arange(23))


def test_batches_with_workers_raise_a_data_error_as_one_sentence():
    x = np.zeros((20, 2), np.float32)
    x[13, 1] = np.nan
    split = ArraySplit(x, np.zeros(20, np.int64), source="x.npy")
    for workers in (0, 2):
        with pytest.raises(DataError, match=r"^x\.npy sample 13: contains NaN or inf; clean or drop that sample\.$"):
            for _ in batches(split, 4, workers=workers):
                pass


def test_an_array_in_memory_is_read_in_the_callers_order_as_a_copy(tmp_path):
    """No sort for an array in memory (a memory map is read front to back), and never a view of its data."""
    x = np.arange(12 * 2, dtype=np.float32).reshape(12, 2)
    np.save(tmp_path / "x.npy", x)
    in_memory = ArraySplit(x.copy(), np.zeros(12, np.int64))
    mapped = ArraySplit(np.load(tmp_path / "x.npy", mmap_mode="r"), np.zeros(12, np.int64))
    assert not in_memory.sorted_reads and mapped.sorted_reads
    for idx in ([7, 2, 9, 2], [3, 4, 5]):  # a contiguous run of a file is read as a slice
        np.testing.assert_array_equal(mapped.read(idx), x[idx])
        got = in_memory.read(idx)
        np.testing.assert_array_equal(got, x[idx])
        got += 100
    np.testing.assert_array_equal(in_memory.x, x)


def test_batches_read_in_this_process_leave_torchs_generator_as_the_dataloader_does():
    """Without workers the batches are read here, not by a DataLoader, which draws a seed from torch's generator:
    the same draw keeps augmentations and dropout drawing the same numbers."""
    import torch

    split = ArraySplit(np.zeros((4, 2), np.float32), np.zeros(4, np.int64))
    torch.manual_seed(0)
    list(batches(split, 2, workers=0))
    ours = torch.rand(3)
    torch.manual_seed(0)
    list(torch.utils.data.DataLoader(range(4), batch_size=2))
    assert torch.equal(ours, torch.rand(3))


# ---- channel statistics ------------------------------------------------------------------

def test_channel_stats_equal_numpy():
    rng = np.random.default_rng(0)
    x = (rng.normal(3.0, 2.0, (50, 3, 4, 4)) * [[[[1.0]], [[5.0]], [[0.1]]]]).astype(np.float32)
    x[:, 2] = 7.0  # a constant channel: its std is taken as 1 (nothing to divide by)
    split = ArraySplit(x, np.zeros(50, np.int64), Preprocess(scale=0.5))
    mean, std = channel_stats(split, max_samples=1000, seed=0, batch_size=7)  # batches that do not divide 50
    want = x.astype(np.float64) * 0.5
    np.testing.assert_allclose(mean, want.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std[:2], want.std(axis=(0, 2, 3))[:2], rtol=1e-5)
    assert std[2] == 1.0
    # At most max_samples, drawn with the seed.
    idx = np.random.default_rng(5).permutation(50)[:20]
    mean, std = channel_stats(split, max_samples=20, seed=5, batch_size=6)
    np.testing.assert_allclose(mean, want[idx].mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std[:2], want[idx].std(axis=(0, 2, 3))[:2], rtol=1e-5)
    assert not np.allclose(mean, want.mean(axis=(0, 2, 3)), rtol=1e-6)
    # Features (N x D): per feature.
    f = rng.normal(size=(40, 5)).astype(np.float32) * np.arange(1, 6) + 10
    mean, std = channel_stats(ArraySplit(f, np.zeros(40, np.int64)), 1000, 0, batch_size=9)
    np.testing.assert_allclose(mean, f.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, f.astype(np.float64).std(0), rtol=1e-4)


def test_npy_rows_read_runs_and_gathers_like_numpy(tmp_path):
    x = np.arange(7 * 3 * 2, dtype=np.int16).reshape(7, 3, 2)
    np.save(tmp_path / "x.npy", x)
    rows = NpyRows(tmp_path / "x.npy")
    assert rows.shape == x.shape and rows.dtype == x.dtype and len(rows) == 7 and rows.ndim == 3
    np.testing.assert_array_equal(rows[2:5], x[2:5])
    np.testing.assert_array_equal(rows[::3], x[::3])
    np.testing.assert_array_equal(rows[np.array([0, 1, 2, 5, 6])], x[[0, 1, 2, 5, 6]])  # two runs
    assert rows[np.zeros(0, np.int64)].shape == (0, 3, 2)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        NpyRows(tmp_path / "cut.npy")


def test_cache_decoded_reads_the_same_samples_from_one_raw_file(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from edgedistill.data.decoded_cache import DecodedCache

    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path / "cache"))
    _images(tmp_path / "imgs", {"train": 3, "test": 2})
    cfg = DataConfig(dataset="image-folder", path=str(tmp_path / "imgs"), preprocess=PreprocessConfig(size=[4, 3]),
                     cache_decoded=True)
    plain = load_data(cfg, 0)
    assert not isinstance(plain.train, DecodedCache)  # load_data lists files; cache_splits decodes
    cached = cache_splits(load_data(cfg, 0), cfg)  # true without a folder: $EDGEDISTILL_CACHE/decoded
    assert isinstance(cached.train, DecodedCache) and not cached.train.decodes
    for a, b in ((plain.train, cached.train), (plain.test, cached.test)):
        np.testing.assert_array_equal(_read_all(a), _read_all(b))
        np.testing.assert_array_equal(a.y, b.y)
    files = sorted((tmp_path / "cache" / "decoded").iterdir())
    assert len(files) == 2 and all(np.load(f).dtype == np.uint8 for f in files)  # raw pixels, one file per split
    stamps = [f.stat().st_mtime_ns for f in files]
    again = cache_splits(load_data(cfg, 0), cfg)  # found by the split's fingerprint: not rebuilt
    assert [f.stat().st_mtime_ns for f in files] == stamps and again.train.where(0) == plain.train.where(0)


def test_cache_decoded_names_an_undecodable_file(tmp_path):
    pytest.importorskip("PIL")
    _images(tmp_path / "imgs", {"train": 3, "test": 2})
    (tmp_path / "imgs" / "train" / "cats" / "1.png").write_bytes(b"not a png")
    cfg = DataConfig(dataset="image-folder", path=str(tmp_path / "imgs"),
                     preprocess=PreprocessConfig(size=[4, 3], mean="none", std="none"))
    with pytest.raises(DataError, match=r"cats/1\.png: cannot be read as an image"):
        cache_splits(load_data(cfg, 0), cfg, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy"))  # nothing half-written


def test_cache_decoded_auto_keeps_image_files_but_not_a_users_dataset_or_what_does_not_fit(
        tmp_path, monkeypatch, datasets_module):
    pytest.importorskip("PIL")
    from edgedistill.data import decoded_cache
    from edgedistill.data.decoded_cache import DecodedCache

    _images(tmp_path / "imgs", {"train": 3, "test": 2})
    images = DataConfig(dataset="image-folder", path=str(tmp_path / "imgs"), preprocess=RAW)
    assert images.cache_decoded == "auto"
    assert not isinstance(cache_splits(load_data(images, 0), images).train, DecodedCache)  # auto needs a folder
    said = []
    s = cache_splits(load_data(images, 0), images, tmp_path / "run" / "data_cache", said.append)
    assert isinstance(s.train, DecodedCache) and isinstance(s.test, DecodedCache)
    assert len(list((tmp_path / "run" / "data_cache").glob("*.npy"))) == 2
    assert said[0].startswith("data: decoding 6 train samples once into ") and "data.cache_decoded = false" in said[0]
    # a map-style dataset's __getitem__ may augment: auto leaves it alone, true keeps it
    factory = DataConfig(dataset="factory", options={"factory": "my_datasets:one"}, preprocess=RAW)
    assert not isinstance(cache_splits(load_data(factory, 0), factory, tmp_path / "f").train, DecodedCache)
    forced = DataConfig(dataset="factory", options={"factory": "my_datasets:one"}, preprocess=RAW, cache_decoded=True)
    assert isinstance(cache_splits(load_data(forced, 0), forced, tmp_path / "f").train, DecodedCache)
    # more than a quarter of the free disk: decoded at every read, and the log says why and what to do
    monkeypatch.setattr(decoded_cache, "AUTO_CACHE_SHARE", 0.0)
    said.clear()
    s = cache_splits(load_data(images, 0), images, tmp_path / "full", said.append)
    assert not isinstance(s.train, DecodedCache) and not (tmp_path / "full").exists()
    assert "would take over a quarter of the" in said[0] and "data.cache_decoded = true" in said[0]
    off = DataConfig(dataset="image-folder", path=str(tmp_path / "imgs"), preprocess=RAW, cache_decoded=False)
    assert not isinstance(cache_splits(load_data(off, 0), off, tmp_path / "off").train, DecodedCache)


def test_a_run_on_an_image_folder_decodes_once_into_its_folder_and_a_skipped_rerun_decodes_nothing(tmp_path):
    pytest.importorskip("PIL")
    import tomllib

    from edgedistill.errors import EdgeDistillError
    from edgedistill.pipeline import run
    from edgedistill.recipe import recipe_from_dict

    def loads_recipe(text):
        return recipe_from_dict(tomllib.loads(text))

    _images(tmp_path / "imgs", {"train": 8, "test": 3}, size=(8, 8))
    text = textwrap.dedent(f"""
        name = "imgs"
        [data]
        dataset = "image-folder"
        path = "{tmp_path / 'imgs'}"
        batch_size = 8
        [teacher]
        arch = "cnn"
        params = {{ width = 4, depth = 1 }}
        epochs = 1
        [student]
        arch = "cnn"
        params = {{ width = 2, depth = 1 }}
        [distill]
        epochs = 1
        [qat]
        enabled = false
        [ptq]
        samples = 8
        [bench]
        runs = 2
        warmup = 1
        min_seconds = 0.0
    """)
    said = []
    report = run(loads_recipe(text), tmp_path / "run", log=said.append)
    assert [m["name"] for m in report["models"]] == ["teacher_fp32", "student_fp32", "student_int8"]
    assert all(0.0 <= m["metric"]["value"] <= 1.0 for m in report["models"])
    cache = tmp_path / "run" / "data_cache"
    assert len(list(cache.glob("*.npy"))) == 2  # train and test (no val/ folder: val split off train is cached with it)
    assert sum(line.startswith("data: decoding ") for line in said) == 2
    said.clear()
    shutil.rmtree(cache)
    run(loads_recipe(text), tmp_path / "run", log=said.append)
    assert all("skipped" in line for line in said if line.startswith("[")) and not cache.exists()
    # a bad key is refused before the run folder, and any data_cache, exists
    with pytest.raises(EdgeDistillError, match="widht"):
        run(loads_recipe(text.replace("width = 2", "widht = 2")), tmp_path / "other", log=said.append)
    assert not (tmp_path / "other").exists()
