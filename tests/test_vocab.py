"""Stage 1: the SentencePiece vocabulary (exact pieces, special ids, determinism, casing)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm

from kobert_pretrain.config import VocabConfig
from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import sha256_file
from kobert_pretrain.vocab import SPECIAL_IDS, WORD_START, Vocab, build_vocab

# Recorded with configs/debug.toml (1,000 unigram pieces, 2 threads, seed 42) on the
# konlpy demo corpus and sentencepiece 0.2.x. A change here means the vocabulary changed.
GOLDEN = {
    "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.": (
        ["▁대한민국", "의", "▁주", "권", "은", "▁국민에게", "▁있", "고", ",", "▁모", "든", "▁",
         "권", "력", "은", "▁국민", "으로", "부터", "▁나", "온", "다", "."],
        [530, 7, 129, 124, 12, 588, 72, 36, 15, 156, 123, 5, 124, 242, 12, 91, 33, 117, 243, 0, 24, 6],
    ),
    "모든 국민은 인간으로서의 존엄과 가치를 가진다.": (
        ["▁모", "든", "▁국민", "은", "▁", "인", "간", "으로", "서", "의", "▁", "존", "엄", "과", "▁",
         "가", "치", "를", "▁가진", "다", "."],
        [156, 123, 91, 12, 5, 34, 245, 33, 60, 7, 5, 428, 918, 26, 5, 31, 355, 14, 230, 24, 6],
    ),
    "헌법재판소는 2019년에 공개되었다.": None,
}


def test_exact_pieces_and_ids(debug_vocab):
    vocab = Vocab.load(debug_vocab)
    for text, expected in GOLDEN.items():
        if expected is None:
            continue
        pieces, ids = expected
        assert vocab.sp.encode(text, out_type=str) == pieces
        assert vocab.encode(text) == ids
        # An unknown piece keeps its surface form in out_type=str, and is [UNK] by id.
        assert vocab.pieces(ids) == [p if i else "[UNK]" for p, i in zip(pieces, ids)]


def test_special_ids_and_files(debug_vocab):
    vocab = Vocab.load(debug_vocab)
    assert vocab.size == 1000
    assert [vocab.sp.id_to_piece(i) for i in range(5)] == ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]
    assert {p: vocab.sp.piece_to_id(p) for p in SPECIAL_IDS} == SPECIAL_IDS
    lines = (debug_vocab / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 1000
    assert lines[:5] == ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]
    assert all(lines[i] == vocab.sp.id_to_piece(i) for i in range(1000))
    meta = json.loads((debug_vocab / "vocab.json").read_text(encoding="utf-8"))
    assert meta["spm_model_sha256"] == sha256_file(debug_vocab / "spm.model")
    assert meta["special_ids"] == SPECIAL_IDS
    assert meta["stats"]["sentences"] == 2423
    config = json.loads((debug_vocab / "config.json").read_text(encoding="utf-8"))
    assert config["vocab_size"] == 1000 and config["num_threads"] == 2
    # Plain sentencepiece loads it, with no help from us.
    plain = spm.SentencePieceProcessor(model_file=str(debug_vocab / "spm.model"))
    assert plain.get_piece_size() == 1000


def test_special_tokens_never_produced_from_text(debug_vocab, demo_corpus):
    vocab = Vocab.load(debug_vocab)
    lines = [ln for ln in demo_corpus.read_text(encoding="utf-8").splitlines() if ln]
    lines += ["[CLS] 문장 [SEP] [MASK] [PAD] [UNK]", "<pad> <mask> <s> </s>"]
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in vocab.encode_batch(lines)])
    assert ids.size > 30_000
    assert not np.isin(ids, [1, 2, 3, 4]).any()
    special = vocab.special_table()
    assert special[:5].all() and not special[5:].any()


def test_cased_text_stays_cased(tmp_path, demo_corpus):
    corpus = tmp_path / "cased.txt"
    extra = "KoBERT는 SKT Brain이 공개한 모델이다.\nkobert is a model from skt brain.\n" * 30
    corpus.write_text(demo_corpus.read_text(encoding="utf-8") + "\n" + extra, encoding="utf-8")
    vocab = Vocab.load(_build(tmp_path, corpus, "cased"))
    for text in ("KoBERT는 SKT Brain이 공개한 모델이다.", "kobert skt brain", "Kobert SKT"):
        assert vocab.sp.decode(vocab.encode(text)) == text
    assert vocab.encode("KoBERT") != vocab.encode("kobert")


def _build(tmp_path, corpus, name, **fields):
    cfg = VocabConfig(input=[str(corpus)], out=str(tmp_path / name), vocab_size=800, num_threads=2, **fields)
    return build_vocab(cfg)


def test_same_inputs_and_seed_give_same_model_bytes(tmp_path, demo_corpus):
    a = _build(tmp_path, demo_corpus, "a")
    b = _build(tmp_path, demo_corpus, "b")
    assert (a / "spm.model").read_bytes() == (b / "spm.model").read_bytes()
    assert (a / "vocab.txt").read_bytes() == (b / "vocab.txt").read_bytes()


def test_sampling_is_seeded(tmp_path, demo_corpus):
    # With input_sentence_size below the corpus size, SentencePiece samples sentences:
    # the same seed gives the same model, another seed (almost surely) another one.
    a = _build(tmp_path, demo_corpus, "a", input_sentence_size=1500, seed=1)
    b = _build(tmp_path, demo_corpus, "b", input_sentence_size=1500, seed=1)
    c = _build(tmp_path, demo_corpus, "c", input_sentence_size=1500, seed=2)
    assert (a / "spm.model").read_bytes() == (b / "spm.model").read_bytes()
    assert (a / "spm.model").read_bytes() != (c / "spm.model").read_bytes()


def test_identity_normalization_keeps_compatibility_jamo(tmp_path, demo_corpus):
    # nmt_nfkc maps compatibility jamo (U+314B ㅋ) to conjoining jamo (U+110F), KoBERT issue 21;
    # `identity` keeps the user's characters.
    corpus = tmp_path / "jamo.txt"
    corpus.write_text(demo_corpus.read_text(encoding="utf-8") + "\n" + "정말 웃기다 ㅋㅋㅋ ㅎㅎ\n" * 50, encoding="utf-8")
    nfkc = Vocab.load(_build(tmp_path, corpus, "nfkc"))
    ident = Vocab.load(_build(tmp_path, corpus, "ident", normalization_rule_name="identity"))
    assert ident.sp.decode(ident.encode("ㅋㅋㅋ ㅎㅎ")) == "ㅋㅋㅋ ㅎㅎ"
    assert nfkc.sp.decode(nfkc.encode("ㅋㅋㅋ")) == "\u110f\u110f\u110f"


def test_bpe_model_type(tmp_path, demo_corpus):
    vocab = Vocab.load(_build(tmp_path, demo_corpus, "bpe", model_type="bpe"))
    assert vocab.size == 800
    assert [vocab.sp.id_to_piece(i) for i in range(5)] == ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]


def test_load_refuses_a_modified_model(tmp_path, debug_vocab):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in debug_vocab.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / "spm.model").read_bytes())
    data[-1] ^= 0xFF
    (copy / "spm.model").write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match the sha256"):
        Vocab.load(copy)
    with pytest.raises(UserError, match="not a kobert-pretrain vocab directory"):
        Vocab.load(tmp_path)


def _copy_with_model(tmp_path, debug_vocab, model_bytes):
    """A copy of the vocabulary whose spm.model is `model_bytes`, with vocab.json's sha256 updated to match."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in debug_vocab.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "spm.model").write_bytes(model_bytes)
    meta = json.loads((copy / "vocab.json").read_text(encoding="utf-8"))
    meta["spm_model_sha256"] = sha256_file(copy / "spm.model")
    (copy / "vocab.json").write_text(json.dumps(meta), encoding="utf-8")
    return copy


def test_load_refuses_a_malformed_model_with_a_matching_checksum(tmp_path, debug_vocab):
    copy = _copy_with_model(tmp_path, debug_vocab, b"not a protobuf" * 10)
    with pytest.raises(UserError) as caught:
        Vocab.load(copy)
    assert str(caught.value) == (f"{copy / 'spm.model'} is not a valid SentencePiece model (INTERNAL: could not "
                                 "parse ModelProto); rebuild the vocabulary with `kobert-pretrain vocab`")


def test_stages_report_a_malformed_model_in_one_line(tmp_path, debug_vocab, demo_corpus):
    from conftest import assert_one_line_error, run_cli

    copy = _copy_with_model(tmp_path, debug_vocab, b"not a protobuf" * 10)
    before = {f.name: sha256_file(f) for f in copy.iterdir()}
    result = run_cli("shards", "--config", "configs/debug.toml", "-i", demo_corpus, "--vocab", copy,
                     "--out", tmp_path / "s")
    assert_one_line_error(result, f"{copy / 'spm.model'} is not a valid SentencePiece model")
    assert not (tmp_path / "s").exists()
    doctor = run_cli("doctor", "--local", "--vocab", copy)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    assert f"{copy / 'spm.model'} is not a valid SentencePiece model" in doctor.stdout.splitlines()[1]
    assert {f.name: sha256_file(f) for f in copy.iterdir()} == before


def test_load_of_a_file_says_it_is_a_file(tmp_path, demo_corpus):
    from conftest import assert_one_line_error, run_cli

    with pytest.raises(UserError) as caught:
        Vocab.load(demo_corpus)
    assert str(caught.value) == f"{demo_corpus} is a file, not a vocab directory (give the directory `vocab --out` wrote)"
    with pytest.raises(UserError, match="vocab directory not found"):
        Vocab.load(tmp_path / "nope")
    assert_one_line_error(run_cli("shards", "--config", "configs/debug.toml", "-i", demo_corpus, "--vocab", demo_corpus,
                                  "--out", tmp_path / "s"),
                          f"kobert-pretrain: error: {demo_corpus} is a file, not a vocab directory")
    assert not (tmp_path / "s").exists()


def test_reservoir_sample_is_uniform_and_seeded():
    from kobert_pretrain.vocab import reservoir_sample

    items = [str(i) for i in range(100)]
    assert reservoir_sample(iter(items[:5]), 10, np.random.default_rng(0)) == items[:5]
    a = reservoir_sample(iter(items), 10, np.random.default_rng(3))
    assert a == reservoir_sample(iter(items), 10, np.random.default_rng(3))
    assert len(a) == len(set(a)) == 10
    counts = np.zeros(100)
    rng = np.random.default_rng(0)
    for _ in range(4000):
        counts[[int(x) for x in reservoir_sample(iter(items), 10, rng)]] += 1
    # Each item is kept with probability 0.1: 400 expected, binomial sd 19.
    assert counts.min() > 320 and counts.max() < 480, (counts.min(), counts.max())


def test_word_start_table(debug_vocab):
    vocab = Vocab.load(debug_vocab)
    table = vocab.word_start_table()
    ids = vocab.encode("대한민국의 주권")
    assert [bool(table[i]) for i in ids] == [p.startswith("\u2581") for p in vocab.pieces(ids)]
    assert table[ids[0]] and not table[ids[1]]


def test_shared_corpus_vocab_builds_at_kobert_size(tmp_path, shared_corpus):
    files = sorted((shared_corpus / "boddari").glob("*.txt"))
    cfg = VocabConfig(input=[str(f) for f in files], out=str(tmp_path / "v"), vocab_size=8002, num_threads=2,
                      input_sentence_size=50_000)
    vocab = Vocab.load(build_vocab(cfg))
    assert vocab.size == 8002
    ids = vocab.encode("유네스코는 교육, 과학, 문화 분야의 국제 협력을 증진한다.")
    assert 0 not in ids  # common Korean text has no unknown pieces at 8k


def test_char_lengths_follow_the_pieces(debug_vocab):
    vocab = Vocab.load(debug_vocab)
    lengths = vocab.char_lengths()
    assert lengths.shape == (vocab.size,) and lengths.dtype == np.int32
    assert list(lengths[:5]) == [1, 0, 0, 0, 0]  # [UNK] [PAD] [CLS] [SEP] [MASK]
    for i in range(5, vocab.size):
        assert lengths[i] == len(vocab.sp.id_to_piece(i).replace(WORD_START, "")), vocab.sp.id_to_piece(i)


def test_byte_pieces_add_up_to_one_character_each(tmp_path, demo_corpus):
    vocab = Vocab.load(build_vocab(VocabConfig(input=[str(demo_corpus)], out=str(tmp_path / "v"), vocab_size=1300,
                                               byte_fallback=True, num_threads=1)))
    lengths = vocab.char_lengths()
    text = "뷁똠 가"  # two syllables the constitution never uses: 2 x 3 byte pieces
    ids = vocab.encode(text)
    assert sum(vocab.sp.is_byte(i) for i in ids) == 6
    assert int(lengths[ids].sum()) == len(text.replace(" ", ""))
