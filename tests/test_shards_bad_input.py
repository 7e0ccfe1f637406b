"""Stage 2 on bad input: path spelling, failed runs that leave nothing behind, a full disk,
corrupt or truncated shard files, a deleted index.json."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kobert_pretrain.data import LoaderConfig, PretrainingLoader
from kobert_pretrain.errors import UserError
from kobert_pretrain.masking import MaskingSpec
from kobert_pretrain.shards import ShardSet, build_shards
from kobert_pretrain.shards import build as build_module
from kobert_pretrain.shards import format as format_module
from kobert_pretrain.vocab import Vocab

from conftest import ROOT, assert_one_line_error, run_cli, shards_config, tree_bytes


def _cli(corpus, vocab, out, *extra, cwd=None):
    return run_cli("shards", "--config", ROOT / "configs" / "debug.toml", "--input", corpus, "--vocab", vocab,
                   "--out", out, *extra, cwd=cwd)


def _interrupted_build(monkeypatch, cfg, task: str = "run_shard", after: int = 0) -> None:
    """Run build_shards until `after` tasks of `task` are done, then stop as a Ctrl-C would."""
    real = getattr(build_module, task)
    done = []

    def interrupted(*args, ctx=None):
        if len(done) == after:
            raise KeyboardInterrupt("simulated interruption")
        done.append(args[0])
        return real(*args, ctx=ctx)

    with monkeypatch.context() as m:
        m.setattr(build_module, task, interrupted)
        with pytest.raises(KeyboardInterrupt):
            build_shards(cfg)
    assert (Path(cfg.out) / ".work" / "plan.json").is_file()


# -------------------------------------------------------------------- 1. relative paths


def test_relative_paths_are_recorded_absolute(tmp_path, demo_corpus, debug_vocab):
    out = tmp_path / "S"
    result = _cli(os.path.relpath(demo_corpus, ROOT), os.path.relpath(debug_vocab, ROOT), os.path.relpath(out, ROOT),
                  cwd=ROOT)
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["config"]["vocab"] == str(debug_vocab.resolve())
    assert index["config"]["input"] == [str(demo_corpus.resolve())]
    assert json.loads((out / "config.json").read_text())["vocab"] == str(debug_vocab.resolve())
    # From another working directory, inspect finds the vocabulary.
    (tmp_path / "elsewhere").mkdir()
    result = run_cli("inspect", out, "--json", "--num", "1", cwd=tmp_path / "elsewhere")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_instances"] == index["num_instances"]


def test_resume_does_not_depend_on_path_spelling(tmp_path, demo_corpus, debug_vocab, debug_shards, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s"
    relative = shards_config(os.path.relpath(demo_corpus), os.path.relpath(debug_vocab), "s")
    _interrupted_build(monkeypatch, relative)
    chunks_before = tree_bytes(out / ".work")
    redone = []
    real_chunk = build_module.run_chunk

    def counting(c, segments, ctx=None):
        meta = real_chunk(c, segments, ctx)
        redone.append(meta["skipped"])
        return meta

    monkeypatch.setattr(build_module, "run_chunk", counting)
    build_shards(shards_config(demo_corpus, debug_vocab, out))  # absolute spelling: resumes
    assert redone and all(redone), "finished chunks must be verified and skipped, not redone"
    assert len(chunks_before) > 2
    assert tree_bytes(out) == tree_bytes(debug_shards)


def test_refused_resume_says_what_differs(tmp_path, demo_corpus, debug_vocab, monkeypatch):
    from kobert_pretrain.config import load_config
    from kobert_pretrain.vocab import build_vocab

    out = tmp_path / "s"
    _interrupted_build(monkeypatch, shards_config(demo_corpus, debug_vocab, out))
    before = tree_bytes(out)
    with pytest.raises(UserError) as e:
        build_shards(shards_config(demo_corpus, debug_vocab, out, "--shards.max_seq_length=128"))
    assert "holds an interrupted shard build" in str(e.value)
    assert "(there vs this run: setting max_seq_length 64 vs 128)" in str(e.value)

    other_corpus = tmp_path / "other.txt"
    other_corpus.write_text(demo_corpus.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    with pytest.raises(UserError) as e:
        build_shards(shards_config(other_corpus, debug_vocab, out))
    assert (f"(there vs this run: inputs differ: {demo_corpus.resolve()} only there, "
            f"{other_corpus.resolve()} only now)") in str(e.value)

    vcfg = load_config(ROOT / "configs" / "debug.toml",
                       [f"--vocab.input={demo_corpus}", f"--vocab.out={tmp_path / 'v900'}", "--vocab.vocab_size=900"])
    other_vocab = build_vocab(vcfg.vocab)
    with pytest.raises(UserError) as e:
        build_shards(shards_config(demo_corpus, other_vocab, out))
    sha_old, sha_new = Vocab.load(debug_vocab).sha256, Vocab.load(other_vocab).sha256
    assert f"(there vs this run: vocab sha256 differs: {sha_old[:12]}... vs {sha_new[:12]}...)" in str(e.value)
    assert tree_bytes(out) == before


def test_complete_set_refusal_says_what_differs(tmp_path, demo_corpus, debug_vocab, debug_shards):
    out = tmp_path / "s"
    shutil.copytree(debug_shards, out)
    before = tree_bytes(out)
    with pytest.raises(UserError) as e:
        build_shards(shards_config(demo_corpus, debug_vocab, out, "--shards.seed=1", "--shards.dupe_factor=3"))
    assert "(there vs this run: setting dupe_factor 2 vs 3; setting seed 12345 vs 1)" in str(e.value)
    assert tree_bytes(out) == before


# -------------------------------------------------------- 2. failed runs leave nothing behind


def test_failed_run_removes_what_it_created(tmp_path, demo_corpus, debug_vocab, debug_shards):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\n")
    out = tmp_path / "o"
    assert_one_line_error(_cli(blank, debug_vocab, out),
                          "the inputs produced no instances: they hold no text with at least one token")
    assert not out.exists()
    index = json.loads((debug_shards / "index.json").read_text())
    assert_one_line_error(_cli(demo_corpus, debug_vocab, out, "--num-shards", "100000"),
                          f"only {index['num_instances']} instances for --shards.num_shards=100000")
    assert not out.exists()
    # An existing empty directory stays, empty.
    out.mkdir()
    assert_one_line_error(_cli(blank, debug_vocab, out), "no instances")
    assert out.is_dir() and list(out.iterdir()) == []
    # The corrected command then works in the same directory.
    result = _cli(demo_corpus, debug_vocab, out)
    assert result.returncode == 0, result.stderr
    assert tree_bytes(out) == tree_bytes(debug_shards)


def test_failed_resume_keeps_the_interrupted_build(tmp_path, demo_corpus, debug_vocab, debug_shards, monkeypatch):
    """A user error during a resume removes only what that run added; the interruption's work stays."""
    out = tmp_path / "s"
    _interrupted_build(monkeypatch, shards_config(demo_corpus, debug_vocab, out), "run_chunk", after=2)
    assert sorted(p.name for p in (out / ".work").iterdir()) == ["chunk-000000", "chunk-000001", "plan.json"]
    before = tree_bytes(out)

    def refusing(*args, **kwargs):
        raise UserError("simulated bad input")

    with monkeypatch.context() as m:
        m.setattr(build_module, "_decide_num_shards", refusing)
        with pytest.raises(UserError, match="simulated bad input"):
            build_shards(shards_config(demo_corpus, debug_vocab, out))
    assert tree_bytes(out) == before
    build_shards(shards_config(demo_corpus, debug_vocab, out))
    assert tree_bytes(out) == tree_bytes(debug_shards)


# ---------------------------------------------------------------------- 3. legacy encodings


def test_all_cp949_input_says_encoding(tmp_path, debug_vocab):
    cp949 = tmp_path / "cp949.txt"
    cp949.write_bytes("대한민국은 민주공화국이다.\n\n모든 권력은 국민으로부터 나온다.\n".encode("cp949") * 5)
    result = _cli(cp949, debug_vocab, tmp_path / "o")
    assert_one_line_error(
        result,
        f"the inputs produced no instances: 10 of 15 line(s) are not valid UTF-8 (10 in {cp949}) and the rest "
        "hold no text with at least one token; convert legacy Korean encodings first, e.g. "
        f"iconv -f cp949 -t utf-8 {cp949} > {cp949}.utf8",
    )
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- 4. full disk


def test_full_disk_leaves_no_half_written_shard_and_resumes(tmp_path, demo_corpus, debug_vocab, debug_shards,
                                                            monkeypatch):
    out = tmp_path / "s"
    real_write = format_module.NpyStream._write
    calls = []

    def short_write(self, data):
        # The disk fills up after the header of shard 1's tokens: a partial write, then ENOSPC.
        if "shard-00001" in str(self.file) and self.file.name == "tokens.npy" and self._f.tell() > 0:
            self._f.write(bytes(data)[:14])
            calls.append(self.file)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    with monkeypatch.context() as m:
        m.setattr(format_module.NpyStream, "_write", short_write)
        with pytest.raises(UserError) as e:
            build_shards(shards_config(demo_corpus, debug_vocab, out))
    assert calls
    assert str(e.value) == (f"no space left on device while writing {out / 'shard-00001' / 'tokens.npy'}: "
                            "free some space and re-run the same command to resume (finished work is kept)")
    assert not list(out.rglob("*.tmp-*")) and not (out / "shard-00001").exists()
    assert (out / "shard-00000" / "shard.json").is_file() and (out / ".work" / "plan.json").is_file()
    build_shards(shards_config(demo_corpus, debug_vocab, out))
    assert tree_bytes(out) == tree_bytes(debug_shards)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_real_full_disk_cli(tmp_path, demo_corpus, debug_vocab, debug_shards):
    with _tmpfs(tmp_path / "disk", "160k") as disk:
        out = disk / "s"
        result = _cli(demo_corpus, debug_vocab, out)
        assert_one_line_error(result, "no space left on device while writing ", str(out))
        assert not list(out.rglob("*.tmp-*")) and not (out / "index.json").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        result = _cli(demo_corpus, debug_vocab, out)
        assert result.returncode == 0, result.stderr
        assert tree_bytes(out) == tree_bytes(debug_shards)


# ------------------------------------------------------------- 5. corrupt and truncated shards


def _set_tokens(shard_dir: Path, value: int) -> None:
    """Overwrite a few token ids without touching shard.json (a corrupt file, checksums not updated)."""
    tokens = np.load(shard_dir / "tokens.npy")
    tokens[5:9] = value
    np.save(shard_dir / "tokens.npy", tokens)


def test_out_of_range_token_ids_are_refused(tmp_path, debug_shards, debug_vocab):
    out = tmp_path / "s"
    shutil.copytree(debug_shards, out)
    _set_tokens(out / "shard-00000", 60000)
    shard_set = ShardSet.open(out)  # cheap open: sizes are right, contents are checked when a shard is read
    message = (f"shard file {out / 'shard-00000' / 'tokens.npy'} is corrupt: it holds token id 60000, outside "
               "the vocabulary's 0..999; re-run the same shards command to rebuild it "
               "(`kobert-pretrain inspect DIR --verify` checks every file)")
    with pytest.raises(UserError) as e:
        shard_set.shard(0)
    assert str(e.value) == message
    assert_one_line_error(run_cli("inspect", out), message)
    # The loader (what `train` reads through) refuses it too, from its prefetch thread.
    index = shard_set.index
    spec = MaskingSpec.from_vocab(Vocab.load(debug_vocab), index["masked_lm_prob"], index["max_predictions_per_seq"],
                                  index["whole_word_mask"])
    loader = PretrainingLoader(shard_set, LoaderConfig(8, prefetch=2, bucket_window=1), spec=spec)
    with pytest.raises(UserError) as e:
        for _ in range(loader.rounds_per_epoch):
            next(loader)
    loader.close()
    assert str(e.value) == message
    # The uncorrupted shards still open.
    assert len(shard_set.shard(1)) == shard_set.counts[1]


def test_truncated_and_missing_files_are_all_reported_at_open(tmp_path, debug_shards, monkeypatch):
    out = tmp_path / "s"
    shutil.copytree(debug_shards, out)
    tokens = out / "shard-00001" / "tokens.npy"
    size = tokens.stat().st_size
    tokens.write_bytes(tokens.read_bytes()[:-100])
    (out / "shard-00002" / "nsp.npy").unlink()
    shutil.rmtree(out / "shard-00003")
    with pytest.raises(UserError) as e:
        ShardSet.open(out)
    assert str(e.value) == (
        f"shard set {out} has 3 problem(s): shard-00001/tokens.npy is truncated ({size - 100:,} of {size:,} bytes); "
        "shard-00002/nsp.npy is missing; shard-00003 is missing; re-run the same shards command to rebuild the "
        "damaged shards"
    )


def test_open_reads_headers_not_data(debug_shards, monkeypatch):
    def no_hashing(*args, **kwargs):
        raise AssertionError("ShardSet.open must not hash files unless verify=True")

    monkeypatch.setattr(format_module, "sha256_file", no_hashing)
    assert ShardSet.open(debug_shards).num_shards == 4
    with pytest.raises(AssertionError):
        ShardSet.open(debug_shards, verify=True)


def test_train_refuses_truncated_shards_before_any_step(tmp_path, debug_shards):
    out = tmp_path / "s"
    shutil.copytree(debug_shards, out)
    tokens = out / "shard-00002" / "tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:-10])
    result = run_cli("train", "--config", "configs/debug.toml", "--shards", out, "--out", tmp_path / "run")
    assert_one_line_error(result, f"shard set {out} has 1 problem(s): shard-00002/tokens.npy is truncated")
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


# ------------------------------------------------------------------- 6. deleted index.json


def test_deleted_index_inspect_and_shards_agree(tmp_path, demo_corpus, debug_vocab, debug_shards):
    out = tmp_path / "s"
    shutil.copytree(debug_shards, out)
    (out / "index.json").unlink()
    assert_one_line_error(
        run_cli("inspect", out),
        f"{out} holds no complete shard set (index.json missing): it cannot be used as is; re-run the "
        "`kobert-pretrain shards` command that wrote it, with the same arguments, to finish it or rebuild index.json",
    )
    # Other settings: refused, nothing changed.
    before = tree_bytes(out)
    with pytest.raises(UserError, match="holds shards without index.json that were built from other inputs"):
        build_shards(shards_config(demo_corpus, debug_vocab, out, "--shards.seed=1"))
    assert tree_bytes(out) == before
    # The same command rebuilds index.json, as inspect said.
    result = _cli(demo_corpus, debug_vocab, out)
    assert result.returncode == 0, result.stderr
    assert tree_bytes(out) == tree_bytes(debug_shards)


def test_inspect_on_a_directory_without_shards(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("inspect", tmp_path),
                          f"{tmp_path} is not a shard set (index.json missing and no shard directories)")
