"""Stage 2: shard generation (format, reproducibility, resume, static masks) and its CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import sha256_file
from kobert_pretrain.shards import ShardSet, build_shards
from kobert_pretrain.shards import build as build_module
from kobert_pretrain.vocab import Vocab

from conftest import assert_one_line_error, run_cli, shards_config, tree_bytes


def test_index_and_files(debug_shards, debug_vocab):
    index = json.loads((debug_shards / "index.json").read_text())
    vocab = Vocab.load(debug_vocab)
    assert index["vocab_sha256"] == vocab.sha256
    assert index["max_seq_length"] == 64 and index["masking"] == "dynamic" and index["token_dtype"] == "uint16"
    counts = [s["num_instances"] for s in index["shards"]]
    assert len(counts) % 4 == 0 and max(counts) - min(counts) <= 1
    assert sum(counts) == index["num_instances"] > 1000
    total_tokens = 0
    random_next = 0
    for entry in index["shards"]:
        meta = json.loads((debug_shards / entry["name"] / "shard.json").read_text())
        assert meta["sha256"] == entry["sha256"]
        for name, digest in meta["files"].items():
            assert sha256_file(debug_shards / entry["name"] / name) == digest
        tokens = np.load(debug_shards / entry["name"] / "tokens.npy", mmap_mode="r", allow_pickle=False)
        offsets = np.load(debug_shards / entry["name"] / "offsets.npy", allow_pickle=False)
        nsp = np.load(debug_shards / entry["name"] / "nsp.npy", allow_pickle=False)
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
        assert len(offsets) == entry["num_instances"] + 1 and offsets[-1] == len(tokens)
        total_tokens += len(tokens)
        random_next += int(nsp.sum())
    assert total_tokens == index["num_tokens"]
    assert random_next == index["num_random_next"]
    assert index["num_padded_tokens"] == 64 * index["num_instances"]
    assert not (debug_shards / ".work").exists()
    config = json.loads((debug_shards / "config.json").read_text())
    assert config["max_seq_length"] == 64 and "workers" not in config and "out" not in config


def test_instances_are_well_formed(debug_shards):
    shard_set = ShardSet.open(debug_shards, verify=True)
    for s in range(shard_set.num_shards):
        shard = shard_set.shard(s)
        for i in range(len(shard)):
            ids = np.asarray(shard.tokens[shard.offsets[i]:shard.offsets[i + 1]])
            la = int(shard.len_a[i])
            assert 5 <= len(ids) <= 64
            assert ids[0] == 2 and ids[la + 1] == 3 and ids[-1] == 3
            body = np.delete(ids, [0, la + 1, len(ids) - 1])
            assert not np.isin(body, [1, 2, 3, 4]).any()  # no special ids inside the segments
            assert la >= 1 and len(ids) - la - 3 >= 1


def test_workers_give_identical_bytes(tmp_path, demo_corpus, debug_vocab, debug_shards):
    out = build_shards(shards_config(demo_corpus, debug_vocab, tmp_path / "w2", "--shards.workers=2"))
    assert tree_bytes(out) == tree_bytes(debug_shards)


def test_resume_after_deleting_a_shard_rebuilds_the_same_bytes(tmp_path, demo_corpus, debug_vocab, debug_shards):
    out = tmp_path / "s"
    shutil.copytree(debug_shards, out)
    shutil.rmtree(out / "shard-00002")
    (out / "shard-00001" / "nsp.npy").write_bytes(b"corrupt")
    with pytest.raises(UserError, match="shard-00001 is corrupt|shard-00002 is missing"):
        ShardSet.open(out, verify=True)
    build_shards(shards_config(demo_corpus, debug_vocab, out))
    assert tree_bytes(out) == tree_bytes(debug_shards)


def test_crash_mid_build_resumes_to_the_same_bytes(tmp_path, demo_corpus, debug_vocab, debug_shards, monkeypatch):
    out = tmp_path / "s"
    real = build_module.run_shard
    done = []

    def crashing(s, ranges, ctx=None):
        if len(done) == 2:
            raise KeyboardInterrupt("simulated crash")
        done.append(s)
        return real(s, ranges, ctx)

    monkeypatch.setattr(build_module, "run_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        build_shards(shards_config(demo_corpus, debug_vocab, out))
    assert not (out / "index.json").exists() and (out / ".work").is_dir()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("shard-")) == ["shard-00000", "shard-00001"]
    monkeypatch.setattr(build_module, "run_shard", real)
    # A half-written chunk directory from the crash is ignored and redone.
    (out / ".work" / "chunk-000000.tmp-999").mkdir()
    build_shards(shards_config(demo_corpus, debug_vocab, out))
    assert tree_bytes(out) == tree_bytes(debug_shards)


def test_a_shard_left_half_written_by_a_killed_build_is_removed(tmp_path, demo_corpus, debug_vocab, debug_shards,
                                                                monkeypatch):
    """kill -9 during a shard leaves its temporary directory; the resumed build removes it, then finishes."""
    import subprocess
    import sys

    from kobert_pretrain.fsutil import temporary_prefix

    out = tmp_path / "s"
    real = build_module.run_shard

    def crashing(s, ranges, ctx=None):
        if s == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(s, ranges, ctx)

    monkeypatch.setattr(build_module, "run_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        build_shards(shards_config(demo_corpus, debug_vocab, out))
    monkeypatch.setattr(build_module, "run_shard", real)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f"{temporary_prefix(out / 'shard-00002')}{int(dead.stdout)}"
    stale.mkdir()
    (stale / "tokens.npy").write_bytes(b"half a shard")
    build_shards(shards_config(demo_corpus, debug_vocab, out))
    assert not stale.exists() and tree_bytes(out) == tree_bytes(debug_shards)


def test_other_settings_never_overwrite(tmp_path, demo_corpus, debug_vocab, debug_shards):
    out = tmp_path / "s"
    shutil.copytree(debug_shards, out)
    before = tree_bytes(out)
    with pytest.raises(UserError, match="built from other inputs"):
        build_shards(shards_config(demo_corpus, debug_vocab, out, "--shards.seed=1"))
    assert tree_bytes(out) == before
    # Re-running the same command on a complete set does nothing.
    build_shards(shards_config(demo_corpus, debug_vocab, out))
    assert tree_bytes(out) == before


def test_static_masks_agree_with_dynamic_pairs(tmp_path, demo_corpus, debug_vocab, debug_shards):
    out = build_shards(shards_config(demo_corpus, debug_vocab, tmp_path / "st", "--shards.masking=static"))
    static, dynamic = ShardSet.open(out), ShardSet.open(debug_shards)
    assert static.counts == dynamic.counts
    masked_total = as_mask_token = 0
    for s in range(static.num_shards):
        a, b = static.shard(s), dynamic.shard(s)
        assert (np.asarray(a.offsets) == np.asarray(b.offsets)).all()
        assert (np.asarray(a.len_a) == np.asarray(b.len_a)).all()
        for i in range(len(a)):
            lo, hi = a.offsets[i], a.offsets[i + 1]
            masked, original = np.asarray(a.tokens[lo:hi]), np.asarray(b.tokens[lo:hi])
            pos = np.asarray(a.mlm_positions[a.mlm_offsets[i]:a.mlm_offsets[i + 1]], dtype=np.int64)
            labels = np.asarray(a.mlm_labels[a.mlm_offsets[i]:a.mlm_offsets[i + 1]])
            assert len(pos) == min(10, max(1, round(len(original) * 0.15)))
            assert (labels == original[pos]).all()
            rest = np.ones(len(original), bool)
            rest[pos] = False
            assert (masked[rest] == original[rest]).all()
            masked_total += len(pos)
            as_mask_token += int((masked[pos] == 4).sum())
    assert masked_total > 5000
    assert abs(as_mask_token / masked_total - 0.8) < 0.03


def test_documents_input_format(tmp_path, debug_vocab, demo_corpus):
    docs = demo_corpus.read_text(encoding="utf-8").split("\n\n")
    one_per_line = tmp_path / "docs.txt"
    one_per_line.write_text("\n".join(d.replace("\n", " ") for d in docs) + "\n", encoding="utf-8")
    out = build_shards(shards_config(one_per_line, debug_vocab, tmp_path / "d", "--shards.input_format=documents"))
    index = json.loads((out / "index.json").read_text())
    assert index["num_documents"] == len(docs)
    assert index["num_sentences"] > 2 * len(docs)


def test_split_sentences_full_and_half_width_stops():
    from kobert_pretrain.shards.documents import split_sentences

    # ． (U+FF0E) and ｡ (U+FF61) end sentences like . and 。; full-width closers may follow.
    assert split_sentences("첫 문장이다． 둘째 문장이다｡ 셋째。 넷째？ 다섯째！ 끝") == [
        "첫 문장이다．", "둘째 문장이다｡", "셋째。", "넷째？", "다섯째！", "끝"]
    assert split_sentences("（그렇다．） ＂맞다．＂ ｢좋다｡｣ 다음") == ["（그렇다．）", "＂맞다．＂", "｢좋다｡｣", "다음"]
    # Without whitespace after it the stop is part of a number or an abbreviation, as with "3.14".
    assert split_sentences("원주율은 3．14이다｡") == ["원주율은 3．14이다｡"]
    assert split_sentences("a｡b．c") == ["a｡b．c"]


def test_loader_refuses_mismatched_shards(debug_shards):
    with pytest.raises(UserError, match="another vocabulary"):
        ShardSet.open(debug_shards, vocab_sha256="0" * 64)
    with pytest.raises(UserError, match="max_seq_length 64, this run uses 128"):
        ShardSet.open(debug_shards, max_seq_length=128)


def test_truncated_shard_file_is_reported(tmp_path, debug_shards):
    out = tmp_path / "s"
    shutil.copytree(debug_shards, out)
    tokens = out / "shard-00000" / "tokens.npy"
    size = tokens.stat().st_size
    tokens.write_bytes(tokens.read_bytes()[:-100])
    # Reported when the set is opened (header and size only), not at the shard's first use.
    with pytest.raises(UserError) as e:
        ShardSet.open(out)
    assert str(e.value) == (f"shard set {out} has 1 problem(s): shard-00000/tokens.npy is truncated "
                            f"({size - 100:,} of {size:,} bytes); re-run the same shards command to rebuild the "
                            "damaged shards")


# ------------------------------------------------------------------------- CLI, bad input


def _cli(corpus, vocab, out, *extra):
    return run_cli("shards", "--config", "configs/debug.toml", "--input", corpus, "--vocab", vocab, "--out", out, *extra)


def test_cli_shards_and_inspect_json(tmp_path, demo_corpus, debug_vocab, debug_shards):
    result = _cli(demo_corpus, debug_vocab, tmp_path / "s", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert tree_bytes(tmp_path / "s") == tree_bytes(debug_shards)
    result = run_cli("inspect", tmp_path / "s", "--json", "--num", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert report["num_instances"] == index["num_instances"] and report["num_tokens"] == index["num_tokens"]
    assert len(report["examples"]) == 2
    for ex in report["examples"]:
        assert ex["nsp_label"] in (0, 1) and ex["input_pieces"][0] == "[CLS]"
        assert len(ex["masked_positions"]) == len(ex["masked_labels"]) >= 1
        assert all(0 < p < len(ex["input_pieces"]) - 1 for p in ex["masked_positions"])
        assert not {"[CLS]", "[SEP]", "[PAD]"} & set(ex["masked_labels"])
    text = run_cli("inspect", tmp_path / "s", "--verify")
    assert text.returncode == 0 and "num_instances" in text.stdout and "all files match" in text.stdout
    assert "NSP label" in text.stdout and "masked (position:original)" in text.stdout


def test_cli_bad_inputs(tmp_path, demo_corpus, debug_vocab):
    assert_one_line_error(_cli(tmp_path / "missing.txt", debug_vocab, tmp_path / "o"), "input not found")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert_one_line_error(_cli(tmp_path / "empty.txt", debug_vocab, tmp_path / "o"), "empty")
    assert_one_line_error(_cli(demo_corpus, tmp_path / "novocab", tmp_path / "o"), "vocab directory not found")
    (tmp_path / "notvocab").mkdir()
    (tmp_path / "notvocab" / "x.txt").write_text("x")
    assert_one_line_error(_cli(demo_corpus, tmp_path / "notvocab", tmp_path / "o"), "not a kobert-pretrain vocab")
    (tmp_path / "cp949.txt").write_bytes("대한민국은 민주공화국이다.\n".encode("cp949") * 5)
    assert_one_line_error(_cli(tmp_path / "cp949.txt", debug_vocab, tmp_path / "o"), "no instances")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_one_line_error(_cli(demo_corpus, debug_vocab, foreign), "not a shard set")
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    assert_one_line_error(_cli(demo_corpus, debug_vocab, tmp_path / "o", "--max-seq-length", "4", "--dupe-factor", "0"),
                    "3 problems", "max_predictions_per_seq=10")
    assert not (tmp_path / "o").exists() or not any(p.name == "index.json" for p in (tmp_path / "o").iterdir())


def test_cli_odd_but_valid_inputs(tmp_path, debug_vocab, demo_corpus):
    text = demo_corpus.read_text(encoding="utf-8")
    (tmp_path / "mixed.txt").write_bytes(text.encode() + b"\n\n\xff\xfe broken\n" + "한 문장뿐인 문서.\n".encode())
    # One 10 MB line (no newline at all inside): cut into instance-sized pieces, not dropped.
    (tmp_path / "huge.txt").write_text("대한민국의 주권은 국민에게 있고 모든 권력은 국민으로부터 나온다 " * 160_000,
                                       encoding="utf-8")
    assert (tmp_path / "huge.txt").stat().st_size > 10_000_000
    result = _cli(tmp_path / "mixed.txt", debug_vocab, tmp_path / "o", "--input", tmp_path / "huge.txt",
                  "--dupe-factor", "1")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 line(s) that are not valid UTF-8" in result.stderr
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert index["undecodable_lines"] == 1
    assert index["text_tokens"] > 2_000_000
    assert index["num_instances"] > index["text_tokens"] // 61 * 0.9


def test_lines_with_nul_bytes_are_undecodable_as_in_the_vocab_stage():
    from kobert_pretrain.shards.documents import ChunkText, _decoded_lines

    counters = ChunkText()
    lines = _decoded_lines("가나다.\nA\0B\n\xff\n라마.".encode("utf-8").replace(b"\xc3\xbf", b"\xff"), "f", counters)
    assert lines == ["가나다.", "라마."]
    assert (counters.lines, counters.undecodable_lines, counters.undecodable_by_file) == (4, 2, {"f": 2})
