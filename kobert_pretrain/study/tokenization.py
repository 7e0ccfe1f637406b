"""How a vocabulary cuts the held-out text: pieces per eojeol and per character, [UNK], syllable pieces,
and how much text one instance of `max_seq_length` tokens holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kobert_pretrain.vocab import WORD_START, Vocab

_BATCH = 2048  # sentences per SentencePiece call


def is_syllable(text: str) -> bool:
    """One precomposed Hangul syllable (가-힣)."""
    return len(text) == 1 and "\uac00" <= text <= "\ud7a3"


def unigram_bits(frequency: np.ndarray) -> float:
    """Entropy in bits per token of the token frequencies: what a model that ignores context scores (the
    distribution is the held-out text's own, so this is slightly optimistic for such a model)."""
    p = frequency[frequency > 0] / max(int(frequency.sum()), 1)
    return float(-(p * np.log2(p)).sum())


def heldout_sentences(path: Path, max_mb: float) -> list[str]:
    """The non-blank lines of `path`, up to `max_mb` of UTF-8 (whole lines)."""
    lines, size, cap = [], 0, max_mb * 1e6
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            size += len(line.encode("utf-8")) + 1
            if size > cap and lines:
                break
            lines.append(line)
    return lines


def tokenization_stats(vocab: Vocab, sentences: list[str], max_seq_length: int) -> dict:
    lengths = vocab.char_lengths()
    syllable = np.array([is_syllable(vocab.sp.id_to_piece(i).replace(WORD_START, "")) for i in range(vocab.size)])
    unk = vocab.sp.unk_id()
    tokens = chars = unks = syllables = 0
    per_sentence = []
    frequency = np.zeros(vocab.size, dtype=np.int64)
    for lo in range(0, len(sentences), _BATCH):
        for ids in vocab.encode_batch(sentences[lo:lo + _BATCH]):
            ids = np.asarray(ids, dtype=np.int64)
            per_sentence.append(len(ids))
            tokens += len(ids)
            chars += int(lengths[ids].sum())
            unks += int((ids == unk).sum())
            syllables += int(syllable[ids].sum())
            frequency += np.bincount(ids, minlength=vocab.size)
    eojeols = sum(len(s.split()) for s in sentences)
    text_chars = sum(len(s) - s.count(" ") for s in sentences)
    per_sentence = np.asarray(per_sentence)
    tokens = max(tokens, 1)
    # [CLS] A [SEP] B [SEP]: three places of an instance hold no text.
    text_slots = max_seq_length - 3
    ordinary = [i for i in range(vocab.size) if not (vocab.sp.is_control(i) or vocab.sp.is_unknown(i)
                                                    or vocab.sp.is_unused(i) or vocab.sp.is_byte(i))]
    return {
        "sentences": len(sentences),
        "eojeols": eojeols,
        "characters": chars,
        "input_characters": text_chars,
        "tokens": int(per_sentence.sum()),
        "pieces_per_eojeol": tokens / max(eojeols, 1),
        "pieces_per_character": tokens / max(chars, 1),
        "unigram_bits_per_char": unigram_bits(frequency) * tokens / max(chars, 1),
        "unk_rate": unks / tokens,
        "single_syllable_token_share": syllables / tokens,
        "single_syllable_vocab_share": float(syllable[ordinary].mean()) if ordinary else 0.0,
        "sentence_tokens": {f"p{q}": float(np.percentile(per_sentence, q)) for q in (50, 90, 99)}
        | {"max": int(per_sentence.max())},
        "sentences_longer_than_instance": float((per_sentence > text_slots).mean()),
        "max_seq_length": max_seq_length,
        "characters_per_instance": text_slots * chars / tokens,
        "eojeols_per_instance": text_slots * eojeols / tokens,
    }
