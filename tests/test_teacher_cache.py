"""The sharded teacher cache (memory-mapped writes, positioned reads): layout, resuming a killed build, ranks, corrupt shards, ensembles
cached per member, text fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedistill.data import ArraySplit
from edgedistill.data.npy_rows import NpyRows
from edgedistill.distill.cache import (build_cache, build_shards, cache_key, load_or_build, open_cache,
                                       _sample_fingerprints)
from edgedistill.distill.teachers import (CachedTeacher, CallableTeacher, EnsembleCache, EnsembleTeacher,
                                          cache_teacher)
from edgedistill.errors import StageError

N, D, C = 50, 3, 7
W = torch.randn(D, C, generator=torch.Generator().manual_seed(0))


def _x(n=N, seed=0):
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


class Counting:
    """A teacher ``x @ w`` that counts the samples it saw and can fail after ``fail_after`` batches."""

    def __init__(self, w=W, fail_after=None):
        self.w, self.fail_after, self.seen, self.batches = w, fail_after, [], 0

    def __call__(self, xb):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise RuntimeError("killed")
        self.batches += 1
        self.seen.append(xb.clone())
        return {"logits": xb @ self.w}


def _all(cache):
    return cache.rows(np.arange(len(cache)))


def _same(a, b):
    ra, rb = _all(a), _all(b)
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k])


def _build(tmp, teacher, **kw):
    return load_or_build(tmp, teacher, "t", _x(), {}, temperature=2.0, k=3, batch_size=8, shard_size=16, **kw)


def test_layout_on_disk_dtypes_and_memory_mapped_reads(tmp_path):
    cache, hit = _build(tmp_path, Counting())
    assert not hit and len(cache) == N and cache.num_shards == 4  # 16 + 16 + 16 + 2
    key = cache_key("t", ArraySplit(_x(), np.full(N, -1)).fingerprint(), {}, 2.0, 3)
    folder = tmp_path / f"teacher_{key}"
    assert cache.folder == folder
    meta = json.loads((folder / "meta.json").read_text())
    assert {k: meta[k] for k in ("key", "temperature", "num_classes", "k", "dense", "num_samples", "shard_size")} == \
        {"key": key, "temperature": 2.0, "num_classes": C, "k": 3, "dense": False, "num_samples": N, "shard_size": 16}
    assert [s["count"] for s in meta["shards"]] == [16, 16, 16, 2]
    for i in range(4):
        assert (folder / f"shard_{i:05d}.done").is_file()
    shard = cache.arrays[3]
    assert isinstance(shard["probs"], NpyRows) and shard["probs"].dtype == np.float16 and shard["probs"].shape == (2, 3)
    assert shard["indices"].dtype == np.int16 and shard["fingerprints"].dtype == np.float32
    # the rows are the teacher's top-k at T, across shard boundaries, in the asked order
    idx = np.array([49, 0, 17, 16, 15])
    p = torch.softmax(torch.from_numpy(_x()[idx]) @ W / 2.0, 1).topk(3, 1)
    rows = cache.rows(idx)
    np.testing.assert_array_equal(rows["indices"], p.indices.numpy())
    np.testing.assert_allclose(rows["probs"].astype(np.float32), p.values.numpy(), atol=1e-3)
    assert cache.report()["shards"] == 4 and cache.report()["cache_bytes"] == N * (3 * 4 + 4)


def test_an_interrupted_build_resumes_with_only_the_missing_shards(tmp_path):
    whole, _ = _build(tmp_path / "whole", Counting())
    with pytest.raises(RuntimeError, match="killed"):
        _build(tmp_path / "cut", Counting(fail_after=5))  # batches of 8: shards 0 and 1 done, shard 2 begun
    folder = next((tmp_path / "cut").iterdir())
    assert sorted(p.name for p in folder.glob("*.done")) == ["shard_00000.done", "shard_00001.done"]
    with pytest.raises(StageError, match=r"shard_00002 is not built \(no shard_00002.done\); re-run the build"):
        open_cache(folder)
    again = Counting()
    cache, hit = _build(tmp_path / "cut", again)
    assert not hit and sum(len(b) for b in again.seen) == 18  # shards 2 and 3 only
    torch.testing.assert_close(torch.cat(again.seen), torch.from_numpy(_x()[32:]))
    _same(cache, whole)
    third = Counting()
    assert _build(tmp_path / "cut", third)[1] and not third.seen  # all done: a hit, the teacher does not run


def test_ranks_build_their_shards_and_together_make_the_whole_cache(tmp_path):
    whole, _ = _build(tmp_path / "one", Counting())
    r0, r1, calls = Counting(), Counting(), []
    with pytest.raises(StageError, match=r"shard_00001 is not built"):  # rank 0 alone: rank 1's shards missing
        _build(tmp_path / "two", r0, rank=0, world=2, barrier=lambda: calls.append("barrier"))
    assert calls == ["barrier"] and sum(len(b) for b in r0.seen) == 32  # shards 0 and 2
    cache, hit = _build(tmp_path / "two", r1, rank=1, world=2)
    assert not hit and sum(len(b) for b in r1.seen) == 18  # shards 1 and 3
    _same(cache, whole)
    assert _build(tmp_path / "two", Counting(), rank=0, world=2)[1]  # rank 0 again: its shards are done


@pytest.mark.parametrize("damage", ["truncate", "dtype", "marker"])
def test_a_corrupt_shard_is_named_and_rebuilt_by_a_rerun(tmp_path, damage):
    whole, _ = _build(tmp_path, Counting())
    folder = whole.folder
    probs = folder / "shard_00001.probs.npy"
    del whole
    if damage == "truncate":
        probs.write_bytes(probs.read_bytes()[:100])
        match = r"shard_00001.probs.npy has 100 bytes"
    elif damage == "dtype":
        np.save(probs, np.zeros((16, 3), np.float32))
        match = r"shard_00001.probs.npy (has \d+ bytes|holds float32)"
    else:
        (folder / "shard_00001.done").write_text("{")
        match = r"shard_00001.done is unreadable; delete it to rebuild the shard"
    with pytest.raises(StageError, match=match):
        open_cache(folder)
    again = Counting()
    cache, hit = _build(tmp_path, again)  # the re-run finds the shard not done and builds it again
    assert not hit and sum(len(b) for b in again.seen) == 16
    _same(cache, _build(tmp_path / "fresh", Counting())[0])


def test_dense_cache_keeps_whole_outputs(tmp_path):
    cache, _ = load_or_build(tmp_path, Counting(), "t", _x(), {}, temperature=1.0, k=3, dense=True, batch_size=8,
                             shard_size=20)
    assert cache.dense and cache.num_shards == 3 and set(cache.arrays[0]) == {"outputs", "fingerprints"}
    idx = torch.tensor([3, 45, 21])
    x = torch.from_numpy(_x()[idx.numpy()])
    torch.testing.assert_close(cache.teacher_outputs(idx, x)["logits"], x @ W)
    assert cache.report() == {"num_samples": N, "dim": C, "dense": True, "cache_bytes": N * C * 4 + N * 4,
                              "shards": 3, "shard_size": 20}
    with pytest.raises(StageError, match="these inputs differ"):
        cache.teacher_outputs(idx, x + 1)


def test_build_cache_without_a_folder_uses_a_temporary_one_and_save_copies_it(tmp_path):
    cache = build_cache(Counting(), _x(), key="k", temperature=2.0, k=3, shard_size=16)
    tmp = cache.folder
    saved = cache.save(tmp_path / "kept")
    _same(open_cache(saved), cache)
    del cache
    import gc

    gc.collect()
    assert not tmp.exists() and saved.is_dir()


def test_texts_are_fingerprinted_by_a_hash_of_each_string(tmp_path):
    texts = [f"sentence number {i}" for i in range(12)]
    fp = _sample_fingerprints(texts)
    assert fp.dtype == np.float32 and len(set(fp.tolist())) == 12
    np.testing.assert_array_equal(fp, _sample_fingerprints(list(texts)))  # stable
    assert (fp == np.floor(fp)).all() and fp.max() < 2 ** 24  # exact integers in fp32

    class Texts(ArraySplit):  # a text split: read() returns the strings
        def read(self, indices):
            return [texts[int(i)] for i in np.asarray(indices).reshape(-1)]

        def __getitems__(self, indices):
            idx = np.asarray(indices, dtype=np.int64)
            return self.read(idx), self.y[idx], idx

    split = Texts(np.zeros((12, 1), np.float32), np.zeros(12, np.int64))
    w = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    teacher = lambda xb: {"logits": w[[texts.index(s) for s in xb]]}  # noqa: E731
    cache = build_cache(teacher, split, key="k", temperature=1.0, k=2, batch_size=5)
    idx = torch.tensor([4, 1])
    out = cache.teacher_outputs(idx, [texts[4], texts[1]])["logits"]
    assert out.shape == (2, 4)
    with pytest.raises(StageError, match="these inputs differ"):
        cache.teacher_outputs(idx, [texts[4], texts[2]])
    assert np.isnan(_sample_fingerprints([{"ids": 1}, {"ids": 2}])).all()  # other inputs: not checked


def _members():
    ws = [torch.randn(D, C, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)]
    return [CallableTeacher(Counting(w), name=f"m{i}") for i, w in enumerate(ws)]


def test_an_ensemble_is_cached_per_member_and_reuses_members_when_the_weights_change(tmp_path):
    a, b, c = _members()
    x = _x()
    kw = dict(temperature=2.0, k=C, batch_size=16)
    ens = EnsembleTeacher([a, b], [2.0, 1.0])
    cache, hit = cache_teacher(tmp_path, ens, x, {}, **kw)
    assert not hit and isinstance(cache, EnsembleCache) and len(list(tmp_path.iterdir())) == 2
    # all classes kept: the mixed rebuilt logits have the live mix's softmax
    idx = torch.tensor([0, 7, 42])
    xb = torch.from_numpy(x[idx.numpy()])
    cached = CachedTeacher(cache).to("cpu").outputs(xb, (), idx)
    torch.testing.assert_close(torch.softmax(cached["logits"] / 2, 1), torch.softmax(ens(xb)["logits"] / 2, 1),
                               atol=2e-3, rtol=0)
    for i in range(2):
        torch.testing.assert_close(torch.softmax(cached[f"logits@{i}"] / 2, 1),
                                   torch.softmax(ens(xb)[f"logits@{i}"] / 2, 1), atol=2e-3, rtol=0)
    seen = [len(t.fn.seen) for t in (a, b)]
    ens2 = EnsembleTeacher([a, b, c], [1.0, 1.0, 1.0], mix="losses")  # new weights, one more teacher
    cache2, hit = cache_teacher(tmp_path, ens2, x, {}, **kw)
    assert not hit and [len(t.fn.seen) for t in (a, b)] == seen and len(c.fn.seen) > 0  # only the new one ran
    assert len(list(tmp_path.iterdir())) == 3 and cache2.report()["teachers"] == 3
    assert CachedTeacher(cache2).shares() == pytest.approx([1 / 3] * 3) and CachedTeacher(cache).shares() is None
    assert cache_teacher(tmp_path, ens2, x, {}, **kw)[1]  # everything cached: a hit
    # mix = "losses" from the cache: each member's logits@i with the ensemble's shares (fit() still refuses a
    # cache with mix = "losses" in check_term_paths; the cached teacher itself supplies what it needs)
    from edgedistill.distill.losses import LossContext, build_loss
    from edgedistill.distill.train import Term, _term_value

    kd = Term("kd", build_loss("kd", {}, LossContext(num_classes=C, temperature=2.0), "x"), 1.0)
    s_out, y = {"logits": torch.randn(3, C)}, torch.zeros(3, dtype=torch.long)
    cached2 = CachedTeacher(cache2)
    got = _term_value(kd, s_out, cached2.outputs(xb, (), idx), y, cached2.shares())
    want = _term_value(kd, s_out, ens2(xb), y, ens2.shares())
    assert float(got) == pytest.approx(float(want), rel=1e-2)
    with pytest.raises(StageError, match="these inputs differ"):
        CachedTeacher(cache2).outputs(xb + 1, (), idx)


def test_distill_stage_caches_an_ensemble_per_member_and_records_shards(tmp_path):
    from edgedistill.data import Splits
    from edgedistill.distill.stage import distill
    from edgedistill.models import build_model, save_checkpoint
    from edgedistill.recipe import recipe_from_dict

    def cnn(width, seed):
        torch.manual_seed(seed)
        return build_model("cnn", {"width": width, "depth": 1}, (1, 8, 8), 5, "t")

    def data(n, seed):
        g = np.random.default_rng(seed)
        return ArraySplit(g.standard_normal((n, 1, 8, 8)).astype(np.float32), g.integers(0, 5, n).astype(np.int64))

    save_checkpoint(tmp_path / "extra.pt", cnn(4, 4))
    splits = Splits(data(40, 0), data(8, 1), data(8, 2), num_classes=5, input_shape=(1, 8, 8), name="toy")

    def recipe(weight):
        extra = {"kind": "torch", "path": str(tmp_path / "extra.pt"), "arch": "cnn", "params": {"width": 4, "depth": 1}}
        return recipe_from_dict({"data": {"batch_size": 16}, "student": {"params": {"width": 4, "depth": 1}},
                                 "distill": {"epochs": 1, "lr": 1e-2, "device": "cpu", "cache": True, "cache_top_k": 3,
                                             "teacher_weight": weight, "teachers": [extra], "losses": [{"name": "kd"}]}})

    meta = distill(cnn(4, 0), cnn(8, 1), splits, recipe(1.0), tmp_path / "a")
    rec = meta["teacher_cache"]
    assert rec["hit"] is False and rec["teachers"] == 2 and rec["shards"] == 2 and rec["num_samples"] == 40
    assert [m["k"] for m in rec["members"]] == [3, 3] and len(list((tmp_path / "teacher_cache").iterdir())) == 2
    again = distill(cnn(4, 0), cnn(8, 1), splits, recipe(3.0), tmp_path / "b")  # other weights: same members
    assert again["teacher_cache"]["hit"] is True and len(list((tmp_path / "teacher_cache").iterdir())) == 2


def test_a_folder_of_another_cache_is_emptied_by_one_builder_and_refused_with_ranks(tmp_path):
    folder = tmp_path / "teacher_x"
    assert build_shards(Counting(), _x(), folder, key="old", temperature=1.0, k=2, shard_size=16) == [0, 1, 2, 3]
    with pytest.raises(StageError, match=r"holds another cache \(50 samples, key old\); delete the folder"):
        build_shards(Counting(), _x(20), folder, key="new", temperature=1.0, k=2, shard_size=16, rank=0, world=2)
    assert build_shards(Counting(), _x(20), folder, key="new", temperature=1.0, k=2, shard_size=16) == [0, 1]
    assert len(open_cache(folder)) == 20 and not (folder / "shard_00002.done").exists()
