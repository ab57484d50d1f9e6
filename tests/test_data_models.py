import io
import os
import pickle

import numpy as np
import pytest
import torch

from edgedistill.data.core import ArraySplit, Splits, check_splits
from edgedistill.errors import ConfigError, DataError, EdgeDistillError
from edgedistill.models import build_model, load_checkpoint, save_checkpoint


def test_digits_splits_are_disjoint_and_normalised(digits_splits):
    s = digits_splits
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert s.train.x.dtype == np.float32 and abs(float(s.train.x.mean())) < 0.5


def _splits(x, y, num_classes=3):
    part = ArraySplit(x, y)
    return Splits(train=part, val=ArraySplit(x[:0], y[:0]), test=part, num_classes=num_classes, input_shape=x.shape[1:])


@pytest.mark.parametrize("x, y, match", [
    (np.full((4, 2), np.nan, np.float32), np.zeros(4, np.int64), r"train inputs contain NaN or inf"),
    (np.zeros((4, 2), np.float32), np.array([0, 1, 2, 7]), r"train has label 7, outside 0\.\.2"),
    (np.zeros((4, 2), np.float32), np.zeros(3, np.int64), r"train has 4 inputs but 3 labels"),
    (np.zeros((0, 2), np.float32), np.zeros(0, np.int64), r"the train split is empty"),
])
def test_bad_data_is_refused(x, y, match):
    with pytest.raises(DataError, match=match):
        check_splits(_splits(x, y), "dataset 't'")


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
