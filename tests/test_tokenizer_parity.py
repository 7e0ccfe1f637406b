"""The release tokenizer (convert/tokenizer.py) encodes as SentencePiece: corpus lines as they are, in NFD and NFKD,
with compatibility and conjoining jamo, half- and full-width forms, emoji, zero-width spaces and control characters
inserted; every normalization rule the vocab stage offers; special tokens typed in the text."""

from __future__ import annotations

import random
import unicodedata

import pytest

pytest.importorskip("transformers")

from kobert_pretrain.config import SPM_NORMALIZATIONS, VocabConfig  # noqa: E402
from kobert_pretrain.convert.tokenizer import build_tokenizer, check_tokenizer  # noqa: E402
from kobert_pretrain.errors import UserError  # noqa: E402
from kobert_pretrain.vocab import Vocab, build_vocab  # noqa: E402

from conftest import SHARED_CORPUS  # noqa: E402

# What SpmConverter's tokenizer got wrong (a tester's findings), the whitespace rules, and odd characters.
EDGE = [
    unicodedata.normalize("NFD", "대한민국"), "ㅎㅏ", "ㄱㅏ나다", "ㅋㅠㅠ", "웃겨ㅋㅋㅋㅠㅠ", "ｶﾞ", "ﾊﾝｶｸ ﾊﾟﾋﾟﾌﾟ",
    "Ａ\u0301", "ｅ\u0301", "가\u11a8", "각\u11a8", "ü\u0301", "a\u0301\u0323", "a\u0323\u0302", "c\u0323\u0302",
    "ㄱ\x01ㅏ", "\x01가나", "\x7f", "\x00", "～", "ㅋ", "ㅋㅋㅋ ㅎㅎ ㅠㅠ ㄱㄱ", "ᄀᄁ", "ㅏㅑㅓㅕ", "\u115f\u1160",
    "", " ", "  ", "\u200b", "\u200b\u200b가", "가\u200c나", "가\u200d나", " 가", "가 ", "가  나", "  앞뒤 공백  ",
    "\t탭", "줄\n바꿈", "a\r\nb", "\u3000", "가\u3000나", "\u00a0nbsp", "\ufeffBOM", "\u2028", "\u00ad soft hyphen",
    "▁", " ▁ ", "▁▁가", "a▁b", "▁a", "  ▁a", "a ▁ b", "a▁▁b", "가▁",
    "漢字", "😀", "👨‍👩‍👧", "🇰🇷", "👍🏻", "①②③", "㈜ ㎏ ㎡ ℃", "Ⅻ", "ﬁ", "½", "™", "…", "\u0301", "e\u0301",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "\ue000", "\U0010ffff", "𠀀", "Ǆ", "ß", "İ", "I\u0307", "Α\u0345", "Ω\u0342",
    "H\u0331", "x=1;y=2", "Hello WORLD", "2024년 3월 15일, 1,234.5원", "e-mail: test@example.com",
]
INSERTED = ([chr(c) for c in range(0x3131, 0x318F)] + [chr(c) for c in range(0x1100, 0x11FF, 7)]
            + [chr(c) for c in range(0xFF01, 0xFF5F)] + [chr(c) for c in range(0xFFA0, 0xFFDD)]
            + [chr(c) for c in [*range(0x01, 0x20), *range(0x7F, 0xA0)]]
            + ["😀", "👍🏻", "👨‍👩‍👧", "🇰🇷", "\u200b", "\u200c", "\u200d", "\ufeff", "\u3000", "\u00a0", "ﾞ", "ﾟ", "～", "▁"])


@pytest.fixture(scope="module")
def corpus_lines(demo_corpus) -> list[str]:
    """Real Korean sentences: every 25th line of ../shared/corpus (about 2,800) when present, the demo corpus."""
    lines = [ln for ln in demo_corpus.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if SHARED_CORPUS.is_dir():
        shared = [ln for f in sorted(SHARED_CORPUS.rglob("*.txt"))
                  for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        lines += shared[::25]
    return lines


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, corpus_lines):
    path = tmp_path_factory.mktemp("tok") / "corpus.txt"
    path.write_text("\n".join(corpus_lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def vocabs(tmp_path_factory, corpus_file):
    """rule -> a 2,000-piece vocabulary of the corpus lines with that normalization, each built once."""
    built: dict[str, Vocab] = {}

    def get(rule: str) -> Vocab:
        if rule not in built:
            out = tmp_path_factory.mktemp("tokvocab") / rule
            built[rule] = Vocab.load(build_vocab(VocabConfig(input=[str(corpus_file)], out=str(out), vocab_size=2000,
                                                             normalization_rule_name=rule, num_threads=2)))
        return built[rule]

    return get


@pytest.fixture(params=SPM_NORMALIZATIONS)
def vocab(request, vocabs) -> Vocab:
    return vocabs(request.param)


@pytest.fixture(params=[rule for rule in SPM_NORMALIZATIONS if rule != "identity"])
def mapped_vocab(request, vocabs) -> Vocab:
    """The rules with a character map (identity has none)."""
    return vocabs(request.param)


@pytest.fixture
def nmt_vocab(vocabs) -> Vocab:
    return vocabs("nmt_nfkc")


def _variants(lines: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)

    def inserted(line: str) -> str:
        chars = list(line)
        for _ in range(rng.randint(1, 8)):
            chars.insert(rng.randint(0, len(chars)), rng.choice(INSERTED))
        return "".join(chars)

    nfd = [unicodedata.normalize("NFD", ln) for ln in lines]
    return [*lines, *nfd, *(unicodedata.normalize("NFKD", ln) for ln in lines),
            *(inserted(ln) for ln in lines), *(inserted(ln) for ln in nfd)]


def test_corpus_lines_and_their_variants_encode_as_sentencepiece(vocab, corpus_lines):
    tokenizer = build_tokenizer(vocab, 128)
    lines = corpus_lines if vocab.meta["normalization_rule_name"] == "nmt_nfkc" else corpus_lines[::5]
    texts = _variants(lines, seed=7)
    wanted = vocab.sp.encode(texts)
    got = tokenizer(texts, add_special_tokens=False)["input_ids"]
    different = [(text, want, ids) for text, want, ids in zip(texts, wanted, got) if want != ids]
    # The one allowed difference: the same pieces in another order with exactly the same score ('.' '....' '.'
    # or '.' '.' '....'), where SentencePiece's float32 sums and tokenizers' float64 ones round differently.
    ties = [(text, want, ids) for text, want, ids in different
            if sorted(want) == sorted(ids) and vocab.sp.decode(want) == vocab.sp.decode(ids)]
    assert different == ties, different[:3]
    assert len(ties) <= len(texts) // 200, ties[:5]  # runs of one character: 15 of 25,900 texts here


def test_edge_strings_encode_as_sentencepiece(vocab):
    tokenizer = build_tokenizer(vocab, 128)
    for text in EDGE:
        assert tokenizer(text)["input_ids"] == [2, *vocab.sp.encode(text), 3], ascii(text)
    assert check_tokenizer(tokenizer, vocab.sp) > 50


def test_random_character_runs_normalize_as_sentencepiece(mapped_vocab):
    """Normalized text (no ties possible) for 20,000 runs of characters that compose, attach or vanish."""
    vocab = mapped_vocab
    backend = build_tokenizer(vocab, 128).backend_tokenizer
    marks = [cp for cp in range(0x300, 0x370)] + [0x1AB0, 0x1DC0, 0x20D0, 0x302A, 0x3099, 0x309A, 0x0E33, 0x0EB3]
    pool = ([*range(0x41, 0x5B), *range(0x61, 0x7B), *range(0xC0, 0x180), *range(0x1100, 0x1200, 3),
             *range(0x3131, 0x318F), *range(0xAC00, 0xD7A4, 251), *range(0xFF01, 0xFF5F, 2), *range(0xFFA0, 0xFFDD),
             *range(0x1F00, 0x1F80, 5), *range(0x1, 0x20), 0x7F, 0x200B, 0x200D, 0xFF9E, 0x2581, 0x20, 0x3000,
             0x0344, 0x0345, 0x0390, 0x03A5, 0x0399, 0x1D400, 0x1D6B8, 0x2126, 0x212B, 0x3260, 0x326E, 0x33A1]
            + marks * 3)
    rng = random.Random(11)
    runs = ["".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 6))) for _ in range(20_000)]

    def ours(text):
        return "".join(p for p, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))

    for start in range(0, len(runs), 1000):
        batch = "|".join(runs[start:start + 1000])  # '|': maps to itself, composes with nothing
        if vocab.sp.normalize(batch) != ours(batch):
            bad = [r for r in runs[start:start + 1000] if vocab.sp.normalize(r) != ours(r)]
            assert not bad, [(ascii(r), ascii(vocab.sp.normalize(r)), ascii(ours(r))) for r in bad[:5]]


def test_special_tokens_typed_in_text(nmt_vocab):
    """[MASK] stands for a whole word as in training: the spaces before it are its own, what follows it
    continues the word unless a space follows; the other special tokens typed in text are their ids."""
    tokenizer = build_tokenizer(nmt_vocab, 128)
    sp = nmt_vocab.sp
    templates = ("대한민국의 수도는 {}이다.", "{}이다.", "{} 이다.", "가 {} {} 나", "{}")
    # Words that SentencePiece keeps as one piece '▁word' in every template (so [MASK] replaces exactly it).
    words = [w for w in ("서울", "국민", "정부", "사람", "대한민국", "우리", "나라", "시간", "헌법", "세계")
             if all(sp.encode(t.format(w, w), out_type=str).count("▁" + w) == t.count("{}") for t in templates)]
    assert len(words) >= 2, "the test vocabulary should hold some of these words as single pieces"
    for word in words:
        def masked(template):
            return [4 if i == sp.piece_to_id("▁" + word) else i for i in sp.encode(template.format(word, word))]

        for template in templates:
            assert tokenizer(template.format("[MASK]", "[MASK]"))["input_ids"] == [2, *masked(template), 3], \
                (word, template)
        pair = tokenizer("{}이다.".format("[MASK]"), "수도는 {}".format("[MASK]"))
        assert pair["input_ids"] == [2, *masked("{}이다."), 3, *masked("수도는 {}"), 3]
        assert pair["token_type_ids"] == [0] * (len(masked("{}이다.")) + 2) + [1] * (len(masked("수도는 {}")) + 1)
    assert tokenizer("  [MASK]  이다")["input_ids"] == [2, 4, *sp.encode("이다"), 3]
    a, b = sp.encode("대한민국"), sp.encode("수도")
    assert tokenizer("[CLS] 대한민국 [SEP] 수도 [UNK][PAD]", add_special_tokens=False)["input_ids"] == \
        [2, *a, 3, *b, 0, 1]


def test_the_conversion_check_refuses_spmconverters_tokenizer(nmt_vocab):
    """The check at every conversion fails on the stock converter's tokenizer (per-grapheme Precompiled)."""
    vocab = nmt_vocab
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString((vocab.path / "spm.model").read_bytes())
    stock = PreTrainedTokenizerFast(tokenizer_object=SpmConverter.build_tokenizer_from_spm_proto(
        proto, [(p.piece, p.score) for p in proto.pieces]))
    with pytest.raises(UserError, match=r"^tokenizer check failed: '.*' encodes as \[.*\] with the Hugging Face "
                                        r"tokenizer, \[.*\] with sentencepiece \(tokenizers .*\); nothing was written$"):
        check_tokenizer(stock, vocab.sp)
