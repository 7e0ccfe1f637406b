"""Stage 1: a SentencePiece vocabulary with KoBERT's fixed special ids.

`build_vocab(cfg)` writes into `cfg.out`:

    spm.model    the SentencePiece model, loadable by plain `sentencepiece`
    vocab.txt    one piece per line; line number (from 0) = id
    vocab.json   special ids, size, sha256 of spm.model, training stats, config
    config.json  the resolved VocabConfig

The special tokens live inside the SentencePiece model at fixed ids
(`[UNK]=0 [PAD]=1 [CLS]=2 [SEP]=3 [MASK]=4`); `[CLS]`, `[SEP]`, `[MASK]` are
control symbols, so encoding text never produces them, nor `[PAD]`.
Later stages load a vocabulary with `Vocab.load(dir)` and record its sha256,
so shards and checkpoints built from another vocabulary are refused.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from kobert_pretrain import __version__
from kobert_pretrain.config import VocabConfig, to_dict
from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.fsutil import atomic_output_dir, ensure_free_output_dir, sha256_file
from kobert_pretrain.text import ReadStats, iter_lines, resolve_inputs, warn

UNK, PAD, CLS, SEP, MASK = "[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_IDS = {UNK: 0, PAD: 1, CLS: 2, SEP: 3, MASK: 4}
WORD_START = "\u2581"  # '▁', SentencePiece's word-boundary marker

MODEL_FILE = "spm.model"
VOCAB_TXT = "vocab.txt"
META_FILE = "vocab.json"
FORMAT = "kobert-pretrain-vocab/1"


def build_vocab(cfg: VocabConfig) -> Path:
    """Train a SentencePiece model on `cfg.input` and write the vocabulary directory `cfg.out`."""
    problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    out = Path(cfg.out)
    ensure_free_output_dir(out, "vocab")
    paths = resolve_inputs(cfg.input)

    stats = ReadStats()
    too_long = 0
    total_bytes = sum(p.stat().st_size for p in paths)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="vocab: reading", disable=None, file=sys.stderr)

    def sentences():
        nonlocal too_long
        for line in iter_lines(paths, stats, progress=bar.update):
            if not line:
                continue
            if len(line.encode("utf-8")) > cfg.max_sentence_length:
                too_long += 1
                continue
            yield line

    started = time.time()
    model = io.BytesIO()
    if cfg.input_sentence_size and cfg.shuffle_input_sentence:
        # Our own seeded sample (SentencePiece's sampler ignores set_random_generator_seed):
        # memory holds input_sentence_size sentences, whatever the corpus size.
        training_sentences = iter(reservoir_sample(sentences(), cfg.input_sentence_size, np.random.default_rng(cfg.seed)))
    elif cfg.input_sentence_size:
        training_sentences = itertools.islice(sentences(), cfg.input_sentence_size)
    else:
        training_sentences = sentences()
    sampled = 0

    def counted(it):
        nonlocal sampled
        for sentence in it:
            sampled += 1
            yield sentence

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted(training_sentences),
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            normalization_rule_name=cfg.normalization_rule_name,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=cfg.max_sentence_length,
            max_sentencepiece_length=cfg.max_sentencepiece_length,
            split_digits=cfg.split_digits,
            byte_fallback=cfg.byte_fallback,
            num_threads=cfg.num_threads,
            unk_id=SPECIAL_IDS[UNK],
            pad_id=SPECIAL_IDS[PAD],
            bos_id=-1,
            eos_id=-1,
            unk_piece=UNK,
            pad_piece=PAD,
            control_symbols=[CLS, SEP, MASK],
            minloglevel=2,
        )
    except RuntimeError as e:
        bar.close()
        # Warnings gathered while reading come first; the error states the text that was dropped.
        error, states_dropped = _explain_spm_error(e, cfg, stats, too_long)
        for note in stats.warnings(dropped_text=not states_dropped):
            warn(note)
        if too_long and not states_dropped:
            warn(_too_long_warning(too_long, cfg))
        raise error from None
    finally:
        bar.close()

    sentences_read = stats.lines - stats.blank_lines - stats.undecodable_lines - too_long
    for note in stats.warnings():
        warn(note)
    if too_long:
        warn(_too_long_warning(too_long, cfg))

    proto = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    with atomic_output_dir(out, "vocab") as tmp:
        (tmp / MODEL_FILE).write_bytes(proto)
        (tmp / VOCAB_TXT).write_text("".join(p + "\n" for p in pieces), encoding="utf-8")
        meta = {
            "format": FORMAT,
            "tool_version": __version__,
            "sentencepiece_version": spm.__version__,
            "spm_model_sha256": sha256_file(tmp / MODEL_FILE),
            "vocab_size": len(pieces),
            "special_ids": SPECIAL_IDS,
            "model_type": cfg.model_type,
            "normalization_rule_name": cfg.normalization_rule_name,
            "stats": {
                "files": stats.files,
                "bytes": stats.bytes,
                "sentences": sentences_read,
                "training_sentences": sampled,
                "undecodable_lines": stats.undecodable_lines,
                "too_long_lines": too_long,
                "empty_files": len(stats.empty_files),
                "seconds": round(time.time() - started, 2),
            },
            "config": to_dict(cfg),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"vocab: {len(pieces)} pieces from {sentences_read:,} sentences "
        f"({stats.files} file(s), {stats.bytes / 1e6:.1f} MB) in {time.time() - started:.1f}s -> {out}",
        file=sys.stderr,
    )
    return out


def reservoir_sample(items: Iterator[str], k: int, rng: np.random.Generator) -> list[str]:
    """A uniform sample of k items from a stream of unknown length (Li's algorithm L).

    Draws O(k log(n/k)) random numbers rather than one per item, so sampling a
    100M-line corpus costs little more than reading it. Fewer than k items: all of them.
    """
    reservoir = list(itertools.islice(items, k))
    if len(reservoir) < k:
        return reservoir
    # 1 - random() lies in (0, 1], so its log is finite.
    w = math.exp(math.log(1.0 - rng.random()) / k)
    while True:
        # Number of items to pass over before the next one that enters the reservoir.
        skip = math.floor(math.log(1.0 - rng.random()) / math.log1p(-w)) if w < 1.0 else 0
        chosen = next(itertools.islice(items, skip, skip + 1), None)
        if chosen is None:
            return reservoir
        reservoir[int(rng.integers(k))] = chosen
        w *= math.exp(math.log(1.0 - rng.random()) / k)


def _too_long_warning(too_long: int, cfg: VocabConfig) -> str:
    return f"skipped {too_long} line(s) longer than vocab.max_sentence_length={cfg.max_sentence_length} bytes"


def _dropped_text(cfg: VocabConfig, stats: ReadStats, too_long: int) -> list[str]:
    """Why lines of the inputs never reached SentencePiece, one clause each (empty when none were lost)."""
    clauses = []
    if stats.cr_files:
        clauses.append(f"{len(stats.cr_files)} file(s) use CR (classic Mac) line endings, e.g. {stats.cr_files[0]}, "
                       "and only \\n ends a line (convert them first, e.g. tr '\\r' '\\n')")
    non_blank = stats.lines - stats.blank_lines
    if stats.undecodable_lines:
        counted = "all" if stats.undecodable_lines == non_blank else f"{stats.undecodable_lines} of"
        clauses.append(f"{counted} {non_blank} line(s) are not valid UTF-8 (convert them first, e.g. "
                       "iconv -f cp949 -t utf-8)")
    if stats.utf16_files:
        clauses.append(f"{len(stats.utf16_files)} file(s) are UTF-16, e.g. {stats.utf16_files[0]} (convert them "
                       "first, e.g. iconv -f utf-16 -t utf-8)")
    if too_long:
        counted = "all" if too_long == stats.text_lines else f"{too_long} of"
        clauses.append(f"{counted} {stats.text_lines} UTF-8 line(s) are longer than vocab.max_sentence_length="
                       f"{cfg.max_sentence_length} bytes (one sentence per line expected)")
    return clauses


def _explain_spm_error(err: RuntimeError, cfg: VocabConfig, stats: ReadStats,
                       too_long: int) -> tuple[UserError, bool]:
    """Turn SentencePiece's internal errors into one actionable line that says why text was missing.

    Returns the error and whether it states the dropped text (then those warnings are not repeated).
    """
    text = str(err)
    dropped = _dropped_text(cfg, stats, too_long)
    because = "; ".join(dropped)
    if stats.text_lines - too_long <= 0 and dropped:
        if len(dropped) == 1 and stats.undecodable_lines:
            return UserError(
                f"no valid UTF-8 text in the inputs ({stats.undecodable_lines} undecodable lines skipped); "
                "convert them first, e.g. iconv -f cp949 -t utf-8"
            ), True
        return UserError(f"no text left to train on: {because}"), True
    if stats.lines == stats.blank_lines:
        return UserError("the inputs hold only blank lines: there is no text to learn from"), False
    match = re.search(r"Vocabulary size (?:is )?too high \((\d+)\)\. Please set it to a value <= (\d+)", text)
    if match:
        return UserError(
            f"corpus too small for --vocab-size {cfg.vocab_size}: it supports at most {match.group(2)} pieces; "
            + (f"text was dropped: {because}; " if dropped else "") + "lower --vocab-size or add text"
        ), bool(dropped)
    if "Vocabulary size is smaller than required_chars" in text:
        return UserError(
            f"--vocab-size {cfg.vocab_size} is smaller than the number of distinct characters to cover; "
            "raise --vocab-size or lower --vocab.character_coverage"
        ), False
    first_line = text.strip().splitlines()[-1] if text.strip() else repr(err)
    return UserError(f"SentencePiece training failed: {first_line}"
                     + (f"; text was dropped: {because}" if dropped else "")), bool(dropped)


@dataclass
class Vocab:
    """A vocabulary directory written by `build_vocab`, verified on load."""

    path: Path
    sp: spm.SentencePieceProcessor
    sha256: str
    meta: dict

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"{path} is a file, not a vocab directory (give the directory `vocab --out` wrote)")
        if not path.is_dir():
            raise UserError(f"vocab directory not found: {path}")
        model, meta_file = path / MODEL_FILE, path / META_FILE
        if not model.is_file() or not meta_file.is_file():
            raise UserError(f"{path} is not a kobert-pretrain vocab directory (needs {MODEL_FILE} and {META_FILE})")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{meta_file} is corrupt (not JSON)") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{meta_file} is not a kobert-pretrain vocab file (format {FORMAT!r} expected)")
        digest = sha256_file(model)
        if digest != meta.get("spm_model_sha256"):
            raise UserError(f"{model} does not match the sha256 in {meta_file}: the vocab directory was modified")
        try:
            sp = spm.SentencePieceProcessor(model_file=str(model))
        except (RuntimeError, OSError) as e:
            # A model whose checksum was rewritten to match: SentencePiece says only "could not parse ModelProto".
            reason = str(e).strip().splitlines()[-1].replace(f" from {model}", "") if str(e).strip() \
                else type(e).__name__
            raise UserError(f"{model} is not a valid SentencePiece model ({reason}); "
                            "rebuild the vocabulary with `kobert-pretrain vocab`") from None
        if sp.get_piece_size() != meta.get("vocab_size"):
            raise UserError(f"{model} has {sp.get_piece_size()} pieces, {meta_file} says {meta.get('vocab_size')}")
        for piece, idx in SPECIAL_IDS.items():
            if sp.piece_to_id(piece) != idx:
                raise UserError(f"{model} has {piece} at id {sp.piece_to_id(piece)}, expected {idx}")
        return cls(path=path, sp=sp, sha256=digest, meta=meta)

    @property
    def size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def pieces(self, ids) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def word_start_table(self) -> np.ndarray:
        """bool[vocab_size]: True where a piece starts a word (begins with '▁'), for whole-word masking."""
        return np.array([self.sp.id_to_piece(i).startswith(WORD_START) for i in range(self.size)], dtype=bool)

    def char_lengths(self) -> np.ndarray:
        """int32[vocab_size]: the characters of text each piece stands for, the measure of bits per character.

        A piece counts its characters without the word-boundary marker '▁' (whitespace is not text
        here); control and unused pieces count 0; a byte-fallback piece counts 1 if it starts a
        character (an ASCII or UTF-8 lead byte) and 0 if it continues one, so the bytes of one character
        add up to 1. [UNK] counts 1: SentencePiece merges a run of unknown characters into one [UNK],
        so this undercounts text with unknown characters (the study reports the [UNK] rate beside it);
        vocabularies trained on the same text with the same character_coverage know the same
        characters, so their [UNK] runs, and counts, are the same.
        """
        lengths = np.zeros(self.size, dtype=np.int32)
        for i in range(self.size):
            if self.sp.is_control(i) or self.sp.is_unused(i):
                continue
            if self.sp.is_unknown(i):
                lengths[i] = 1
            elif self.sp.is_byte(i):
                lengths[i] = int(not 0x80 <= int(self.sp.id_to_piece(i)[1:-1], 16) < 0xC0)
            else:
                lengths[i] = len(self.sp.id_to_piece(i).replace(WORD_START, ""))
        return lengths

    def special_table(self) -> np.ndarray:
        """bool[vocab_size]: True for control and unknown pieces (never drawn as random replacements)."""
        return np.array(
            [self.sp.is_control(i) or self.sp.is_unknown(i) or self.sp.is_unused(i) for i in range(self.size)],
            dtype=bool,
        )
