"""Pairing and truncation, checked against a plain transcription of google-research/bert's algorithm."""

from __future__ import annotations

import numpy as np
import pytest

from kobert_pretrain.shards.documents import TokenizedChunk, read_documents, split_sentences, tokenize_documents, ChunkText
from kobert_pretrain.shards.instances import UniformStream, create_pairs, materialize, truncation_counts


def reference_truncation(len_a, len_b, max_tokens):
    """The reference loop, literally: drop one token from the longer side (B on a tie)."""
    removed_a = removed_b = 0
    while len_a + len_b > max_tokens:
        if len_a > len_b:
            len_a -= 1
            removed_a += 1
        else:
            len_b -= 1
            removed_b += 1
    return removed_a, removed_b


def test_truncation_counts_match_the_reference_loop():
    for len_a in range(1, 40):
        for len_b in range(1, 40):
            for max_tokens in (5, 13, 30, 77):
                assert truncation_counts(len_a, len_b, max_tokens) == reference_truncation(len_a, len_b, max_tokens)


def make_chunk(doc_sentence_lengths):
    """Documents whose token ids encode (document, sentence, position): id = 10000*d + 100*s + k."""
    tokens, sent_start, sent_len, doc_start = [], [], [], [0]
    for d, lengths in enumerate(doc_sentence_lengths):
        for s, n in enumerate(lengths):
            sent_start.append(len(tokens))
            sent_len.append(n)
            tokens.extend(10000 * d + 100 * s + k for k in range(n))
        doc_start.append(len(sent_len))
    return TokenizedChunk(np.array(tokens, dtype=np.int32), np.array(sent_start), np.array(sent_len),
                          np.array(doc_start))


def reference_pairs(documents, max_seq_length, short_seq_prob, random_next_prob, rng):
    """google-research/bert create_instances_from_document over all documents, untruncated.

    Uses the same uniform stream as ours (same call order), so outputs can be compared.
    """
    rng.integers(2**63)  # ours takes the truncation-coin seed first
    u = UniformStream(rng)
    out = []
    for document_index, document in enumerate(documents):
        max_num_tokens = max_seq_length - 3
        target_seq_length = max_num_tokens
        if u.random() < short_seq_prob:
            target_seq_length = u.randint(2, max_num_tokens)
        current_chunk, current_length, i = [], 0, 0
        while i < len(document):
            segment = document[i]
            current_chunk.append(segment)
            current_length += len(segment)
            if i == len(document) - 1 or current_length >= target_seq_length:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = u.randint(1, len(current_chunk) - 1)
                tokens_a = [t for j in range(a_end) for t in current_chunk[j]]
                tokens_b = []
                if len(current_chunk) == 1 or u.random() < random_next_prob:
                    is_random_next = 1
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = u.randint(0, len(documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = documents[random_document_index]
                    random_start = u.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    i -= len(current_chunk) - a_end
                else:
                    is_random_next = 0
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                out.append((tokens_a, tokens_b, is_random_next))
                current_chunk, current_length = [], 0
            i += 1
    return out


@pytest.mark.parametrize("max_seq_length,short_seq_prob", [(32, 0.1), (64, 0.5), (128, 0.0)])
def test_pairs_match_reference_implementation(max_seq_length, short_seq_prob):
    gen = np.random.default_rng(7)
    lengths = [[int(x) for x in gen.integers(1, 30, size=gen.integers(1, 12))] for _ in range(40)]
    chunk = make_chunk(lengths)
    documents = [[chunk.tokens[s:s + n].tolist() for s, n in zip(chunk.sent_start[a:b], chunk.sent_len[a:b])]
                 for a, b in zip(chunk.doc_start[:-1], chunk.doc_start[1:])]
    ours = create_pairs(chunk, max_seq_length, short_seq_prob, 0.5, np.random.default_rng(99))
    ref = reference_pairs(documents, max_seq_length, short_seq_prob, 0.5, np.random.default_rng(99))
    assert len(ours) == len(ref) > 50
    max_tokens = max_seq_length - 3
    front_cuts = 0
    for (a0, a1, b0, b1, nsp), (ref_a, ref_b, ref_nsp) in zip(ours.tolist(), ref):
        assert nsp == ref_nsp
        a, b = chunk.tokens[a0:a1].tolist(), chunk.tokens[b0:b1].tolist()
        cut_a, cut_b = reference_truncation(len(ref_a), len(ref_b), max_tokens)
        assert len(a) == len(ref_a) - cut_a >= 1 and len(b) == len(ref_b) - cut_b >= 1
        # What remains is a contiguous run of the untruncated segment.
        start_a = ref_a.index(a[0])
        assert ref_a[start_a:start_a + len(a)] == a
        start_b = ref_b.index(b[0])
        assert ref_b[start_b:start_b + len(b)] == b
        assert len(a) + len(b) <= max_tokens
        front_cuts += start_a + start_b
    assert front_cuts > 0  # truncation did cut from the front sometimes


def test_pair_structure_on_hand_built_documents():
    chunk = make_chunk([[5, 5, 5, 5, 5, 5]] * 4 + [[3]] * 3)
    pairs = create_pairs(chunk, 16, 0.0, 0.5, np.random.default_rng(0))
    for a0, a1, b0, b1, nsp in pairs.tolist():
        a, b = chunk.tokens[a0:a1] // 10000, chunk.tokens[b0:b1] // 10000
        assert len(set(a.tolist())) == 1 and len(set(b.tolist())) == 1  # one document each
        if nsp == 0:
            assert a[0] == b[0]  # actual next: same document, B right after A
            assert chunk.tokens[b0] // 100 % 100 > chunk.tokens[a1 - 1] // 100 % 100
        else:
            assert a[0] != b[0]  # 7 documents: another one is found within 10 tries
        assert (a1 - a0) + (b1 - b0) <= 13
    # Single-sentence documents can only pair with a random next.
    single = [p for p in pairs.tolist() if chunk.tokens[p[0]] // 10000 >= 4]
    assert single and all(p[4] == 1 for p in single)


def test_random_next_fraction():
    gen = np.random.default_rng(1)
    chunk = make_chunk([[int(x) for x in gen.integers(5, 20, size=40)] for _ in range(100)])
    pairs = create_pairs(chunk, 64, 0.0, 0.5, np.random.default_rng(2))
    # Chunks of one sentence (a document's last) are always random-next: a little over half.
    assert len(pairs) > 1000
    assert 0.5 < pairs[:, 4].mean() < 0.58


def test_materialize_layout():
    tokens = np.arange(100, 200, dtype=np.int32)
    pairs = np.array([[0, 3, 10, 12, 1], [50, 51, 51, 55, 0]])
    flat, offsets, len_a = materialize(tokens, pairs, cls_id=2, sep_id=3)
    assert offsets.tolist() == [0, 8, 16]
    assert flat[:8].tolist() == [2, 100, 101, 102, 3, 110, 111, 3]
    assert flat[8:].tolist() == [2, 150, 3, 151, 152, 153, 154, 3]
    assert len_a.tolist() == [3, 1]


def test_split_sentences_korean():
    text = "오늘은 날씨가 좋다. 원주율은 3.14이다! 정말? “그렇다.” 끝"
    assert split_sentences(text) == ["오늘은 날씨가 좋다.", "원주율은 3.14이다!", "정말?", "“그렇다.”", "끝"]


def test_read_documents_formats(tmp_path):
    f = tmp_path / "in.txt"
    f.write_bytes("\ufeff첫 문장.\n둘째 문장.\n\n\n다음 문서.\n\xff\n".encode("utf-8").replace("\xc3\xbf".encode("latin-1"), b"\xff"))
    counters = ChunkText()
    docs = read_documents([(str(f), 0, f.stat().st_size)], "sentences", counters)
    assert docs == [["첫 문장.", "둘째 문장."], ["다음 문서."]]
    assert counters.undecodable_lines == 1
    g = tmp_path / "docs.txt"
    g.write_text("가나다. 라마바? 사아\n\n자차카.\n", encoding="utf-8")
    docs = read_documents([(str(g), 0, g.stat().st_size)], "documents", ChunkText())
    assert docs == [["가나다.", "라마바?", "사아"], ["자차카."]]


def test_tokenize_cuts_overlong_sentences(debug_vocab):
    from kobert_pretrain.vocab import Vocab

    vocab = Vocab.load(debug_vocab)
    long_sentence = "대한민국의 주권은 국민에게 있다 " * 200
    chunk = tokenize_documents([[long_sentence], ["짧은 문장"]], vocab.sp, max_sentence_tokens=125)
    n = len(vocab.encode(long_sentence))
    assert chunk.num_documents == 2
    assert chunk.sent_len[:-1].max() == 125 and chunk.sent_len[:-1].sum() == n
    assert chunk.doc_start.tolist() == [0, -(-n // 125), -(-n // 125) + 1]
