"""Stage 2 at corpus scale: the same bytes as the reference build, and bounded memory per worker."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from kobert_pretrain.shards import tasks as tasks_module
from kobert_pretrain.shards import documents as documents_module
from kobert_pretrain.shards import instances as instances_module
from kobert_pretrain.shards import build_shards
from kobert_pretrain.vocab import Vocab

from conftest import SHARED_CORPUS, shards_config

# The debug vocabulary of the demo corpus (configs/debug.toml): every checksum below depends on it.
DEBUG_VOCAB_SHA256 = "456204c41f1d1f43521e841e05318f5a3393ee50f22ed14b88bfe0726ad9d94e"

# Per-shard sha256 (index.json "shards"), recorded with the code of commit d4ba0a9, before phase 2
# was rewritten to assemble shards in bounded blocks: the rewrite must not change a byte.
GOLDEN = {
    "demo dynamic": ([], 1429, [
        "4fa7e74d260e01017cb88ffc615c16786cb3b5e812ce87fc7dc4822e975e3526",
        "7e8eddd1573d84cf42467168e34e9389135e79aed907ddf382d4793ae6a4636d",
        "5dbf757e6d2c1523899110213294ed87eac283afbd8798c4f5180addc7db4437",
        "7150589fabe91805abf27891fd03d94e84ec189605fc1662510205cb4a81e002",
    ]),
    "demo static": (["--shards.masking=static"], 1429, [
        "90490cde5a057c16e1c834be5fdc6c67fe2e7620dee2c7cbd3dffdece055f198",
        "834edcdeb3f8f52891406df73a9a6dcb694ce013ae6f1161233949b65287775f",
        "7f384bdb9b0902c2d14b9a2fc857e62e7b7a963e568e566c74dc2daef52901dd",
        "a379927877d45afd31451042546726a20015546a47c351f5da804affcb243af5",
    ]),
    # 0.01 MB chunks: every shard gathers from many chunks, most of them cut at a shard boundary.
    "demo static whole-word, 3 shards, many chunks": (
        ["--shards.masking=static", "--shards.whole_word_mask=true", "--shards.num_shards=3",
         "--shards.chunk_mb=0.01", "--shards.dupe_factor=3"], 2164, [
            "f4cca34780d5a5c9e156f7437c04c3cd866244c9e02db00f29f8e5b7093eb295",
            "55639409b58761f10fe4fd7aba95460354a4c2644bef204d33745d64802e1a16",
            "a86fac4cd67cc81180295923bd7b4dccccfe8365cd87ea13fec49b7230497d22",
        ]),
}
# ../shared/corpus/boddari/wikinews.txt (1.2 MB of real news text), seq 128, the debug vocabulary.
WIKINEWS = ["--shards.max_seq_length=128", "--shards.max_predictions_per_seq=20", "--shards.chunk_mb=0.3"]
GOLDEN_WIKINEWS = {
    "wikinews dynamic": (WIKINEWS, 8142, [
        "81d1ddb200217b07008de3671e50f2772716dae41cd6e04260b644169d85ee5e",
        "1eee61ed716f545dcbaaf2af325390b5b688efd93f12261a17295cc3e9f3c4f5",
        "ee99933f4e2962b2f6359849584261ebc6dc71dcdd144356a086d39a4fa1a2d2",
        "fbb6e2e6e2c709f480a45be4324a3980612c6a949fc3b3ab56380ce2a0d7e09e",
    ]),
    "wikinews static": (WIKINEWS + ["--shards.masking=static"], 8142, [
        "f47b72d76b2d150975c01fda382b3eb6c2f43831a43b3006f73700af2cc7bbf5",
        "70c3fa250dde2e6dd789712b474847025298c58884410b72f4e1b41a181b9e4d",
        "f789db902b12ce62f0458da832ffecb7e45de61a72167e01338deae53b14d1ce",
        "15ff4dfb39eb5d35a5202b4514cd9cbe8f10beeb7e4a91cc44fa8ad8569cf3dd",
    ]),
}


def _shard_sums(out):
    index = json.loads((out / "index.json").read_text())
    return index["num_instances"], [entry["sha256"] for entry in index["shards"]]


@pytest.fixture(scope="module")
def checked_vocab(debug_vocab):
    sha = Vocab.load(debug_vocab).sha256
    assert sha == DEBUG_VOCAB_SHA256, ("the debug vocabulary itself changed (SentencePiece or the vocab stage): "
                                       "the recorded shard checksums no longer apply")
    return debug_vocab


# Phase 2 assembles a shard in output blocks of SHARD_BLOCK_TOKENS tokens, each from one pass over the
# chunk files read READ_TOKENS at a time: at the defaults every demo shard is one block and one read per
# chunk; at 4,000 and 1,500 tokens a demo shard is 6 blocks and a wikinews shard 60, each from dozens
# to hundreds of reads. Phase 1's batches (sentences encoded, instances joined at a time) shrink too.
BLOCK_SIZES = [pytest.param(None, id="default-blocks"), pytest.param((4000, 1500), id="small-blocks")]


@pytest.fixture(params=BLOCK_SIZES)
def block_tokens(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(tasks_module, "SHARD_BLOCK_TOKENS", request.param[0])
        monkeypatch.setattr(tasks_module, "READ_TOKENS", request.param[1])
        monkeypatch.setattr(documents_module, "ENCODE_BATCH", 50)
        monkeypatch.setattr(instances_module, "MATERIALIZE_BLOCK", 100)
    return request.param


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_same_bytes_as_the_recorded_build(tmp_path, demo_corpus, checked_vocab, case, block_tokens):
    overrides, num_instances, sums = GOLDEN[case]
    out = build_shards(shards_config(demo_corpus, checked_vocab, tmp_path / "s", *overrides))
    assert _shard_sums(out) == (num_instances, sums)


@pytest.mark.parametrize("case", sorted(GOLDEN_WIKINEWS))
def test_same_bytes_as_the_recorded_build_on_real_text(tmp_path, checked_vocab, case, block_tokens):
    wikinews = SHARED_CORPUS / "boddari" / "wikinews.txt"
    if not wikinews.is_file():
        pytest.skip("../shared/corpus is not present")
    overrides, num_instances, sums = GOLDEN_WIKINEWS[case]
    out = build_shards(shards_config(wikinews, checked_vocab, tmp_path / "s", *overrides))
    assert _shard_sums(out) == (num_instances, sums)


# ----------------------------------------------------------------------------- bounded memory

# Runs in a fresh interpreter: phase 2 of one shard from the chunk directories under OUT/.work, its
# peak resident memory measured around the task alone (Linux: clear_refs resets VmHWM). Prints
# "resident-before-MB peak-MB".
PHASE2_PROBE = """
import sys
from pathlib import Path
import numpy as np
from kobert_pretrain.config import ShardsConfig
from kobert_pretrain.shards import tasks

out, ranges = Path(sys.argv[1]), eval(sys.argv[2])
tasks.SHARD_BLOCK_TOKENS, tasks.READ_TOKENS = int(sys.argv[3]), int(sys.argv[4])
ctx = tasks.TaskContext(cfg=ShardsConfig(max_seq_length=128, seed=7), vocab=None, spec=None,
                        dtype=np.dtype(np.uint16), fingerprint="probe", out=out)

def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1]) / 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
tasks.run_shard(0, ranges, ctx=ctx)
print(before, status("VmHWM:"))
"""


def _synthetic_chunks(work, num_chunks, per_chunk, rng, static):
    """Chunk directories as phase 1 writes them: instances of 64..128 random tokens (masks if static)."""
    from kobert_pretrain.shards.format import write_array_dir

    for c in range(num_chunks):
        lengths = rng.integers(64, 129, per_chunk)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        arrays = {"tokens": rng.integers(5, 8000, int(offsets[-1]), dtype=np.uint16), "offsets": offsets,
                  "len_a": (lengths // 2).astype(np.uint16), "nsp": rng.integers(0, 2, per_chunk, dtype=np.uint8)}
        if static:
            counts = np.full(per_chunk, 3)
            arrays.update(mlm_positions=rng.integers(1, 20, 3 * per_chunk, dtype=np.uint16),
                          mlm_labels=rng.integers(5, 8000, 3 * per_chunk, dtype=np.uint16),
                          mlm_offsets=np.concatenate([[0], np.cumsum(counts)]))
        write_array_dir(work / f"chunk-{c:06d}", arrays, {"chunk": c})


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_phase2_memory_is_one_block_not_one_shard(tmp_path, static):
    """A shard of 300,000 instances (55 MB of tokens): the task's memory grows by far less than that.

    Before phase 2 was blocked, it concatenated the shard and built int64 arrays with one entry per
    token: ~11x the token bytes (about 600 MB here).
    """
    import subprocess
    import sys

    from conftest import ROOT

    per_chunk = 100_000
    _synthetic_chunks(tmp_path / ".work", 4, per_chunk, np.random.default_rng(0), static)
    # Chunks in a permuted order, the first and the last cut at shard boundaries, as phase 1 leaves them.
    ranges = [(2, 50_000, per_chunk), (0, 0, per_chunk), (3, 0, per_chunk), (1, 0, 50_000)]
    result = subprocess.run([sys.executable, "-c", PHASE2_PROBE, str(tmp_path), repr(ranges), str(1 << 20),
                             str(1 << 17)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    before, peak = map(float, result.stdout.split())
    shard = json.loads((tmp_path / "shard-00000" / "shard.json").read_text())
    assert shard["num_instances"] == 300_000
    token_mb = shard["num_tokens"] * 2 / 2**20
    # Per-instance arrays (~6 MB at their peak), one block of 2^20 tokens (2 MB, ~5 MB while joined) and
    # one window of 2^17 tokens.
    print(f"resident {before:.0f} MB before, peak {peak:.0f} MB, {token_mb:.0f} MB of tokens")
    assert peak - before < token_mb / 4, (before, peak, token_mb)


PEAK_LINE = re.compile(r"shards: peak memory per worker ([\d,]+) MB \(([\d,]+) MB after the chunks, ([\d,]+) MB after "
                       r"the shards\); 2 worker\(s\) need about 2 x that \(README: sizing --workers\)")


def test_the_peak_memory_per_worker_is_printed_once(tmp_path, demo_corpus, debug_vocab, capsys):
    build_shards(shards_config(demo_corpus, debug_vocab, tmp_path / "s", "--shards.workers=2"))
    lines = [line for line in capsys.readouterr().err.splitlines() if "peak memory" in line]
    assert len(lines) == 1 and PEAK_LINE.fullmatch(lines[0]), lines
    peak, chunks, shards = (int(x.replace(",", "")) for x in PEAK_LINE.fullmatch(lines[0]).groups())
    # The spawned workers' own peaks: an interpreter with numpy and SentencePiece, and tiny tasks.
    assert peak == max(chunks, shards) and min(chunks, shards) >= 20 and peak < 500


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_a_file_streamed_in_blocks_is_what_np_save_writes(tmp_path, dtype):
    from kobert_pretrain.shards.format import ArrayDirWriter, NpyReader, verify_array_dir

    array = np.arange(10_000, dtype=dtype)
    with ArrayDirWriter(tmp_path / "d") as writer:
        stream = writer.stream("a", np.dtype(dtype), len(array))
        stream.append(array[:3])
        stream.append_bytes([array[3:10].tobytes(), b"", array[10:].tobytes()])
        writer.write("empty", np.zeros(0, dtype=dtype))
        meta = writer.finish({"k": 1})
    np.save(tmp_path / "a.npy", array)
    np.save(tmp_path / "empty.npy", np.zeros(0, dtype=dtype))
    assert (tmp_path / "d" / "a.npy").read_bytes() == (tmp_path / "a.npy").read_bytes()
    assert (tmp_path / "d" / "empty.npy").read_bytes() == (tmp_path / "empty.npy").read_bytes()
    assert verify_array_dir(tmp_path / "d") == meta and meta["k"] == 1
    reader = NpyReader(tmp_path / "d" / "a.npy")
    assert reader.read(9_990, 10_000).tolist() == array[9_990:].tolist() and len(reader.read(5, 5)) == 0
    with pytest.raises(ValueError):
        reader.read(9_999, 10_001)
    reader.close()


def test_a_stream_shorter_or_longer_than_its_header_leaves_nothing(tmp_path):
    from kobert_pretrain.shards.format import ArrayDirWriter

    with pytest.raises(ValueError, match="more than the 4 entries"), ArrayDirWriter(tmp_path / "d") as writer:
        writer.stream("a", np.dtype(np.uint16), 4).append(np.zeros(5, np.uint16))
    with pytest.raises(ValueError, match="3 of the 4 entries"), ArrayDirWriter(tmp_path / "d") as writer:
        writer.stream("a", np.dtype(np.uint16), 4).append(np.zeros(3, np.uint16))
        writer.finish({})
    assert list(tmp_path.iterdir()) == []
