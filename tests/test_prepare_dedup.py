"""Deduplication of `prepare`: exact and near duplicates constructed by hand, first-in-input-order survivors."""

from __future__ import annotations

import numpy as np
import pytest

from kobert_pretrain.prepare import dedup as dd

# Two articles on the same topic (a heavy-rain warning in Seoul) written independently, and copies.
RAIN_A = (
    "서울 전역에 호우경보 발령\n"
    "기상청은 14일 오후 3시를 기해 서울 전역에 호우경보를 발령했다고 밝혔다. 이날 오전부터 내린 비는 시간당 최대 "
    "60밀리미터에 달했으며, 일부 저지대 도로는 침수돼 차량 통행이 통제됐다. 서울시는 재난안전대책본부를 가동하고 "
    "하천변 산책로와 지하차도 출입을 막았다. 기상청은 내일 새벽까지 100에서 200밀리미터의 비가 더 내릴 것으로 "
    "내다봤다. 시민들은 외출을 자제하고 하천 주변에 접근하지 말아야 한다고 당국은 당부했다. 지하철은 정상 운행되고 "
    "있으나 일부 버스 노선은 우회하고 있다."
)
RAIN_B = (
    "장맛비에 수도권 곳곳 피해\n"
    "수도권에 강한 장맛비가 이어지면서 피해가 잇따르고 있다. 경기 북부에서는 산사태 우려로 주민 30여 명이 마을회관으로 "
    "대피했고, 인천의 한 아파트 단지에서는 정전이 발생해 복구 작업이 진행 중이다. 소방당국은 배수 지원과 고립 주민 구조 "
    "요청이 200건 넘게 접수됐다고 전했다. 정부는 중앙재난안전대책본부 비상 단계를 높였으며, 기상청은 이번 주말까지 "
    "비가 오락가락하겠다고 예보했다. 농민들은 수확을 앞둔 작물 피해를 걱정하고 있다."
)


def rain_a_retitled() -> str:
    return "[속보] 기상청, 서울 호우경보… 저지대 침수 주의" + RAIN_A[RAIN_A.index("\n"):]


def signed(texts: list[str], threshold: float = 0.8):
    signer = dd.Signer(num_perm=128, ngram=5, seed=1, threshold=threshold)
    signatures = np.stack([signer.signature(t) for t in texts])
    return signer, signatures, signer.band_keys(signatures)


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = set(dd.shingles(a, n)), set(dd.shingles(b, n))
    return len(sa & sb) / len(sa | sb)


def test_copied_article_with_a_changed_headline_is_a_near_duplicate():
    texts = [RAIN_A, RAIN_B, rain_a_retitled()]
    assert 0.8 < jaccard(RAIN_A, rain_a_retitled()) < 0.95
    _, signatures, bands = signed(texts)
    near, matched, similarity = dd.near_duplicates([bands], [signatures], np.ones(3, bool), 0.8)
    assert near.tolist() == [False, False, True]
    assert matched.tolist() == [-1, -1, 0]
    assert similarity[2] == pytest.approx(jaccard(RAIN_A, rain_a_retitled()), abs=0.1)


def test_two_articles_on_the_same_topic_are_not_near_duplicates():
    assert jaccard(RAIN_A, RAIN_B) < 0.1
    _, signatures, bands = signed([RAIN_A, RAIN_B])
    near, _, _ = dd.near_duplicates([bands], [signatures], np.ones(2, bool), 0.8)
    assert near.tolist() == [False, False]


def test_the_first_copy_in_input_order_survives_across_tasks():
    texts = [RAIN_B, rain_a_retitled(), RAIN_A, rain_a_retitled()]
    _, signatures, bands = signed(texts)
    # The same documents as two tasks (work files) of two documents each.
    near, matched, _ = dd.near_duplicates([bands[:2], bands[2:]], [signatures[:2], signatures[2:]],
                                          np.ones(4, bool), 0.8)
    assert near.tolist() == [False, False, True, True]
    assert matched.tolist() == [-1, -1, 1, 1]


def test_documents_not_alive_are_neither_matched_nor_matching():
    texts = [RAIN_A, rain_a_retitled()]
    _, signatures, bands = signed(texts)
    near, _, _ = dd.near_duplicates([bands], [signatures], np.array([False, True]), 0.8)
    assert near.tolist() == [False, False]


def test_signatures_are_the_same_in_every_process_and_seed_dependent():
    a = dd.Signer(128, 5, seed=1, threshold=0.8).signature(RAIN_A)
    assert a.dtype == np.uint32 and a.shape == (128,)
    assert np.array_equal(a, dd.Signer(128, 5, seed=1, threshold=0.8).signature(RAIN_A))
    assert not np.array_equal(a, dd.Signer(128, 5, seed=2, threshold=0.8).signature(RAIN_A))


def test_lsh_bands_come_from_datasketch():
    assert dd.lsh_bands(0.8, 128) == (9, 13)
    bands, rows = dd.lsh_bands(0.5, 64)
    assert bands * rows <= 64


def test_first_of_group_keeps_the_first_in_order():
    keys = np.array([5, 3, 5, 7, 3, 5], dtype=np.uint64)
    assert dd.first_of_group(keys).tolist() == [0, 1, 0, 3, 1, 0]
    assert dd.first_of_group(np.zeros(0, np.uint64)).tolist() == []


@pytest.mark.parametrize("bucket_items", [1, 2, 3, 100])
def test_bucketed_first_of_group_matches_one_sort(bucket_items):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 20, size=n).astype(np.uint64) for n in (7, 0, 13, 5)]
    expected = dd.first_of_group(np.concatenate(parts))
    assert dd.bucketed_first_of_group(parts, bucket_items=bucket_items).tolist() == expected.tolist()


def test_bucketed_first_of_group_with_a_selection():
    parts = [np.array([1, 2, 1], np.uint64), np.array([2, 1], np.uint64)]
    select = [np.array([False, True, True]), np.array([True, True])]
    assert dd.bucketed_first_of_group(parts, select).tolist() == [-1, 1, 2, 1, 2]


def test_hash64_is_stable():
    assert dd.hash64("대한민국") == dd.hash64("대한민국") != dd.hash64("대한민국.")
    assert dd.hash64("") == 13020603013274838756  # blake2b-64 of nothing: fixed across versions and machines


def test_shingles_collapse_whitespace_and_cover_short_text():
    assert dd.shingles("가  나\n다", 3) == ["가 나".encode(), " 나 ".encode(), "나 다".encode()]
    assert dd.shingles("짧다", 5) == ["짧다".encode()]


@pytest.mark.parametrize("bucket_items", [1, 4, 100])
def test_bucketed_duplicates_flags_all_but_the_first_selected(bucket_items):
    parts = [np.array([1, 2, 1], np.uint64), np.array([2, 1, 3], np.uint64)]
    select = [np.array([False, True, True]), np.array([True, True, True])]
    assert dd.bucketed_duplicates(parts, select, bucket_items).tolist() == [False, False, False, True, True, False]
    assert dd.bucketed_duplicates(parts, bucket_items=bucket_items).tolist() == [False, False, True, True, True,
                                                                                 False]
