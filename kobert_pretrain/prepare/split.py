"""Korean sentence splitting, with a round-trip check and a rule-based fallback.

The splitter is kiwipiepy's `Kiwi.split_into_sents` (chosen over kss by a
measurement on ../shared/raw, see README "Stage 0"): a morphological analyser
that knows that "3.14를" and "U.S." do not end sentences and that "다" before a
closing quote does. Every paragraph (a cleaned input line) is split on its own,
so a sentence never spans a paragraph break.

Round trip: the sentences of a paragraph joined must equal the paragraph up to
whitespace. A splitter that drops or alters text is caught there, and the
paragraph is split by the rule of `shards` (after . ? ! and whitespace)
instead; `Splitter.fallbacks` counts those paragraphs and keeps a few samples.
"""

from __future__ import annotations

import re
import warnings

from kobert_pretrain.text import split_sentences

_WHITESPACE = re.compile(r"\s+")
SAMPLE_CHARS = 300


# `shards --input-format documents`'s rule (after . ? ! and whitespace), shared through text.py
rule_split = split_sentences


def same_text(sentences: list[str], paragraph: str) -> bool:
    """Whether `sentences` hold exactly the characters of `paragraph`, whitespace aside."""
    return _WHITESPACE.sub("", "".join(sentences)) == _WHITESPACE.sub("", paragraph)


class Splitter:
    """Splits paragraphs into sentences with `name` ("kiwi" or "rule"), checking every result."""

    def __init__(self, name: str, max_samples: int = 8):
        self.name = name
        self.max_samples = max_samples
        self.paragraphs = 0
        self.fallbacks = 0
        self.fallback_samples: list[str] = []
        self._kiwi = None
        if name == "kiwi":
            from kiwipiepy import Kiwi

            with warnings.catch_warnings():
                # kiwipiepy warns that 0 meant "all cores" before 0.21; since then it means one thread.
                warnings.simplefilter("ignore", DeprecationWarning)
                # One thread per worker process: workers and ranks are the parallelism.
                self._kiwi = Kiwi(num_workers=0)

    def split(self, paragraph: str) -> list[str]:
        """The sentences of one paragraph (no empty ones, none with a line break)."""
        self.paragraphs += 1
        if self._kiwi is None:
            return rule_split(paragraph)
        try:
            sentences = [s.text.strip() for s in self._kiwi.split_into_sents(paragraph)]
            sentences = [s for s in sentences if s]
        except Exception:  # noqa: BLE001 - a splitter crash on one odd paragraph must not end the run
            sentences = None
        if sentences is None or not same_text(sentences, paragraph):
            return self._fall_back(paragraph)
        return sentences

    def _fall_back(self, paragraph: str) -> list[str]:
        self.fallbacks += 1
        if len(self.fallback_samples) < self.max_samples:
            shown = paragraph if len(paragraph) <= SAMPLE_CHARS else paragraph[:SAMPLE_CHARS] + "…"
            self.fallback_samples.append(shown)
        return rule_split(paragraph)
