"""Stage 2: text -> documents -> NSP pairs -> (masked) instances -> shard files.

    documents.py  read a chunk of input, split sentences, tokenize into flat arrays
    instances.py  google-research/bert pairing and truncation on those arrays
    build.py      the two-phase, resumable, parallel generator (`build_shards`)
    tasks.py      its two tasks: one chunk of text -> instances; chunk ranges -> one shuffled shard
    identity.py   what a set's bytes depend on (its fingerprint), and how two builds differ
    format.py     the .npy shard format, index.json, and the `ShardSet` reader (with the
                  vocabulary and masking spec that belong to a set)
    inspect.py    totals and decoded instances for a person (`kobert-pretrain inspect`)
"""

from kobert_pretrain.shards.build import build_shards
from kobert_pretrain.shards.format import Shard, ShardSet

__all__ = ["build_shards", "Shard", "ShardSet"]
