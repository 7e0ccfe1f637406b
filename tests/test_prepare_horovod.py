"""`prepare` split across Horovod ranks (real horovodrun, Gloo): the same bytes as one process."""

from __future__ import annotations

import pytest
from conftest import ROOT, tree_bytes
from test_horovod_shards import horovodrun
from test_prepare import config, news_corpus, numbered_documents, without_timings

from kobert_pretrain.prepare import prepare, workdir

pytestmark = pytest.mark.horovod


def test_two_ranks_write_the_same_corpus_as_one_process(tmp_path):
    inputs = [news_corpus(tmp_path), *(numbered_documents(tmp_path / f"doc{i}.txt", i, 30) for i in range(3))]
    overrides = ["--prepare.splitter=rule", "--prepare.chunk_mb=0.002"]
    one = prepare(config(inputs, tmp_path / "one", *overrides))
    out = tmp_path / "two"
    result = horovodrun("localhost:2", 2, "prepare", "--config", ROOT / "configs" / "debug.toml",
                        *[a for p in inputs for a in ("--input", p)], "--out", out, *overrides)
    assert result.returncode == 0, result.stdout + result.stderr
    assert without_timings(tree_bytes(out)) == without_timings(tree_bytes(one))
    assert not workdir.work_dir_of(out).exists()
