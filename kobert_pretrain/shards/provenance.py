"""What a shard set was built with: its vocabulary and its masking spec, read from its index.json.

Training, `inspect` and `convert` all ask "which vocabulary and masking spec belong to these shards?";
this is the one answer. (These read only `ShardSet.index`; they are functions beside `format.py`
rather than `ShardSet` methods while that file is being rewritten.)
"""

from __future__ import annotations

from kobert_pretrain.errors import UserError
from kobert_pretrain.masking import MaskingSpec
from kobert_pretrain.vocab import Vocab


def recorded_vocab_dir(index: dict) -> str:
    """The vocabulary directory `kobert-pretrain shards --vocab` was given ("" if none is recorded)."""
    return index.get("config", {}).get("vocab", "") or ""


def shard_vocab(shard_set, vocab_dir: str | None = None) -> Vocab:
    """The vocabulary of `shard_set`: `vocab_dir`, or the one its build recorded; a UserError when it
    cannot be loaded or is not the one the shards were built with (its sha256 differs)."""
    vocab_dir = vocab_dir or recorded_vocab_dir(shard_set.index)
    vocab = Vocab.load(vocab_dir)
    if vocab.sha256 != shard_set.index["vocab_sha256"]:
        raise UserError(f"vocabulary {vocab_dir} is not the one the shards were built with (sha256 differs)")
    return vocab


def masking_spec(shard_set, vocab: Vocab) -> MaskingSpec:
    """How dynamic masks are drawn for `shard_set` (its masking settings, `vocab`'s tables)."""
    index = shard_set.index
    return MaskingSpec.from_vocab(vocab, index["masked_lm_prob"], index["max_predictions_per_seq"],
                                  index["whole_word_mask"])
