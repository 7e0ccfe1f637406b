"""Sentence splitting of `prepare`: kiwipiepy on Korean prose, the round-trip check and the rule fallback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kobert_pretrain.prepare.split import Splitter, rule_split, same_text
from kobert_pretrain.shards.documents import split_sentences as shards_rule


@pytest.fixture(scope="module")
def kiwi() -> Splitter:
    return Splitter("kiwi")


def test_kiwi_splits_korean_prose(kiwi):
    assert kiwi.split("안녕하세요. 저는 3.14를 좋아해요! 그래서요 \"정말?\" 하고 물었다") == [
        "안녕하세요.", "저는 3.14를 좋아해요!", "그래서요 \"정말?\" 하고 물었다"]
    assert kiwi.split("대한민국은 민주공화국이다") == ["대한민국은 민주공화국이다"]
    assert (kiwi.paragraphs, kiwi.fallbacks) == (2, 0)


def test_kiwi_keeps_every_character(kiwi):
    paragraph = "1.5배 늘었다.그 뒤에 U.S. 정부는 (예: A.B.) 발표했다…  끝!"
    assert same_text(kiwi.split(paragraph), paragraph)


def test_a_splitter_that_loses_text_falls_back_to_the_rule_and_is_counted():
    splitter = Splitter("rule")
    # A stand-in for a Kiwi that drops the last sentence.
    first = lambda text: text.partition(". ")[0] + ("." if ". " in text else "")  # noqa: E731
    splitter._kiwi = SimpleNamespace(split_into_sents=lambda text: [SimpleNamespace(text=first(text))])
    assert splitter.split("첫 문장이다. 둘째 문장이다.") == ["첫 문장이다.", "둘째 문장이다."]
    assert (splitter.fallbacks, splitter.fallback_samples) == (1, ["첫 문장이다. 둘째 문장이다."])
    assert splitter.split("한 문장뿐이다.") == ["한 문장뿐이다."]
    assert splitter.fallbacks == 1


def test_a_splitter_that_crashes_falls_back():
    def crash(text):
        raise RuntimeError("odd input")

    splitter = Splitter("rule")
    splitter._kiwi = SimpleNamespace(split_into_sents=crash)
    assert splitter.split("가. 나.") == ["가.", "나."]
    assert splitter.fallbacks == 1


def test_same_text_ignores_whitespace_only():
    assert same_text(["가 나.", "다"], "가나. 다")
    assert not same_text(["가 나."], "가 나. 다")
    assert not same_text(["가 나!"], "가 나.")


@pytest.mark.parametrize("text, sentences", [
    ("첫 문장. 둘째 문장? 셋째!", ["첫 문장.", "둘째 문장?", "셋째!"]),
    ("원주율은 3.14이다. \"정말?\" 그렇다.” 다음", ["원주율은 3.14이다.", "\"정말?\"", "그렇다.”", "다음"]),
    ("끝에 공백이 없다.", ["끝에 공백이 없다."]),
    ("전각 마침표．다음 문장。 그리고", ["전각 마침표．다음 문장。", "그리고"]),  # a stop needs a space after it
])
def test_the_rule_fallback_splits_as_the_shards_stage(text, sentences):
    assert rule_split(text) == sentences
    assert shards_rule(text) == sentences


def test_rule_splitter():
    assert Splitter("rule").split("가. 나? 다! 라") == ["가.", "나?", "다!", "라"]
