"""Each cleaning filter of `prepare` on hand-made input, with the exact output and counts."""

from __future__ import annotations

import dataclasses

import pytest

from kobert_pretrain.config import PrepareConfig
from kobert_pretrain.prepare.filters import Filters, hangul_share, non_space_chars


def make(**overrides) -> Filters:
    return Filters(dataclasses.replace(PrepareConfig(), **overrides))


def counts(f: Filters, name: str) -> tuple[int, int, int]:
    s = f.stats[name]
    return s.documents, s.units, s.chars


def test_normalize_composes_nfc_and_removes_control_and_zero_width():
    f = make()
    decomposed = "\u1100\u1161\u11a8"  # 각 as conjoining jamo
    assert f.clean(f"{decomposed}시\u200b다\x07 끝\ufeff") == ["각시다 끝"]
    assert counts(f, "normalize") == (1, 3, 5)  # 3 removed, 2 fewer characters from NFC
    assert f.stats["normalize"].samples == ["<U+200B>", "<U+0007>", "<U+FEFF>"]


def test_normalize_counts_a_document_only_recomposed():
    f = make()
    assert f.clean("\u1100\u1161 나") == ["가 나"]
    assert counts(f, "normalize") == (1, 1, 1)


def test_html_tags_and_entities():
    f = make()
    text = "<p>첫 문단&nbsp;이다.</p><script>var x = 1;</script><span class=\"a\">둘</span> &amp; 셋 &#54620;"
    assert f.clean(text) == ["첫 문단 이다.", "둘 & 셋 한"]
    # A script block, four tags and three entities; </p> becomes a line break.
    assert counts(f, "html")[:2] == (1, 8)
    assert f.stats["html"].samples == ["<script>var x = 1;</script>", "<p>", "</p>", '<span class="a">', "</span>",
                                       "&nbsp;", "&amp;", "&#54620;"]


def test_html_keeps_angle_brackets_that_are_not_tags():
    f = make()
    assert f.clean("<책 제목>과 <Ronald Dworkin>, 3 < 4 > 2") == ["<책 제목>과 <Ronald Dworkin>, 3 < 4 > 2"]
    assert "html" in f.stats and counts(f, "html") == (0, 0, 0)


def test_url_and_email_removed_korean_after_them_kept():
    f = make()
    out = f.clean("자세한 것은 https://example.com/a?b=1에서, www.naver.com. 문의 kim.ys@korea.ac.kr 로")
    assert out == ["자세한 것은 에서, . 문의 로"]
    assert counts(f, "url") == (1, 2, len("https://example.com/a?b=1") + len("www.naver.com") - 2)
    assert f.stats["url"].samples == ["https://example.com/a?b=1", "www.naver.com"]
    assert f.stats["email"].samples == ["kim.ys@korea.ac.kr"]


def test_pii_off_by_default_and_scrubbed_when_on():
    text = "전화 010-1234-5678 또는 02-123-4567, 번호 900101-1234567, 금액 1,234,567원"
    assert make().clean(text) == [text]
    f = make(scrub_pii=True)
    assert f.clean(text) == ["전화 또는 , 번호 , 금액 1,234,567원"]
    assert f.stats["pii"].samples == ["010-1234-5678", "02-123-4567", "900101-1234567"]


def test_repeat_caps_runs_but_never_digits():
    f = make()
    assert f.clean("ㅋㅋㅋㅋㅋㅋ 좋아!!!!!! 1000000원 ㅋㅋㅋ") == ["ㅋㅋㅋ 좋아!!! 1000000원 ㅋㅋㅋ"]
    assert counts(f, "repeat") == (1, 2, 6)
    assert f.stats["repeat"].samples == ["ㅋㅋㅋㅋㅋㅋ", "!!!!!!"]
    assert make(max_char_repeat=2).clean("ㅎㅎㅎㅎ") == ["ㅎㅎ"]
    assert make(max_char_repeat=0).clean("ㅎㅎㅎㅎ") == ["ㅎㅎㅎㅎ"]


def test_whitespace_collapses_strips_and_drops_empty_lines():
    f = make()
    assert f.clean("  첫\u00a0\u00a0줄\t끝 \r\n\r\n\u3000\n둘째  줄\u2028셋째") == ["첫 줄 끝", "둘째 줄", "셋째"]
    documents, units, chars = counts(f, "whitespace")
    assert (documents, chars) == (1, len("  첫\u00a0\u00a0줄\t끝 \n\n\u3000\n둘째  줄\n셋째") - len("첫 줄 끝\n둘째 줄\n셋째"))
    assert units == 5  # leading "  ", "\u00a0\u00a0", "\t", " \n\n\u3000\n", "  "
    assert make().clean("한 줄\n두 줄") == ["한 줄", "두 줄"]


def test_clean_text_untouched_counts_nothing():
    f = make()
    assert f.clean("대한민국의 주권은 국민에게 있다.\n모든 권력은 국민으로부터 나온다.") == [
        "대한민국의 주권은 국민에게 있다.", "모든 권력은 국민으로부터 나온다."]
    assert all(s.documents == s.units == s.chars == 0 for s in f.stats.values())


def test_hanja_latin_and_digits_are_kept():
    f = make()
    text = "大韓民國 헌법 제1조 (Constitution of the Republic of Korea, 1948)"
    assert f.clean(text) == [text]


def test_short_sentence_and_hangul_sentence_filters():
    f = make(min_sentence_chars=3, min_sentence_hangul=0.5)
    assert f.sentence_drop("네.") == "short_sentence"
    assert f.sentence_drop("This is English text.") == "sentence_hangul"
    assert f.sentence_drop("이건 한국어 문장이다.") is None
    assert f.sentence_drop("BTS는 한국 가수다.") is None  # 6 Hangul of 12 non-space characters
    assert counts(f, "short_sentence") == (0, 1, 2)
    assert counts(f, "sentence_hangul") == (0, 1, len("This is English text."))
    assert f.stats["sentence_hangul"].samples == ["This is English text."]


def test_document_filters():
    f = make(min_document_chars=10, min_document_hangul=0.3)
    assert f.document_drop("짧은 글") == "short_document"
    assert f.document_drop("def f(x): return x * 2  # Python 코드") == "document_hangul"
    assert f.document_drop("충분히 긴 한국어 문서입니다.") is None
    assert "document_hangul" not in make().stats and "sentence_hangul" not in make().stats  # off by default


def test_disabled_filters_leave_text_alone():
    f = make(normalize=False, strip_html=False, remove_urls=False, remove_emails=False, max_char_repeat=0)
    text = "<b>굵게</b> http://a.kr a@b.kr ㅋㅋㅋㅋㅋ \u200b"
    assert f.clean(text) == [text.strip()]
    assert set(f.stats) == {"whitespace", "boilerplate", "short_sentence", "short_document"}


def test_samples_are_capped_and_visible():
    f = make(samples_per_filter=2)
    f.clean("a\u200bb\u200bc\u200bd")
    assert f.stats["normalize"].samples == ["<U+200B>", "<U+200B>"]
    assert counts(f, "normalize") == (1, 3, 3)


@pytest.mark.parametrize("text, share", [("한국어", 1.0), ("ab 가나", 0.5), ("", 0.0), ("123", 0.0)])
def test_hangul_share(text, share):
    assert hangul_share(text) == share


def test_non_space_chars():
    assert non_space_chars("가 나 다") == 3
