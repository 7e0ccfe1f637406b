#!/usr/bin/env bash
# Step 1 of the cluster recipe: the SentencePiece vocabulary (8,002 pieces, KoBERT's special ids).
# One machine is enough: SentencePiece samples input_sentence_size sentences and trains on them.
set -euo pipefail

CORPUS=${CORPUS:-/shared/corpus}            # UTF-8, one sentence per line, blank line between documents
WORK=${WORK:-/shared/kobert}                # vocab/, shards*/, runs/, release/ go here (shared by all nodes)
CONFIG=${CONFIG:-configs/cluster-base.toml} # [vocab] section: vocab_size, normalization, threads, seed
KOBERT=${KOBERT:-kobert-pretrain}

"$KOBERT" vocab --config "$CONFIG" --input "$CORPUS" --out "$WORK/vocab"
