"""Input text -> documents -> token ids, for one chunk of the input.

A chunk is a list of byte ranges of input files whose boundaries fall on
document boundaries (a blank line, or the end of a file; with
`input_format = "documents"`, the end of a line). Reading a chunk yields its
documents as a flat token array plus sentence and document offsets, which is
all the pairing step needs.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import numpy as np

from kobert_pretrain.text import split_sentences

ENCODE_BATCH = 4096  # sentences encoded at a time


@dataclass
class ChunkText:
    """Counters of one chunk's reading."""

    lines: int = 0
    undecodable_lines: int = 0
    bytes: int = 0
    undecodable_by_file: dict[str, int] = field(default_factory=dict)


def read_documents(segments: list[tuple[str, int, int]], input_format: str, counters: ChunkText) -> list[list[str]]:
    """The documents of a chunk, each a list of non-empty sentences."""
    documents: list[list[str]] = []
    for path, start, end in segments:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        counters.bytes += len(data)
        if start == 0 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        lines = [line.strip() for line in _decoded_lines(data, path, counters)]
        if input_format == "documents":
            documents += filter(None, map(split_sentences, lines))
        else:
            # Runs of non-empty lines are the documents (groupby: a C loop, not a Python one per line).
            documents += (list(run) for nonempty, run in itertools.groupby(lines, bool) if nonempty)
    return documents


def _decoded_lines(data: bytes, path: str, counters: ChunkText) -> list[str]:
    """The lines of a segment; lines that are not UTF-8, or hold a NUL byte (binary data, UTF-16), are dropped
    and counted, as `text.iter_lines` does for the vocabulary."""
    counters.lines += data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    if b"\0" not in data:
        try:
            return data.decode("utf-8").split("\n")  # fast path: the whole segment is valid
        except UnicodeDecodeError:
            pass
    lines = []
    for raw in data.split(b"\n"):
        line = None
        if b"\0" not in raw:
            with contextlib.suppress(UnicodeDecodeError):
                line = raw.decode("utf-8")
        if line is None:
            counters.undecodable_lines += 1
            counters.undecodable_by_file[path] = counters.undecodable_by_file.get(path, 0) + 1
        else:
            lines.append(line)
    return lines


@dataclass
class TokenizedChunk:
    """Documents as flat arrays: sentence s is tokens[sent_start[s] : sent_start[s] + sent_len[s]];
    document d is sentences doc_start[d] .. doc_start[d + 1] - 1."""

    tokens: np.ndarray  # int32 (total_tokens,)
    sent_start: np.ndarray  # int64 (num_sentences,)
    sent_len: np.ndarray  # int64 (num_sentences,)
    doc_start: np.ndarray  # int64 (num_documents + 1,)

    @property
    def num_documents(self) -> int:
        return len(self.doc_start) - 1


def tokenize_documents(documents: list[list[str]], sp, max_sentence_tokens: int) -> TokenizedChunk:
    """Encode every sentence; drop sentences with no tokens and documents with no sentences.

    A sentence longer than `max_sentence_tokens` (a 10 MB line without sentence
    ends, say) is cut into consecutive pieces of that length, so its text is used
    rather than truncated away as the reference implementation would.
    """
    flat = [s for doc in documents for s in doc]
    # Encoded ids are Python lists of Python ints (~40 bytes an id): converted ENCODE_BATCH sentences
    # at a time, they never hold more than a few MB (all at once: ~30 MB for a 4 MB chunk).
    token_parts, length_parts = [], []
    for lo in range(0, len(flat), ENCODE_BATCH):
        encoded = sp.encode(flat[lo:lo + ENCODE_BATCH], num_threads=1)
        length_parts.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        token_parts.append(np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32,
                                       count=int(length_parts[-1].sum())))
    lengths = np.concatenate(length_parts) if flat else np.zeros(0, np.int64)
    tokens = np.concatenate(token_parts) if flat else np.zeros(0, np.int32)
    starts = np.cumsum(lengths) - lengths

    # Cut each sentence into ceil(len / max) pieces (0 for a sentence with no tokens).
    pieces = -(-lengths // max_sentence_tokens)
    sentence_of_piece = np.repeat(np.arange(len(lengths)), pieces)
    k = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # piece number in its sentence
    sent_start = starts[sentence_of_piece] + k * max_sentence_tokens
    sent_len = np.minimum(max_sentence_tokens, lengths[sentence_of_piece] - k * max_sentence_tokens)
    # Documents: their pieces are contiguous; documents left with no piece are dropped.
    sentences_per_doc = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    pieces_before = np.concatenate([[0], np.cumsum(pieces)])
    doc_end = pieces_before[np.cumsum(sentences_per_doc)]
    doc_size = np.diff(np.concatenate([[0], doc_end]))
    doc_start = np.concatenate([[0], doc_end[doc_size > 0]])
    return TokenizedChunk(tokens=tokens, sent_start=sent_start.astype(np.int64), sent_len=sent_len.astype(np.int64),
                          doc_start=doc_start.astype(np.int64))
