"""The cleaning filters: each one named, switched and tuned in [prepare], and counted on its own.

Two kinds, applied in this order (FILTER_NAMES):

- text filters rewrite a document: normalize (NFC, control and zero-width
  characters), html (tags, entities), url, email, pii (off by default), repeat
  (runs such as ㅋㅋㅋㅋㅋㅋ or !!!!!! capped), whitespace (runs collapsed,
  lines stripped, empty lines dropped). They count the documents they changed,
  the pieces they removed and the characters removed.
- drop filters remove a unit: boilerplate (a line found in many documents,
  decided over the whole corpus), short_sentence, sentence_hangul,
  short_document, document_hangul. They count the units and their characters.

Defaults remove what is surely noise and keep hanja, Latin text and digits:
digits are never capped as repeats, and the Hangul-share filters are off.
Each filter keeps the first few removed pieces of every task as samples for
the report, so a user can judge it.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field

from kobert_pretrain.config import PrepareConfig

FILTER_NAMES = (
    "normalize", "html", "url", "email", "pii", "repeat", "whitespace",
    "boilerplate", "short_sentence", "sentence_hangul", "short_document", "document_hangul",
)
TEXT_FILTERS = FILTER_NAMES[:7]
SAMPLE_CHARS = 300  # a sample longer than this is cut (with "…")

# Cc controls except tab and line feed (CR is turned into a line feed first), and the invisible
# format characters that split words for a tokenizer: zero-width space/joiners, bidi marks, word
# joiner, BOM, soft hyphen, Mongolian vowel separator.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_HTML_TAGS = (
    "a|abbr|article|b|big|blockquote|body|br|button|caption|center|code|dd|del|div|dl|dt|em|figcaption|figure|"
    "font|footer|form|h[1-6]|head|header|hr|html|i|iframe|img|input|ins|label|li|link|meta|nav|noscript|ol|option|"
    "p|pre|s|section|select|small|span|strike|strong|sub|sup|table|tbody|td|textarea|tfoot|th|thead|title|tr|u|ul"
)
# Known tag names only: "<Ronald Dworkin>" or "<책 제목>" are text, "<br/>" and "<span class=x>" are not.
_HTML_BLOCK = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(rf"<!--.*?-->|</?(?:{_HTML_TAGS})(?:\s[^<>]*)?/?>", re.IGNORECASE | re.DOTALL)
_HTML_BREAK = re.compile(r"^</?(?:br|p|div|li|tr|h[1-6])\b", re.IGNORECASE)
_HTML_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
# A URL stops at whitespace, brackets, quotes and Hangul ("http://a.kr에서" keeps 에서), and does
# not end in punctuation.
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()\[\]{}\uac00-\ud7a3]*[^\s<>\"'()\[\]{}.,;:!?\uac00-\ud7a3]",
                  re.IGNORECASE)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Phone numbers (02-123-4567, 010-1234-5678, +82 10 1234 5678) and resident-registration-like
# numbers (YYMMDD-GNNNNNN, the hyphen required: 13 bare digits are usually something else).
_PII = re.compile(r"(?<![\d-])(?:\+82[-. ]?0?\d{1,2}|0\d{1,2})[-. ]\d{3,4}[-. ]\d{4}(?![\d-])"
                  r"|(?<![\d-])\d{6}-[1-8]\d{6}(?![\d-])")
_SPACE_RUN = re.compile(r"[^\S\n]+")
_ANY_SPACE_RUN = re.compile(r"\s+")
_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
_HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")


def _repeat_pattern(limit: int) -> re.Pattern:
    # One character other than a digit or whitespace, then `limit` or more copies of it.
    return re.compile(rf"([^\d\s])\1{{{limit},}}")


def non_space_chars(text: str) -> int:
    return len(text) - text.count(" ")


def hangul_share(text: str) -> float:
    """Hangul syllables and jamo over non-space characters (0 for text without any)."""
    n = non_space_chars(text)
    return len(_HANGUL.findall(text)) / n if n else 0.0


def _visible(text: str) -> str:
    """A sample made readable: invisible characters named, long text cut."""
    shown = "".join(c if c.isprintable() and c not in "\u00a0\u3000" else f"<U+{ord(c):04X}>" for c in text)
    return shown if len(shown) <= SAMPLE_CHARS else shown[:SAMPLE_CHARS] + "…"


@dataclass
class FilterStats:
    """What one filter did: documents it touched, pieces or units removed, characters removed, samples."""

    documents: int = 0
    units: int = 0
    chars: int = 0
    samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"documents": self.documents, "units": self.units, "chars": self.chars, "samples": self.samples}


class Filters:
    """The filters of one [prepare] config, with the counters of one task."""

    def __init__(self, cfg: PrepareConfig):
        self.cfg = cfg
        self.max_samples = cfg.samples_per_filter
        self.stats = {name: FilterStats() for name in self.enabled_names()}
        self._repeat = _repeat_pattern(cfg.max_char_repeat) if cfg.max_char_repeat else None

    def enabled_names(self) -> list[str]:
        c = self.cfg
        on = {
            "normalize": c.normalize, "html": c.strip_html, "url": c.remove_urls, "email": c.remove_emails,
            "pii": c.scrub_pii, "repeat": c.max_char_repeat > 0, "whitespace": True,
            "boilerplate": c.boilerplate_min_docs > 0, "short_sentence": c.min_sentence_chars > 0,
            "sentence_hangul": c.min_sentence_hangul > 0, "short_document": c.min_document_chars > 0,
            "document_hangul": c.min_document_hangul > 0,
        }
        return [name for name in FILTER_NAMES if on[name]]

    def _sample(self, name: str, text: str) -> None:
        samples = self.stats[name].samples
        if len(samples) < self.max_samples:
            samples.append(_visible(text))

    def _count(self, name: str, before: str, after: str, pieces: int) -> str:
        if pieces:
            s = self.stats[name]
            s.documents += 1
            s.units += pieces
            s.chars += len(before) - len(after)
        return after

    # ------------------------------------------------------------------------- text filters

    def clean(self, text: str) -> list[str]:
        """A raw document -> its cleaned, non-empty lines (paragraphs)."""
        text = _LINE_BREAKS.sub("\n", text)
        if "normalize" in self.stats:
            text = self.normalize(text)
        if "html" in self.stats:
            text = self.strip_html(text)
        for name, pattern in (("url", _URL), ("email", _EMAIL), ("pii", _PII)):
            if name in self.stats:
                text = self._remove(name, pattern, text)
        if self._repeat is not None:
            text = self.cap_repeats(text)
        return self.whitespace(text)

    def normalize(self, text: str) -> str:
        nfc = unicodedata.normalize("NFC", text)
        removed = _CONTROL.findall(nfc)
        for ch in removed[: self.max_samples - len(self.stats["normalize"].samples)]:
            self._sample("normalize", ch)
        out = _CONTROL.sub("", nfc) if removed else nfc
        # A document re-composed by NFC counts as touched even when nothing was removed.
        return self._count("normalize", text, out, len(removed) + (nfc != text and not removed))

    def strip_html(self, text: str) -> str:
        pieces = 0

        def block(m: re.Match) -> str:
            nonlocal pieces
            pieces += 1
            self._sample("html", m.group(0))
            return " "

        def tag(m: re.Match) -> str:
            nonlocal pieces
            pieces += 1
            self._sample("html", m.group(0))
            return "\n" if _HTML_BREAK.match(m.group(0)) else " "

        def entity(m: re.Match) -> str:
            nonlocal pieces
            pieces += 1
            self._sample("html", m.group(0))
            return html.unescape(m.group(0))

        out = _HTML_ENTITY.sub(entity, _HTML_TAG.sub(tag, _HTML_BLOCK.sub(block, text)))
        return self._count("html", text, out, pieces)

    def _remove(self, name: str, pattern: re.Pattern, text: str) -> str:
        found = pattern.findall(text)
        if not found:
            return text
        for piece in found[: self.max_samples - len(self.stats[name].samples)]:
            self._sample(name, piece)
        return self._count(name, text, pattern.sub(" ", text), len(found))

    def cap_repeats(self, text: str) -> str:
        limit = self.cfg.max_char_repeat
        pieces = 0

        def cap(m: re.Match) -> str:
            nonlocal pieces
            pieces += 1
            self._sample("repeat", m.group(0))
            return m.group(1) * limit

        out = self._repeat.sub(cap, text)
        return self._count("repeat", text, out, pieces)

    def whitespace(self, text: str) -> list[str]:
        """Collapse whitespace runs to one space, strip lines, drop empty ones; a run left as it was
        (one space inside a line, one line feed between two lines) is not counted."""
        kept = [line for line in (ln.strip() for ln in _SPACE_RUN.sub(" ", text).split("\n")) if line]
        after = "\n".join(kept)
        if after == text:
            return kept
        runs = 0
        for m in _ANY_SPACE_RUN.finditer(text):
            run = m.group(0)
            if m.start() == 0 or m.end() == len(text) or run not in (" ", "\n"):
                runs += 1
                if runs == 1:
                    self._sample("whitespace", text[max(0, m.start() - 1):m.end() + 1])
        self._count("whitespace", text, after, max(runs, 1))
        return kept

    # ------------------------------------------------------------------------- drop filters

    def drop_line(self, name: str, line: str) -> None:
        """Count a line removed by a corpus-wide decision (boilerplate)."""
        s = self.stats[name]
        s.units += 1
        s.chars += len(line)
        self._sample(name, line)

    def sentence_drop(self, sentence: str) -> str | None:
        """The filter that drops this sentence (counted), or None to keep it."""
        c = self.cfg
        if "short_sentence" in self.stats and non_space_chars(sentence) < c.min_sentence_chars:
            return self._drop("short_sentence", sentence)
        if "sentence_hangul" in self.stats and hangul_share(sentence) < c.min_sentence_hangul:
            return self._drop("sentence_hangul", sentence)
        return None

    def document_drop(self, text: str) -> str | None:
        """The filter that drops this document (counted), or None to keep it."""
        c = self.cfg
        if "short_document" in self.stats and non_space_chars(text) < c.min_document_chars:
            return self._drop("short_document", text)
        if "document_hangul" in self.stats and hangul_share(text) < c.min_document_hangul:
            return self._drop("document_hangul", text)
        return None

    def _drop(self, name: str, text: str) -> str:
        s = self.stats[name]
        s.units += 1
        s.chars += len(text)
        self._sample(name, text)
        return name

    def mark_documents(self, names: set[str]) -> None:
        """Count one document touched by each named drop filter (called once per document)."""
        for name in names:
            self.stats[name].documents += 1
