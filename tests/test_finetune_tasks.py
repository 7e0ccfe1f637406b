"""Stage 5 task files: each format parsed exactly, the task detected, labels mapped, bad input named by file:line."""

from __future__ import annotations

import pytest

from kobert_pretrain.errors import UserError
from kobert_pretrain.finetune.tasks import (PAIR_CLASSIFICATION, PAIR_REGRESSION, SENTENCE_CLASSIFICATION,
                                            detect_task, label_mapping, read_task, read_task_file, task_spec)

from conftest import ROOT, assert_one_line_error, run_cli

SHARED_EVAL = ROOT.parent / "shared" / "eval"

NSMC = "id\tdocument\tlabel\n9976970\t아 더빙.. 진짜 짜증나네요 목소리\t0\n3819312\t흠...포스터보고 초딩영화줄....오버연기조차 가볍지 않구나\t1\n"
KORNLI = ("sentence1\tsentence2\tgold_label\n"
          "그리고 그가 말했다, \"엄마, 저 왔어요.\"\t그는 한마디도 하지 않았다.\tcontradiction\n"
          "그리고 그가 말했다, \"엄마, 저 왔어요.\"\t그는 엄마에게 말했다.\tentailment\n"
          "그는 집에 왔다.\t그는 학교에 있었다.\tneutral\n")
KORSTS = ("genre\tfilename\tyear\tid\tscore\tsentence1\tsentence2\n"
          "main-captions\tMSRvid\t2012test\t0000\t5.000\t안전모를 가진 한 남자가 춤을 추고 있다.\t안전모를 쓴 한 남자가 춤을 추고 있다.\n"
          "main-captions\tMSRvid\t2012test\t0002\t4.750\t어린아이가 말을 타고 있다.\t아이가 말을 타고 있다.\n")


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_nsmc_format_parsed_exactly(tmp_path):
    path = write(tmp_path, "nsmc.tsv", NSMC)
    assert detect_task(path) == SENTENCE_CLASSIFICATION
    data, raw = read_task_file(path, task_spec(SENTENCE_CLASSIFICATION))
    assert data.texts == ["아 더빙.. 진짜 짜증나네요 목소리", "흠...포스터보고 초딩영화줄....오버연기조차 가볍지 않구나"]
    assert data.text_pairs is None and raw == ["0", "1"] and data.labels == ["0", "1"]


def test_kornli_format_parsed_exactly_quotes_kept(tmp_path):
    path = write(tmp_path, "nli.tsv", KORNLI)
    assert detect_task(path) == PAIR_CLASSIFICATION
    train, dev, test, labels = read_task(task_spec(PAIR_CLASSIFICATION), path, path)
    assert train.texts[0] == "그리고 그가 말했다, \"엄마, 저 왔어요.\""  # a TSV, not CSV: quotes are text
    assert train.text_pairs == ["그는 한마디도 하지 않았다.", "그는 엄마에게 말했다.", "그는 학교에 있었다."]
    assert labels == ["contradiction", "entailment", "neutral"]  # sorted order = ids
    assert train.labels == [0, 1, 2] and dev.labels == [0, 1, 2] and test is None


def test_korsts_format_parsed_exactly(tmp_path):
    path = write(tmp_path, "sts.tsv", KORSTS)
    assert detect_task(path) == PAIR_REGRESSION
    train, _, _, labels = read_task(task_spec(PAIR_REGRESSION), path, path)
    assert labels is None and train.labels == [5.0, 4.75]
    assert train.texts == ["안전모를 가진 한 남자가 춤을 추고 있다.", "어린아이가 말을 타고 있다."]
    assert train.text_pairs == ["안전모를 쓴 한 남자가 춤을 추고 있다.", "아이가 말을 타고 있다."]


def test_bom_crlf_blank_lines_and_line_separator_characters(tmp_path):
    text = "\ufeffid\tdocument\tlabel\r\n1\t첫 줄\u2028같은 줄\x0b이다\t1\r\n\r\n2\t둘\t0\r\n"
    data, _ = read_task_file(write(tmp_path, "a.tsv", text), task_spec(SENTENCE_CLASSIFICATION))
    assert data.texts == ["첫 줄\u2028같은 줄\x0b이다", "둘"] and data.labels == ["1", "0"]


def test_configured_column_names_and_detection(tmp_path):
    path = write(tmp_path, "r.tsv", "review\tstars\n좋아요\tpos\n별로\tneg\n")
    assert detect_task(path, text_column="review", label_column="stars") == SENTENCE_CLASSIFICATION
    spec = task_spec(SENTENCE_CLASSIFICATION, text_column="review", label_column="stars")
    train, _, _, labels = read_task(spec, path, path)
    assert train.texts == ["좋아요", "별로"] and labels == ["neg", "pos"] and train.labels == [1, 0]


def test_numeric_labels_sorted_as_numbers_and_configured_mapping_reused(tmp_path):
    assert label_mapping(["10", "9", "2", "10"]) == ["2", "9", "10"]
    assert label_mapping(["b", "a"], ["b", "a", "c"]) == ["b", "a", "c"]
    with pytest.raises(UserError, match=r"training labels 'd' are not in finetune.labels \(b, a\)"):
        label_mapping(["a", "d"], ["b", "a"])
    with pytest.raises(UserError, match="single label"):
        label_mapping(["a", "a"])


def test_dev_and_test_reuse_the_training_mapping(tmp_path):
    train = write(tmp_path, "train.tsv", KORNLI)
    dev = write(tmp_path, "dev.tsv", "sentence1\tsentence2\tgold_label\n가\t나\tneutral\n다\t라\tcontradiction\n")
    _, dev_data, test_data, labels = read_task(task_spec(PAIR_CLASSIFICATION), train, dev, dev)
    assert labels == ["contradiction", "entailment", "neutral"]
    assert dev_data.labels == [2, 0] and test_data.labels == [2, 0]  # not dev's own sorted order [1, 0]


BAD = [
    ("id\ttext\tlabel\n1\t좋다\t1\n", "line 1: no column 'document' in the header (id, text, label)"),
    ("id\tdocument\tlabel\n1\t좋다\t1\n2\t  \t0\n", "line 3: empty text in column 'document'"),
    ("id\tdocument\tlabel\n1\t좋다\t1\n2\t싫다\n", "line 3: 2 tab-separated field(s), the header has 3"),
    ("id\tdocument\tlabel\n1\t좋다\t\n", "line 2: empty label in column 'label'"),
    ("id\tdocument\tlabel\n", "no examples after the header"),
    ("", "the file is empty"),
    ("id\tdocument\tdocument\n1\t좋다\t1\n", "line 1: a column name appears twice"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(":")[0][:20] for _, m in BAD])
def test_bad_files_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "bad.tsv", text)
    with pytest.raises(UserError) as e:
        read_task_file(path, task_spec(SENTENCE_CLASSIFICATION))
    assert str(e.value).startswith(f"{path}: {message}")


def test_bad_numbers_and_unknown_labels(tmp_path):
    sts = write(tmp_path, "sts.tsv", "score\tsentence1\tsentence2\n4.5\t가\t나\nfive\t다\t라\n")
    with pytest.raises(UserError, match=r"sts.tsv: line 3: score 'five' is not a number$"):
        read_task_file(sts, task_spec(PAIR_REGRESSION))
    nan = write(tmp_path, "nan.tsv", "score\tsentence1\tsentence2\nnan\t가\t나\n")
    with pytest.raises(UserError, match=r"nan.tsv: line 2: score 'nan' is not a finite number$"):
        read_task_file(nan, task_spec(PAIR_REGRESSION))
    train = write(tmp_path, "train.tsv", NSMC)
    dev = write(tmp_path, "dev.tsv", "id\tdocument\tlabel\n1\t좋다\t1\n2\t글쎄\t2\n")
    with pytest.raises(UserError, match=r"dev.tsv: line 3: label '2' is not one of the training labels \(0, 1\)$"):
        read_task(task_spec(SENTENCE_CLASSIFICATION), train, dev)


def test_undecodable_and_undetectable(tmp_path):
    cp949 = write(tmp_path, "cp949.tsv", "id\tdocument\tlabel\n1\t좋은 영화\t1\n", encoding="cp949")
    with pytest.raises(UserError, match=r"cp949.tsv: line 2: not valid UTF-8"):
        read_task_file(cp949, task_spec(SENTENCE_CLASSIFICATION))
    other = write(tmp_path, "other.tsv", "a\tb\n1\t2\n")
    with pytest.raises(UserError, match=r"other.tsv: line 1: cannot tell the task from the header \(a, b\)"):
        detect_task(other)
    both = write(tmp_path, "both.tsv", "document\tlabel\tsentence1\tsentence2\tgold_label\n가\t1\t나\t다\tx\n")
    with pytest.raises(UserError, match=r"fits several tasks \(sentence-classification, pair-classification\)"):
        detect_task(both)
    with pytest.raises(UserError, match="task file not found"):
        read_task_file(tmp_path / "missing.tsv", task_spec(SENTENCE_CLASSIFICATION))


@pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="../shared/eval is not present")
def test_shared_eval_files_detected_and_read():
    expected = {"nsmc_dev.tsv": (SENTENCE_CLASSIFICATION, 5000), "kornli_xnli_dev.tsv": (PAIR_CLASSIFICATION, 2490),
                "korsts_dev.tsv": (PAIR_REGRESSION, 1500)}
    for name, (task, rows) in expected.items():
        path = SHARED_EVAL / name
        assert detect_task(path) == task
        train, _, _, labels = read_task(task_spec(task), path, path)
        assert len(train) == rows
        if task == PAIR_CLASSIFICATION:
            assert labels == ["contradiction", "entailment", "neutral"]
        if task == SENTENCE_CLASSIFICATION:
            assert labels == ["0", "1"] and sorted(set(train.labels)) == [0, 1]


def test_cli_bad_task_file_is_one_line_and_writes_nothing(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    train = write(tmp_path, "train.tsv", NSMC)
    dev = write(tmp_path, "dev.tsv", "id\tdocument\tlabel\n1\t좋다\t1\n2\t\t0\n")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (release / name).write_text("{}")
    result = run_cli("finetune", release, "--train", train, "--dev", dev, "--out", tmp_path / "out")
    assert_one_line_error(result, f"{dev}: line 3: empty text in column 'document'")
    assert not (tmp_path / "out").exists()
    result = run_cli("finetune", release, "--dev", dev, "--finetune.lr=0", "--finetune.seeds=1,1")
    assert_one_line_error(result, "finetune.lr=0.0: must be > 0", "finetune.seeds=1,1: must be distinct")


@pytest.mark.parametrize("alias,text,task", [("nsmc", NSMC, SENTENCE_CLASSIFICATION),
                                             ("kornli", KORNLI, PAIR_CLASSIFICATION),
                                             ("korsts", KORSTS, PAIR_REGRESSION)])
def test_benchmark_names_are_task_aliases(tmp_path, alias, text, task):
    from kobert_pretrain.config import FinetuneConfig
    from kobert_pretrain.finetune.run import prepare_task

    path = write(tmp_path, "t.tsv", text)
    spec, train, *_ = prepare_task(FinetuneConfig(task=alias, train=str(path), dev=str(path)))
    assert FinetuneConfig(task=alias).validate() == []
    assert spec == task_spec(task) and len(train) == len(text.splitlines()) - 1
