import os

import numpy as np
import pytest
import torch

from edgedistill.data.core import ArraySplit, Splits, check_splits
from edgedistill.data.builtin import MEAN, STD
from edgedistill.errors import ConfigError, DataError, EdgeDistillError
from edgedistill.models import build_model, load_checkpoint, save_checkpoint


def test_digits_splits_are_disjoint_and_normalised(digits_splits):
    s = digits_splits
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    positions = np.concatenate([s.train.indices, s.val.indices, s.test.indices])
    assert len(positions) == 1797 and len(np.unique(positions)) == 1797  # disjoint, and every image is used
    raw = s.train.base.x  # the images stay raw (0..16) in memory; read() scales and standardises a batch
    assert raw.dtype == np.uint8 and raw.max() == 16
    x = s.train.read(np.arange(len(s.train)))
    assert x.dtype == np.float32 and x.shape == (len(s.train), 1, 8, 8) and abs(float(x.mean())) < 0.5
    np.testing.assert_allclose(x, (raw[s.train.indices] / 16.0 - MEAN) / STD, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s.train.y, s.train.base.y[s.train.indices])
    assert s.normalization == {"scale": 1 / 16.0, "mean": [MEAN], "std": [STD]}


def _splits(x, y, num_classes=3):
    part = ArraySplit(x, y)
    return Splits(train=part, val=ArraySplit(x[:0], y[:0]), test=part, num_classes=num_classes, input_shape=x.shape[1:])


@pytest.mark.parametrize("x, y, match", [
    (np.zeros((4, 2), np.float32), np.array([0, 1, 2, 7]), r"^arrays sample 3: has label 7, outside 0\.\.2; fix the labels"),
    (np.zeros((4, 2), np.float32), np.array([0, -2, 2, 1]), r"^arrays sample 1: has label -2, outside 0\.\.2"),
    (np.zeros((4, 2), np.float32), np.zeros(3, np.int64), r"^dataset 't': train has 4 inputs but 3 labels; they must match\.$"),
    (np.zeros((3, 2), np.float32), np.zeros(4, np.int64), r"^dataset 't': train has 3 inputs but 4 labels; they must match\.$"),
    (np.zeros((0, 2), np.float32), np.zeros(0, np.int64), r"the train split is empty"),
])
def test_bad_data_is_refused_up_front(x, y, match):
    with pytest.raises(DataError, match=match):
        check_splits(_splits(x, y), "dataset 't'")


def test_length_mismatch_is_refused_under_a_cap():
    """max_train_samples wraps the train split in a Subset: the arrays under it are still checked."""
    s = _splits(np.zeros((5, 2), np.float32), np.zeros(4, np.int64))
    s.train = s.train.subset(np.arange(2))
    with pytest.raises(DataError, match=r"train has 5 inputs but 4 labels"):
        check_splits(s, "dataset 't'")


def test_nan_is_found_when_its_batch_is_read():
    """NaN/inf are not looked for up front (that would read every sample): read() finds them, naming the sample."""
    x = np.zeros((6, 2), np.float32)
    x[4, 1] = np.inf
    s = check_splits(_splits(x, np.zeros(6, np.int64)), "dataset 't'")  # passes: nothing is read
    np.testing.assert_array_equal(s.train.read([0, 1, 2, 3, 5]), 0.0)
    with pytest.raises(DataError, match=r"^arrays sample 4: contains NaN or inf; clean or drop that sample\.$"):
        s.train.read([5, 3, 4])
    with pytest.raises(DataError, match=r"^x\.npy sample 4: contains NaN or inf"):  # a Subset names the file's sample
        ArraySplit(x, np.zeros(6, np.int64), source="x.npy").subset(np.array([1, 4])).read([0, 1])


def test_read_returns_the_requested_order_with_repeats():
    x = np.arange(12, dtype=np.uint8).reshape(6, 2)
    part = ArraySplit(x, np.zeros(6, np.int64))
    for idx in ([2, 0, 0, 1], [0, 0, 2], [1, 2, 3], [5, 1, 3], []):
        np.testing.assert_array_equal(part.read(idx), x[idx].astype(np.float32).reshape(len(idx), 2))
    sub = part.subset(np.array([4, 1, 1, 3]))
    np.testing.assert_array_equal(sub.read([0, 1, 2, 3]), x[[4, 1, 1, 3]].astype(np.float32))


def test_wrong_shape_is_refused():
    s = _splits(np.zeros((4, 2), np.float32), np.zeros(4, np.int64))
    s.input_shape = (3,)
    with pytest.raises(DataError, match=r"inputs have shape \(2,\), expected \(3,\)"):
        check_splits(s, "d")


def test_unknown_arch_and_param():
    with pytest.raises(ConfigError, match=r"student\.arch: unknown architecture 'vgg'; choose one of: .*cnn"):
        build_model("vgg", {}, (1, 8, 8), 10, "student")
    with pytest.raises(ConfigError, match=r"student\.params\.widht: unknown parameter of 'cnn'; valid ones are: width"):
        build_model("cnn", {"widht": 3}, (1, 8, 8), 10, "student")


def test_checkpoint_round_trip(tmp_path):
    m = build_model("cnn", {"width": 4, "depth": 1}, (1, 8, 8), 10, "t")
    save_checkpoint(tmp_path / "m.pt", m)
    m2 = build_model("cnn", {"width": 4, "depth": 1}, (1, 8, 8), 10, "t")
    load_checkpoint(tmp_path / "m.pt", m2)
    x = torch.randn(2, 1, 8, 8)
    m.eval(), m2.eval()
    assert torch.equal(m(x), m2(x))


def test_wrong_architecture_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "m.pt", build_model("cnn", {"width": 4, "depth": 1}, (1, 8, 8), 10, "t"))
    other = build_model("cnn", {"width": 4, "depth": 2}, (1, 8, 8), 10, "t")
    with pytest.raises(EdgeDistillError, match=r"does not match the recipe's architecture \(missing keys"):
        load_checkpoint(tmp_path / "m.pt", other)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/edgedistill-pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _Evil()}, p)
    with pytest.raises(EdgeDistillError, match=r"refused to load, it holds objects other than tensors"):
        load_checkpoint(p)
    assert not os.path.exists("/tmp/edgedistill-pwned")


def test_truncated_checkpoint(tmp_path):
    m = build_model("cnn", {"width": 4, "depth": 1}, (1, 8, 8), 10, "t")
    save_checkpoint(tmp_path / "m.pt", m)
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgeDistillError, match=r"not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pt", m)
