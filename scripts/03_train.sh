#!/usr/bin/env bash
# Step 3: BERT-base pretraining on every GPU of the hostfile, under the restarting supervisor.
# A crashed rank or lost node restarts the job from its newest checkpoint; SIGTERM checkpoints and stops.
set -euo pipefail

WORK=${WORK:-/shared/kobert}
RUN=${RUN:-$WORK/runs/base}
CONFIG=${CONFIG:-configs/base.toml}         # [model] base, [train] global batch 256, fp16, BERTAdam 1e-4
HOSTFILE=${HOSTFILE:-hostfile}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}           # ranks per host
MAX_RESTARTS=${MAX_RESTARTS:-10}
PHASE2=${PHASE2:-}                          # set to 1 to switch to $WORK/shards-512 (configs/base-phase2.toml)
EXTRA_ARGS=${EXTRA_ARGS:-}                  # more --section.field=value overrides
KOBERT=${KOBERT:-kobert-pretrain}

# Horovod and MXNet knobs for V100 nodes on 25-100 Gb networks (see README, "Training on a cluster").
export HOROVOD_FUSION_THRESHOLD=${HOROVOD_FUSION_THRESHOLD:-67108864}      # 64 MB fusion buffer
export HOROVOD_CYCLE_TIME=${HOROVOD_CYCLE_TIME:-5}                         # ms between fusion cycles
export HOROVOD_HIERARCHICAL_ALLREDUCE=${HOROVOD_HIERARCHICAL_ALLREDUCE:-1} # NCCL in-node, then across nodes
export MXNET_SAFE_ACCUMULATION=${MXNET_SAFE_ACCUMULATION:-1}               # fp32 accumulation in fp16 reductions

nodes=$("$KOBERT" hostfile "$HOSTFILE" | grep -c .)
args=(train --config "$CONFIG" --shards "$WORK/shards-128" --out "$RUN")
if [ -d "$WORK/shards-eval" ]; then
    args+=(--eval-shards "$WORK/shards-eval")
fi
if [ -n "$PHASE2" ]; then
    args+=(--train.phase2_shards="$WORK/shards-512")
fi
# shellcheck disable=SC2206  # EXTRA_ARGS is a list of words on purpose
args+=($EXTRA_ARGS)

"$KOBERT" launch -np $((nodes * GPUS_PER_NODE)) --hostfile "$HOSTFILE" --max-restarts "$MAX_RESTARTS" -- "${args[@]}"
